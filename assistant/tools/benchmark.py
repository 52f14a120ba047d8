"""`assistant bench`: time, memory and scale of the real pipeline, saved as JSON, Markdown and a PNG.

Measures cold start (a fresh `assistant ask` process over an existing index, plus a per-phase
breakdown in another fresh process), warm answer latency, the pipeline's time over raw
llama-cpp-python generation of the same number of tokens, indexing speed, retrieval latency, peak
RSS of child processes, growth with document size, and sentence-transformers attention variants.
Every index is built in a temporary folder; the user's index and settings files are never touched.
Does not mock or skip any stage: a number here is what the real commands cost on this machine, at
its current load (recorded with the results).
"""

import gc
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError
from assistant.generation import Prompt
from assistant.settings import DEFAULT_CORPUS, PROJECT_ROOT, SQUAD_DEV, Settings
from assistant.tools.tables import markdown_table, percentile, print_table

Log = Callable[[str], None]
QUESTIONS_FILE = PROJECT_ROOT / "eval" / "questions.jsonl"
COLD_QUESTION = "Who is Putin's spokesperson?"
_MARKERS = re.compile(r"(\s*\[\d+\])+\s*$")


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run, or a quick one on small inputs."""

    runs: int
    warm_questions: int  # 0: every question in the file
    check_questions: int  # of squad-dev's check split, when present, spread over its documents
    overhead_questions: int
    big_words: int  # the generated document; 0: retrieval is timed over the article's index instead
    scales: tuple[int, ...]  # multiples of the article's size
    scale_questions: int
    embed_queries: int
    embed_batch_texts: int
    scale_base_words: int | None  # the article cut to about this many words; None: all of it
    many_files: tuple[int, ...]  # counts of one-sentence files indexed in one `assistant index`
    uploads: int  # documents uploaded one after another through the UI's upload handler
    largest_mb: float  # a made-up text of this size, indexed once by a fresh process (0: none)
    cold_runs: int  # fresh `assistant ask` processes timed for the cold start

    @staticmethod
    def make(runs: int, quick: bool) -> "Plan":
        if quick:
            return Plan(runs, 5, 4, 3, 0, (1, 2), 2, 5, 32, 150, (100,), 20, 0, 2)
        return Plan(runs, 0, 100, 30, 50_000, (1, 10, 20), 10, 30, 512, None, (1000, 10_000), 100, 10, max(runs, 5))


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    stat: Stat
    goal: float | None = None  # the value must be at most this
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.stat.median <= self.goal


@dataclass(frozen=True)
class ChildRun:
    seconds: float  # to its exit
    first_output_s: float  # to its first line on stdout: for `ask`, the answer
    cpu_seconds: float  # user + system, all threads: less swayed than wall time by other work on the machine
    peak_rss_mb: float
    stdout: str


def stat(values: Sequence[float]) -> Stat:
    if not values:
        raise AssistantError("a benchmark step produced no measurement")
    return Stat(percentile(values, 0.5), min(values), max(values), len(values))


# ---------------------------------------------------------------- generated text

_FIRST = ("Amara Bruno Celia Dmitri Esther Farid Greta Hiro Ines Jonas Kofi Lena Mateo Nadia Oskar Priya "
          "Quentin Rosa Sven Tamsin Umar Vera Wendell Ximena Yusuf Zofia Anton Beatrix Cyrus Delia").split()
_LAST = ("Okafor Lindqvist Moreau Tanaka Haddad Novak Castellano Brennan Petrov Achebe Varga Mendes Kowalski "
         "Sato Ferreira Halvorsen Duarte Nakamura Reyes Osei Whitfield Ivanova Laurent Kaur Marchetti").split()
_PLACES = ("Port Elwin|Dunmore|Karsk|Valbrenne|Ostrava Nova|Lake Tirrow|the Hollin Valley|Greymouth|Sabel Bay|"
           "Marrowfield|the Ardent Coast|Kelmscott|Riverside Park|the Old Quarter|Brannock").split("|")
_GROUPS = ("the Northern Sound Company|the Harbour Trust|the Meridian Institute|the Civic Water Board|"
           "the Tessel Foundation|the Regional Rail Authority|the Weavers' Guild|the Coastal Survey|"
           "the Lantern Press|the Farmers' Cooperative|the Museum of Tides|the City Council").split("|")
_THINGS = ("bridge ferry library canal orchard festival observatory railway market dam lighthouse school "
           "hospital archive theatre vineyard tunnel reservoir stadium garden factory harbour mill forest").split()
_ACTIONS = ("opened reopened rebuilt expanded funded inspected closed renamed restored modernised surveyed "
            "approved redesigned relocated doubled").split()
_ADJECTIVES = ("ageing busy quiet historic crowded narrow modest ambitious costly popular remote flooded "
               "restored unfinished celebrated").split()
_MONTHS = ("January February March April May June July August September October November December").split()
_TEMPLATES = (
    "In {month} {year}, {group} {action} the {adj} {thing} in {place}.",
    "{name} said the {thing} in {place} had cost about {number} million euros.",
    "“We {action} it for the people of {place},” said {name}, who leads {group}.",
    "The {thing} drew some {number} thousand visitors in {year}, according to {group}.",
    "Critics in {place} argued that the {adj} {thing} was never worth the money.",
    "{name} first worked at the {thing} in {year} and later joined {group}.",
    "By {month} {year}, work on the {thing} near {place} was {number} weeks behind schedule.",
    "{group} estimates that {number} families depend on the {thing} for their income.",
    "A report by {name} found the {thing} in {place} {adj} but safe.",
    "Residents of {place} voted in {month} to keep the {thing} open for another {number} years.",
    "The {adj} {thing} at {place} was {action} twice before {year}.",
    "Asked about the delays, {name} blamed the weather and a shortage of {thing} engineers.",
)


def generated_text(words: int, seed: int) -> str:
    """At least `words` words of varied made-up reporting, the same for the same seed."""
    rng = random.Random(seed)
    paragraphs, count = [], 0
    while count < words:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            sentence = rng.choice(_TEMPLATES).format(
                name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", place=rng.choice(_PLACES),
                group=rng.choice(_GROUPS), thing=rng.choice(_THINGS), action=rng.choice(_ACTIONS),
                adj=rng.choice(_ADJECTIVES), month=rng.choice(_MONTHS), year=rng.randint(1950, 2024),
                number=rng.randint(2, 900),
            )
            sentences.append(sentence[0].upper() + sentence[1:])
            count += len(sentence.split())
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs) + "\n"


# ---------------------------------------------------------------- child processes

def child_env(settings: Settings) -> dict[str, str]:
    """This environment plus the settings given as flags, so child processes use the same ones."""
    env = dict(os.environ)
    for name in settings.model_fields_set - {"index_dir"}:
        value = getattr(settings, name)
        env[f"ASSISTANT_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def run_child(args: list[str], env: dict[str, str]) -> ChildRun:
    """Run `args` to the end: seconds to its first line of output and to its exit, CPU seconds and
    the child's own peak RSS."""
    with tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        peak: list[int] = [0]
        lines: list[tuple[float, str]] = []  # (when, line) as the child wrote them
        watcher = threading.Thread(target=_watch_peak, args=(proc.pid, peak), daemon=True)
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        watcher.start()
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
        watcher.join()
        reader.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
        raise AssistantError(f"benchmark step {' '.join(args[1:3])} failed: {last}")
    first = lines[0][0] - began if lines else seconds
    stdout = "".join(line for _, line in lines)
    return ChildRun(seconds, first, usage.ru_utime + usage.ru_stime, peak[0] * 1024 / 1e6, stdout)


