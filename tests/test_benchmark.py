"""The benchmark: a real quick run writes sane results, its pieces measure what they say, and the
cold `assistant ask` path stays free of the UI, plotting, PDF, eval and fitting code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from assistant.tools.benchmark import generated_text, run_child, stat
from assistant.tools.tables import percentile
from assistant.cli import main
from assistant.settings import PROJECT_ROOT, SQUAD_DEV

QUESTION = "How long a ceasefire did Trump call for?"  # dev: q011, in other words
NOT_ON_ASK_PATH = ("gradio", "matplotlib", "pypdf", "assistant.tools.evaluation", "assistant.tools.reporting",
                   "assistant.tools.benchmark", "assistant.tools.fitting")


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")} if folder.is_dir() else {}


@pytest.mark.slow
def test_quick_bench_saves_sane_results(tmp_path):
    user_index = _snapshot(PROJECT_ROOT / "index")
    result = CliRunner().invoke(main, ["bench", "--quick", "--runs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cold start" in result.stdout and "overhead ratio (span)" in result.stdout

    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    metrics = {m["name"]: m for m in saved["metrics"]}
    for name in ("cold start: assistant ask", "peak RSS ask", "warm answer p50", "warm answer p95",
                 "cold import: onnxruntime", "cold import: chromadb",
                 "overhead ratio (span)", "overhead ratio (free)", "index article", "peak RSS indexing article",
                 "embed one query (eager)", "embed one query (sdpa)", "index 100 small files",
                 "upload through the UI", "open files after uploads", "deleted files held after uploads",
                 "RSS after uploads"):
        assert name in metrics, name
    assert metrics["upload through the UI"]["stat"]["n"] == 20
    before = int(metrics["open files after uploads"]["note"].split()[0])
    assert metrics["open files after uploads"]["stat"]["median"] <= before + 8  # replaced generations let go
    assert any(name.startswith("retrieval p50") for name in metrics)
    if SQUAD_DEV.is_file():  # warm answers over both sets, and each alone
        assert "warm answer p50 (squad-dev check)" in metrics and "warm answer p95 (article)" in metrics
        assert metrics["warm answer p50"]["note"] == "5 article + 4 squad-dev check questions per run"
    for m in saved["metrics"]:
        s = m["stat"]
        assert 0 <= s["min"] <= s["median"] <= s["max"], m
        assert s["n"] >= 1
        if not m["name"].startswith(("cold phase", "index article re-run", "deleted files held")):
            assert s["median"] > 0, m
    assert any(m["stat"]["min"] < m["stat"]["max"] for m in saved["metrics"])  # per-question spreads are real
    assert 100 < metrics["peak RSS ask"]["stat"]["median"] < 24_000
    assert metrics["index article re-run unchanged"]["note"] == "unchanged"
    assert metrics["index article re-run unchanged"]["stat"]["median"] < 0.5
    assert metrics["cold start to exit"]["stat"]["min"] >= metrics["cold start: assistant ask"]["stat"]["min"]
    # the whole answer can never take less than its model part
    assert metrics["cold start: assistant ask"]["stat"]["median"] > metrics["cold phase: generation"]["stat"]["median"]

    scaling = saved["scaling"]
    assert [r["scale"] for r in scaling] == [1, 2]
    assert scaling[0]["words"] < scaling[1]["words"] and scaling[0]["chunks"] < scaling[1]["chunks"]
    assert scaling[0]["index_bytes"] < scaling[1]["index_bytes"]

    summary = (tmp_path / "latest.md").read_text()
    assert "| measure | median | min | max |" in summary and "## Missed goals" in summary
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "chart.png").stat().st_size > 10_000
    assert _snapshot(PROJECT_ROOT / "index") == user_index


@pytest.mark.slow
def test_ask_does_not_import_ui_plotting_pdf_or_eval_code(index_dir):
    code = (
        "import json, sys\n"
        "from assistant.cli import main\n"
        f"main(['ask', '--json', '--index-dir', {str(index_dir)!r}, {QUESTION!r}], standalone_mode=False)\n"
        f"print(json.dumps(sorted(m for m in {NOT_ON_ASK_PATH!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer, loaded = done.stdout.strip().splitlines()
    assert "thirty-day" in json.loads(answer)["answer"].lower()
    assert json.loads(loaded) == []


def test_run_child_reports_the_childs_own_peak_memory():
    parent = bytearray(500_000_000)
    parent[::4096] = b"x" * len(parent[::4096])  # touched: resident, a peak the children must not inherit
    small = run_child([sys.executable, "-c", "pass"], {})
    big = run_child([sys.executable, "-c", "b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096])"], {})
    assert big.peak_rss_mb > 300 > small.peak_rss_mb
    assert big.seconds > 0 and big.cpu_seconds > 0


def test_run_child_times_the_first_line_apart_from_the_exit():
    run = run_child([sys.executable, "-c", "import time; print('answer', flush=True); time.sleep(2)"], {})
    assert run.stdout == "answer\n"
    assert run.first_output_s < run.seconds - 1.5


def test_generated_text_is_deterministic_varied_and_sized():
    text = generated_text(5_000, seed=3)
    assert text == generated_text(5_000, seed=3)
    assert text != generated_text(5_000, seed=4)
    words = text.split()
    assert 5_000 <= len(words) < 5_100
    sentences = [s for s in text.replace("\n\n", " ").split(". ") if s]
    assert len(set(sentences)) > 0.95 * len(sentences)


def test_stat_and_percentile():
    assert stat([3.0, 1.0, 2.0]) == stat([1.0, 2.0, 3.0])
    assert (stat([4.0, 1.0, 2.0, 3.0]).median, stat([4.0, 1.0]).min, stat([4.0, 1.0]).max) == (2.5, 1.0, 4.0)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert percentile(list(range(101)), 0.95) == 95.0
