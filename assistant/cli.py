"""The `assistant` command: a thin shell over indexing.index_documents and answering.Assistant.

Every AssistantError becomes one line on stderr and exit 1 (2 for usage); progress goes to stderr,
answers to stdout. Every setting is a flag, made from Settings. Does not answer, index or score
anything itself.
"""

import json
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic.fields import FieldInfo

from assistant.errors import AssistantError, UsageError
from assistant.loading import check_question, shown
from assistant.settings import DEFAULT_CORPUS, PROJECT_ROOT, SQUAD_DEV, Settings, bounds, flag_name, load_settings
from assistant.spans import Span


def _option(name: str, field: FieldInfo, command_name: str | None) -> Callable[[Callable], Callable] | None:
    """The click option of one setting, from its type, description and default; None when the
    setting has no flag, or not on this command."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = flag_name(name, field)
    if flag is None or extra.get("only") not in (None, command_name):
        return None
    shown_default = "" if field.default is None else f"; default {_default(field.default)}"
    description = field.description or ""
    allowed = f"; {bounds(field)}" if bounds(field) else ""
    help_text = f"{description[:1].upper()}{description[1:]} [ASSISTANT_{name.upper()}{allowed}{shown_default}]."
    kind = field.annotation
    if isinstance(kind, types.UnionType):  # X | None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        return click.option(f"{flag}/--no-{flag.removeprefix('--')}", name, default=None, help=help_text)
    if typing.get_origin(kind) is typing.Literal:
        return click.option(flag, name, type=click.Choice(typing.get_args(kind)), help=help_text)
    # readable=False: a file that cannot be read is the pipeline's one-line error, not click's usage error
    known: dict[Any, Any] = {Path: click.Path(path_type=Path, readable=False), int: int, float: float}
    return click.option(flag, name, type=known.get(kind, str), help=help_text)


def _default(value: object) -> str:
    if isinstance(value, Path) and value.is_relative_to(PROJECT_ROOT):
        return str(value.relative_to(PROJECT_ROOT))
    return str(value)


def setting_options(command_name: str | None = None) -> Callable[[Callable], Callable]:
    """A flag for every setting (those of `command_name` too), made from Settings itself."""
    def wrap(command: Callable) -> Callable:
        for name, field in reversed(Settings.model_fields.items()):
            option = _option(name, field, command_name)
            if option is not None:
                command = option(command)
        return command
    return wrap


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
            with _stopped_by_signals():
                return super().invoke(ctx)
        except click.UsageError as e:
            _usage_error(e)
        except AssistantError as e:  # UsageError too: its exit code is 2
            click.echo(f"Error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            click.echo("Interrupted.", err=True)
            code = e.exit_code if isinstance(e, _Stopped) else 128 + signal.SIGINT
            # What it began is deleted by now: not worth torch's seconds of teardown.
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            os._exit(code)


def _usage_error(e: click.UsageError) -> typing.NoReturn:
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
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, readable=False))
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch, keeping the documents already indexed.")
@setting_options()
def index(paths: tuple[Path, ...], rebuild: bool, **flags: Any) -> None:
    """Index documents (default: the bundled article, into a new index; an existing one is
    checked). Unchanged documents cost nothing."""
    from assistant.indexing import index_documents
    from assistant.loading import load_document
    from assistant.store import has_index

    settings = settings_from(flags)
    if not paths:  # the bundled article starts a new index, and never joins someone's
        paths = () if has_index(settings.index_dir) else (DEFAULT_CORPUS,)
    docs = [load_document(p, settings.max_file_mb) for p in paths]
    with _progress() as progress:
        report = index_documents(docs, settings, progress, rebuild=rebuild)
    for note in report.notes:
        click.echo(f"Note: {note}", err=True)
    unchanged = f"; unchanged: {_names(report.unchanged)}" if report.unchanged else ""
    click.echo(f"Indexed {_names(report.indexed) or 'nothing new'} ({report.chunks} chunks, {report.sentences} "
               f"sentences in {shown(settings.index_dir)}) in {report.seconds:.2f} s{unchanged}", err=True)


class _Stopped(KeyboardInterrupt):
    """SIGTERM, or SIGINT, raised where the work is, so that it deletes what it had begun."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.exit_code = 128 + signum


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the block as Ctrl-C does (SIGTERM would otherwise end the process
    with nothing cleaned up), also where SIGINT was ignored when the process started (a shell
    script's background job; Python would never raise KeyboardInterrupt); a second signal does not
    cut the cleaning up short."""
    caught = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        for s in caught:
            signal.signal(s, signal.SIG_IGN)
        received.append(signum)
        raise _Stopped(signum)

    before = {s: signal.getsignal(s) for s in caught}
    for s in caught:
        signal.signal(s, stop)
    try:
        yield
    except Exception:
        if received:  # raised inside a library's callback, the stop can come out as that library's error
            raise _Stopped(received[0]) from None
        raise
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _names(doc_ids: tuple[str, ...], most: int = 10) -> str:
    """'a.txt, b.txt', or for many '1000 documents (a.txt, b.txt, ... and 990 more)'."""
    names = ", ".join(shown(d) for d in doc_ids[:most])
    return names if len(doc_ids) <= most else f"{len(doc_ids)} documents ({names} and {len(doc_ids) - most} more)"


@main.command()
@click.argument("question", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per answer.")
@click.option("--questions", type=click.File("r", encoding="utf-8-sig"),
              help='File of questions, one a line, or JSONL with a "question" field; - for stdin. '
                   'Blank lines are skipped.')
@click.option("--doc", "doc_id",
              help="Answer from this indexed document only, named as citations show it (e.g. article.txt).")
@setting_options()
def ask(question: str | None, as_json: bool, questions: Any, doc_id: str | None, **flags: Any) -> None:
    """Answer QUESTION (or every question in --questions) from the indexed documents."""
    if (question is None) == (questions is None):
        raise UsageError("give a QUESTION or --questions FILE (one of the two)")

    _need_stream("stdout", "the answers go there")
    settings = settings_from(flags)
    items = [check_question(question, settings)] if question is not None else _read_questions(questions, settings)
    assistant = _load_assistant(settings)
    for item in items:
        if as_json:
            click.echo(json.dumps(assistant.ask(item, doc_id=doc_id).to_json(), ensure_ascii=False))
        else:
            _print_answer(assistant, item, streaming=sys.stdout.isatty(), doc_id=doc_id)


@main.command()
@setting_options()
def chat(**flags: Any) -> None:
    """Ask questions one after another in the terminal (empty line or Ctrl-D to quit)."""
    _need_stream("stdin", "chat reads the questions from it")
    _need_stream("stdout", "the answers go there")
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


def _need_stream(name: str, why: str) -> None:
    """One line, not input()'s or print()'s traceback, when the shell started us with `name` closed (<&-, >&-)."""
    if getattr(sys, name) is None:
        raise AssistantError(f"standard {name.removeprefix('std')}put is closed; {why}")


CACHE = PROJECT_ROOT / "eval" / "cache"
MAX_QUESTIONS_CHARS = 64_000_000
SETS_HELP = ("Question set: a JSONL file (id, question, answers, evidence, kind; optional split and doc), "
             "FILE:SPLIT for one split of it. Repeat for several sets, reported side by side.")


@main.command("eval")
@click.option("--questions", "specs", multiple=True, metavar="FILE[:SPLIT]",
              help=SETS_HELP + " [eval/questions.jsonl:test, and ../shared/squad-dev/questions.jsonl:check "
                                 "when present]")
@click.option("--docs", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the documents the items name [docs/ beside each question file].")
@click.option("--out", type=click.Path(path_type=Path), default=PROJECT_ROOT / "eval" / "results", show_default=True)
@click.option("--ablations/--no-ablations", default=None,
              help="Also run each ablation configuration [on for sets of at most 100 questions].")
@click.option("--limit", type=click.IntRange(min=1), help="At most N questions per set, spread over its documents.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help=f"Remember the model's span scores (and index the sets' documents) under {CACHE}.")
@click.option("--gold-paragraph", is_flag=True,
              help="Score the reader alone instead: each question with its own paragraph, as SQuAD reports readers "
                   "(EM/F1, with and without an answer); \"no answer\" when no span beats [CLS].")
@click.option("--min-overall", type=float,
              help="Exit 1 if right answers plus right abstentions (share of all) is lower.")
@click.option("--min-accuracy", type=float, help="Exit 1 if answer accuracy is lower.")
@click.option("--min-cited", type=float, help="Exit 1 if the share of correct answers citing the evidence is lower.")
@click.option("--min-abstention", type=float, help="Exit 1 if abstention recall on unanswerable items is lower.")
@click.option("--max-false-abstention", type=float, help="Exit 1 if false abstention is higher.")
@setting_options()
def evaluate(specs: tuple[str, ...], docs: Path | None, out: Path, ablations: bool | None, limit: int | None,
             cache: bool, gold_paragraph: bool, min_overall: float | None, min_accuracy: float | None,
             min_cited: float | None, min_abstention: float | None, max_false_abstention: float | None,
             **flags: Any) -> None:
    """Score answers, citations and abstention against ground-truth question sets; write a report.

    \b
    Each set's questions are answered from the documents they name (indexed once, in a scratch
    index under eval/cache/) or, when they name none, from the index. Floors apply to every set.
    """
    import time

    from assistant.tools import evaluation
    from assistant.tools.fitting import sample
    from assistant.tools.reporting import write_report

    settings = settings_from(flags)
    sets = [evaluation.load_set(path, split, docs) for path, split in _sets(specs, "test", "check")]
    chosen = [sample(list(q.items), limit, per_set=True) for q in sets]
    if gold_paragraph:
        _reader_alone(sets, chosen, settings, out)
        return
    runs = [1 + (len(evaluation.ABLATIONS) if _ablations(ablations, items) else 0) for items in chosen]
    began = time.perf_counter()
    suites = _run_suites(sets, chosen, runs, settings, cache)
    reported = [_reported(s, settings) for s in suites]
    meta = {"sets": [s["name"] for s in reported], "model": _model_name(settings),
            "fitted": str(settings.fit_file or _default_fit(settings)),
            "seconds": round(time.perf_counter() - began, 1),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    paths = write_report(out, reported, meta)
    for s in reported:
        _print_rows(s["name"], s["ablations"])
    click.echo(f"Report: {', '.join(str(p) for p in paths)}", err=True)
    for s in reported:
        _check_floors(s["name"], s["summary"], min_overall, min_accuracy, min_cited, min_abstention,
                      max_false_abstention)


def _reader_alone(sets: list[Any], chosen: list[list[Any]], settings: Settings, out: Path) -> None:
    """The reader given each question's own paragraph: a figure comparable to published readers."""
    import dataclasses

    from assistant.reading import Reader
    from assistant.spans import Span
    from assistant.tools import evaluation
    from assistant.tools.tables import print_table

    reader = Reader(settings.reader_path(), threads=settings.reader_threads)

    def read(question: str, paragraph: str) -> str | None:
        reading = reader.read(question, [Span("paragraph", 0, len(paragraph), paragraph)])
        return reading.found[0].span.text if reading.margin > 0 else None

    results = {}
    with _progress() as progress:
        for q, items in zip(sets, chosen):
            pairs = evaluation.gold_paragraphs(dataclasses.replace(q, items=tuple(items)))
            if not pairs:
                click.echo(f"Note: {q.name} names no documents; no paragraphs to read.", err=True)
                continue
            done = [0]

            def tick(name: str = q.name, total: int = len(pairs), done: list[int] = done) -> None:
                done[0] += 1
                progress(f"Reading {name} paragraph by paragraph", done[0], total)

            results[q.name] = evaluation.reader_alone(read, pairs, tick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reader-alone.json").write_text(json.dumps({"reader": reader.card.get("onnx_sha256"), **results}, indent=1))
    for name, r in results.items():
        print_table(f"{name}: the reader with the gold paragraph", ["questions", "items", "exact_match", "f1"],
                    [[k, str(v["items"]), f"{v['exact_match'] or 0:.3f}", f"{v['f1'] or 0:.3f}"] for k, v in r.items()])
    click.echo(f"Report: {out / 'reader-alone.json'}", err=True)


def _run_suites(sets: list[Any], chosen: list[list[Any]], runs: list[int], settings: Settings,
                cache: bool) -> list[Any]:
    """Each set's items answered (`runs` configurations each) over its own documents, with progress."""
    from assistant.tools import evaluation

    scratch = _scratch(cache)
    with _progress() as progress:
        evaluation.index_sets(sets, settings, scratch, progress)
        base = _load_assistant(_over(_cached(settings, cache), sets, scratch))
        done = [0]

        def tick() -> None:
            done[0] += 1
            progress(f"Evaluating {sum(map(len, chosen))} questions in {len(sets)} sets", done[0],
                     sum(len(i) * r for i, r in zip(chosen, runs)))

        return [evaluation.run_suite(evaluation.assistant_for(q, base, scratch), q, items, r > 1, tick)
                for q, items, r in zip(sets, chosen, runs)]


def _sets(specs: tuple[str, ...], article_split: str, squad_split: str) -> list[tuple[Path, str]]:
    """FILE[:SPLIT] specs, or the article's set and (when it is there) the squad-dev set."""
    if specs:
        return [_spec(spec, article_split) for spec in specs]
    found = [(PROJECT_ROOT / "eval" / "questions.jsonl", article_split)]
    if SQUAD_DEV.is_file():
        found.append((SQUAD_DEV, squad_split))
    else:
        click.echo(f"Note: no squad-dev question set at {SQUAD_DEV}; skipped.", err=True)
    return found


def _spec(spec: str, split: str) -> tuple[Path, str]:
    path, _, named = spec.rpartition(":") if ":" in spec and not Path(spec).is_file() else (spec, "", "")
    return Path(path), named or split


def _ablations(asked: bool | None, items: list) -> bool:
    return asked if asked is not None else len(items) <= 100


def _cached(settings: Settings, cache: bool) -> Settings:
    if not cache or settings.score_cache is not None:
        return settings
    return settings.model_copy(update={"score_cache": CACHE / "scores.sqlite"})


def _scratch(cache: bool) -> Path:
    """Where the sets' documents are indexed: kept under eval/cache, or a folder removed at exit."""
    import atexit
    import shutil
    import tempfile

    if cache:
        return CACHE / "index"
    folder = tempfile.mkdtemp(prefix="assistant-eval-")
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder) / "index"


