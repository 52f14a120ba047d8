"""The `assistant` command: a thin shell over indexing.index_documents and answering.Assistant.

Every AssistantError becomes one line on stderr and exit 1 (2 for usage); progress goes to stderr,
answers to stdout.
"""

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from assistant.errors import AssistantError, UsageError
from assistant.settings import DEFAULT_CORPUS, PROJECT_ROOT, Settings, load_settings

SETTING_OPTIONS = [
    click.option("--index-dir", type=click.Path(path_type=Path), help="Index folder [ASSISTANT_INDEX_DIR]."),
    click.option("--model", type=click.Path(path_type=Path), help="GGUF model file [ASSISTANT_MODEL]."),
    click.option("--top-k", type=int, help="Chunks kept after fusion [ASSISTANT_TOP_K]."),
    click.option("--retrieval", type=click.Choice(["hybrid", "dense", "bm25"]), help="Retrievers to use."),
    click.option("--decoding", type=click.Choice(["span", "free"]), help="span: copy the best span; free: generate."),
    click.option("--gate/--no-gate", "abstain_gate", default=None, help="Use the calibrated abstention gate."),
    click.option("--threads", "n_threads", type=int, help="llama.cpp threads [ASSISTANT_N_THREADS]."),
    click.option("--step-threads", type=int, help="llama.cpp threads for steps under 16 tokens; 0: --threads "
                 "[ASSISTANT_STEP_THREADS]."),
    click.option("--max-file-mb", type=float, help="Largest document accepted, in MB [ASSISTANT_MAX_FILE_MB]."),
    click.option("--llm-url", help="OpenAI-compatible server http://HOST:PORT/v1 to answer with; implies --decoding free "
                 "[ASSISTANT_LLM_URL]."),
    click.option("--llm-model", help="Model name to ask --llm-url for; default: the first it lists [ASSISTANT_LLM_MODEL]."),
    click.option("--chroma-url", help="Chroma server http://HOST:PORT holding the vectors [ASSISTANT_CHROMA_URL]."),
]


def setting_options(command: Callable) -> Callable:
    for option in reversed(SETTING_OPTIONS):
        command = option(command)
    return command


def settings_from(flags: dict[str, Any]) -> Settings:
    return load_settings(**{k: flags.pop(k) for k in list(flags) if k in Settings.model_fields})


class Cli(click.Group):
    """Turns every error into one line on stderr; click's own usage errors included."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            _usage_error(e)
        except UsageError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except AssistantError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def _usage_error(e: click.UsageError) -> None:
    """'Error: No such option '--frobnicate'. (see 'assistant ask --help')' instead of click's three lines."""
    command = e.ctx.command_path if e.ctx else "assistant"
    click.echo(f"Error: {e.format_message()} (see '{command} --help')", err=True)
    sys.exit(2)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="assistant")
def main() -> None:
    """Answer questions about a document, offline, every answer cited to exact spans.

    \b
    Start:  assistant index            (the bundled article, or your .txt/.md/.pdf files)
            assistant ask "Who is Dmitry Peskov?"
    """


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch, keeping the documents already indexed.")
@setting_options
def index(paths: tuple[Path, ...], rebuild: bool, **flags: Any) -> None:
    """Index documents (default: the bundled article). Unchanged documents cost nothing."""
    from assistant.indexing import index_documents
    from assistant.loading import load_document

    settings = settings_from(flags)
    docs = [load_document(p, settings.max_file_mb) for p in (paths or (DEFAULT_CORPUS,))]
    with _progress() as progress:
        report = index_documents(docs, settings, progress, rebuild=rebuild)
    done = ", ".join(report.indexed) or "nothing new"
    click.echo(
        f"Indexed {done} ({report.chunks} chunks, {report.sentences} sentences in {settings.index_dir}) "
        f"in {report.seconds:.2f} s" + (f"; unchanged: {', '.join(report.unchanged)}" if report.unchanged else ""),
        err=True,
    )