def _read_lines(stream: Any, lines: list[tuple[float, str]]) -> None:
    for raw in stream:
        lines.append((time.perf_counter(), raw.decode(errors="replace")))
    stream.close()


def _watch_peak(pid: int, peak: list[int]) -> None:
    """Keep the child's VmHWM (peak RSS, KiB) until it exits. Not wait4's ru_maxrss: a child
    started by vfork inherits the parent's peak at exec, so a big parent would hide a small child."""
    path = Path(f"/proc/{pid}/status")
    while True:
        try:
            found = re.search(r"^VmHWM:\s+(\d+) kB", path.read_text(), re.MULTILINE)
        except OSError:
            return
        if found is None:  # a zombie: it has exited
            return
        peak[0] = max(peak[0], int(found.group(1)))
        time.sleep(0.02)


def assistant_command() -> list[str]:
    """The installed `assistant` script beside this interpreter: what a user runs."""
    script = Path(sys.executable).parent / "assistant"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from assistant.cli import main; main()"]


def _child_json(run: ChildRun) -> dict:
    return json.loads(run.stdout.strip().splitlines()[-1])


def index_in_child(doc: Path, index_dir: Path, env: dict[str, str]) -> tuple[ChildRun, dict]:
    run = run_child([sys.executable, "-m", "assistant.tools.benchmark", "index", str(doc), str(index_dir)], env)
    return run, _child_json(run)


def _index_child(doc: str, index_dir: str) -> None:
    from assistant.indexing import index_documents
    from assistant.loading import load_document

    report = index_documents([load_document(Path(doc), 100)], Settings(index_dir=Path(index_dir)))
    print(json.dumps(asdict(report)))


def _phases_child(index_dir: str, question: str) -> None:
    """The cold path one phase after another (no overlap), each timed."""
    began = time.perf_counter()
    import assistant  # noqa: F401

    times = {"python_start_and_exit_s": 0.0}  # filled in by the parent: its wall time less these
    import chromadb  # noqa: F401
    import llama_index.core  # noqa: F401
    import onnxruntime  # noqa: F401

    import assistant.cli  # noqa: F401
    from assistant.answering import Assistant

    times["imports_s"] = time.perf_counter() - began
    loading = time.perf_counter()
    answering = Assistant(Settings(index_dir=Path(index_dir)))
    times["model_loads_s"] = time.perf_counter() - loading
    answer = answering.ask(question)
    times["retrieval_s"] = answer.timing.retrieve_s
    times["generation_s"] = answer.timing.generate_s
    print(json.dumps(times))