def _over(settings: Settings, sets: list, scratch: Path) -> Settings:
    """The settings to load the models with: over the sets' own documents when every set names
    them, so that no index is needed at --index-dir."""
    if all(q.documents for q in sets):
        return settings.model_copy(update={"index_dir": scratch, "chroma_url": None})
    return settings


def _default_fit(settings: Settings) -> Path:
    from assistant.fitted import default_path, reader_gate_path

    if settings.decoding in ("reader", "both"):
        return reader_gate_path(settings.model_path() if settings.decoding == "both" else None)
    return default_path(settings.model_path())


def _reported(suite: Any, settings: Settings) -> dict:
    from assistant.tools import evaluation

    return {"name": suite.qset.name, "summary": evaluation.summarise(suite.default, settings.top_k),
            "documents": evaluation.by_document(suite.default, settings.top_k),
            "kinds": evaluation.by_kind(suite.default, settings.top_k), "ablations": suite.rows,
            "items": [evaluation.record(s) for s in suite.default]}


def _print_rows(name: str, rows: list[dict]) -> None:
    from assistant.tools.tables import print_table

    columns = ("overall", "accuracy", "cited_evidence", "abstention_recall", "false_abstention",
               "median_words", "total_p50_s")
    cells = [[row["name"], *("-" if row[c] is None else f"{round(row[c], 3)}" for c in columns)] for row in rows]
    print_table(name, ["configuration", *columns], cells)


