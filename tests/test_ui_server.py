"""`assistant ui` as a hostile or careless API client meets it: a real server in a subprocess on a
loopback port, over its own copy of the session index, with a password (--auth-file), its log read
back. Talks to 127.0.0.1 only."""

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import SCRIPT, free_port, serve

pytestmark = pytest.mark.server


PASSWORD = "correct-horse-7"


@dataclass(frozen=True)
class Server:
    url: str
    log: Path
    client: httpx.Client  # logged in

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size


@pytest.fixture(scope="module")
def server(tmp_path_factory, index_dir) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("ui-server")
    shutil.copytree(index_dir, folder / "index")
    port = free_port()
    env = {**os.environ, "ASSISTANT_INDEX_DIR": str(folder / "index"), "ASSISTANT_PORT": str(port)}
    (folder / "auth").write_text(f"tester:{PASSWORD}\n", encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    with (serve([str(SCRIPT), "ui", "--auth-file", str(folder / "auth")], url + "/", folder / "server.log", env),
          httpx.Client(base_url=url, timeout=300) as client):
        assert client.post("/login", data={"username": "tester", "password": PASSWORD}).status_code == 200
        yield Server(url, folder / "server.log", client)


def call(server: Server, event: str, data: list) -> tuple[str, object]:
    """One API call of `event`, to its end: the last event's kind ("complete" or "error") and data."""
    started = server.client.post(f"/gradio_api/call/{event}", json={"data": data})
    started.raise_for_status()
    reply = server.client.get(f"/gradio_api/call/{event}/{started.json()['event_id']}").text
    kinds = [line.removeprefix("event: ") for line in reply.splitlines() if line.startswith("event: ")]
    datas = [line.removeprefix("data: ") for line in reply.splitlines() if line.startswith("data: ")]
    return kinds[-1], json.loads(datas[-1])


def refusal(server: Server, event: str, data: list) -> str:
    """The error message a call of `event` ends with (it fails the test if the call succeeds)."""
    kind, reply = call(server, event, data)
    assert kind == "error" and isinstance(reply, dict), reply
    return reply["error"]


def uploaded(server: Server, name: str, data: bytes) -> dict:
    """`data` sent as a file through the real upload route, as the browser does; its file payload."""
    reply = server.client.post("/gradio_api/upload", files={"files": (name, data)})
    reply.raise_for_status()
    path = reply.json()[0]
    return {"path": path, "orig_name": name, "url": f"{server.url}/gradio_api/file={path}",
            "meta": {"_type": "gradio.FileData"}}


class Listener:
    """A socket on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    made = Listener()
    yield made
    made.close()


def test_a_file_payload_naming_a_url_is_refused_before_any_connection(server, listener):
    address = f"http://127.0.0.1:{listener.port}/x.txt"
    for payload in ({"path": address, "meta": {"_type": "gradio.FileData"}},
                    {"path": address, "url": address, "meta": {"_type": "gradio.FileData"}}):
        assert "URLs are never fetched" in refusal(server, "upload", [payload])
        history = [{"role": "user", "content": [{"file": payload}]}]
        assert "URLs are never fetched" in refusal(server, "ask", ["Who is Peskov?", history, "All documents"])
    # A file of this machine outside the upload folder, or a real upload whose address is elsewhere.
    outside = {"path": str(server.log), "meta": {"_type": "gradio.FileData"}}
    assert "only files uploaded to this server" in refusal(server, "upload", [outside])
    elsewhere = {**uploaded(server, "x.txt", b"The keeper is Ada.\n"), "url": address}
    assert "URLs are never fetched" in refusal(server, "upload", [elsewhere])
    assert listener.connections == []


def test_each_failure_is_one_log_line_and_no_traceback(server):
    before = server.log_size()
    bad = uploaded(server, "latin1.txt", "café crème ".encode("latin-1") * 20)
    assert "latin1.txt is not UTF-8 text" in refusal(server, "upload", [bad])
    assert "empty" in refusal(server, "ask", ["   ", [], "All documents"])
    assert "didn't receive enough input values" in refusal(server, "upload", [])
    assert server.client.post("/gradio_api/run/nothing", json={"data": []}).status_code == 404
    log = server.log_since(before)
    assert "Traceback" not in log
    lines = log.strip().splitlines()
    assert len(lines) == 4, log
    assert lines[0] == "assistant ui: upload failed: latin1.txt is not UTF-8 text (bad byte at offset 3)"
    assert lines[1].startswith("assistant ui: ask failed: ") and "empty" in lines[1]
    assert lines[2].startswith("assistant ui: upload failed: ValueError: ")
    assert lines[3].startswith("assistant ui: /gradio_api/run/nothing failed: ")


def test_a_document_uploaded_through_the_api_is_asked_for_by_name(server):
    """Not only from the menu of the page that uploaded it: the name is checked against the index."""
    doc = uploaded(server, "harbour.txt", b"The old harbour lighthouse was built in 1871 by the engineer Ada Pike.\n")
    kind, (menu, note, _) = call(server, "upload", [doc])
    assert kind == "complete" and menu["value"] == "harbour.txt" and "Indexed" in note
    kind, (history, *_) = call(server, "ask", ["Who built the lighthouse?", [], "harbour.txt"])
    assert kind == "complete" and "Ada Pike" in history[-1]["content"][0]["text"]
    assert "no document 'gone.txt' in the index" in refusal(server, "ask", ["Who built it?", [], "gone.txt"])


def test_without_the_password_nothing_is_answered_or_uploaded(server):
    assert httpx.post(f"{server.url}/login", data={"username": "tester", "password": "wrong"}).status_code == 400
    ask = httpx.post(f"{server.url}/gradio_api/call/ask", json={"data": ["Who is Peskov?", [], "All documents"]})
    upload = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("x.txt", b"The keeper is Ada.\n")})
    assert ask.status_code == upload.status_code == 401
    assert PASSWORD not in server.log.read_text(errors="replace")