# ---------------------------------------------------------------- measurements

def measure_indexing(docs: dict[str, Path], env: dict[str, str], plan: Plan, work: Path,
                     log: Log) -> tuple[list[Metric], dict[str, Path]]:
    """Each document indexed `runs` times into fresh folders by a fresh process; then once more
    into the last folder, unchanged, here. Returns the metrics and one built index per document."""
    from assistant.indexing import index_documents
    from assistant.loading import load_document

    metrics, built = [], {}
    for name, doc in docs.items():
        seconds, rate, rss, walls, cpu = [], [], [], [], []
        for run in range(plan.runs):
            log(f"indexing {name} ({run + 1}/{plan.runs})")
            folder = work / f"index-{name}-{run}"
            child, report = index_in_child(doc, folder, env)
            seconds.append(report["seconds"])
            rate.append(report["chunks"] / report["seconds"])
            rss.append(child.peak_rss_mb)
            walls.append(child.seconds)
            cpu.append(child.cpu_seconds)
            built[name] = folder
        log(f"re-indexing {name}, unchanged")
        again = index_documents([load_document(doc, 100)], Settings(index_dir=built[name]))
        goal = 5.0 if name == "article" else 60.0
        metrics += [
            Metric(f"index {name}", "s", stat(seconds), goal,
                   f"{report['chunks']} chunks, {report['sentences']} sentences; "
                   "from the call, model load and imports included"),
            Metric(f"index {name} process wall", "s", stat(walls), None, "fresh process: imports included"),
            Metric(f"index {name} process CPU", "s", stat(cpu), None, "user + system, all threads"),
            Metric(f"index {name} rate", "chunks/s", stat(rate), None, "chunks embedded per second (sentences are "
                   "embedded when a question needs them)"),
            Metric(f"index {name} re-run unchanged", "s", stat([again.seconds]), 0.5,
                   "unchanged" if again.unchanged and not again.indexed else "RE-INDEXED"),
            Metric(f"peak RSS indexing {name}", "MB", stat(rss), 1200.0),
        ]
    return metrics, built


