"""The chat in a real headless Chromium, driven by Playwright: what a person types, sees and clicks.

Chromium is Debian's (``tests/install-chromium.sh`` installs it; ``CHROMIUM=/path`` picks another).
Every wait is on a DOM condition, never a fixed time. ``pytest --update-screenshot`` also saves the
screenshot of the Hopper answer as docs/screenshot.png (the one the README shows).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from rag.chat import OFFLINE
from rag.pipeline import Rag
from rag.ui import EXAMPLES
from tests.conftest import INJECTED_QUESTION, REPO, PixelServer, serve_app

HOPPER = "Which papers target Hopper GPUs?"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = (
    120_000  # a generous bound for a busy 2-core machine; waits end as soon as the DOM is ready
)


def chromium() -> str:
    """The Chromium (or Chrome) binary to drive."""
    candidates = [
        os.environ.get("CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
        "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    ]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        pytest.fail("no Chromium: run `bash tests/install-chromium.sh` or set CHROMIUM=/path/to/it")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def app_url(rag: Rag) -> Iterator[str]:
    with serve_app(rag) as url:
        yield url


def ask(page: Page, question: str, turn: int) -> None:
    """Type ``question``, press Enter, and wait until answer ``turn`` and its sources are shown."""
    box = page.locator("#rag-question textarea")
    box.fill(question)
    box.press("Enter")
    page.wait_for_selector(f"#rag-sources #rag-t{turn}")
    page.wait_for_selector(f'#rag-chat a.rag-cite[href^="#rag-t{turn}-"]')


def texts(page: Page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent.trim())")


def keep(request: pytest.FixtureRequest, shot: Path, name: str) -> None:
    """With --update-screenshot, the screenshot becomes docs/NAME (the README shows them)."""
    assert shot.read_bytes().startswith(b"\x89PNG")
    if request.config.getoption("--update-screenshot"):
        shutil.copyfile(shot, REPO / "docs" / name)


def in_view(page: Page, selector: str, container: str) -> bool:
    """Whether the top of ``selector`` lies within what ``container`` shows."""
    return page.evaluate(
        """([selector, container]) => {
            const el = document.querySelector(selector).getBoundingClientRect();
            const box = document.querySelector(container).getBoundingClientRect();
            return el.top >= box.top - 1 && el.top < box.bottom;
        }""",
        [selector, container],
    )


def test_the_hopper_question(page: Page, app_url: str, rag: Rag, tmp_path: Path, request) -> None:
    expected = rag.ask(HOPPER, 8, model=OFFLINE)
    page.goto(app_url)
    index_line = page.locator(".rag-index").inner_text()
    assert "554 papers" in index_line and "all-MiniLM-L6-v2" in index_line
    ask(page, HOPPER, turn=1)

    assert page.locator("#rag-question textarea").input_value() == ""
    assert HOPPER in page.locator("#rag-chat").inner_text()
    markers = page.eval_on_selector_all(
        "#rag-chat a.rag-cite", "els => els.map(e => e.getAttribute('href'))"
    )
    assert sorted(set(markers)) == [f"#rag-t1-s{c.n}" for c in expected.citations]
    assert len(expected.citations) >= 2
    sources = page.locator("#rag-sources .rag-source")
    assert sources.evaluate_all("els => els.map(e => e.id)") == [
        f"rag-t1-s{c.n}" for c in expected.citations
    ]
    assert texts(page, "#rag-sources .rag-source .rag-title") == [
        c.title for c in expected.citations
    ]
    assert sources.evaluate_all("els => els.every(e => e.querySelector('mark'))")
    for link in page.locator("#rag-sources .rag-source .rag-meta a").all():
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("rel") == "noopener noreferrer"

    shot = tmp_path / "hopper.png"
    page.screenshot(path=shot)
    assert shot.read_bytes().startswith(b"\x89PNG")
    keep(request, shot, "screenshot.png")

    # A citation marker leads to its source: the last one, further down the sources panel.
    marker = page.locator("#rag-chat a.rag-cite").last
    target = marker.get_attribute("href")
    marker.click()
    page.wait_for_function("id => document.querySelector(':target')?.id === id", arg=target[1:])
    page.wait_for_function(
        """id => {
            const source = document.getElementById(id).getBoundingClientRect();
            const panel = document.getElementById('rag-sources').getBoundingClientRect();
            return source.top >= panel.top - 1 && source.top < panel.bottom;
        }""",
        arg=target[1:],
    )


def test_examples_follow_ups_and_new_chat(page: Page, app_url: str, rag: Rag) -> None:
    page.goto(app_url)
    page.get_by_text(EXAMPLES[0], exact=True).click()  # an example asks itself
    page.wait_for_selector("#rag-sources #rag-t1")
    second = rag.ask(HOPPER, 8, model=OFFLINE).citations[1]

    ask(page, "What about the second one?", turn=2)
    turns = page.eval_on_selector_all("#rag-sources .rag-turn", "els => els.map(e => e.id)")
    assert turns == ["rag-t2", "rag-t1"]  # the newest answer's sources first
    assert second.title in texts(page, "#rag-t2 .rag-source .rag-title")

    page.locator("#rag-new-chat").click()
    page.wait_for_selector("#rag-sources .rag-turn", state="detached")
    assert page.locator("#rag-chat a.rag-cite").count() == 0
    ask(page, HOPPER, turn=1)  # a new chat starts numbering again, with no history


def test_corpus_html_cannot_run_or_load_anything(
    page: Page, injected_rag: Rag, pixel: PixelServer
) -> None:
    dialogs: list[str] = []
    requested: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda r: requested.append(r.url))
    with serve_app(injected_rag) as url:
        page.goto(url)
        ask(page, INJECTED_QUESTION, turn=1)
        chat = page.locator("#rag-chat").inner_text()
        sources = page.locator("#rag-sources").inner_text()
        images = page.eval_on_selector_all("img", "els => els.map(e => e.src)")
        corpus_images = page.locator("#rag-chat img, #rag-sources img").count()
        scripts = page.locator("#rag-chat script, #rag-sources script").count()
        unsafe_links = page.locator('a[href^="javascript:"]').count()

    assert dialogs == []  # nothing ran
    assert corpus_images == 0 and scripts == 0 and unsafe_links == 0
    assert not [src for src in images if src.endswith("/x") or src.startswith(pixel.url)]
    assert not [u for u in requested if u.startswith(pixel.url) or u.endswith("/x")]
    assert pixel.paths == []  # nothing loaded
    assert "<img src=x onerror=alert(1)>" in chat  # shown as the text it is
    assert "<img src=x onerror=alert(1)> kernels" in sources
    assert f"![chart]({pixel.url})" in chat
    assert "<script>alert(2)</script>" in sources


KV_CACHE = "Which papers reduce the memory of the KV cache?"
TOKENWEAVE = "How does TokenWeave overlap communication?"


def test_citation_markers_look_and_act_like_links(page: Page, app_url: str) -> None:
    page.goto(app_url)
    ask(page, TOKENWEAVE, turn=1)
    look = page.eval_on_selector(
        "#rag-chat a.rag-cite",
        """a => { const s = getComputedStyle(a), p = getComputedStyle(a.closest('p, li'));
                  return [s.color, p.color, s.textDecorationLine, s.cursor]; }""",
    )
    color, text_color, decoration, cursor = look
    assert color != text_color and "underline" in decoration and cursor == "pointer"


def test_a_new_answer_brings_its_sources_to_the_top(page: Page, app_url: str) -> None:
    page.goto(app_url)
    ask(page, HOPPER, turn=1)
    marker = page.locator("#rag-chat a.rag-cite").last
    target = marker.get_attribute("href")[1:]
    marker.click()
    page.wait_for_function("() => document.getElementById('rag-sources').scrollTop > 0")
    ask(page, TOKENWEAVE, turn=2)
    page.wait_for_function("() => document.getElementById('rag-sources').scrollTop === 0")
    assert in_view(page, "#rag-t2", "#rag-sources")  # the new answer's sources, from their top
    assert page.evaluate("() => document.querySelector(':target')") is None  # old one unmarked
    assert page.evaluate("() => location.hash") == ""
    assert target.startswith("rag-t1-")


def test_a_list_reads_as_a_list_from_its_start(
    page: Page, app_url: str, rag: Rag, tmp_path: Path, request
) -> None:
    expected = rag.ask(KV_CACHE, 8, model=OFFLINE)
    assert expected.intent == "list" and len(expected.citations) >= 3
    page.goto(app_url)
    ask(page, HOPPER, turn=1)
    ask(page, KV_CACHE, turn=2)
    items = page.locator("#rag-chat .bot-row").last.locator("li")
    assert items.count() == len(expected.citations)
    titles = items.locator(".rag-item-title").evaluate_all("els => els.map(e => e.innerText)")
    assert titles == [c.title for c in expected.citations]
    # The title on a line of its own, bold, the quote below it.
    layout = items.first.evaluate(
        """li => { const t = li.querySelector('.rag-item-title'),
                         q = li.querySelector('.rag-item-quote');
                   return [t.getBoundingClientRect().bottom <= q.getBoundingClientRect().top + 1,
                           Number(getComputedStyle(t).fontWeight)]; }"""
    )
    assert layout[0] and layout[1] >= 600
    # The chat shows the answer from its start, not its end.
    page.wait_for_function(
        """() => { const wrap = document.querySelector('#rag-chat .bubble-wrap').getBoundingClientRect();
                   const rows = document.querySelectorAll('#rag-chat .bot-row');
                   const top = rows[rows.length - 1].getBoundingClientRect().top;
                   return top >= wrap.top - 1 && top < wrap.top + 40; }"""
    )
    shot = tmp_path / "list.png"
    page.screenshot(path=shot)
    keep(request, shot, "screenshot-list.png")


def test_more_papers_than_top_k_are_explained(page: Page, app_url: str) -> None:
    page.goto(app_url)
    k = page.locator("#rag-k input[type=number]")
    k.fill("3")
    k.press("Enter")
    ask(page, HOPPER, turn=1)
    notice = page.locator("#rag-t1 .rag-widened").inner_text()
    assert "more than top-k (3)" in notice and "RAG_LIST_K" in notice
    ask(page, TOKENWEAVE, turn=2)  # a single answer within k says nothing of the sort
    assert page.locator("#rag-t2 .rag-widened").count() == 0


def test_a_very_long_question_is_refused_without_a_huge_echo(page: Page, app_url: str) -> None:
    page.goto(app_url)
    question = "why " * 524 + "why?"  # 2,100 characters
    box = page.locator("#rag-question textarea")
    box.fill(question)
    box.press("Enter")
    page.wait_for_selector("#rag-chat .rag-notice")
    echoed = page.locator("#rag-chat .user-row").last.inner_text()
    assert len(echoed) < 400 and "(2,100 characters)" in echoed
    assert "the limit is" in page.locator("#rag-chat .rag-notice").inner_text()


def test_only_offline_is_not_offered_as_a_choice(page: Page, app_url: str) -> None:
    page.goto(app_url)
    page.wait_for_selector(".rag-offline")
    assert page.get_by_text("Answer with", exact=True).count() == 0
    assert page.locator("input[type=radio]").count() == 0
    assert "OPENAI_BASE_URL" in page.locator(".rag-offline").inner_text()


def test_a_judgement_clicked_is_recorded_and_scored(
    page: Page, built_index: Path, embedder, tmp_path: Path, request
) -> None:
    from tests.conftest import cli_env, make_settings, run_cli

    feedback = tmp_path / "judged.jsonl"
    judged = Rag(make_settings(built_index, feedback_file=feedback), embedder=embedder)
    expected = judged.ask(HOPPER, 8, model=OFFLINE)
    wrong = expected.citations[-1]
    with serve_app(judged) as url:
        page.goto(url)
        ask(page, HOPPER, turn=1)
        page.locator(f"#rag-t1-s{wrong.n} button.rag-judge").click()
        page.wait_for_selector(f"#rag-t1-s{wrong.n} .rag-judged")
        page.locator("#rag-t1 .rag-others summary").click()
        missing = page.locator("#rag-t1 .rag-other").first
        missing_title = missing.locator(".rag-title").inner_text()
        missing.locator("button.rag-judge").click()
        page.wait_for_selector("#rag-t1 .rag-other .rag-judged")
        assert "recorded: wrong citation" in page.locator(f"#rag-t1-s{wrong.n}").inner_text()
        assert "recorded: should be cited" in missing.inner_text()
        shot = tmp_path / "judged.png"
        page.locator(f"#rag-t1-s{wrong.n}").scroll_into_view_if_needed()
        page.screenshot(path=shot)
    keep(request, shot, "screenshot-judged.png")

    (record,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert record["question"] == HOPPER
    cited = [c.title for c in expected.citations]
    assert record["gold_titles"] == [*cited[:-1], missing_title]
    assert record["not_gold_titles"] == [wrong.title]
    out = tmp_path / "eval"
    scored = run_cli(
        "eval", str(feedback), "--out", str(out), "--judge", "proxy", env=cli_env(built_index)
    )
    assert scored.returncode == 0, scored.stderr
    by_list = json.loads((out / "metrics.json").read_text())["by_type"]["list"]
    n = len(cited)
    assert by_list["citation_precision"] == pytest.approx((n - 1) / n)
    assert by_list["citation_recall"] == pytest.approx((n - 1) / n)
