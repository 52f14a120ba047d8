"""Real servers on 127.0.0.1: vectors on `chroma run`, answers from llama-cpp-python's server.

Each server runs as a subprocess on a free loopback port for this module only, is waited for with
a time limit and is always stopped. Citations are still checked by our own code.
"""

import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import free_port, serve

from assistant.abstention import EVIDENCE_FEATURES
from assistant.answering import Assistant
from assistant.cli import main
from assistant.errors import AssistantError
from assistant.indexing import index_documents
from assistant.store import CHUNKS, chroma_client, index_shape, open_index
from assistant.loading import load_document
from assistant.remote import RemoteLLM
from assistant.retrieval import Retriever
from assistant.settings import DEFAULT_CORPUS, Settings, packaged_model_path

# Dev items of the article (the test split is never asserted on): q021, q011 and q031 in other words.
QUESTIONS = ["Which Chinese leader is expected to attend Putin's celebrations in Moscow this year?",
             "How long a ceasefire did Trump call for?", "Where will Putin oversee a parade on May 9th?"]
START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    chroma = str(Path(sys.executable).parent / "chroma")
    command = [chroma, "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)]
    with serve(command, f"http://127.0.0.1:{port}/api/v2/heartbeat", folder / "log", seconds=START_TIMEOUT_S):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("llm-server")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"]
    with serve(command, f"http://127.0.0.1:{port}/v1/models", folder / "log", seconds=START_TIMEOUT_S):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never replies."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def remote_index(tmp_path_factory, chroma_url) -> Path:
    index_dir = tmp_path_factory.mktemp("remote") / "index"
    index_documents([load_document(DEFAULT_CORPUS, 10)], Settings(index_dir=index_dir, chroma_url=chroma_url))
    return index_dir


def live(index_dir: Path) -> tuple[Path, dict]:
    """The live generation's folder and manifest."""
    folder = index_dir / (index_dir / "CURRENT").read_text().strip()
    return folder, json.loads((folder / "manifest.json").read_text())


@pytest.mark.server
def test_vectors_live_on_the_chroma_server(remote_index, chroma_url, article):
    folder, manifest = live(remote_index)
    assert not (folder / "chroma").exists()
    assert (folder / "bm25").is_dir()
    settings = Settings(index_dir=remote_index, chroma_url=chroma_url)
    assert open_index(settings).documents == {"article.txt": article}
    client = chroma_client(settings, folder)
    counts = manifest["documents"]["article.txt"]
    assert set(manifest["collections"]) == {CHUNKS}
    assert client.get_collection(manifest["collections"][CHUNKS]).count() == counts["chunks"]


@pytest.mark.server
def test_answers_through_the_chroma_server_match_the_embedded_index(remote_index, chroma_url, answer_of, ungated):
    remote = Assistant(Settings(index_dir=remote_index, chroma_url=chroma_url, abstain_gate=False))
    for question in QUESTIONS[:2]:
        got, local = remote.ask(question), answer_of(question)
        assert not got.abstained and got.citations
        for c in got.citations:
            assert remote.index.documents[c.doc_id][c.start : c.end] == c.text
        assert (got.answer, got.citations) == (local.answer, local.citations)


@pytest.mark.server
def test_rebuild_replaces_the_server_collections(tmp_path, chroma_url, remote_index):
    settings = Settings(index_dir=remote_index, chroma_url=chroma_url)
    folder, old = live(remote_index)
    client = chroma_client(settings, folder)
    client.get_collection(old["collections"][CHUNKS]).add(
        ids=["stray"], documents=["left over"], embeddings=[[0.0] * 384],
        metadatas=[{"source": "gone.txt", "start": 0, "end": 9}])
    report = index_documents([], settings, rebuild=True)
    assert report.indexed == ("article.txt",)
    _, new = live(remote_index)
    on_server = {c.name for c in client.list_collections()}
    assert not set(old["collections"].values()) & on_server  # the replaced generation's, stray and all
    assert client.get_collection(new["collections"][CHUNKS]).count() == report.chunks
    assert len(open_index(settings).sentences) == report.sentences


@pytest.mark.server
def test_index_made_for_a_server_is_not_read_without_it(remote_index):
    with pytest.raises(AssistantError, match="built with other settings"):
        open_index(Settings(index_dir=remote_index))


def test_unreachable_chroma_server_loses_nothing(tmp_path, index_dir):
    """A rebuild against a server that is not there fails in one line before clearing anything."""
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["index", "--rebuild", "--index-dir", str(copy), "--chroma-url", url])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot reach the Chroma server at {url}; is 'chroma run' running there?")
    assert len(open_index(Settings(index_dir=copy)).sentences) == len(
        open_index(Settings(index_dir=index_dir)).sentences)


