"""The UI's handlers and HTML, over the real pipeline; the browser tests are in test_ui_browser.py."""

import html
import re
import shutil
import socket
from pathlib import Path

import gradio as gr
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from assistant import ui
from assistant.answering import Answer, Assistant, Timing
from assistant.cli import main
from assistant.citations import Citation
from assistant.errors import AssistantError, UsageError
from assistant.settings import Settings
from assistant.spans import Span
from assistant.tools.benchmark import held_files

CEASEFIRE = "How long a ceasefire did Trump call for?"  # dev: q011, in other words
PARADE = "Where will Putin oversee a parade on May 9th?"  # dev: q001 and q031
ANSWER_SPAN = re.compile(r'<mark class="answer-span">([^<]*)</mark>')


@pytest.fixture(scope="module")
def chat(gated) -> ui.Chat:
    return ui.Chat(gated.settings, gated)


def run(chat: ui.Chat, question: str, scope: str = ui.ALL_DOCUMENTS, turns=None) -> list[tuple]:
    return list(chat.respond(question, [], scope, turns or []))


def piece(text: str, start: int, end: int, doc: str = "x.txt") -> Span:
    return Span(doc, start, end, text[start:end])


def marks(source: str) -> list[tuple[str, str]]:
    """(id, escaped text) of each highlighted span, the answer's own mark inside one taken away."""
    return re.findall(r'<mark id="([^"]+)" class="[^"]+">([^<]*)</mark>', ANSWER_SPAN.sub(r"\1", source))


def test_answer_streams_then_fills_the_panes_with_exact_spans(chat, article):
    steps = run(chat, CEASEFIRE)
    assert len(steps) >= 3  # placeholder, streamed text, final
    assert steps[0][0][-1]["content"] == "…"
    history, source, citations, details, turns, box = steps[-1]
    bubble = history[-1]["content"]
    chips = re.findall(r'class="cite-chip" href="#([^"]+)"', bubble)
    assert chips and "thirty-day" in bubble.lower()
    highlighted = dict(marks(source))
    for chip_id in chips:
        start, end = map(int, chip_id.rsplit("-", 2)[1:])
        assert highlighted[chip_id] == html.escape(article[start:end])
        assert f"line {article.count(chr(10), 0, start) + 1}, chars {start}-{end}" in citations
    assert "<blockquote>" in citations
    assert "<table" in details and "retrieval" in details
    assert len(turns) == 1 and box == ""
    # The words the answer copies are marked inside their citation, in the source and the quote.
    copied = turns[0].answer_span
    assert copied is not None and html.escape(article[copied.start : copied.end]).lower() in bubble.lower()
    assert ANSWER_SPAN.findall(source) == [html.escape(article[copied.start : copied.end])]
    assert ANSWER_SPAN.findall(citations) == [html.escape(article[copied.start : copied.end])]


def test_abstention_is_a_calm_state_without_chips(chat):
    history, source, citations, _, turns, _ = run(chat, "What is the capital of Australia?")[-1]
    bubble = history[-1]["content"]
    assert 'class="abstain"' in bubble and "The document does not say." in bubble
    assert "cite-chip" not in bubble and "failed" not in bubble
    assert turns[-1].abstained and "No citations" in citations


@pytest.mark.slow
def test_earlier_answers_stay_highlighted_and_the_latest_stands_out(chat):
    first = run(chat, CEASEFIRE)[-1]
    second = run(chat, PARADE, turns=first[4])[-1]
    source, (one, two) = second[1], second[4]
    assert one.spans and two.spans and not set(one.spans) & set(two.spans)
    assert len(marks(source)) == len(one.spans) + len(two.spans)
    assert source.count('class="hl current"') == len(two.spans)
    assert len(ANSWER_SPAN.findall(source)) == 1  # only the latest answer's copied words


def test_bad_question_is_a_gr_error_not_a_crash(chat):
    with pytest.raises(gr.Error, match="empty"):
        run(chat, "   ")
    with pytest.raises(gr.Error, match="control characters"):
        run(chat, "who\x07 is it")


def test_html_in_documents_and_answers_is_escaped():
    text = "<script>alert(1)</script> The keeper is <b>Ada</b>."
    source = ui.source_html("x.txt", {"x.txt": text}, [ui.Turn((piece(text, 26, len(text)),), False)])
    assert "<script>" not in source and "&lt;script&gt;" in source
    assert "<b>" not in source


