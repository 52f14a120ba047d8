"""Environment that keeps every library from reaching the network, set before they load.

Does not block sockets; it only tells each library to use what is on disk. Also makes idle
OpenMP threads sleep instead of spin: llama.cpp and torch spinning against each other, or against
any other busy process, made an answer 10-50 times slower on two cores.
"""

import importlib.util
import os
import tempfile
from pathlib import Path


def _tiktoken_cache() -> str | None:
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "_static" / "tiktoken_cache")


def apply() -> None:
    """Set the offline variables, leaving any the user set on purpose."""
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",  # libraries that leave tqdm to its defaults draw bars on stderr
        "TRANSFORMERS_VERBOSITY": "error",
    }
    cache = _tiktoken_cache()
    if cache:
        defaults["TIKTOKEN_CACHE_DIR"] = cache
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    _usable_cache()


def _usable_cache() -> None:
    """onnxruntime keeps an id under $XDG_CACHE_HOME or ~/.cache and warns on stderr at import when
    it cannot; with HOME missing or read-only, a folder of this user's in the temp folder stands in."""
    if "XDG_CACHE_HOME" in os.environ:
        return
    folder = Path(os.environ.get("HOME") or "/nonexistent") / ".cache"
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / f"assistant-cache-{os.getuid()}")
    except FileNotFoundError:  # no usable temp folder either: the command that needs one says so
        return