def measure_largest(plan: Plan, env: dict[str, str], work: Path, log: Log) -> list[Metric]:
    """A made-up text as large as --max-file-mb allows by default, indexed once by a fresh process:
    the goals are 5 minutes and 1.2 GB."""
    if not plan.largest_mb:
        return []
    doc = work / f"largest-{plan.largest_mb:g}mb.txt"
    cap = int(plan.largest_mb * 1_000_000)
    text = generated_text(cap // 5, seed=1)
    doc.write_text(text[: text.rfind(" ", 0, cap)] + "\n", encoding="utf-8")
    log(f"indexing a {plan.largest_mb:g} MB text")
    child, report = index_in_child(doc, work / "index-largest", env)
    note = f"{doc.stat().st_size / 1e6:.1f} MB: {report['chunks']} chunks, {report['sentences']} sentences"
    return [Metric(f"index a {plan.largest_mb:g} MB text", "s", stat([child.seconds]), 300.0,
                   note + "; fresh process"),
            Metric(f"peak RSS indexing a {plan.largest_mb:g} MB text", "MB", stat([child.peak_rss_mb]), 1200.0)]


def measure_many_files(env: dict[str, str], plan: Plan, work: Path, log: Log) -> list[Metric]:
    """`assistant index` over many one-sentence files at once, as a user runs it (a fresh process:
    imports and model load included), once per count: the goals are 60 s for 1,000 and 10 min
    for 10,000, growing linearly."""
    metrics = []
    for count in plan.many_files:
        folder = work / f"files-{count}"
        folder.mkdir()
        for i in range(count):
            sentence = generated_text(12, seed=i).split(". ")[0].rstrip(".\n") + ".\n"
            (folder / f"note-{i:05d}.txt").write_text(sentence, encoding="utf-8")
        log(f"indexing {count} small files")
        child = run_child([*assistant_command(), "index", "--index-dir", str(work / f"index-files-{count}"),
                           *map(str, sorted(folder.iterdir()))], env)
        goal = {1000: 60.0, 10_000: 600.0}.get(count)
        metrics += [Metric(f"index {count} small files", "s", stat([child.seconds]), goal,
                           f"one sentence each, one command; {count / child.seconds:.0f} files/s"),
                    Metric(f"peak RSS indexing {count} small files", "MB", stat([child.peak_rss_mb]), None)]
    return metrics


COLD_GOAL_S, COLD_RSS_GOAL_MB = 3.0, 600.0
# The libraries a cold `ask` imports that cost more than a few milliseconds, each timed as
# `python -X importtime` reports it (cumulative, where the process first imports it).
COLD_IMPORTS = ("numpy", "pydantic", "click", "onnxruntime", "tokenizers", "chromadb", "llama_index.core",
                "bm25s", "assistant")


def measure_cold(index_dir: Path, env: dict[str, str], plan: Plan, log: Log) -> tuple[list[Metric], dict]:
    """`cold_runs` fresh `assistant ask` processes, then as many timed phase by phase, and one
    more under `-X importtime` for what each library's import costs."""
    walls, exits, cpu, rss, phases = [], [], [], [], []
    command = assistant_command() + ["ask", "--json", "--index-dir", str(index_dir)]
    for run in range(plan.cold_runs):
        log(f"cold start ({run + 1}/{plan.cold_runs})")
        child = run_child(command + [COLD_QUESTION], env)
        json.loads(child.stdout)  # the answer must be there
        walls.append(child.first_output_s)
        exits.append(child.seconds)
        cpu.append(child.cpu_seconds)
        rss.append(child.peak_rss_mb)
    for run in range(plan.cold_runs):
        log(f"cold start phases ({run + 1}/{plan.cold_runs})")
        timed = run_child([sys.executable, "-m", "assistant.tools.benchmark", "phases", str(index_dir),
                           COLD_QUESTION], env)
        got = _child_json(timed)
        inside = sum(got.values())
        got["python_start_and_exit_s"] = max(timed.seconds - inside, 0.0)
        phases.append(got)
    breakdown = {k: stat([p[k] for p in phases]) for k in phases[0]}
    log("cold start imports")
    imports = import_times([sys.executable, "-X", "importtime", *command, COLD_QUESTION], env)
    metrics = [
        Metric("cold start: assistant ask", "s", stat(walls), COLD_GOAL_S,
               f"fresh process, existing index, to the printed answer; {plan.cold_runs} processes"),
        Metric("cold start to exit", "s", stat(exits), None, "the same process, until it has exited"),
        Metric("cold start CPU time", "s", stat(cpu), None, "user + system of that process, all threads"),
        Metric("peak RSS ask", "MB", stat(rss), COLD_RSS_GOAL_MB),
    ] + [Metric(f"cold phase: {k.removesuffix('_s').replace('_', ' ')}", "s", v, None, "one after another, no overlap")
         for k, v in breakdown.items()
    ] + [Metric(f"cold import: {name}", "s", stat([seconds]), None, "python -X importtime, cumulative, one process")
         for name, seconds in imports.items()]
    return metrics, {k: asdict(v) for k, v in breakdown.items()}


def import_times(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Seconds each of COLD_IMPORTS took to import in the process `args` starts (absent: not imported)."""
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AssistantError(f"the import-time run failed: {done.stderr.strip().splitlines()[-1:]}")
    seen: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if name in COLD_IMPORTS and name not in seen:
                seen[name] = int(cumulative) / 1e6
    return {name: seen[name] for name in COLD_IMPORTS if name in seen}


def _questions(limit: int) -> list[str]:
    """The first `limit` questions of the eval set, repeated if it has fewer; 0: all of them."""
    lines = QUESTIONS_FILE.read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    return (questions * (limit // len(questions) + 1))[:limit] if limit else questions


def warm_sets(assistant: Any, plan: Plan, work: Path, log: Log) -> dict[str, tuple[Any, list[tuple[str, str | None]]]]:
    """Set name -> (the Assistant that answers it, its questions with their documents): the
    article's eval questions, and squad-dev's check articles (indexed into `work`) when present."""
    from assistant.tools.evaluation import assistant_for, index_sets, load_set
    from assistant.tools.fitting import sample

    sets: dict[str, tuple[Any, list[tuple[str, str | None]]]] = {
        "article": (assistant, [(q, None) for q in _questions(plan.warm_questions)])}
    if not SQUAD_DEV.is_file():
        log(f"no squad-dev questions at {SQUAD_DEV}: warm answers over the article's questions only")
        return sets
    log("indexing squad-dev's check articles")
    check = load_set(SQUAD_DEV, "check")
    index_sets([check], assistant.settings, work / "check")
    items = sample(list(check.items), plan.check_questions, per_set=True)
    sets["squad-dev check"] = (assistant_for(check, assistant, work / "check"), [(i.question, i.doc_id) for i in items])
    return sets


def measure_warm(sets: dict[str, tuple[Any, list[tuple[str, str | None]]]], plan: Plan,
                 log: Log) -> tuple[list[Metric], list[float]]:
    """p50 and p95 over every set's questions together (the goals), and for each set alone."""
    for assistant, questions in sets.values():
        _timed(assistant, *questions[0])  # the first answer pays one-off costs; warm means after it
    times: dict[str, list[list[float]]] = {name: [] for name in sets}
    for run in range(plan.runs):
        for name, (assistant, questions) in sets.items():
            log(f"warm answers ({run + 1}/{plan.runs}): {name}, {len(questions)} questions")
            times[name].append([_timed(assistant, q, doc) for q, doc in questions])
    both = [sum((times[name][run] for name in sets), []) for run in range(plan.runs)]
    note = " + ".join(f"{len(q)} {name}" for name, (_, q) in sets.items()) + " questions per run"
    metrics = [Metric("warm answer p50", "s", stat([percentile(t, 0.5) for t in both]), 0.8, note),
               Metric("warm answer p95", "s", stat([percentile(t, 0.95) for t in both]), 1.5, note)]
    if len(sets) > 1:
        metrics += [Metric(f"warm answer {label} ({name})", "s", stat([percentile(t, q) for t in runs]))
                    for name, runs in times.items() for label, q in (("p50", 0.5), ("p95", 0.95))]
    return metrics, sum(both, [])


def _timed(assistant: Any, question: str, doc: str | None) -> float:
    began = time.perf_counter()
    assistant.ask(question, doc_id=doc)
    return time.perf_counter() - began


def _prompt(assistant: Any, question: str) -> Prompt:
    """The prompt the pipeline asks `question` with: over every evidence window for span
    decoding, over the best one for free decoding."""
    return assistant.prompt(question, assistant.evidence(question)[2])


def _raw_generation(llm: Any, prompt: Prompt, n_tokens: int) -> float:
    """Plain llama-cpp-python: greedy generation of `n_tokens` tokens after `prompt`, with the
    library's own reuse of the prompt prefix already in its cache (as the pipeline has)."""
    began = time.perf_counter()
    ids = [t for text, special in prompt.parts for t in llm.tokenize(text.encode(), add_bos=False, special=special)]
    for produced, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1), start=1):
        if produced >= n_tokens:
            break
    return time.perf_counter() - began


