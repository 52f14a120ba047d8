"""`assistant ui` in a real headless chromium (Debian's, driven by Playwright), over loopback only.

The server is conftest's `ui_server`: the real command in a subprocess, on a free port, over a copy
of the session index (the upload test adds a document to it). Needs /usr/bin/chromium: `make test` installs it.
"""

import html
import os
import re
from pathlib import Path

import pytest

from assistant.citations import MARKER
from assistant.settings import DEFAULT_CORPUS, Settings
from assistant.ui import read_examples, span_id

pytestmark = pytest.mark.server  # every test here talks to conftest's ui_server

CHROMIUM = Path(os.environ.get("ASSISTANT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = Path(__file__).parent / "artifacts"
ANSWER_TIMEOUT_MS = 120_000
CEASEFIRE = "How long a ceasefire did Trump call for?"  # dev: q011, in other words


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run 'make test' or 'bash scripts/install-browser.sh'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_server):
    """A fresh page on the app; fails the test if it asks anything of a host other than loopback."""
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not _loopback(r.url) else None)
    page.goto(ui_server.url)
    page.wait_for_selector("#question textarea")
    yield page
    context.close()
    assert not outside, f"the page requested hosts off this machine: {outside}"


def _loopback(url: str) -> bool:
    return not url.startswith("http") or re.match(r"https?://(127\.0\.0\.1|localhost|\[::1\])[:/]", url) is not None


def ask(page, question: str) -> None:
    count = page.locator("#chat .bot-row").count()
    page.fill("#question textarea", question)
    page.keyboard.press("Enter")
    page.wait_for_function(
        """([n]) => {
            const bots = document.querySelectorAll("#chat .bot-row");
            if (bots.length <= n) return false;
            const last = bots[bots.length - 1];
            return !!last.querySelector(".answer, .abstain, .failed");
        }""", arg=[count])


def last_answer(page):
    return page.locator("#chat .bot-row").last


@pytest.mark.browser
def test_answer_with_chip_click_shows_the_exact_span(page):
    ARTIFACTS.mkdir(exist_ok=True)
    ask(page, CEASEFIRE)
    answer = last_answer(page)
    assert "thirty-day" in answer.inner_text().lower()
    chip = answer.locator("a.cite-chip").first
    target = chip.get_attribute("href")[1:]
    chip.click()
    page.wait_for_selector("#source mark.active")
    active = page.locator("#source mark.active")
    assert active.get_attribute("id") == target
    start, end = map(int, target.rsplit("-", 2)[1:])
    article = DEFAULT_CORPUS.read_text(encoding="utf-8")
    assert active.inner_text() == article[start:end]
    assert article[start:end] in page.locator("#citations blockquote").first.inner_text()
    copied = page.locator("#source mark.active mark.answer-span")
    assert copied.count() == 1 and copied.inner_text() in article[start:end]
    assert copied.inner_text().lower() in answer.inner_text().lower()
    page.wait_for_function("() => { const r = document.querySelector('#source mark.active').getBoundingClientRect();"
                           " const p = document.querySelector('#source .doc-text').getBoundingClientRect();"
                           " return r.top >= p.top && r.bottom <= p.bottom; }")  # scrolled into the pane's view
    page.locator("#details-panel").get_by_text("Retrieval details").click()
    page.wait_for_selector("#details table.details")
    page.screenshot(path=str(ARTIFACTS / "ui-answered.png"), full_page=True)


@pytest.mark.browser
def test_unanswerable_question_shows_the_abstention_state(page):
    ask(page, "What is the capital of Australia?")
    answer = last_answer(page)
    assert answer.locator(".abstain").inner_text().startswith("The document does not say.")
    assert answer.locator("a.cite-chip").count() == 0
    assert page.locator(".toast-body").count() == 0  # a calm state, not an error
    page.screenshot(path=str(ARTIFACTS / "ui-abstained.png"), full_page=True)


@pytest.mark.browser
def test_the_latest_answers_highlight_is_scrolled_into_view(page):
    """Its span is far down the article, below the first answer's: the pane follows the latest answer."""
    ask(page, CEASEFIRE)
    ask(page, "Who is the director of the New Europe Center in Kyiv?")
    assert "Getmanchuk" in last_answer(page).inner_text()
    page.wait_for_function("() => { const m = document.querySelector('#source mark.hl.current');"
                           " const p = document.querySelector('#source .doc-text').getBoundingClientRect();"
                           " if (!m) return false; const r = m.getBoundingClientRect();"
                           " return r.top >= p.top && r.bottom <= p.bottom; }", timeout=10_000)
    assert "Getmanchuk" in page.locator("#source mark.hl.current").first.inner_text()