def _check_floors(name: str, summary: dict, min_overall: float | None, min_accuracy: float | None,
                  min_cited: float | None, min_abstention: float | None, max_false_abstention: float | None) -> None:
    floors = [("overall", min_overall, 1), ("accuracy", min_accuracy, 1), ("cited_evidence", min_cited, 1),
              ("abstention_recall", min_abstention, 1), ("false_abstention", max_false_abstention, -1)]
    for metric, bound, sign in floors:
        value = summary.get(metric)
        if bound is not None and value is not None and sign * (value - bound) < 0:
            raise AssistantError(f"{name}: {metric} {value:.3f} is {'under' if sign > 0 else 'over'} "
                                 f"the required {bound:.3f}")


@main.command()
@click.option("--questions", "specs", multiple=True, metavar="FILE[:SPLIT]",
              help=SETS_HELP + " [eval/questions.jsonl:dev and ../shared/squad-dev/questions.jsonl:fit]")
@click.option("--docs", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the documents the items name [docs/ beside each question file].")
@click.option("--per-document", type=click.IntRange(min=1), default=100, show_default=True,
              help="Questions drawn from each document (a set that names no documents counts as one).")
@click.option("--documents", help="Comma-separated documents: only the questions about these (questions naming no "
                                  "document are kept).")
@click.option("--max-false-abstention", type=click.FloatRange(0, 1), default=0.15, show_default=True,
              help="The gates' thresholds answer the most questions right within this false abstention.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write [--fit-file, or assistant/fitted/<model file stem>.json].")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help=f"Remember the model's span scores (and index the sets' documents) under {CACHE}.")
