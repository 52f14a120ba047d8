"""The Gradio chat: a thin shell over answering.Assistant and indexing.index_documents.

Renders answers, citations, the source document and the retrieved passages as HTML, and turns an
AssistantError into a gr.Error. Does not retrieve, answer or verify anything itself. One Assistant
(one loaded LLM) per process; every pipeline call goes through one queue slot, so concurrent users
wait their turn instead of sharing the model mid-answer. Every event takes files only from this
server's upload folder, and each failure is one line in the server's log.
"""

import html
import ipaddress
import queue
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import gradio as gr
from fastapi import Request
from fastapi.responses import JSONResponse
from gradio.route_utils import FnIndexInferError
from gradio.utils import get_upload_folder
from pydantic import SecretStr

from assistant.answering import Answer, Assistant
from assistant.citations import MARKER
from assistant.errors import AssistantError, UsageError
from assistant.indexing import index_documents
from assistant.loading import check_question, load_document, read_bounded, shown
from assistant.settings import Settings
from assistant.spans import Span

ALL_DOCUMENTS = "All documents"
MAX_SMALL_FILE_BYTES = 1_000_000  # an examples or --auth-file of a few lines; a device would never end
PIPELINE = "pipeline"  # the concurrency group of every event that uses the models
FULL_VIEW_CHARS = 200_000  # longer documents show excerpts around the cited spans instead
EXCERPT_CHARS = 600
ASSETS = Path(__file__).with_name("ui_assets")


@dataclass(frozen=True)
class Turn:
    """What the panes beside the chat need from one answer."""

    spans: tuple[Span, ...]
    abstained: bool
    answer_span: Span | None = None  # the exact text the answer copies, inside one of `spans`


def chip(n: int, span: Span) -> str:
    """A clickable [n]; the page script scrolls the source pane to the span it names."""
    return (f'<a class="cite-chip" href="#{span_id(span)}" title="{html.escape(span.doc_id)}, '
            f'chars {span.start}-{span.end}">{n}</a>')


def span_id(span: Span) -> str:
    return f"span-{re.sub(r'[^A-Za-z0-9]', '_', span.doc_id)}-{span.start}-{span.end}"


def answer_html(answer: Answer) -> str:
    """The chat bubble: the answer with chips for its markers, or the calm abstention state."""
    if answer.abstained:
        return (f'<div class="abstain"><strong>{html.escape(answer.answer)}</strong>'
                '<br><span class="muted">No passage answers this; see "Retrieval details" for the closest ones.'
                '</span></div>')
    spans = {c.n: c for c in answer.citations}
    pieces, last = [], 0
    for m in MARKER.finditer(answer.answer):
        pieces.append(html.escape(answer.answer[last:m.start()]))
        n = int(m.group(1))
        pieces.append(" " + chip(n, spans[n]) if n in spans else "")
        last = m.end()
    pieces.append(html.escape(answer.answer[last:]))
    return f'<div class="answer">{"".join(pieces)}</div>'


def citations_html(answer: Answer | None, documents: dict[str, str]) -> str:
    if answer is None:
        return '<p class="muted">Citations of the latest answer appear here.</p>'
    if answer.abstained:
        return '<p class="muted">No citations: the document does not say.</p>'
    items = []
    for c in answer.citations:
        line = documents[c.doc_id].count("\n", 0, c.start) + 1
        quote = _with_answer(c, answer.answer_span)
        items.append(f'<li>{chip(c.n, c)} <span class="where">{html.escape(c.doc_id)}, '
                     f'line {line}, chars {c.start}-{c.end}</span><blockquote>{quote}</blockquote></li>')
    return f'<ol class="citations">{"".join(items)}</ol>'