def measure_overhead(base: Any, settings: Settings, plan: Plan, log: Log) -> tuple[list[Metric], dict]:
    from llama_cpp import Llama

    from assistant.answering import Assistant

    # The same threads as the pipeline: llama.cpp runs one-token steps on n_threads, batches on n_threads_batch.
    raw = Llama(model_path=str(settings.model_path()), n_ctx=settings.n_ctx,
                n_threads=settings.step_threads or settings.n_threads,
                n_threads_batch=settings.n_threads, verbose=False)
    questions = _questions(plan.overhead_questions)
    metrics, detail = [], {}
    # Both models start with the shared prompt head in their cache, as in a running assistant.
    _raw_generation(raw, _prompt(base, questions[0]), 1)
    for mode in ("span", "free"):
        pipeline = Assistant(settings.model_copy(update={"decoding": mode}), share=base)
        pipeline.ask(questions[0])
        log(f"overhead ratio, {mode} decoding ({len(questions)} questions)")
        ratios, detail[mode] = _overhead_run(pipeline, raw, questions)
        evaluated, out_tokens = detail[mode]["llm_tokens_per_question"], detail[mode]["answer_tokens"]
        metrics.append(Metric(f"overhead ratio ({mode})", "x", stat(ratios), 1.15,
                              f"sum ratio {detail[mode]['aggregate_ratio']:.2f}; model evaluated median "
                              f"{evaluated['median']:.0f} tokens per question vs {out_tokens['median']:.0f} answer "
                              f"tokens; {detail[mode]['skipped']} abstained, skipped"))
    del raw
    gc.collect()
    return metrics, detail


def _overhead_run(pipeline: Any, raw: Any, questions: list[str]) -> tuple[list[float], dict]:
    """Per answered question, the pipeline's seconds over raw generation of as many tokens."""
    ratios, totals, raws, evaluated, out_tokens, skipped = [], 0.0, 0.0, [], [], 0
    for q in questions:
        before = pipeline.llm.evaluated
        began = time.perf_counter()
        answer = pipeline.ask(q)
        seconds = time.perf_counter() - began
        if answer.abstained:
            skipped += 1  # no answer tokens to match
            continue
        n = max(len(pipeline.llm.tokens(_MARKERS.sub("", answer.answer))), 1)
        raw_s = _raw_generation(raw, _prompt(pipeline, answer.question), n)
        ratios.append(seconds / raw_s)
        totals, raws = totals + seconds, raws + raw_s
        evaluated.append(pipeline.llm.evaluated - before)
        out_tokens.append(n)
    if not ratios:
        raise AssistantError(f"every question was abstained in {pipeline.settings.decoding} mode; no overhead ratio")
    return ratios, {"aggregate_ratio": totals / raws, "pipeline_s": totals, "raw_s": raws, "skipped": skipped,
                    "llm_tokens_per_question": asdict(stat(evaluated)), "answer_tokens": asdict(stat(out_tokens))}


def retrieval_times(assistant: Any, questions: list[str]) -> list[float]:
    """Seconds per question for the query embedding, hybrid retrieval, sentence ranking and windows."""
    times = []
    for q in [questions[0], *questions]:  # the first one warms the BM25 files
        began = time.perf_counter()
        assistant.evidence(q)
        times.append(time.perf_counter() - began)
    return times[1:]