def test_the_copied_words_are_marked_inside_their_citation():
    text = "The keeper is <Ada> Pike & co. She lit the lamp."
    cited = piece(text, 0, 30)
    copied = piece(text, 14, 24)
    source = ui.source_html("x.txt", {"x.txt": text}, [ui.Turn((cited,), False, copied)])
    assert marks(source) == [(ui.span_id(cited), html.escape(text[0:30]))]
    assert ANSWER_SPAN.findall(source) == ["&lt;Ada&gt; Pike"]
    answer = Answer("Who?", "<Ada> Pike [1]", False, (Citation("x.txt", 0, 30, text[0:30], 1),), Timing(0, 0, 0),
                    answer_span=copied)
    quoted = ui.citations_html(answer, {"x.txt": text})
    assert ANSWER_SPAN.findall(quoted) == ["&lt;Ada&gt; Pike"] and "&amp; co." in quoted
    # Not the latest turn, or a span outside the citation: no mark.
    earlier = [ui.Turn((cited,), False, copied), ui.Turn((piece(text, 31, 48),), False)]
    assert ANSWER_SPAN.findall(ui.source_html("x.txt", {"x.txt": text}, earlier)) == []
    outside = ui.source_html("x.txt", {"x.txt": text}, [ui.Turn((cited,), False, piece(text, 35, 38))])
    assert ANSWER_SPAN.findall(outside) == []


def test_long_documents_show_excerpts_around_cited_spans():
    text = "filler words here. " * 20_000 + "The answer sentence." + " more filler." * 20_000
    start = text.index("The answer")
    span = piece(text, start, start + len("The answer sentence."), "big.txt")
    source = ui.source_html("big.txt", {"big.txt": text}, [ui.Turn((span,), False)])
    assert len(source) < 5 * ui.EXCERPT_CHARS and marks(source) == [(ui.span_id(span), "The answer sentence.")]


def test_upload_indexes_the_file_and_makes_it_active(tmp_path, index_dir, ungated):
    copied = tmp_path / "index"
    shutil.copytree(index_dir, copied)
    settings = Settings(index_dir=copied)
    chat = ui.Chat(settings, Assistant(settings, share=ungated))
    chat.assistant.reload()  # the shared Assistant's index is the session's; point it at the copy
    doc = tmp_path / "harbour.txt"
    doc.write_text("The old harbour lighthouse was built in 1871 by the engineer Ada Pike. "
                   "It was painted red in 1902.\n", encoding="utf-8")
    dropdown, note, source = chat.upload(str(doc), progress=lambda *a, **k: None)
    assert dropdown["value"] == "harbour.txt" and "harbour.txt" in dropdown["choices"]
    assert "Indexed" in note and "Ada Pike" in source
    menu, _ = chat.menu()  # what a page loaded later, or another tab, lists
    assert menu["choices"] == [ui.ALL_DOCUMENTS, "article.txt", "harbour.txt"] and menu["value"] == ui.ALL_DOCUMENTS
    history, source, *_ = run(chat, "Who built the lighthouse?", scope="harbour.txt")[-1]
    assert "Ada Pike" in history[-1]["content"] and "harbour_txt" in history[-1]["content"]
    _, again, _ = chat.upload(str(doc), progress=lambda *a, **k: None)
    assert "already indexed" in again
    # Sent again, edited, from another temp folder (as each upload is): it replaces the first.
    (tmp_path / "later").mkdir()
    edited = tmp_path / "later" / "harbour.txt"
    edited.write_text(doc.read_text(encoding="utf-8") + "It was sold in 1990.\n", encoding="utf-8")
    dropdown, note, _ = chat.upload(str(edited), progress=lambda *a, **k: None)
    assert dropdown["value"] == "harbour.txt" and "Indexed" in note
    assert chat.assistant.index.documents["harbour.txt"].endswith("sold in 1990.\n")


@pytest.mark.parametrize("name, data, message", [
    ("latin1.txt", "café".encode("latin-1") * 10, r"'latin1\.txt is not UTF-8"),
    ("empty.txt", b"", "no text"),
    ("notes.docx", b"PK\x03\x04", "unsupported file type"),
])
def test_bad_upload_is_a_gr_error_and_the_index_is_untouched(tmp_path, chat, name, data, message):
    bad = tmp_path / name
    bad.write_bytes(data)
    before = dict(chat.assistant.index.documents)
    with pytest.raises(gr.Error, match=message):
        chat.upload(str(bad), progress=lambda *a, **k: None)
    assert chat.assistant.index.documents == before


def test_upload_over_the_size_cap_is_refused(tmp_path, index_dir, ungated):
    settings = Settings(index_dir=index_dir, max_file_mb=0.001)
    chat = ui.Chat(settings, ungated)
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")
    with pytest.raises(gr.Error, match="over the 0.001 MB limit"):
        chat.upload(str(big), progress=lambda *a, **k: None)


def test_unknown_document_scope_is_a_gr_error(chat):
    with pytest.raises(gr.Error, match="no document 'gone.txt'"):
        run(chat, CEASEFIRE, scope="gone.txt")