@main.command()
@click.argument("question", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per answer.")
@click.option("--questions", type=click.File("r", encoding="utf-8"), help="JSONL or text file of questions; - for stdin.")
@click.option("--doc", "doc_id", help="Answer from this indexed document only (its file name, e.g. article.txt).")
@setting_options
def ask(question: str | None, as_json: bool, questions: Any, doc_id: str | None, **flags: Any) -> None:
    """Answer QUESTION (or every question in --questions) from the indexed documents."""
    if (question is None) == (questions is None):
        raise UsageError("give a QUESTION or --questions FILE (one of the two)")
    from assistant.answering import check_question

    settings = settings_from(flags)
    items = [question] if question is not None else list(_read_questions(questions))
    for item in items:
        check_question(item, settings)  # before the models load, not after
    assistant = _load_assistant(settings)
    for item in items:
        if as_json:
            click.echo(json.dumps(assistant.ask(item, doc_id=doc_id).to_json(), ensure_ascii=False))
        else:
            _print_answer(assistant, item, streaming=sys.stdout.isatty(), doc_id=doc_id)


@main.command()
@setting_options
def chat(**flags: Any) -> None:
    """Ask questions one after another in the terminal (empty line or Ctrl-D to quit)."""
    assistant = _load_assistant(settings_from(flags))
    click.echo("Ask about the document. Empty line or Ctrl-D to quit.", err=True)
    while True:
        try:
            question = input("? ")
        except EOFError:
            break
        if not question.strip():
            break
        try:
            _print_answer(assistant, question, streaming=sys.stdout.isatty())
        except AssistantError as e:
            click.echo(f"Error: {e}", err=True)


@main.command("eval")
@click.option("--questions", "questions_file", type=click.Path(path_type=Path), default=PROJECT_ROOT / "eval" / "questions.jsonl",
              show_default=True, help="JSONL question set: id, question, answers, evidence, kind (and split).")
@click.option("--split", type=click.Choice(["dev", "test", "all"]), default=None, help="Items to run [test; dev with --calibrate].")
@click.option("--out", type=click.Path(path_type=Path), default=PROJECT_ROOT / "eval" / "results", show_default=True)
@click.option("--ablations/--no-ablations", default=True, help="Also run each ablation configuration.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N items (a quick run).")
@click.option("--calibrate", is_flag=True, help="Fit the abstention gate on these items and save it to the gate file.")
@click.option("--min-accuracy", type=float, help="Exit 1 if answer accuracy is lower.")
@click.option("--min-cited", type=float, help="Exit 1 if the share of correct answers citing the evidence is lower.")
@click.option("--min-abstention", type=float, help="Exit 1 if abstention recall on unanswerable items is lower.")
@click.option("--max-false-abstention", type=float, help="Exit 1 if false abstention is higher.")
@setting_options
def evaluate(questions_file: Path, split: str | None, out: Path, ablations: bool, limit: int | None, calibrate: bool,
             min_accuracy: float | None, min_cited: float | None, min_abstention: float | None,
             max_false_abstention: float | None, **flags: Any) -> None:
    """Score answers, citations and abstention against a ground-truth set; write a report."""
    import time

    from assistant import evaluation
    from assistant.abstention import save_gate
    from assistant.reporting import write_report

    settings = settings_from(flags)
    split = split or ("dev" if calibrate else "test")
    items = evaluation.load_items(questions_file, split)[:limit]
    began = time.perf_counter()
    runs = 1 + (len(evaluation.ABLATIONS) if ablations and not calibrate else 0)
    with _progress() as progress:
        done = [0]

        def tick() -> None:
            done[0] += 1
            progress(f"Evaluating {len(items)} questions x {runs} configurations", done[0], len(items) * runs)

        suite = evaluation.run_suite(settings, items, ablations and not calibrate, tick, calibrating=calibrate)
    if calibrate and suite.gate is not None:
        save_gate(suite.gate, settings.gate_file)
        click.echo(f"Saved the abstention gate to {settings.gate_file} (threshold {suite.gate.threshold:.3f})", err=True)
    summary = evaluation.summarise(suite.default, settings.top_k)
    meta = {"questions": str(questions_file), "split": split, "items": len(items), "model": _model_name(settings),
            "seconds": round(time.perf_counter() - began, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    paths = write_report(out, summary, evaluation.by_kind(suite.default, settings.top_k), suite.rows,
                         [evaluation.record(s) for s in suite.default], meta)
    _print_rows(suite.rows)
    click.echo(f"Report: {', '.join(str(p) for p in paths)}", err=True)
    _check_floors(summary, min_accuracy, min_cited, min_abstention, max_false_abstention)


def _print_rows(rows: list[dict]) -> None:
    columns = ("accuracy", "cited_evidence", "citation_precision", "abstention_recall", "false_abstention",
               "median_words", "total_p50_s")
    click.echo(f"{'configuration':16}" + "".join(f"{c:>20}" for c in columns))
    for row in rows:
        cells = "".join(f"{'-' if row[c] is None else round(row[c], 3)!s:>20}" for c in columns)
        click.echo(f"{row['name']:16}{cells}")


def _check_floors(summary: dict, min_accuracy: float | None, min_cited: float | None,
                  min_abstention: float | None, max_false_abstention: float | None) -> None:
    floors = [("accuracy", min_accuracy, 1), ("cited_evidence", min_cited, 1),
              ("abstention_recall", min_abstention, 1), ("false_abstention", max_false_abstention, -1)]
    for metric, bound, sign in floors:
        value = summary.get(metric)
        if bound is not None and value is not None and sign * (value - bound) < 0:
            raise AssistantError(f"{metric} {value:.3f} is {'under' if sign > 0 else 'over'} the required {bound:.3f}")


@main.command("settings")
@setting_options
def show_settings(**flags: Any) -> None:
    """Print the settings in effect (defaults < ASSISTANT_* variables < flags)."""
    settings = settings_from(flags)
    for name, info in Settings.model_fields.items():
        click.echo(f"{name:20} {getattr(settings, name)!s:50} {info.description or ''}")
    click.echo(f"{'(model)':20} {_model_name(settings) if settings.llm_url else settings.model_path()}")


def _model_name(settings: Settings) -> str:
    if settings.llm_url is not None:
        return f"{settings.llm_model or 'first model'} at {settings.llm_url}"
    return settings.model_path().name


@main.command()
@click.option("--host", help="Address to listen on [ASSISTANT_HOST; default 127.0.0.1, this machine only].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on [ASSISTANT_PORT; default 7860].")
@setting_options
def ui(**flags: Any) -> None:
    """Open the chat in the browser: answers with clickable citations beside the source text."""
    from assistant import ui as web

    settings = settings_from(flags)
    web.check_port(settings.host, settings.port)  # before the models load, not after
    assistant = _load_assistant(settings)
    click.echo(f"Serving on http://{settings.host}:{settings.port} (Ctrl-C to stop)", err=True)
    web.launch(settings, assistant)


def _read_questions(handle: Any) -> Iterator[str]:
    try:
        lines = list(handle)
    except UnicodeDecodeError as e:
        raise AssistantError(f"the questions file is not UTF-8 text (bad byte at offset {e.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                yield str(json.loads(line)["question"])
            except (ValueError, KeyError, TypeError):
                raise AssistantError(f"line {number} of the questions file is not JSON with a 'question' field") from None
        else:
            yield line.rstrip("\n")


def _load_assistant(settings: Settings) -> Any:
    from assistant.answering import Assistant

    with _status("Loading models and index"):
        return Assistant(settings)


def _print_answer(assistant: Any, question: str, streaming: bool, doc_id: str | None = None) -> None:
    streamed = []

    def show(piece: str) -> None:
        streamed.append(piece)
        click.echo(piece, nl=False)

    result = assistant.ask(question, on_text=show if streaming else None, doc_id=doc_id)
    if streamed:
        click.echo("\r\033[K", nl=False)
    click.echo(result.answer)
    for c in result.citations:
        line = assistant.index.documents[c.doc].count("\n", 0, c.start) + 1
        click.echo(f"  [{c.n}] {c.doc}, line {line}, chars {c.start}-{c.end}: “{c.text}”")


class _progress:
    """A rich progress bar on stderr, one task per stage."""

    def __enter__(self) -> Callable[[str, int, int], None]:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        self.tasks: dict[str, Any] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


class _status:
    def __init__(self, message: str) -> None:
        from rich.console import Console

        self.status = Console(stderr=True).status(message)

    def __enter__(self) -> None:
        self.status.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.status.__exit__(*exc)


@main.command()
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Repeats of each measurement.")
@click.option("--quick", is_flag=True, help="Small inputs and fewer questions: a check that it all runs (~1 min).")
@click.option("--out", type=click.Path(path_type=Path), default=PROJECT_ROOT / "bench" / "results", show_default=True)
@setting_options
def bench(runs: int, quick: bool, out: Path, **flags: Any) -> None:
    """Measure cold start, warm latency, overhead over raw llama.cpp, indexing, memory and scaling."""
    import time

    from assistant import benchmark

    settings = settings_from(flags)
    if "index_dir" in settings.model_fields_set:
        click.echo("Note: the benchmark builds its own indexes in a temporary folder; --index-dir is not used.", err=True)
    began = time.perf_counter()
    results = benchmark.run_bench(settings, benchmark.Plan.make(runs, quick),
                                  lambda m: click.echo(f"bench {time.perf_counter() - began:6.1f} s: {m}", err=True))
    paths = benchmark.save(results, out)
    benchmark.print_table(results)
    click.echo(f"Results: {', '.join(str(p) for p in paths)}", err=True)