@setting_options()
def fit(specs: tuple[str, ...], docs: Path | None, per_document: int, documents: str | None,
        max_false_abstention: float, out: Path | None, cache: bool, **flags: Any) -> None:
    """Fit the abstention gate of the reader, or (--decoding span) the span ranker and gates of a
    model (--model), on real questions.

    \b
    Every question is answered through the pipeline once (the reader takes ~0.1 s a question; span
    decoding 1-2 s with the default model, its scores remembered, so a refit takes seconds); the
    gates are fitted with scikit-learn and their thresholds chosen on documents held out in turn.
    The file records the reader's (or the model's and prompts') hashes: answering refuses it with
    anything else.
    """
    import time

    from assistant.tools import evaluation, fitting

    settings = _cached(settings_from(flags), cache)
    if settings.llm_url is not None or settings.decoding == "free":
        raise UsageError("fit fits reader or span decoding with the local models; "
                         "drop --llm-url and --decoding free")
    if not specs and not SQUAD_DEV.is_file():
        raise AssistantError(f"no squad-dev question set at {SQUAD_DEV}; give --questions FILE[:SPLIT]")
    sets = [_only(evaluation.load_set(path, split, docs), documents) for path, split in _sets(specs, "dev", "fit")]
    chosen = [fitting.sample(list(q.items), per_document) for q in sets]
    target = out or settings.fit_file or _default_fit(settings)
    began = time.perf_counter()
    scratch = _scratch(cache)
    with _progress() as progress:
        evaluation.index_sets(sets, settings, scratch, progress)
        base = _load_assistant(_over(settings, sets, scratch), unfitted=True)
        assistants = [evaluation.assistant_for(q, base, scratch) for q in sets]
        if settings.decoding in ("reader", "both"):
            total, done = sum(map(len, chosen)), [0]

            def tick(done: list[int] = done) -> None:
                done[0] += 1
                progress(f"Reading {total} questions", done[0], total)

            examples = [e for a, q, items in zip(assistants, sets, chosen)
                        for e in fitting.measure_reader(a, q, items, tick)]
        else:
            starts, starter, examples = fitting.measure(assistants, sets, chosen, progress)
    data = [{"questions": os.path.relpath(q.path, PROJECT_ROOT), "split": q.split, "items": len(items),
             "documents": sorted(q.documents) or None} for q, items in zip(sets, chosen)]
    if settings.decoding in ("reader", "both"):
        gate = fitting.fit_reader(examples, base, data, max_false_abstention)
        fitting.save(gate, target)
        _print_reader_gate(gate.measured, time.perf_counter() - began)
    else:
        fitted = fitting.fit(starts, starter, examples, base, data, max_false_abstention)
        fitting.save(fitted, target)
        _print_fitted(fitted, settings, time.perf_counter() - began)
    click.echo(f"Saved {target}", err=True)


