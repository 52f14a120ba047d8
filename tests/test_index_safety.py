"""Writing an index is crash-safe and single-writer: a killed `assistant index` leaves the previous
index answering, and a second one started while the first runs is refused, naming the first."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from assistant.indexing import index_documents
from assistant.store import open_index
from assistant.loading import load_document
from assistant.settings import DEFAULT_CORPUS, Settings
from test_cli import CEASEFIRE, SCRIPT, ask, one_error_line, run


@pytest.fixture
def index_copy(tmp_path, index_dir) -> Path:
    return shutil.copytree(index_dir, tmp_path / "index")


@pytest.fixture
def long_document(tmp_path, article) -> Path:
    """Enough text that embedding it takes seconds: the article three times over, each copy reworded."""
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(article.replace("Trump", f"Trump{i}") for i in range(3)), encoding="utf-8")
    return path


@pytest.fixture
def other_document(tmp_path, article) -> Path:
    path = tmp_path / "other.txt"
    path.write_text(article.replace("Trump", "Trumpf"), encoding="utf-8")
    return path


def start_indexer(index_dir: Path, document: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    return subprocess.Popen([str(SCRIPT), "index", "--index-dir", str(index_dir), str(document)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def live(index_dir: Path) -> str:
    return (index_dir / "CURRENT").read_text().strip()


@pytest.mark.slow
def test_a_killed_indexer_leaves_the_previous_index_answering(index_copy, long_document, other_document, article):
    before = live(index_copy)
    indexer = start_indexer(index_copy, long_document)
    building = lambda: [p for p in index_copy.glob("gen-*") if p.name != before]  # noqa: E731
    # Killed once the new generation's Chroma has rows in it: mid-way through embedding.
    wait_for(lambda: any((p / "chroma" / "chroma.sqlite3").is_file() for p in building()), indexer)
    time.sleep(1.0)
    indexer.send_signal(signal.SIGKILL)
    indexer.wait(timeout=30)
    assert indexer.returncode == -signal.SIGKILL
    (unfinished,) = building()
    assert not (unfinished / "manifest.json").exists()  # it really died before finishing
    assert live(index_copy) == before
    index = open_index(Settings(index_dir=index_copy))
    assert index.documents == {"article.txt": article}
    result = ask(index_copy, "--json", CEASEFIRE)
    assert result.exit_code == 0 and "thirty-day" in result.stdout.lower()
    # No stale lock: the next build runs, and clears what the killed one left.
    report = index_documents([load_document(other_document, 10)], Settings(index_dir=index_copy))
    assert report.indexed == ("other.txt",)
    assert [p.name for p in index_copy.glob("gen-*")] == [live(index_copy)]
    assert set(open_index(Settings(index_dir=index_copy)).documents) == {"article.txt", "other.txt"}


@pytest.mark.slow
def test_a_second_indexer_is_refused_while_the_first_runs(index_copy, other_document):
    indexer = start_indexer(index_copy, other_document)
    wait_for(lambda: (index_copy / "lock").read_text().strip() == str(indexer.pid), indexer)
    line = one_error_line(run("index", "--index-dir", index_copy, DEFAULT_CORPUS), 1)
    assert f"another 'assistant index' is running on {index_copy} (pid {indexer.pid})" in line
    _, stderr = indexer.communicate(timeout=300)
    assert indexer.returncode == 0, stderr
    assert set(open_index(Settings(index_dir=index_copy)).documents) == {"article.txt", "other.txt"}
