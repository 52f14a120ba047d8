"""A bounded load test of the running UI, loopback only: concurrent requests, then a leak check.

Talks to the app's API with gradio's client (the same queue the page uses). The counts are fixed and
every wait has a deadline, so the test stops by itself.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client

from assistant.tools.evaluation import load_set

pytestmark = [pytest.mark.server, pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts"
QUESTIONS = Path(__file__).parents[1] / "eval" / "questions.jsonl"
CONCURRENT = 20
SEQUENTIAL = 120  # after a first pass over every question, which fills the caches and llama.cpp's buffers
LEAK_LIMIT_MB = 60  # allocator noise settles well under this; a leak of 0.5 MB an answer would not


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def answered(result: tuple) -> bool:
    text = result[0][-1]["content"][0]["text"]
    return 'class="answer"' in text or 'class="abstain"' in text


def test_concurrent_requests_all_answered_and_memory_stays_flat(ui_server):
    questions = [item.question for item in load_set(QUESTIONS, "all").items]  # asked, never checked against answers
    clients = [Client(ui_server.url, verbose=False) for _ in range(CONCURRENT)]
    began = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(lambda i: clients[i].predict(questions[i], [], "article.txt", api_name="/ask"),
                                range(CONCURRENT)))
    concurrent_s = time.monotonic() - began
    assert all(answered(r) for r in results)

    client = clients[0]
    ask = lambda q: answered(client.predict(q, [], "article.txt", api_name="/ask"))  # noqa: E731
    # Memory grows in the first pass over the questions (~130 MB measured in one process, flat over
    # the next passes): caches and buffers sized by the largest batch yet. Growth after it is a leak.
    assert all(ask(q) for q in questions)
    start_mb = rss_mb(ui_server.pid)
    began = time.monotonic()
    for i in range(SEQUENTIAL):
        assert ask(questions[i % len(questions)])
        assert time.monotonic() - began < 600, f"only {i} questions in 600 s"
    sequential_s = time.monotonic() - began
    end_mb = rss_mb(ui_server.pid)

    ARTIFACTS.mkdir(exist_ok=True)
    report = {"concurrent": CONCURRENT, "concurrent_s": round(concurrent_s, 1), "sequential": SEQUENTIAL,
              "sequential_s": round(sequential_s, 1), "rss_start_mb": round(start_mb, 1),
              "rss_end_mb": round(end_mb, 1)}
    (ARTIFACTS / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(report)
    assert end_mb - start_mb < LEAK_LIMIT_MB, report