@pytest.mark.slow
def test_uploads_do_not_pile_up_open_files(tmp_path, index_dir, ungated):
    """Each upload replaces the index generation; the replaced one's Chroma files must be let go."""
    copied = tmp_path / "index"
    shutil.copytree(index_dir, copied)
    settings = Settings(index_dir=copied)
    chat = ui.Chat(settings, Assistant(settings, share=ungated))
    held = []
    for i in range(12):
        doc = tmp_path / str(i) / f"note-{i}.txt"
        doc.parent.mkdir()
        doc.write_text(f"Note {i}: the keeper of lighthouse number {i} is called Ada {i}.\n", encoding="utf-8")
        _, note, _ = chat.upload(str(doc), progress=lambda *a, **k: None)
        assert "Indexed" in note
        held.append(held_files())
    (fds, deleted), (fds_end, deleted_end) = held[2], held[-1]
    assert fds_end <= fds + 4, held
    assert deleted_end <= deleted + 1.0, held
    assert len(chat.assistant.index.documents) == 13


def test_the_question_is_escaped_in_the_chat(chat):
    history = run(chat, "<img src=x onerror=alert(1)> Who is <b>Peskov</b>?")[0][0]
    assert history[-2]["content"] == "&lt;img src=x onerror=alert(1)&gt; Who is &lt;b&gt;Peskov&lt;/b&gt;?"


def test_a_document_name_not_in_the_index_shows_a_note_not_a_crash(chat):
    assert "No document 'gone.txt' in the index." in chat.switch("gone.txt", [])


def test_only_loopback_hosts_go_without_a_warning():
    assert ui.exposure_warning("127.0.0.1", False) is None and ui.exposure_warning("localhost", False) is None
    open_to_all = ui.exposure_warning("0.0.0.0", False)
    assert open_to_all.startswith("Warning: ") and "--auth-file" in open_to_all and "\n" not in open_to_all
    assert "TLS" in ui.exposure_warning("192.168.1.5", True)


def test_credentials_come_from_auth_or_one_line_of_a_file(tmp_path):
    assert ui.credentials(None, None) is None
    assert ui.credentials(SecretStr("ada:s3cret:x"), None) == ("ada", "s3cret:x")
    good = tmp_path / "auth"
    good.write_text("\n ada:s3cret \n", encoding="utf-8")
    assert ui.credentials(None, good) == ("ada", "s3cret")
    for bad in ("s3cret", "ada:", ":s3cret"):
        with pytest.raises(UsageError, match="must be USER:PASS") as refused:
            ui.credentials(SecretStr(bad), None)
        assert "s3cret" not in str(refused.value)
    two = tmp_path / "two"
    two.write_text("ada:s3cret\nbob:other\n", encoding="utf-8")
    with pytest.raises(UsageError, match="one USER:PASS line, not 2") as refused:
        ui.credentials(None, two)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(UsageError, match="not both"):
        ui.credentials(SecretStr("ada:s3cret"), good)
    with pytest.raises(AssistantError, match="no such file: the --auth-file"):
        ui.credentials(None, tmp_path / "missing")
    with pytest.raises(AssistantError, match="the --auth-file /dev/zero is not a regular file"):
        ui.credentials(None, Path("/dev/zero"))
    with pytest.raises(AssistantError, match="the examples file /dev/zero is not a regular file"):
        ui.read_examples(Path("/dev/zero"))


@pytest.mark.parametrize("args, message", [
    (["--host", "::"], "Error: --host :: is an IPv6 address; the UI listens on IPv4 only"),
    (["--host", "é" * 70], "Error: --host " + "é" * 70 + " is not an IPv4 address or host name"),
    (["--auth", "ada"], "Error: --auth (or ASSISTANT_AUTH) must be USER:PASS"),
])
def test_ui_refuses_a_bad_host_and_a_bad_auth_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["ui", "--index-dir", str(tmp_path / "none"), "--port", "0", *args])
    assert result.exit_code == 2 and result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)


def test_ui_on_every_interface_warns_in_one_line_before_loading(tmp_path):
    """Refused for want of an index right after the warning: nothing listens."""
    result = CliRunner().invoke(main, ["ui", "--host", "0.0.0.0", "--port", "0", "--index-dir", str(tmp_path / "none")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 2, result.stderr
    assert lines[0].startswith("Warning: serving on 0.0.0.0 with no password")
    assert lines[1].startswith("Error: no index")


def test_port_in_use_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssistantError, match=f"cannot listen on 127.0.0.1:{port}"):
            ui.check_port("127.0.0.1", port)


def test_ui_defaults_to_this_machine_only():
    assert Settings().host == "127.0.0.1"