@pytest.mark.slow
def test_ten_simultaneous_questions_are_all_answered_with_their_own_citations(ui_server, gated):
    """Through the app's queue (gradio's client, ten sessions at once); runs before the upload test,
    so the server's index still holds only the article, as the in-process Assistant's does."""
    from gradio_client import Client

    # Questions of the dev split, or about nothing in the article; none of the test split.
    questions = ["How many days long was the ceasefire Putin offered over the May 9th celebrations?",
                 "On which platform did Trump post his “Vladimir, STOP!” message?",
                 "Which Brazilian leader is expected to attend the celebrations?", "What is the capital of Australia?",
                 "In what year did Russia launch its full-scale invasion of Ukraine?",
                 "Which Chinese leader is expected to attend Putin's celebrations in Moscow this year?",
                 "How long is the ceasefire that Donald Trump has called for as a step toward ending the war?",
                 "How tall is the Eiffel Tower?", "In which city was Pope Francis's funeral held?",
                 "In which square in Moscow will Putin oversee the victory parade?"]
    clients = [Client(ui_server.url, verbose=False) for _ in questions]
    jobs = [c.submit(q, [], "article.txt", api_name="/ask") for c, q in zip(clients, questions)]
    results = [job.result(timeout=600) for job in jobs]
    for q, (history, *_), want in zip(questions, results, [gated.ask(q) for q in questions]):
        shown = history[-1]["content"][0]["text"]
        assert history[-2]["content"][0]["text"] == html.escape(q)
        chips = sorted(re.findall(r'href="#([^"]+)"', shown))
        assert chips == sorted(span_id(c) for c in want.citations), q
        assert html.escape(MARKER.sub("", want.answer).strip()) in shown, q


@pytest.mark.browser
def test_example_question_and_clear_chat(page):
    example = read_examples(Settings().examples_file)[0]
    page.get_by_role("button", name=re.compile(re.escape(example[:40]))).first.click()
    page.wait_for_function("([q]) => document.querySelector('#question textarea').value === q", arg=[example])
    page.click("#ask")
    page.wait_for_selector("#chat .answer, #chat .abstain")
    page.click("#clear")
    page.wait_for_function("() => !document.querySelector('#chat .answer, #chat .abstain')")


@pytest.mark.browser
def test_uploaded_document_becomes_active_and_answers(page, tmp_path):
    doc = tmp_path / "harbour.txt"
    doc.write_text("The old harbour lighthouse was built in 1871 by the engineer Ada Pike. "
                   "It was painted red in 1902, after a storm broke its lamp.\n", encoding="utf-8")
    page.set_input_files("#upload input[type=file]", str(doc))
    page.wait_for_function("() => document.querySelector('#upload-note').innerText.includes('Indexed')")
    assert page.input_value("#doc-select input") == "harbour.txt"
    assert "Ada Pike" in page.locator("#source .doc-text").inner_text()
    ask(page, "Who built the lighthouse?")
    answer = last_answer(page)
    assert "Ada Pike" in answer.inner_text()
    answer.locator("a.cite-chip").first.click()
    page.wait_for_selector("#source mark.active")
    assert "Ada Pike" in page.locator("#source mark.active").inner_text()
    page.screenshot(path=str(ARTIFACTS / "ui-uploaded.png"), full_page=True)
    # A page loaded afterwards (a reload, another tab) lists it too, and shows it when chosen.
    page.reload()
    page.click("#doc-select input")
    option = page.get_by_role("option", name="harbour.txt")
    option.click()
    page.wait_for_function("() => document.querySelector('#source .doc-title')?.innerText === 'harbour.txt'")


@pytest.mark.browser
def test_bad_upload_is_one_line_error_and_the_app_stays_up(page, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café crème ".encode("latin-1") * 20)
    page.set_input_files("#upload input[type=file]", str(bad))
    toast = page.locator("[data-testid=toast-text]").filter(has_text="UTF-8").first
    toast.wait_for()
    assert toast.inner_text().strip() == "latin1.txt is not UTF-8 text (bad byte at offset 3)"
    ask(page, CEASEFIRE)
    assert last_answer(page).locator("a.cite-chip").count() >= 1