def source_html(doc: str | None, documents: dict[str, str], turns: list[Turn]) -> str:
    """The document with every span cited in this conversation marked; the latest answer's spans
    stand out. Spans are whole sentences, so two are either equal or apart."""
    if doc is None:
        return '<p class="muted">Pick a document to see its text here.</p>'
    text = documents[doc]
    current = {s for s in turns[-1].spans if s.doc_id == doc} if turns else set()
    copied = turns[-1].answer_span if turns else None
    spans = sorted({s for t in turns for s in t.spans if s.doc_id == doc}, key=lambda s: s.start)
    if len(text) <= FULL_VIEW_CHARS:
        body = _marked(text, 0, len(text), spans, current, copied)
    elif spans:
        body = '<span class="gap">…</span>'.join(
            _marked(text, max(0, s.start - EXCERPT_CHARS), min(len(text), s.end + EXCERPT_CHARS), [s], current, copied)
            for s in spans)
    else:
        body = html.escape(text[:FULL_VIEW_CHARS]) + '<span class="gap">… (the rest is shown around cited spans)</span>'
    return f'<div class="doc-title">{html.escape(doc)}</div><div class="doc-text">{body}</div>'


def _marked(text: str, lo: int, hi: int, spans: list[Span], current: set[Span], copied: Span | None) -> str:
    pieces, at = [], lo
    for s in spans:
        if s.start < at or s.end > hi:
            continue
        pieces.append(html.escape(text[at:s.start]))
        kind = "hl current" if s in current else "hl"
        inner = _with_answer(s, copied if s in current else None)
        pieces.append(f'<mark id="{span_id(s)}" class="{kind}">{inner}</mark>')
        at = s.end
    pieces.append(html.escape(text[at:hi]))
    return "".join(pieces)


def _plain(span: Span) -> Span:
    """Only where the span is: a citation's number differs from answer to answer."""
    return Span(span.doc_id, span.start, span.end, span.text)


def _with_answer(cited: Span, copied: Span | None) -> str:
    """The cited text escaped, the part the answer copies marked."""
    text = cited.text
    if copied is None or not copied.inside(cited):
        return html.escape(text)
    a, b = copied.start - cited.start, copied.end - cited.start
    return (f'{html.escape(text[:a])}<mark class="answer-span">{html.escape(text[a:b])}</mark>'
            f'{html.escape(text[b:])}')