def _only(qset: Any, documents: str | None) -> Any:
    """The set's items about the named documents only (all of them without --documents)."""
    import dataclasses

    if not documents:
        return qset
    wanted = {d.strip() for d in documents.split(",") if d.strip()}
    items = tuple(i for i in qset.items if i.doc_id is None or i.doc_id in wanted)
    return dataclasses.replace(qset, items=items, documents={k: v for k, v in qset.documents.items() if k in wanted})


def _print_reader_gate(m: dict, seconds: float) -> None:
    g = m["gate"]
    click.echo(f"Fitted on {m['questions']} questions from {m['documents']} documents in {seconds:.0f} s; "
               f"held-out documents: a right span among the reader's {m['ceiling']:.3f}, its best one "
               f"{m['reader_accuracy']:.3f}; gate threshold {g['threshold']:.2f}: overall {g['overall']:.3f}, "
               f"accuracy {g['accuracy']:.3f}, abstention {g['abstention']:.3f}, "
               f"false abstention {g['false_abstention']:.3f}")


def _print_fitted(fitted: Any, settings: Settings, seconds: float) -> None:
    m = fitted.measured
    click.echo(f"Fitted on {m['questions']} questions from {m['documents']} documents in "
               f"{seconds:.0f} s; held-out documents:")
    click.echo(f"  a right start among the {settings.max_span_starts} scored {m['start_recall']:.3f}; "
               f"a right span among the candidates {m['ceiling']:.3f}; the ranker picks one {m['ranker_accuracy']:.3f}")
    for name in ("gate", "evidence_gate"):
        g = m[name]
        click.echo(f"  {name:14} threshold {g['threshold']:.2f}: overall {g['overall']:.3f}, "
                   f"accuracy {g['accuracy']:.3f}, "
                   f"abstention {g['abstention']:.3f}, false abstention {g['false_abstention']:.3f}")