def measure_retrieval(assistant: Any, index_dir: Path, settings: Settings, plan: Plan, words: int,
                      log: Log) -> list[Metric]:
    from assistant.answering import Assistant

    local = Assistant(settings.model_copy(update={"index_dir": index_dir}), share=assistant)
    questions = _questions(plan.warm_questions)
    p50 = []
    for run in range(plan.runs):
        log(f"retrieval latency over {words:,} words ({run + 1}/{plan.runs})")
        p50.append(percentile(retrieval_times(local, questions), 0.5) * 1000)
    return [Metric(f"retrieval p50 ({words:,} words)", "ms", stat(p50), 50.0,
                   f"{len(local.index.chunks)} chunks, {len(local.index.sentences)} sentences; "
                   "embed + hybrid + sentence rank + windows")]


def held_files() -> tuple[int, float]:
    """This process's open file descriptors, and the MB of deleted files they keep on disk."""
    count, deleted = 0, {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            info = os.stat(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own descriptor among them)
            continue
        count += 1
        if target.endswith(" (deleted)"):
            deleted[(info.st_dev, info.st_ino)] = info.st_size
    return count, sum(deleted.values()) / 1e6


def rss_mb() -> float:
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024 / 1e6 if found else 0.0


def measure_uploads(base: Any, index_dir: Path, plan: Plan, work: Path, log: Log) -> list[Metric]:
    """Documents uploaded one after another through the UI's own upload handler, into a copy of
    `index_dir`: what each upload costs, and whether the process holds more files after them."""
    import shutil

    from assistant.answering import Assistant
    from assistant.ui import Chat

    shutil.copytree(index_dir, work / "uploads-index")
    settings = base.settings.model_copy(update={"index_dir": work / "uploads-index"})
    chat = Chat(settings, Assistant(settings, share=base))
    gc.collect()
    (fds, deleted), rss = held_files(), rss_mb()
    seconds = []
    log(f"{plan.uploads} uploads through the UI's upload handler")
    for i in range(plan.uploads):
        doc = work / "uploads" / str(i) / f"upload-{i}.txt"
        doc.parent.mkdir(parents=True)
        doc.write_text(generated_text(60, seed=1000 + i), encoding="utf-8")
        began = time.perf_counter()
        chat.upload(str(doc), progress=lambda *_, **__: None)
        seconds.append(time.perf_counter() - began)
    gc.collect()
    (fds_end, deleted_end), rss_end = held_files(), rss_mb()
    done = f"after {plan.uploads} uploads"
    return [Metric("upload through the UI", "s", stat(seconds), None,
                   f"a 60-word document into the article's index, reload included; {plan.uploads} one after another"),
            Metric("open files after uploads", "fds", stat([fds_end]), None, f"{fds} before, {fds_end} {done}"),
            Metric("deleted files held after uploads", "MB", stat([deleted_end]), None,
                   f"{deleted:.1f} before, {deleted_end:.1f} {done}"),
            Metric("RSS after uploads", "MB", stat([rss_end]), None, f"{rss:.0f} before, {rss_end:.0f} {done}")]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _cut(text: str, words: int) -> str:
    """The first paragraphs of `text` holding at least `words` words."""
    kept, count = [], 0
    for paragraph in text.split("\n\n"):
        kept.append(paragraph)
        count += len(paragraph.split())
        if count >= words:
            break
    return "\n\n".join(kept)


def measure_scaling(article: str, settings: Settings, plan: Plan, work: Path, log: Log) -> list[dict]:
    """The article plus generated text to k times its size, indexed and asked in this process."""
    from assistant.answering import Assistant
    from assistant.indexing import index_documents
    from assistant.loading import Document

    if plan.scale_base_words is not None:
        article = _cut(article, plan.scale_base_words)
    base_words = len(article.split())
    rows = []
    for k in plan.scales:
        text = article if k == 1 else article + "\n\n" + generated_text((k - 1) * base_words, seed=k)
        log(f"scaling {k}x: indexing {len(text.split()):,} words")
        local = settings.model_copy(update={"index_dir": work / f"scale-{k}"})
        doc = Document(f"scale-{k}.txt", text, hashlib.sha256(text.encode()).hexdigest())
        report = index_documents([doc], local)
        assistant = Assistant(local)
        questions = _questions(plan.scale_questions)
        assistant.ask(questions[0])
        answers = [assistant.ask(q) for q in questions]
        retrieval = retrieval_times(assistant, questions)
        rows.append({
            "scale": k, "words": len(text.split()), "chunks": report.chunks, "sentences": report.sentences,
            "index_s": report.seconds, "index_bytes": _folder_bytes(local.index_dir),
            "answer_s": asdict(stat([a.timing.total_s for a in answers])),
            "generation_s": asdict(stat([a.timing.generate_s for a in answers])),
            "retrieval_ms": asdict(stat([t * 1000 for t in retrieval])),
        })
        del assistant
        gc.collect()
    return rows


def measure_attention(settings: Settings, sentences: list[str], plan: Plan, log: Log) -> list[Metric]:
    """sentence-transformers with eager vs SDPA attention: one query at a time, and batches."""
    from sentence_transformers import SentenceTransformer

    queries = _questions(plan.embed_queries)
    texts = (sentences * (plan.embed_batch_texts // max(len(sentences), 1) + 1))[: plan.embed_batch_texts]
    metrics = []
    for impl in ("eager", "sdpa"):
        log(f"embedding speed, {impl} attention")
        model = SentenceTransformer(str(settings.embedding_path()), device="cpu",
                                    model_kwargs={"attn_implementation": impl})
        model.encode(queries[:2])
        per_query = []
        for q in queries:
            began = time.perf_counter()
            model.encode(q)
            per_query.append((time.perf_counter() - began) * 1000)
        rates = []
        for _ in range(plan.runs):
            began = time.perf_counter()
            model.encode(texts, batch_size=settings.embed_batch_size)
            rates.append(len(texts) / (time.perf_counter() - began))
        metrics += [Metric(f"embed one query ({impl})", "ms", stat(per_query)),
                    Metric(f"embed batch of {settings.embed_batch_size} ({impl})", "texts/s", stat(rates), None,
                           f"{len(texts)} sentences; higher is better")]
        del model
        gc.collect()
    return metrics


# ---------------------------------------------------------------- the whole run

@dataclass(frozen=True)
class Results:
    meta: dict
    metrics: list[Metric]
    cold_breakdown: dict
    overhead: dict
    scaling: list[dict]
    warm_seconds: list[float]

    def to_json(self) -> dict:
        return {"meta": self.meta, "metrics": [asdict(m) | {"met": m.met} for m in self.metrics],
                "cold_breakdown": self.cold_breakdown, "overhead": self.overhead, "scaling": self.scaling,
                "warm_seconds": self.warm_seconds}


def run_bench(settings: Settings, plan: Plan, log: Log) -> Results:
    from assistant.answering import Assistant
    from assistant.chunking import split_sentences
    from assistant.loading import load_document

    began, load_before = time.time(), os.getloadavg()
    article = load_document(DEFAULT_CORPUS, settings.max_file_mb).text
    with tempfile.TemporaryDirectory(prefix="assistant-bench-") as tmp:
        work = Path(tmp)
        env = child_env(settings)
        docs = {"article": DEFAULT_CORPUS}
        if plan.big_words:
            docs["generated"] = work / f"generated-{plan.big_words}.txt"
            docs["generated"].write_text(generated_text(plan.big_words, seed=0), encoding="utf-8")
        metrics, built = measure_indexing(docs, env, plan, work, log)
        metrics += measure_largest(plan, env, work, log)
        metrics += measure_many_files(env, plan, work, log)
        cold, breakdown = measure_cold(built["article"], env, plan, log)
        metrics += cold
        log("loading the pipeline in this process")
        base = Assistant(settings.model_copy(update={"index_dir": built["article"]}))
        warm, warm_seconds = measure_warm(warm_sets(base, plan, work, log), plan, log)
        metrics += warm
        overhead, overhead_detail = measure_overhead(base, base.settings, plan, log)
        metrics += overhead
        largest = "generated" if plan.big_words else "article"
        words = len(docs[largest].read_text(encoding="utf-8").split())
        metrics += measure_retrieval(base, built[largest], settings, plan, words, log)
        metrics += measure_uploads(base, built["article"], plan, work, log)
        metrics += measure_attention(settings, [s.text for s in split_sentences("article", article)], plan, log)
        del base
        gc.collect()
        scaling = measure_scaling(article, settings, plan, work, log)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)), "seconds": round(time.time() - began, 1),
        "runs": plan.runs, "plan": asdict(plan), "cpus": os.cpu_count(), "threads": settings.n_threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "model": settings.model_path().name, "embedding": "/".join(settings.embedding_path().parts[-2:]),
        "python": sys.version.split()[0],
    }
    return Results(meta, metrics, breakdown, overhead_detail, scaling, warm_seconds)


