"""The answer-quality gate: a fixed sample of squad-dev's `check` articles (Wikipedia, questions
written by people outside this project, about half unanswerable), answered by the real pipeline
with the shipped reader and its fitted gate. Skipped when ../shared/squad-dev is absent.

Measured on this sample (29 answerable, 31 unanswerable): overall 0.500 (30 of 60), accuracy
0.724 (21 of 29), abstention 0.290 (9 of 31), false abstention 0.000 (0 of 29). Each floor fails
if two or three more of its questions go wrong; the README has the whole `check` split.
"""

import json

import pytest

from assistant.cli import main
from assistant.settings import SQUAD_DEV

pytestmark = pytest.mark.slow

SAMPLE = 60
FLOORS = {"overall": 0.45, "accuracy": 0.62, "abstention_recall": 0.20}
CEILINGS = {"false_abstention": 0.10}


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"no squad-dev question set at {SQUAD_DEV}")
def test_a_sample_of_the_check_articles_meets_the_floors(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [
        "eval", "--questions", f"{SQUAD_DEV}:check", "--limit", str(SAMPLE), "--no-ablations", "--no-cache",
        "--out", str(tmp_path / "report"),
        "--min-overall", str(FLOORS["overall"]), "--min-accuracy", str(FLOORS["accuracy"]),
        "--min-abstention", str(FLOORS["abstention_recall"]),
        "--max-false-abstention", str(CEILINGS["false_abstention"]),
    ])
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    summary = report["sets"][0]["summary"]
    print({k: summary[k] for k in (*FLOORS, *CEILINGS, "items", "median_words")})
    assert result.exit_code == 0, result.output
    assert summary["items"] == SAMPLE
    assert summary["phantom_markers"] == 0