@main.command("settings")
@setting_options()
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
@click.option("--auth-file", type=click.Path(path_type=Path, dir_okay=False, readable=False),
              help="File whose one line USER:PASS a browser must give to use the UI (kept out of ps, unlike --auth).")
@setting_options("ui")
def ui(auth_file: Path | None, **flags: Any) -> None:
    """Open the chat in the browser: answers with clickable citations beside the source text."""
    from assistant import ui as web

    settings = settings_from(flags)
    auth = web.credentials(settings.auth, auth_file)
    web.check_port(settings.host, settings.port)  # before the models load, not after
    warning = web.exposure_warning(settings.host, auth is not None)
    if warning:
        click.echo(warning, err=True)
    assistant = _load_assistant(settings)
    click.echo(f"Serving on http://{settings.host}:{settings.port} (Ctrl-C to stop)", err=True)
    web.launch(settings, assistant, auth)


def _read_questions(handle: Any, settings: Settings) -> list[str]:
    """The questions of a batch file, checked before any model loads: a line is a question, or a
    JSON object whose "question" is one; blank lines are skipped and a leading BOM is ignored."""

    try:
        text = handle.read(MAX_QUESTIONS_CHARS + 1)  # a device or an endless pipe would be read for ever
        lines = text.split("\n")
    except UnicodeDecodeError as e:
        raise AssistantError(f"the questions file is not UTF-8 text (bad byte at offset {e.start})") from None
    if len(text) > MAX_QUESTIONS_CHARS:
        raise AssistantError(f"the questions file is over {MAX_QUESTIONS_CHARS // 1_000_000} million characters; "
                             "split it")
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        question = _json_question(line, number) if line.lstrip().startswith("{") else line.rstrip("\n")
        try:
            questions.append(check_question(question, settings))
        except AssistantError as e:
            raise AssistantError(f"line {number} of the questions file: {e}") from None
    if not questions:
        raise AssistantError("the questions file has no questions (only blank lines)" if text
                             else "the questions file is empty")
    return questions


def _json_question(line: str, number: int) -> str:
    try:
        item = json.loads(line)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        raise AssistantError(f"line {number} of the questions file is not a JSON object")
    if "question" not in item:
        raise AssistantError(f"line {number} of the questions file has no 'question' field")
    question = item["question"]
    if not isinstance(question, str):
        kind = {type(None): "null", bool: "true/false", int: "a number", float: "a number", list: "a list",
                dict: "an object"}[type(question)]
        raise AssistantError(f"line {number} of the questions file: 'question' must be text, not {kind}")
    return question