# ---------------------------------------------------------------- output

def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def table_rows(results: Results) -> Iterator[tuple[str, ...]]:
    for m in results.metrics:
        goal = "" if m.goal is None else f"<= {_fmt(m.goal)}"
        verdict = {None: "", True: "met", False: "MISSED"}[m.met]
        yield (m.name, _fmt(m.stat.median), _fmt(m.stat.min), _fmt(m.stat.max), m.unit, goal, verdict)


def scaling_rows(results: Results) -> Iterator[tuple[str, ...]]:
    for r in results.scaling:
        yield (f"{r['scale']}x", f"{r['words']:,}", str(r["chunks"]), f"{r['index_s']:.1f}",
               f"{r['index_bytes'] / 1e6:.1f}", _fmt(r["answer_s"]["median"]), _fmt(r["generation_s"]["median"]),
               _fmt(r["retrieval_ms"]["median"]))


METRIC_HEADER = ("measure", "median", "min", "max", "unit", "goal", "")
SCALING_HEADER = ("size", "words", "chunks", "index s", "index MB", "answer s", "generation s", "retrieval ms")


def print_results(results: Results) -> None:
    print_table(f"assistant bench, {results.meta['date']}", METRIC_HEADER, table_rows(results), flagged="MISSED")
    print_table("Scaling (medians)", SCALING_HEADER, scaling_rows(results))


