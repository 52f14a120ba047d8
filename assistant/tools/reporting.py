"""Write an evaluation report into a folder: report.json, report.md and chart.png.

Takes metrics that evaluation.py has already computed (`summarise`, `by_kind`, `record`) and only lays
them out. Does not run the pipeline, does not compute or re-derive any metric, and does not print.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.tools.evaluation import UNANSWERABLE
from assistant.tools.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MISSING = "–"
KIND_COLUMNS = ("items", "overall", "accuracy", "token_f1", "cited_evidence", "evidence_coverage", "abstention_recall",
                "false_abstention", "median_words")
ABLATION_COLUMNS = ("accuracy", "cited_evidence", "citation_precision", "abstention_f1", "false_abstention",
                    "median_words", "total_p50_s")
SET_BARS = ("overall", "accuracy", "abstention_recall", "false_abstention")
CONFIG_BARS = ("accuracy", "cited_evidence", "abstention_f1")
WORST = 10


SIDE_BY_SIDE = ("items", "overall", "accuracy", "exact_match", "squad_f1", "abstention_recall", "false_abstention",
                "cited_evidence", "citation_precision", "phantom_markers", "evidence_in_windows",
                "evidence_sentence@1", "median_words", "total_p50_s", "total_p95_s")


def write_report(out: Path, sets: list[dict], meta: dict) -> list[Path]:
    """Write report.json, report.md and chart.png into `out` and return their paths. Each of
    `sets` has name, summary, documents, kinds, ablations and items (records)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "chart.png"]
    paths[0].write_text(json.dumps({"meta": meta, "sets": sets}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(sets, meta), encoding="utf-8")
    chart(paths[2], sets)
    return paths


def markdown(sets: list[dict], meta: dict) -> str:
    rows = [[metric] + [fmt(s["summary"].get(metric), metric) for s in sets] for metric in SIDE_BY_SIDE]
    parts = ["# Evaluation report", _meta_lines(meta), "## Every set (default configuration)",
             markdown_table(["metric", *(s["name"] for s in sets)], rows, labels=1)]
    for s in sets:
        parts += [f"## {s['name']}"]
        if s.get("documents"):
            rows = [[doc] + [fmt(m.get(c), c) for c in KIND_COLUMNS] for doc, m in s["documents"].items()]
            parts += ["### By document", markdown_table(["document", *KIND_COLUMNS], rows, labels=1)]
        if s.get("kinds"):
            rows = [[kind] + [fmt(m.get(c), c) for c in KIND_COLUMNS] for kind, m in s["kinds"].items()]
            parts += ["### By kind", markdown_table(["kind", *KIND_COLUMNS], rows, labels=1)]
        if s.get("ablations"):
            rows = [[a["name"], _settings(a.get("settings", {}))] + [fmt(a.get(c), c) for c in ABLATION_COLUMNS]
                    for a in s["ablations"]]
            parts += ["### Configurations", markdown_table(["name", "settings", *ABLATION_COLUMNS], rows, labels=2)]
        parts += ["### Worst misses", _misses(s.get("items", []))]
    return "\n\n".join(parts) + "\n"


def _meta_lines(meta: dict) -> str:
    seconds = meta.get("seconds")
    lines = [
        f"- Sets: {', '.join(f'`{q}`' for q in meta.get('sets', [])) or MISSING}",
        f"- Model: `{meta.get('model', MISSING)}`",
        f"- Fitted ranker and gates: `{meta.get('fitted', MISSING)}`",
        f"- Run time: {MISSING if seconds is None else f'{seconds:.1f} s'}",
        f"- Date: {meta.get('date', MISSING)}",
    ]
    return "\n".join(lines)


def fmt(value: object, metric: str = "") -> str:
    """A metric value for a table: ratios to 3 decimals, seconds to 2, counts as integers, None as a dash."""
    if value is None:
        return MISSING
    if not isinstance(value, float):
        return str(value)
    if metric in ("median_words", "llm_tokens_per_s"):
        return f"{value:.1f}"
    if metric.endswith("_s"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def _settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "default"



def worst_misses(records: list[dict], limit: int = WORST) -> list[dict]:
    """Wrong items, answerable ones first (a wrong answer costs more than a missed abstention), lowest F1 first."""
    wrong = [r for r in records if r.get("correct") is False]
    return sorted(wrong, key=lambda r: (r.get("kind") == UNANSWERABLE, r.get("f1") or 0.0))[:limit]


def _misses(records: list[dict]) -> str:
    misses = worst_misses(records)
    if not misses:
        return "None: every item was correct."
    return "\n".join(_miss(r) for r in misses)


def _miss(r: dict) -> str:
    given = "(abstained)" if r.get("abstained") else f"“{_inline(r.get('answer', ''))}”"
    accepted = ", ".join(f"“{_inline(a)}”" for a in r.get("accepted") or []) or "none (unanswerable)"
    return (f"- **{_inline(r.get('id', '?'))}** ({r.get('kind', '?')}, F1 {fmt(r.get('f1'))}): "
            f"{_inline(r.get('question', ''))}  \n  answered: {given}; accepted: {accepted}")


def _inline(text: object) -> str:
    return " ".join(str(text).split())


def chart(path: Path, sets: list[dict]) -> None:
    """Two grouped bar panels: every set (left) and the configurations of the first set that has them (right)."""
    # Imported here so that importing the module (and running the CLI) does not pay for matplotlib;
    # a bare Figure on the Agg canvas leaves pyplot's global backend and figure registry alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    configs: list[dict] = next((s["ablations"] for s in sets if len(s.get("ablations", [])) > 2), [])
    _bars(left, [s["name"] for s in sets], [s["summary"] for s in sets], SET_BARS,
          "By question set (default configuration)")
    _bars(right, [c["name"] for c in configs], configs, CONFIG_BARS, "By configuration")
    fig.tight_layout()
    fig.savefig(path)


def _bars(ax: "Axes", labels: list[str], rows: list[dict], metrics: tuple[str, ...], title: str) -> None:
    ax.set_ylim(0, 1)
    if not labels:
        ax.set_title(title)
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [n + (i - (len(metrics) - 1) / 2) * width for n in range(len(labels))]
        ax.bar(xs, [row.get(metric) or 0.0 for row in rows], width, label=metric)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", rotation_mode="anchor")
    # With one or two groups the bars would otherwise stretch across the whole panel.
    pad = max(0.0, (3 - len(labels)) / 2)
    ax.set_xlim(-0.5 - pad, len(labels) - 0.5 + pad)
    ax.grid(axis="y", alpha=0.3)
    # The legend sits between title and plot so that long rotated labels below cannot collide with it.
    ax.set_title(title, pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(metrics), frameon=False)