def _load_assistant(settings: Settings, unfitted: bool = False) -> Any:
    from assistant.answering import Assistant

    with _status("Loading models and index"):
        return Assistant(settings, unfitted=unfitted)


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
        line = assistant.index.documents[c.doc_id].count("\n", 0, c.start) + 1
        where = f"{shown(c.doc_id)}, line {line}, chars {c.start}-{c.end}"
        click.echo(f"  [{c.n}] {where}: “{_quote(c, result.answer_span)}”")


def _quote(c: Span, span: Span | None) -> str:
    """The cited text, with the span the answer copies in bold on a terminal (plain text otherwise,
    so that piped output still quotes the document exactly)."""
    if span is None or not span.inside(c):
        return c.text
    a, b = span.start - c.start, span.end - c.start
    return c.text[:a] + click.style(c.text[a:b], bold=True, underline=True) + c.text[b:]


_QUIET_S, _EVERY_S = 2.0, 15.0


class _progress:
    """A rich progress bar on a terminal's stderr, one task per stage. Elsewhere (a log, a pipe)
    a line every 15 s of a stage and when a stage of 2 s or more ends, nothing else: no redraws,
    no blank lines, and a short command's error stays its only line."""

    def __enter__(self) -> Callable[[str, int, int], None]:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        console = Console(stderr=True)
        self.began: dict[str, float] = {}
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
            self.bar.__enter__()
        self.tasks: dict[str, Any] = {}
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        import time

        if self.bar is None:
            now = time.perf_counter()
            began = self.began.setdefault(stage, now)
            last = self.tasks.get(stage, began)
            if (done >= total and now - began >= _QUIET_S) or now - last >= _EVERY_S:
                left = f", about {(now - began) * (total - done) / done:.0f} s left" if 0 < done < total else ""
                click.echo(f"{stage}: {done}/{total} after {now - began:.0f} s{left}", err=True)
                self.tasks[stage] = now
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
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
@setting_options()
def bench(runs: int, quick: bool, out: Path, **flags: Any) -> None:
    """Measure cold start, warm latency, overhead over raw llama.cpp, indexing, memory and scaling."""
    import time

    from assistant.tools import benchmark

    settings = settings_from(flags)
    if "index_dir" in settings.model_fields_set:
        click.echo("Note: the benchmark builds its own indexes in a temporary folder; --index-dir is not used.",
                   err=True)
    began = time.perf_counter()
    results = benchmark.run_bench(settings, benchmark.Plan.make(runs, quick),
                                  lambda m: click.echo(f"bench {time.perf_counter() - began:6.1f} s: {m}", err=True))
    paths = benchmark.save(results, out)
    benchmark.print_results(results)
    click.echo(f"Results: {', '.join(str(p) for p in paths)}", err=True)


QA_TRAIN = SQUAD_DEV.parent.parent / "qa-train"


@main.command("train-reader")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=PROJECT_ROOT / "build" / "reader",
              show_default=True, help="Folder of the checkpoint (resumed when there) and the full-precision export.")
@click.option("--max-minutes", type=click.FloatRange(min=0.1), default=90.0, show_default=True,
              help="Stop after this long with a checkpoint; run again to go on.")
@click.option("--positives", type=click.IntRange(min=1), default=50000, show_default=True,
              help="SQuAD 1.1 answered questions to train on (made negatives are shares of these).")
@click.option("--squad", type=click.Path(path_type=Path, dir_okay=False), default=QA_TRAIN / "squad11-train.json",
              show_default=True, help="SQuAD 1.1 training JSON.")
@click.option("--unanswerable", type=click.Path(path_type=Path, dir_okay=False),
              default=QA_TRAIN / "squad20-train-10-articles.json", show_default=True,
              help="SQuAD 2.0 JSON whose unanswerable questions are taught (its answered ones are not used).")
@click.option("--questions", type=click.Path(path_type=Path, dir_okay=False), default=SQUAD_DEV, show_default=True,
              help="A question set over whole documents whose --articles also teach (none: skip).")