def _misses(results: Results) -> list[str]:
    """One line per missed goal: by how much, and what the measurements say about why."""
    lines = []
    breakdown = results.cold_breakdown
    for m in results.metrics:
        if m.met is not False or m.goal is None:
            continue
        over = (m.stat.median / m.goal - 1) * 100
        why = m.note
        if m.name.startswith("cold start"):
            parts = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v['median']:.2f} s"
                              for k, v in breakdown.items())
            why = f"phases run one after another: {parts}. The model load overlaps the imports in the real command."
        lines.append(f"- **{m.name}**: median {_fmt(m.stat.median)} {m.unit} vs goal {_fmt(m.goal)} "
                     f"({over:+.0f}%). {why}")
    return lines or ["- none"]


def markdown(results: Results) -> str:
    meta = results.meta
    load = f"load average {meta['load_average_before'][0]} before, {meta['load_average_after'][0]} after"
    return "\n\n".join([
        f"# assistant bench, {meta['date']}",
        f"{meta['cpus']} CPUs, {meta['threads']} llama.cpp threads, {load}; {meta['runs']} runs; "
        f"took {meta['seconds']} s. "
        f"Model {meta['model']}, embeddings {meta['embedding']}. Medians with min and max over runs; other "
        "work on the machine inflates times.",
        markdown_table(METRIC_HEADER, table_rows(results)),
        f"## Scaling\n\nThe article, then the article plus generated text to "
        f"{', '.join(str(r['scale']) + 'x' for r in results.scaling[1:])} its size. "
        "Answer, generation and retrieval are medians over the questions.",
        markdown_table(SCALING_HEADER, scaling_rows(results)),
        "## Missed goals\n\n" + "\n".join(_misses(results)),
        "![chart](chart.png)",
    ]) + "\n"


def _cold_bars(ax: Any, results: Results) -> None:
    """The cold start's phases one after another, beside the whole `assistant ask`."""
    names = list(results.cold_breakdown)
    values = [results.cold_breakdown[k]["median"] for k in names]
    cold = next(m for m in results.metrics if m.name.startswith("cold start"))
    left = 0.0
    for name, value in zip(names, values):
        ax.barh("phases", value, left=left, label=name.removesuffix("_s").replace("_", " "))
        left += value
    ax.barh("assistant ask", cold.stat.median, color="black")
    ax.axvline(COLD_GOAL_S, color="red", linestyle="--", label="goal")
    ax.set_xlabel("seconds")
    ax.set_title("Cold start")
    ax.legend(fontsize=7)


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _cold_bars(axes[0][0], results)
    ax = axes[0][1]
    ax.hist(results.warm_seconds, bins=20)
    ax.set_xlabel("seconds per answer")
    ax.set_title(f"Warm answers ({len(results.warm_seconds)})")
    ax = axes[1][0]
    words = [r["words"] for r in results.scaling]
    for key, label in (("answer_s", "answer s"), ("generation_s", "generation s")):
        ax.plot(words, [r[key]["median"] for r in results.scaling], marker="o", label=label)
    ax.plot(words, [r["retrieval_ms"]["median"] / 1000 for r in results.scaling], marker="o", label="retrieval s")
    ax.set_xlabel("document words")
    ax.set_title("Latency by document size")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    ax.plot(words, [r["index_bytes"] / 1e6 for r in results.scaling], marker="o", label="index MB")
    ax.plot(words, [r["index_s"] for r in results.scaling], marker="o", label="index s")
    ax.set_xlabel("document words")
    ax.set_title("Index size and time")
    ax.legend(fontsize=7)
    fig.suptitle(f"assistant bench {results.meta['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save(results: Results, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = results.meta["date"].replace(" ", "T").replace(":", "")
    paths = [out / f"{stamp}.json", out / "latest.md", out / "chart.png"]
    paths[0].write_text(json.dumps(results.to_json(), indent=2), encoding="utf-8")
    paths[1].write_text(markdown(results), encoding="utf-8")
    chart(results, paths[2])
    return paths


def _main(argv: list[str]) -> None:
    """Entry for the child processes the benchmark starts."""
    import assistant  # noqa: F401  (offline variables first)

    children = {"index": _index_child, "phases": _phases_child}
    if len(argv) != 3 or argv[0] not in children:
        raise SystemExit("usage: python -m assistant.tools.benchmark index DOC INDEX_DIR | phases INDEX_DIR QUESTION")
    children[argv[0]](*argv[1:])


if __name__ == "__main__":
    _main(sys.argv[1:])