@pytest.mark.server
def test_chroma_server_gone_after_the_index_was_opened(tmp_path, index_dir, weightless):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(index_dir=tmp_path / "index", chroma_url=url)
    shutil.copytree(index_dir, settings.index_dir, ignore=shutil.ignore_patterns("chroma"))
    folder, manifest = live(settings.index_dir)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "shape": index_shape(settings).model_dump()}))
    chroma = str(Path(sys.executable).parent / "chroma")
    command = [chroma, "run", "--path", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port)]
    with serve(command, f"{url}/api/v2/heartbeat", tmp_path / "log", seconds=START_TIMEOUT_S):
        client = chroma_client(settings, folder)
        local = chroma_client(Settings(index_dir=index_dir), index_dir / folder.name)
        for name in manifest["collections"].values():  # the session index's rows: an index that checks out
            rows = local.get_collection(name).get(include=["embeddings", "metadatas", "documents"])
            client.create_collection(name).add(ids=rows["ids"], embeddings=rows["embeddings"],
                                               metadatas=rows["metadatas"], documents=rows["documents"])
        retriever = Retriever(open_index(settings), weightless.embedder, settings)
    with pytest.raises(AssistantError, match=f"^the Chroma server at {url}/ failed"):
        retriever.retrieve(QUESTIONS[0], weightless.embedder.embed_query(QUESTIONS[0]))


@pytest.mark.server
def test_a_server_that_is_not_chroma(tmp_path, llm_url):
    not_chroma = llm_url.removesuffix("/v1")
    with pytest.raises(AssistantError, match=f"{not_chroma} is not a Chroma server"):
        chroma_client(Settings(chroma_url=not_chroma), tmp_path)


def test_a_silent_chroma_server_times_out(tmp_path, silent_port):
    began = time.monotonic()
    with pytest.raises(AssistantError, match="did not answer in 1 s"):
        chroma_client(Settings(chroma_url=f"http://127.0.0.1:{silent_port}", server_timeout=1), tmp_path)
    assert time.monotonic() - began < 5


@pytest.mark.server
def test_answers_through_the_llm_server_match_the_local_model(index_dir, llm_url, weightless):
    remote = Assistant(Settings(index_dir=index_dir, llm_url=llm_url, abstain_gate=False))
    assert remote.settings.decoding == "free" and remote.fitted is None
    local = Assistant(Settings(index_dir=index_dir, decoding="free", abstain_gate=False), share=weightless)
    for question in QUESTIONS:
        got, expected = remote.ask(question), local.ask(question)
        assert not got.abstained and got.citations
        for c in got.citations:
            assert remote.index.documents[c.doc_id][c.start : c.end] == c.text
        assert got.answer == expected.answer
        # Free decoding is gated on the evidence alone: the same signals, whichever model answered.
        assert list(got.signals) == list(EVIDENCE_FEATURES)
        assert got.signals == pytest.approx(expected.signals)
    assert remote.llm.evaluated > 0


@pytest.mark.server
def test_cli_asks_through_both_servers(remote_index, chroma_url, llm_url, article):
    """With the gate the server's answer is gated by the fitted evidence gate (no model file to
    check: only its features are); without it, it is the server's answer, cited."""
    args = ["ask", "--json", "--index-dir", str(remote_index), "--chroma-url", chroma_url, "--llm-url", llm_url]
    for gate in ("--gate", "--no-gate"):
        result = CliRunner().invoke(main, [*args, gate, QUESTIONS[0]])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        if gate == "--no-gate":
            assert not answer["abstained"]
        if not answer["abstained"]:
            assert "Xi" in answer["answer"] and answer["citations"]
            assert all(article[c["start"] : c["end"]] == c["text"] for c in answer["citations"])


@pytest.mark.server
def test_span_decoding_with_a_server_is_a_usage_error(llm_url):
    result = CliRunner().invoke(main, ["settings", "--llm-url", llm_url, "--decoding", "span"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: invalid settings: span decoding needs the local model; with llm_url use --decoding free")


@pytest.mark.parametrize("path, message", [
    ("", "answered HTTP 404; is it an OpenAI-compatible URL ending in /v1?"),
    ("/v1", None),
])
@pytest.mark.server
def test_llm_server_url_errors(llm_url, path, message):
    url = llm_url.removesuffix("/v1") + path
    if message is None:
        assert RemoteLLM(url, None, "none", 10).name == str(packaged_model_path())
    else:
        with pytest.raises(AssistantError, match=f"^the LLM server at {url} {message}"):
            RemoteLLM(url, None, "none", 10)


def test_unreachable_llm_server(index_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = CliRunner().invoke(main, ["ask", "--index-dir", str(index_dir), "--llm-url", url, "Who?"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: cannot reach the LLM server at {url}; is it running?"


def test_a_silent_llm_server_times_out(silent_port):
    began = time.monotonic()
    with pytest.raises(AssistantError, match="did not answer in time"):
        RemoteLLM(f"http://127.0.0.1:{silent_port}/v1", None, "none", 1)
    assert time.monotonic() - began < 5
