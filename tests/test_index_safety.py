"""Writing an index is crash-safe and single-writer: a killed `assistant index` leaves the previous
index answering, and a second one started while the first runs is refused, naming the first."""

import json
import os
import pickle
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
from test_bad_input import snapshot
from test_cli import CEASEFIRE, SCRIPT, ask, one_error_line, run


@pytest.fixture
def index_copy(tmp_path, index_dir) -> Path:
    return shutil.copytree(index_dir, tmp_path / "index")


@pytest.fixture
def long_document(tmp_path, article) -> Path:
    """Enough text that embedding it takes seconds: the article ten times over, each copy reworded
    (only chunks are embedded while indexing: ~200 of them)."""
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(article.replace("Trump", f"Trump{i}") for i in range(10)), encoding="utf-8")
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


# --- a damaged index: `ask` and `index` say so in one line, `index --rebuild` loses nothing -------------------------

NOTES = "# Harbor notes\n\nThe harbor master is Jonas Reed. He keeps the keys to the tower.\n"


@pytest.fixture(scope="module")
def two_documents(tmp_path_factory, article) -> tuple[Path, Path]:
    """The bundled article and a user's notes.md, indexed together once; returns (index, notes.md)."""
    folder = tmp_path_factory.mktemp("two")
    notes = folder / "notes.md"
    notes.write_text(NOTES, encoding="utf-8")
    docs = [load_document(DEFAULT_CORPUS, 10), load_document(notes, 10)]
    index_documents(docs, Settings(index_dir=folder / "index"))
    return folder / "index", notes


@pytest.fixture
def user_index(tmp_path, two_documents) -> Path:
    return shutil.copytree(two_documents[0], tmp_path / "index")


def gen(index: Path) -> Path:
    return index / live(index)


def edit_manifest(index: Path, change) -> None:
    path = gen(index) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


