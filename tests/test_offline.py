"""`assistant index`, `assistant ask` and `assistant ui` work with the network gone and never try to use it.

Both run as the installed script, in a network namespace of their own when `unshare -n` works here
(CI runs as root), and always under tests/offline_guard/sitecustomize.py, an audit hook that logs
and refuses any connection or name lookup for a host other than this machine. The hook sees what
Python code attempts; the namespace also stops native code (Chroma's Rust core, llama.cpp).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from test_cli import CEASEFIRE, SCRIPT

GUARD = Path(__file__).parent / "offline_guard"


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


ISOLATE = ["unshare", "-n"] if _unshare_works() else []


def guarded(command: list[str], log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env["OFFLINE_GUARD_LOG"] = str(log)
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([*ISOLATE, *command], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def attempts(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_guard_catches_an_outbound_connection(tmp_path):
    """The check below can fail: a connection attempt is logged even where it could not succeed."""
    log = tmp_path / "net.log"
    code = "import socket\ntry: socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept OSError: pass"
    done = guarded([sys.executable, "-c", code], log)
    assert done.returncode == 0, done.stderr
    assert len(attempts(log)) == 1 and "192.0.2.1" in attempts(log)[0]


@pytest.mark.slow
def test_index_and_ask_offline(tmp_path, article):
    log, index = tmp_path / "net.log", tmp_path / "index"
    built = guarded([str(SCRIPT), "index", "--index-dir", str(index)], log)
    assert built.returncode == 0, built.stderr
    asked = guarded([str(SCRIPT), "ask", "--json", "--index-dir", str(index), CEASEFIRE], log)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert "thirty-day" in answer["answer"].lower()
    assert all(article[c["start"] : c["end"]] == c["text"] for c in answer["citations"])
    armed = Path(f"{log}.armed").read_text().splitlines()
    assert [line.split(" ", 2)[2].split()[0] for line in armed] == ["index", "ask"]  # the guard ran in both
    assert attempts(log) == []


@pytest.mark.server
@pytest.mark.slow
def test_ui_offline(tmp_path, index_dir):
    """The UI starts, serves its page and answers with only loopback, which a fresh namespace has
    down until it is brought up."""
    log = tmp_path / "net.log"
    driver = [sys.executable, str(Path(__file__).with_name("offline_ui_driver.py")), str(SCRIPT), str(index_dir),
              str(free_port()), CEASEFIRE]
    command = ["sh", "-c", 'ip link set lo up && exec "$@"', "sh", *driver] if ISOLATE else driver
    done = guarded(command, log)
    assert done.returncode == 0, done.stderr
    assert "cite-chip" in done.stdout and "thirty-day" in done.stdout.lower()
    armed = Path(f"{log}.armed").read_text()
    assert " ui --index-dir " in armed  # the guard ran in the server too
    assert attempts(log) == []


@pytest.mark.skipif(not ISOLATE, reason="unshare -n is not permitted here")
def test_the_namespace_has_no_network():
    done = subprocess.run([*ISOLATE, sys.executable, "-c",
                           "import socket; socket.create_connection(('192.0.2.1', 80), timeout=2)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unreachable" in done.stderr.lower()