def details_html(answer: Answer | None) -> str:
    """The retrieved passages and ranked sentences, with their scores."""
    if answer is None:
        return '<p class="muted">Ask a question to see what was retrieved.</p>'
    rows = "".join(f"<tr><td>{i}</td><td>{p.score:.4f}</td><td>{html.escape(p.doc_id)} {p.start}-{p.end}</td>"
                   f"<td>{html.escape(_clip(p.text))}</td></tr>" for i, p in enumerate(answer.passages, start=1))
    sentences = "".join(f"<tr><td>{i}</td><td>{e.score:.3f}</td><td>{e.cosine:.3f}</td><td>{e.coverage:.2f}</td>"
                        f"<td>{html.escape(e.text)}</td></tr>" for i, e in enumerate(answer.evidence, start=1))
    gate = "" if answer.p_answerable is None else f" · P(answerable) {answer.p_answerable:.2f}"
    t = answer.timing
    return (f'<p class="muted">retrieval {t.retrieve_s * 1000:.0f} ms · model {t.generate_s * 1000:.0f} ms{gate}</p>'
            '<h4>Passages (fused rank score)</h4><table class="details"><tr><th>#</th><th>score</th><th>where</th>'
            f'<th>text</th></tr>{rows}</table><h4>Evidence sentences</h4><table class="details"><tr><th>#</th>'
            f'<th>score</th><th>cosine</th><th>coverage</th><th>sentence</th></tr>{sentences}</table>')


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def read_examples(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        text = read_bounded(path, MAX_SMALL_FILE_BYTES, "the examples file ").decode("utf-8")
    except UnicodeDecodeError:
        raise AssistantError(f"the examples file {shown(path)} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class Chat:
    """The event handlers; holds the one Assistant of the process."""

    def __init__(self, settings: Settings, assistant: Assistant) -> None:
        self.settings = settings
        self.assistant = assistant

    def choices(self) -> list[str]:
        return [ALL_DOCUMENTS, *sorted(self.assistant.index.documents)]

    def default_doc(self) -> str:
        docs = sorted(self.assistant.index.documents)
        return docs[0] if len(docs) == 1 else ALL_DOCUMENTS

    def menu(self) -> tuple:
        """On each page load: the documents the index holds now, not those it held at start-up."""
        doc = self.default_doc()
        start = None if doc == ALL_DOCUMENTS else doc
        return gr.update(choices=self.choices(), value=doc), source_html(start, self.assistant.index.documents, [])

    def respond(self, question: str, history: list, scope: str, turns: list[Turn]) -> Iterator[tuple]:
        """Stream the answer into the chat, then fill the panes beside it."""
        try:
            question = check_question(question or "", self.settings)  # None from an API call: empty
        except AssistantError as e:
            raise gr.Error(str(e), print_exception=False) from None
        doc = None if scope in (None, ALL_DOCUMENTS) else scope
        history = [*history, {"role": "user", "content": html.escape(question)},
                   {"role": "assistant", "content": "…"}]
        yield list(history), gr.skip(), gr.skip(), gr.skip(), turns, ""
        pieces: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=self._ask, args=(question, doc, pieces, outcome), daemon=True)
        worker.start()
        streamed = ""
        while (piece := pieces.get()) is not None:
            streamed += piece
            history[-1] = {"role": "assistant", "content": html.escape(streamed)}
            yield list(history), gr.skip(), gr.skip(), gr.skip(), turns, ""
        worker.join()
        if "error" in outcome:
            history[-1] = {"role": "assistant", "content": f'<div class="failed">{html.escape(outcome["error"])}</div>'}
            yield list(history), gr.skip(), gr.skip(), gr.skip(), turns, ""
            raise gr.Error(outcome["error"], print_exception=False)
        answer: Answer = outcome["answer"]
        turn = Turn(tuple(_plain(c) for c in answer.citations), answer.abstained, answer.answer_span)
        turns = [*turns, turn]
        shown = doc or (answer.citations[0].doc_id if answer.citations else None)
        history[-1] = {"role": "assistant", "content": answer_html(answer)}
        docs = self.assistant.index.documents
        yield (list(history), source_html(shown, docs, turns), citations_html(answer, docs), details_html(answer),
               turns, "")

    def _ask(self, question: str, doc: str | None, pieces: queue.Queue, outcome: dict) -> None:
        try:
            outcome["answer"] = self.assistant.ask(question, on_text=pieces.put, doc_id=doc)
        except AssistantError as e:
            outcome["error"] = str(e)
        finally:
            pieces.put(None)

    def upload(self, file: str | None, progress: Callable[..., Any] = gr.Progress()) -> tuple:
        """Index an uploaded file and make it the active document."""
        if not file:
            return gr.skip(), gr.skip(), gr.skip()
        path = Path(file)
        try:
            # Each upload comes from a temp folder of its own: an upload is known by its name, so
            # sending report.txt again replaces the report.txt uploaded before.
            doc = replace(load_document(path, self.settings.max_file_mb), path=f"upload/{path.name}")
            report = index_documents([doc], self.settings,
                                     lambda stage, done, total: progress((done, total), desc=stage))
            replaced = self.assistant.index
            self.assistant.reload()
        except AssistantError as e:  # the upload's temp folder means nothing to the person who sent it
            raise gr.Error(str(e).replace(str(path), path.name), print_exception=False) from None
        replaced.close()
        doc_id = (report.indexed or report.unchanged)[0]
        note = (f"Indexed **{html.escape(doc_id)}** in {report.seconds:.1f} s; "
                f"the index now holds {report.chunks} chunks."
                if report.indexed
                else f"**{html.escape(doc_id)}** was already indexed.")
        source = source_html(doc_id, self.assistant.index.documents, [])
        return gr.update(choices=self.choices(), value=doc_id), note, source

    def switch(self, scope: str, turns: list[Turn]) -> str:
        doc = None if scope in (None, ALL_DOCUMENTS) else scope
        if doc is not None and doc not in self.assistant.index.documents:
            return f'<p class="muted">No document \'{html.escape(shown(doc))}\' in the index.</p>'
        return source_html(doc, self.assistant.index.documents, turns)


class App(gr.Blocks):
    """The Blocks, with two rules around every event (the browser's and the API's alike): files
    come only from this server's upload folder, and a failure is one line in the server's log."""

    async def process_api(self, block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        event = str(fn.api_name or fn.name)
        try:
            refuse_foreign_files(inputs)
            return await super().process_api(block_fn, inputs, *args, **kwargs)
        except gr.Error as e:
            log_failure(event, e.message)
            e.print_exception = False  # the browser has the message; a traceback would only fill the log
            raise
        except Exception as e:  # gradio's own refusals (a bad payload, a path outside its cache) included
            log_failure(event, f"{type(e).__name__}: {e}")
            raise gr.Error(str(e), print_exception=False) from None


def refuse_foreign_files(value: Any) -> None:
    """Refuse, before Gradio looks at it, a file payload that is not a file uploaded to this server:
    given a URL, Gradio would resolve its host and fetch it; given another path, read that file."""
    if isinstance(value, list | tuple):
        for item in value:
            refuse_foreign_files(item)
    elif isinstance(value, dict):
        if "path" in value or "url" in value:
            _check_file(value.get("path"), value.get("url"))
        for item in value.values():
            refuse_foreign_files(item)


def _check_file(path: Any, url: Any) -> None:
    if not isinstance(path, str) or "://" in path:
        raise gr.Error("only files uploaded to this server are accepted; URLs are never fetched",
                       print_exception=False)
    if not Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        raise gr.Error("only files uploaded to this server are accepted", print_exception=False)
    # The browser names an upload by this server's own file route; any other address is refused.
    if url is not None and (not isinstance(url, str) or ("://" in url and
                                                         not unquote(urlsplit(url).path).endswith(f"/file={path}"))):
        raise gr.Error("only files uploaded to this server are accepted; URLs are never fetched",
                       print_exception=False)


def log_failure(event: str, message: str) -> None:
    print(f"assistant ui: {event} failed: {' '.join(message.split())}", file=sys.stderr, flush=True)


def build(settings: Settings, assistant: Assistant) -> gr.Blocks:
    chat = Chat(settings, assistant)
    examples = read_examples(settings.examples_file)
    with App(title="assistant: cited answers from your documents") as app:
        turns = gr.State([])
        gr.Markdown("### Ask the document\nEvery answer cites exact passages; click a number to see it in the text.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="chat", height=520, feedback_options=None, buttons=["copy"],
                                     show_label=False, placeholder="Ask a question about the document.")
                with gr.Row():
                    question = gr.Textbox(elem_id="question", show_label=False, scale=5, autofocus=True,
                                          placeholder="Ask a question and press Enter",
                                          max_length=settings.max_question_chars)
                    ask = gr.Button("Ask", variant="primary", elem_id="ask", scale=1, min_width=80)
                if examples:
                    gr.Examples(examples=[[q] for q in examples], inputs=[question], label="Try")
                clear = gr.Button("Clear chat", elem_id="clear", size="sm")
            with gr.Column(scale=2):
                # A name typed in, or asked for through the API, is checked against the index itself:
                # the menu lists what the index held when the page loaded.
                scope = gr.Dropdown(chat.choices(), value=chat.default_doc(), label="Document", elem_id="doc-select",
                                    interactive=True, allow_custom_value=True)
                upload = gr.File(label=f"Add a document (.txt, .md, .pdf; up to {settings.max_file_mb:g} MB)",
                                 file_types=[".txt", ".md", ".pdf"], type="filepath", elem_id="upload", height=130)
                upload_note = gr.Markdown(elem_id="upload-note")
                start = None if chat.default_doc() == ALL_DOCUMENTS else chat.default_doc()
                source = gr.HTML(source_html(start, assistant.index.documents, []), elem_id="source")
                citations = gr.HTML(citations_html(None, {}), elem_id="citations")
                with gr.Accordion("Retrieval details", open=False, elem_id="details-panel"):
                    details = gr.HTML(details_html(None), elem_id="details")

        outputs = [chatbot, source, citations, details, turns, question]
        gr.on([question.submit, ask.click], chat.respond, [question, chatbot, scope, turns], outputs, api_name="ask",
              concurrency_id=PIPELINE, concurrency_limit=1, show_progress="minimal")
        upload.upload(chat.upload, [upload], [scope, upload_note, source], api_name="upload",
                      concurrency_id=PIPELINE, concurrency_limit=1)
        scope.change(chat.switch, [scope, turns], [source], api_visibility="private")
        app.load(chat.menu, None, [scope, source], api_visibility="private")
        clear.click(lambda: ([], [], citations_html(None, {}), details_html(None)), None,
                    [chatbot, turns, citations, details], queue=False, api_visibility="private")
    return app


def check_port(host: str, port: int) -> None:
    """Fail with one line if nothing can listen on host:port."""
    if ":" in host:  # Gradio's own URLs for an IPv6 address are malformed
        raise UsageError(f"--host {host} is an IPv6 address; the UI listens on IPv4 only: use 127.0.0.1 "
                         "(this machine) or 0.0.0.0 (every interface)")
    try:
        with socket.socket(socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise AssistantError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
    except (TypeError, UnicodeError):  # socket's words for a name IDNA cannot encode
        raise UsageError(f"--host {shown(host)} is not an IPv4 address or host name") from None


def credentials(auth: SecretStr | None, auth_file: Path | None) -> tuple[str, str] | None:
    """The user name and password a browser must give, from --auth or the one line of --auth-file;
    no message ever shows the password."""
    if auth is not None and auth_file is not None:
        raise UsageError("give --auth or --auth-file, not both")
    if auth_file is not None:
        try:
            text = read_bounded(auth_file, MAX_SMALL_FILE_BYTES, "the --auth-file ").decode("utf-8")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise AssistantError(f"the --auth-file {shown(auth_file)} is not UTF-8 text") from None
        if len(lines) != 1:
            raise UsageError(f"the --auth-file {shown(auth_file)} must hold one USER:PASS line, not {len(lines)}")
        pair, where = lines[0], f"the line of --auth-file {shown(auth_file)}"
    elif auth is not None:
        pair, where = auth.get_secret_value(), "--auth (or ASSISTANT_AUTH)"
    else:
        return None
    user, colon, password = pair.partition(":")
    if not colon or not user.strip() or not password:
        raise UsageError(f"{where} must be USER:PASS, a user name and a password")
    return user.strip(), password


def exposure_warning(host: str, auth: bool) -> str | None:
    """One line when the UI is served beyond this machine; None on a loopback address."""
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: where it resolves to is not known here
        pass
    if auth:
        return (f"Warning: serving on {host} over plain HTTP: passwords, questions and documents cross the "
                "network unencrypted; put a TLS reverse proxy in front (see the README)")
    return (f"Warning: serving on {host} with no password: anyone who can reach this machine can ask and upload "
            "files to index; add --auth-file PATH (one USER:PASS line) or --auth USER:PASS")


def launch(settings: Settings, assistant: Assistant, auth: tuple[str, str] | None = None) -> None:
    app = build(settings, assistant)
    app.queue(default_concurrency_limit=1, max_size=64)
    try:
        _serve(app, settings, auth)
    except OSError as e:  # gradio says "Cannot find empty port" when the port is taken
        raise AssistantError(f"cannot listen on {settings.host}:{settings.port} ({e}); pick another --port") from None


def _serve(app: gr.Blocks, settings: Settings, auth: tuple[str, str] | None) -> None:
    app.launch(server_name=settings.host, server_port=settings.port, share=False, inbrowser=False, quiet=True,
               max_file_size=int(settings.max_file_mb * 1_000_000), footer_links=[], theme=gr.themes.Soft(),
               css=(ASSETS / "ui.css").read_text(encoding="utf-8"), js=(ASSETS / "ui.js").read_text(encoding="utf-8"),
               show_error=True, auth=auth, app_kwargs={"exception_handlers": {FnIndexInferError: _unknown_event}})


async def _unknown_event(request: Request, e: Exception) -> JSONResponse:
    """An API call of an event this app does not have: Gradio lets it escape as a traceback."""
    log_failure(request.url.path, str(e))
    return JSONResponse({"error": str(e)}, status_code=404)