class Planted:
    """A pickle that, were it ever loaded, would create the file next to the index."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant_pickle(index: Path) -> None:
    (gen(index) / "bm25" / "data.csc.index.npy").write_bytes(pickle.dumps(Planted(index.parent / "pickle-ran")))


def garbage_over_bm25(index: Path) -> None:
    for path in (gen(index) / "bm25").iterdir():
        path.write_bytes(b"garbage\x00" * 100)


def truncate_chroma(index: Path) -> None:
    db = gen(index) / "chroma" / "chroma.sqlite3"
    os.truncate(db, db.stat().st_size // 3)


def zero_chroma(index: Path) -> None:
    db = gen(index) / "chroma" / "chroma.sqlite3"
    db.write_bytes(bytes(db.stat().st_size))


def edit_notes_copy(index: Path) -> None:
    copy = gen(index) / "docs" / "notes.md.txt"
    copy.write_text(copy.read_text().replace("Jonas", "Jonah"))  # the same size: only a hash tells


LOST_CURRENT = "CURRENT names no generation: {generation}, the newest finished one, is rebuilt and replaced"
DAMAGE = {  # damage, what ask says, what index says (after "is damaged ("), the notes of the rebuild
    "bm25-garbage": (garbage_over_bm25, "is damaged (bm25: ", "bm25: ", []),
    "bm25-deleted": (lambda index: shutil.rmtree(gen(index) / "bm25"), "is damaged (bm25: ", "bm25: ", []),
    "bm25-pickle": (plant_pickle, "bm25: a file holds pickled data, which is never loaded",
                    "bm25: a file holds pickled data", []),
    "chroma-truncated": (truncate_chroma, "is damaged (", "chroma: ", []),
    "chroma-zeroed": (zero_chroma, "is damaged (", "chroma: ", []),
    "chroma-deleted": (lambda index: shutil.rmtree(gen(index) / "chroma"), "is damaged (its chroma folder is missing)",
                       "its chroma folder is missing", []),
    "copy-deleted": (lambda index: (gen(index) / "docs" / "notes.md.txt").unlink(),
                     "is damaged (the copy of notes.md is missing)", "the copy of notes.md is missing",
                     ["notes.md: its copy in the index was missing; read again from {notes}"]),
    "copy-edited": (edit_notes_copy, "does not match its documents", "the copy of notes.md was changed",
                    ["notes.md: its copy in the index was changed; read again from {notes}"]),
    "wrong-dimension": (lambda index: edit_manifest(index, lambda m: m.update(dimension=512)),
                        "Chroma holds 384-dimension vectors, its manifest says 512",
                        "Chroma holds 384-dimension vectors", []),
    "passwd-entry": (lambda index: edit_manifest(index, lambda m: m["documents"].update(
        {"../../../../../etc/passwd": dict(m["documents"]["notes.md"], path="/etc/passwd")})),
        "'../../../../../etc/passwd' is not a document name",
        "manifest: documents: '../../../../../etc/passwd' is not a document name",
        []),
    "current-missing": (lambda index: (index / "CURRENT").unlink(), "CURRENT is missing", "CURRENT is missing",
                        [LOST_CURRENT]),
    "current-empty": (lambda index: (index / "CURRENT").write_text(""), "CURRENT names ''", "CURRENT names ''",
                      [LOST_CURRENT]),
}


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "ask_says", "index_says", "notes"), DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_index_is_named_by_ask_and_index_and_rebuilt_whole(damage, ask_says, index_says, notes,
                                                                     user_index, two_documents, article):
    generation = gen(user_index).name
    damage(user_index)
    asked = one_error_line(ask(user_index, "Who keeps the keys to the tower?"), 1)
    assert ask_says in asked and asked.endswith("run 'assistant index --rebuild'"), asked
    before = snapshot(user_index)
    for paths in ([], [two_documents[1]]):  # checking it, or told of a document it holds
        line = one_error_line(run("index", "--index-dir", user_index, *paths), 1)
        assert line.startswith(f"Error: the index at {user_index} is damaged ({index_says}"), line
        assert line.endswith("run 'assistant index --rebuild'"), line
        assert snapshot(user_index) == before
    rebuilt = run("index", "--index-dir", user_index, "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    lines = rebuilt.stderr.splitlines()
    said = [n.format(notes=two_documents[1], generation=generation) for n in notes]
    assert [line for line in lines if line.startswith("Note: ")] == [f"Note: {n}" for n in said]
    assert lines[-1].startswith("Indexed article.txt, notes.md (21 chunks"), lines
    assert sorted(p.name for p in user_index.iterdir()) == ["CURRENT", live(user_index), "lock"]
    assert open_index(Settings(index_dir=user_index)).documents == {"article.txt": article, "notes.md": NOTES}
    assert not (user_index.parent / "pickle-ran").exists()


@pytest.mark.slow
def test_a_manifest_of_another_index_is_damage_and_rebuild_keeps_the_copies_it_does_not_name(
        user_index, index_dir, two_documents, article):
    shutil.copyfile(gen(index_dir) / "manifest.json", gen(user_index) / "manifest.json")
    extra = user_index.parent / "extra.txt"
    extra.write_text("Owls hunt at night. They fly without a sound.", encoding="utf-8")
    line = one_error_line(run("index", "--index-dir", user_index, extra), 1)
    assert line.startswith(f"Error: the index at {user_index} is damaged (chroma: "), line
    rebuilt = run("index", "--index-dir", user_index, "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "Note: notes.md: kept from its copy in the index, which its manifest does not name" in rebuilt.stderr
    assert open_index(Settings(index_dir=user_index)).documents == {"article.txt": article, "notes.md": NOTES}


@pytest.mark.slow
def test_rebuild_names_a_document_it_cannot_rebuild(tmp_path, two_documents, article):
    index, notes = two_documents
    index = shutil.copytree(index, tmp_path / "index")
    (gen(index) / "docs" / "notes.md.txt").unlink()
    gone = tmp_path / "moved" / "notes.md"
    manifest_notes = lambda m: m["documents"]["notes.md"].update(path=str(gone))  # noqa: E731
    edit_manifest(index, manifest_notes)  # its file moved away since it was indexed
    rebuilt = run("index", "--index-dir", index, "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    lines = rebuilt.stderr.splitlines()
    assert f"Note: cannot rebuild notes.md: its copy in the index is missing, and its file cannot be read " \
           f"(no such file: {gone})" in lines
    assert lines[-1].startswith("Indexed article.txt (20 chunks"), lines
    assert open_index(Settings(index_dir=index)).documents == {"article.txt": article}


@pytest.mark.slow
def test_index_without_paths_never_adds_the_bundled_article_to_an_index(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES, encoding="utf-8")
    index = tmp_path / "index"
    assert run("index", "--index-dir", index, notes).exit_code == 0
    checked = run("index", "--index-dir", index)
    assert checked.exit_code == 0 and checked.stderr.startswith("Indexed nothing new (1 chunks"), checked.output
    rebuilt = run("index", "--index-dir", index, "--rebuild")
    assert rebuilt.exit_code == 0 and rebuilt.stderr.splitlines()[-1].startswith("Indexed notes.md (1 chunks")
    assert open_index(Settings(index_dir=index)).documents == {"notes.md": NOTES}


# --- signals, a full disk, no temporary folder -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_index_at_once_and_leaves_nothing_half_built(signum, index_copy, long_document, article):
    before = live(index_copy)
    indexer = start_indexer(index_copy, long_document)
    building = lambda: [p for p in index_copy.glob("gen-*") if p.name != before]  # noqa: E731
    wait_for(lambda: any((p / "chroma" / "chroma.sqlite3").is_file() for p in building()), indexer)
    time.sleep(1.0)  # mid-way through embedding
    assert indexer.poll() is None
    signalled = time.monotonic()
    indexer.send_signal(signum)
    _, stderr = indexer.communicate(timeout=30)
    assert time.monotonic() - signalled < 1.0, stderr  # measured 0.06-0.11 s: it exits once its generation is gone
    assert indexer.returncode == 128 + signum
    assert stderr.splitlines()[-1] == "Interrupted." and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in index_copy.iterdir()) == ["CURRENT", before, "lock"]
    assert open_index(Settings(index_dir=index_copy)).documents == {"article.txt": article}


def _namespaces_work() -> bool:
    """A mount namespace of our own (as root, or as a user with user namespaces): a real tmpfs of a
    chosen size, and read-only bind mounts, with no root on the machine itself."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def in_namespace(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_work(), reason="no mount namespace (unshare -rm) here")