@click.option("--articles", default="Huguenot.txt,Islamism.txt", show_default=True,
              help="Comma-separated documents of --questions to train on; keep the others for choosing settings.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Peak learning rate (AdamW, linear warm-up and decay).")
@click.option("--unanswerable-repeats", type=click.IntRange(min=0), default=2, show_default=True,
              help="How often each real unanswerable question is seen.")
@click.option("--init-from", type=click.Path(path_type=Path, dir_okay=False),
              help="Start from this checkpoint's weights (a second stage; its recipe and steps go on the card).")
@click.option("--held-out-every", type=click.IntRange(min=1), default=250, show_default=True,
              help="Steps between scores of the held-out articles.")
@click.option("--fp32", is_flag=True, help="Ship full-precision weights instead of int8.")
@click.option("--export-only", is_flag=True, help="Export the last checkpoint without training further.")
@click.option("--target", type=click.Path(path_type=Path, dir_okay=False),
              default=PROJECT_ROOT / "assistant" / "models" / "reader.onnx", show_default=True,
              help="Where to write the ONNX reader (its card goes beside it, .json).")
@setting_options()
def train_reader(out: Path, max_minutes: float, positives: int, squad: Path, unanswerable: Path,
                 questions: Path | None, articles: str, lr: float, unanswerable_repeats: int, init_from: Path | None,
                 held_out_every: int, fp32: bool, export_only: bool, target: Path, **flags: Any) -> None:
    """Fine-tune all-MiniLM-L6-v2 as the extractive reader, then export it to ONNX with its card.

    \b
    It learns to point at the answer's first and last word pieces, or at [CLS] when the passage
    does not answer (SQuAD 2.0 style): SQuAD 1.1's answered questions, the real unanswerable
    ones, and negatives made from the answered ones (another passage, a swapped name or number,
    a negation). ~0.1-0.2 s an example on two cores: the default takes hours, in --max-minutes
    pieces, each ending with a checkpoint the next run resumes from.
    """
    from assistant.tools import reader_training as rt

    settings = settings_from(flags)
    docs = questions.parent / "docs" if questions and questions.is_file() else None
    sources = rt.Sources(squad, unanswerable, questions if docs else None, docs,
                         tuple(a for a in articles.split(",") if a) if docs else ())
    recipe = rt.Recipe(positives=positives, lr=lr, unanswerable_repeats=unanswerable_repeats)
    run = rt.Run(out, settings.embedding_path(), sources, recipe, max_minutes, held_out_every, init_from)
    if not export_only:
        with _training_bar() as progress:
            state = rt.train(run, progress)
        click.echo(f"Trained {state['step']} of {state['total']} steps in {state['seconds'] / 60:.1f} min; "
                   f"held out: {state['scores'][-1] if state['scores'] else 'not scored yet'}", err=True)
        if state["step"] < state["total"]:
            click.echo("Not finished: run the same command again to go on from the checkpoint.", err=True)
            return
    command = "assistant train-reader " + " ".join(sys.argv[2:])
    card = rt.export(run, target, command, quantize=not fp32)
    click.echo(f"Saved {target} ({target.stat().st_size / 1e6:.1f} MB) and its card; held out: {card['held_out']}",
               err=True)


class _training_bar:
    """Training's progress: a bar with loss and time left on a terminal, else a line a minute."""

    def __enter__(self) -> Callable[[int, int, dict], None]:
        import time

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.bar = None
        self.last = time.monotonic()
        if console.is_terminal:
            self.bar = Progress(TextColumn("Training the reader"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=console)
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=None, loss=0.0)
        return self.update

    def update(self, step: int, total: int, state: dict) -> None:
        import time

        if self.bar is not None:
            self.bar.update(self.task, completed=step, total=total, loss=state["loss"])
        elif time.monotonic() - self.last > 60 or step == total:
            self.last = time.monotonic()
            left = state["seconds"] / max(1, step) * (total - step) / 60
            scores = f"; held out {state['scores'][-1]}" if state["scores"] else ""
            click.echo(f"step {step}/{total}, loss {state['loss']:.3f}, {state['seconds'] / 60:.1f} min, "
                       f"~{left:.0f} min left{scores}", err=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