def test_a_full_disk_is_named_and_the_live_index_keeps_answering(tmp_path, index_copy, long_document):
    """The index on a tmpfs with room for it and 1.5 MB more: the new generation fills it (ENOSPC)."""
    used = sum(-(-p.stat().st_size // 4096) * 4096 for p in index_copy.rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    script = """mount -t tmpfs -o size=$1 tmpfs "$2" && cp -r "$3" "$2/index" || exit 9
        "$4" index --index-dir "$2/index" "$5" 2>"$6/index.err"; echo $? >"$6/index.rc"
        ls "$2/index" >"$6/after"; cat "$2/index/CURRENT" >"$6/current"
        "$4" ask --index-dir "$2/index" --no-gate --json "$7" >"$6/ask.out"; echo $? >"$6/ask.rc" """
    done = in_namespace(script, str(used + 1_500_000), str(disk), str(index_copy), str(SCRIPT), str(long_document),
                        str(tmp_path), CEASEFIRE)
    assert done.returncode == 0, done.stderr
    out = {name: (tmp_path / name).read_text() for name in ("index.err", "index.rc", "after", "current", "ask.rc")}
    assert out["index.rc"].strip() == "1"
    line = out["index.err"].strip().splitlines()[-1]
    assert line.startswith(f"Error: the disk holding {disk}/index is full ("), out["index.err"]
    assert line.endswith("nothing was changed: free some space and run this again") and "Traceback" not in out[
        "index.err"]
    assert out["current"].strip() == live(index_copy)
    assert out["after"].split() == ["CURRENT", live(index_copy), "lock"]
    assert out["ask.rc"].strip() == "0" and "thirty-day" in (tmp_path / "ask.out").read_text().lower()


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_work(), reason="no mount namespace (unshare -rm) here")
def test_a_read_only_index_without_a_writable_temporary_folder_is_one_line(tmp_path, index_copy):
    """/tmp, /var/tmp and the index read-only, the index's folder the working one: nowhere to write."""
    script = """for d in /tmp /var/tmp "$1"; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 9; done
        cd "$1" && exec env -u TMPDIR -u TEMP -u TMP "$2" ask --index-dir "$1" --no-gate "$3" """
    done = in_namespace(script, str(index_copy), str(SCRIPT), CEASEFIRE)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error: the index at {index_copy} is read-only and cannot be copied"), line
    assert line.endswith("set TMPDIR to a writable folder with space")


@pytest.mark.slow
def test_a_rebuild_without_current_names_every_generation_it_removes(user_index, article):
    newest = gen(user_index).name
    older = "gen-20000101000000-0000aa"  # an earlier finished generation, as a lost CURRENT might leave
    shutil.copytree(user_index / newest, user_index / older)
    (user_index / "CURRENT").unlink()
    rebuilt = run("index", "--index-dir", user_index, "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert [line for line in rebuilt.stderr.splitlines() if line.startswith("Note: ")] == [
        "Note: " + LOST_CURRENT.format(generation=newest),
        f"Note: removed {older}, a generation of this index that CURRENT did not name",
    ]
    assert sorted(p.name for p in user_index.iterdir()) == ["CURRENT", live(user_index), "lock"]
    assert open_index(Settings(index_dir=user_index)).documents == {"article.txt": article, "notes.md": NOTES}
