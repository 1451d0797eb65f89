"""The browser chat without a browser.

The chat handler is driven directly (a plain generator), then the running app through
gradio_client: streamed answers with their sources, the ``/ask`` endpoint against the CLI's
``--json`` object, follow-ups kept per session, errors shown in the chat while the app keeps
serving, the login, and Gradio's monitoring endpoint. Last, ``rag chat`` as a real command.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from html import unescape
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError

from rag.answer import readable
from rag.chat import OFFLINE, ScriptedChatModel
from rag.pipeline import AskResult, Rag
from rag.ui import PENDING, Chat, Conversation, model_choices
from rag.ui_render import answer_html, paper_links, supporting_spans
from tests.conftest import (
    INJECTED_QUESTION,
    REPO,
    PixelServer,
    cli_env,
    free_port,
    make_settings,
    run_cli,
    serve_app,
)
from tests.openai_server import Break, FakeOpenAI, Status
from tests.test_cli import assert_one_line_error, check_ask_json

HOPPER = "Which papers target Hopper GPUs?"
FOLLOW_UP = "What about the second one?"
CITE = re.compile(r'<a class="rag-cite" href="#rag-t(\d+)-s(\d+)">\[(\d+)\]</a>')
SOURCE = re.compile(r'<li class="rag-source" id="rag-t(\d+)-s(\d+)">(.*?)</li>', re.DOTALL)

Output = tuple[list[dict[str, str]], str, Conversation]


def drive(chat: Chat, question: str, conv: Conversation | None = None, **kw: Any) -> list[Output]:
    """Everything the handler yields for one question."""
    return list(chat.respond(question, kw.get("k", 8), kw.get("model", OFFLINE), conv))


def lines(html: str) -> list[str]:
    """The text of rendered HTML, one entry per paragraph or list item."""
    text = re.sub(r"</?(?:p|li|ul|ol|section|h3|div)\b[^>]*>", "\n", html)
    return [unescape(re.sub(r"<[^>]+>", "", line)).strip() for line in text.split("\n") if line]


def answer_lines(answer: str) -> list[str]:
    """An answer's lines as ``answer_html`` shows them (bullets become list items)."""
    return [re.sub(r"^- ", "", line).strip() for line in answer.splitlines() if line.strip()]


def content(message: dict[str, Any]) -> str:
    """A chatbot message's HTML, as the handler yields it or as gradio_client returns it."""
    value = message["content"]
    return value if isinstance(value, str) else "".join(part["text"] for part in value)


def cited_titles(panel: str, turn: int) -> list[str]:
    """The titles of the numbered sources of answer ``turn`` in the sources panel."""
    return [
        unescape(re.search(r'<span class="rag-title">(.*?)</span>', body).group(1))
        for t, _, body in SOURCE.findall(panel)
        if int(t) == turn
    ]


def check_sources(panel: str, result: AskResult, turn: int = 1) -> None:
    """The sources of ``result`` in the panel: numbered as cited, highlighted, linked, scored."""
    sources = [(int(n), body) for t, n, body in SOURCE.findall(panel) if int(t) == turn]
    assert [n for n, _ in sources] == [c.n for c in result.citations]
    assert cited_titles(panel, turn) == [c.title for c in result.citations]
    retrieved = {r.paper.id: r for r in result.retrieved}
    for (n, body), citation in zip(sources, result.citations, strict=True):
        title = citation.title
        marks = [unescape(m) for m in re.findall(r"<mark>(.*?)</mark>", body)]
        assert marks, f"source [{n}] highlights no sentence"
        # The offline answer quotes what it cites (less an opening that points back: "However,").
        assert all(readable(m) in result.answer for m in marks), (marks, result.answer)
        assert f"score {retrieved[citation.paper_id].score:.4f}" in body
        query = quote_plus(title)
        assert f'href="https://arxiv.org/search/?query={query}&amp;searchtype=title"' in body
        assert f'href="https://huggingface.co/papers?q={query}"' in body
        assert body.count('target="_blank" rel="noopener noreferrer"') == 2


# --- rendering ---------------------------------------------------------------------------------


def test_answer_html_makes_lists_and_links_markers() -> None:
    html = answer_html("Papers:\n- A <b> [1]\n- B [2][3]\nBoth [1].", turn=4)
    assert html == (
        "<p>Papers:</p><ul>"
        '<li>A &lt;b&gt; <a class="rag-cite" href="#rag-t4-s1">[1]</a></li>'
        '<li>B <a class="rag-cite" href="#rag-t4-s2">[2]</a>'
        '<a class="rag-cite" href="#rag-t4-s3">[3]</a></li>'
        '</ul><p>Both <a class="rag-cite" href="#rag-t4-s1">[1]</a>.</p>'
    )


def test_only_web_urls_become_links() -> None:
    def hrefs(url: str | None) -> list[str]:
        return [re.search(r'href="([^"]*)"', a).group(1) for a in paper_links("T & U", url)]

    search = [
        "https://arxiv.org/search/?query=T+%26+U&amp;searchtype=title",
        "https://huggingface.co/papers?q=T+%26+U",
    ]
    assert hrefs("https://arxiv.org/abs/2407.08608") == [
        "https://arxiv.org/abs/2407.08608",
        *search,
    ]
    for unsafe in ("javascript:alert(1)", "data:text/html,x", "ftp://host/x", "", None):
        assert hrefs(unsafe) == search


def test_supporting_sentences_are_those_the_claims_quote() -> None:
    abstract = "We study cats. Our kernel runs on Hopper GPUs at 700 TFLOPS. Dogs are fine."
    answer = (
        "Papers:\n- Cat Kernels: Our kernel runs on Hopper GPUs at 700 TFLOPS. [1]\n- X: Dogs [2]"
    )
    (span,) = supporting_spans(answer, 1, "Cat Kernels", abstract)
    assert abstract[span[0] : span[1]] == "Our kernel runs on Hopper GPUs at 700 TFLOPS."
    assert supporting_spans(answer, 3, "Cat Kernels", abstract) == []  # nothing cites [3]
    assert supporting_spans("Giraffes hum [1].", 1, "Cat Kernels", abstract) == []  # no support


# --- the chat handler ----------------------------------------------------------------------------


def test_the_answer_streams_then_its_sources_appear(rag: Rag) -> None:
    outputs = drive(Chat(rag), HOPPER)
    expected = rag.ask(HOPPER, 8, model=OFFLINE)

    first, first_panel, _ = outputs[0]
    assert first == [
        {"role": "user", "content": f"<p>{HOPPER}</p>"},
        {"role": "assistant", "content": PENDING},
    ]
    assert "rag-source" not in first_panel
    streamed = ["\n".join(lines(content(m[-1]))) for m, _, _ in outputs[1:-1]]
    assert len(streamed) >= 3  # the list answer arrives line by line
    for before, after in pairwise(streamed):
        assert after.startswith(before) and len(after) > len(before)

    messages, panel, conv = outputs[-1]
    answer = content(messages[-1])
    assert lines(answer) == answer_lines(expected.answer)
    cited = {(int(t), int(s), int(n)) for t, s, n in CITE.findall(answer)}
    assert cited == {(1, c.n, c.n) for c in expected.citations} and len(cited) >= 2
    check_sources(panel, expected)
    others = re.search(r"Also retrieved, not cited \((\d+)\)", panel)
    assert int(others.group(1)) == len(expected.retrieved) - len(expected.citations)
    assert conv.turns == [expected.turn()]


def test_a_follow_up_is_asked_with_the_conversation(rag: Rag) -> None:
    chat = Chat(rag)
    conv = drive(chat, HOPPER)[-1][2]
    second = conv.turns[0].citations[1]

    messages, panel, conv = drive(chat, FOLLOW_UP, conv)[-1]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert second.title in conv.turns[1].standalone  # "the second one", resolved
    assert second.paper_id in [c.paper_id for c in conv.turns[1].citations]
    assert 'href="#rag-t2-s1"' in content(messages[-1])  # anchors of this answer's sources
    assert panel.index('id="rag-t2"') < panel.index('id="rag-t1"')  # newest sources first
    assert 'href="#rag-t1-s1"' in content(messages[1])  # the first answer still points at its own

    alone = drive(Chat(rag), FOLLOW_UP)[-1][2]  # another conversation has no "second one"
    assert alone.turns[0].standalone == FOLLOW_UP


@pytest.mark.parametrize(
    ("question", "says"),
    [("", "the question is empty"), ("   ", "the question is empty"), ("x " * 1500, "2,999")],
    ids=["empty", "blank", "too-long"],
)
def test_bad_questions_are_answered_with_a_notice(rag: Rag, question: str, says: str) -> None:
    chat = Chat(rag)
    conv = drive(chat, HOPPER)[-1][2]
    messages, panel, conv = drive(chat, question, conv)[-1]
    assert messages[-1]["content"].startswith('<p class="rag-notice">⚠️ ')
    assert says in messages[-1]["content"]
    assert "Traceback" not in messages[-1]["content"]
    assert len(conv.turns) == 1 and panel.count('class="rag-turn"') == 1  # nothing new answered
    messages, panel, conv = drive(chat, HOPPER, conv)[-1]  # and the chat goes on
    assert len(conv.turns) == 2 and 'id="rag-t3-s1"' in panel


def test_an_llm_that_cannot_be_reached_is_a_notice(built_index: Path, embedder) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # closed once the block ends
    settings = make_settings(built_index, openai_base_url=down, llm_model="m", llm_retries=0)
    rag = Rag(settings, embedder=embedder)
    assert model_choices(rag) == (["m", OFFLINE], "")  # a named model needs no request

    chat = Chat(rag)
    messages, _, conv = drive(chat, HOPPER, model="m")[-1]
    assert "⚠️ cannot connect to the LLM at" in messages[-1]["content"]
    assert conv.turns == []
    messages, panel, conv = drive(chat, HOPPER, conv, model=OFFLINE)[-1]
    assert len(conv.turns) == 1 and 'id="rag-t2-s1"' in panel

    unnamed = Rag(
        make_settings(built_index, openai_base_url=down, llm_retries=0), embedder=embedder
    )
    choices, notice = model_choices(unnamed)  # must ask the server for its model: offline only
    assert choices == [OFFLINE] and "cannot connect" in notice


def test_an_llm_answer_that_breaks_off_keeps_its_text(built_index: Path, embedder) -> None:
    server = FakeOpenAI()
    try:
        settings = make_settings(
            built_index, openai_base_url=server.url, llm_retries=0, llm_context=65536
        )
        server.enqueue(Break("FlashAttention <b>3</b> targets Hopper [1]. It also"))
        messages, _, conv = drive(Chat(Rag(settings, embedder=embedder)), HOPPER, model=None)[-1]
    finally:
        server.close()
    answer = messages[-1]["content"]
    assert answer.startswith("<p>FlashAttention &lt;b&gt;3&lt;/b&gt; targets Hopper")
    assert '<p class="rag-notice">⚠️ the answer from the LLM at' in answer
    assert "broke off" in answer and conv.turns == []


def test_corpus_html_and_markdown_are_shown_as_text(injected_rag: Rag, pixel: PixelServer) -> None:
    outputs = drive(Chat(injected_rag), INJECTED_QUESTION)
    messages, panel, _ = outputs[-1]
    answer = content(messages[-1])
    assert "&lt;img src=x onerror=alert(1)&gt;" in answer  # quoted, as text
    assert f"![chart]({pixel.url})" in answer  # inert: the chat renders no Markdown
    assert "&lt;img src=x onerror=alert(1)&gt; kernels" in panel  # the title
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in panel
    for _, panel_then, conv in outputs:
        html = panel_then + "".join(content(m) for m in conv.messages)
        assert "<img" not in html and "<script" not in html
        assert "javascript:" not in "".join(re.findall(r'href="([^"]*)"', html))
        assert f'src="{pixel.url}"' not in html


def test_new_chat_forgets_the_conversation(rag: Rag) -> None:
    chat = Chat(rag)
    drive(chat, HOPPER)
    messages, panel, conv = chat.new_chat()
    assert messages == [] and conv == Conversation() and "rag-source" not in panel


# --- the running app, through gradio_client ------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(rag: Rag) -> Iterator[str]:
    with serve_app(rag) as url:
        yield url


def client(url: str, **kwargs: Any) -> Client:
    return Client(url, verbose=False, download_files=False, analytics_enabled=False, **kwargs)


def without_timings(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k != "timings_ms"}


def test_chat_streams_text_then_structured_sources_to_api_clients(app_url: str, rag: Rag) -> None:
    job = client(app_url).submit(HOPPER, 8, OFFLINE, api_name="/chat")
    final = job.result(timeout=120)
    updates = job.outputs()
    assert len(updates) >= 3 and all(not u["done"] for u in updates[:-1])
    texts = [u["answer"] for u in updates[:-1]]
    for before, after in pairwise(texts):
        assert after.startswith(before)  # plain text, growing
    assert all("<" not in t for t in texts)  # no HTML for API clients
    expected = rag.ask(HOPPER, 8, model=OFFLINE)
    assert final["done"] is True and final["notes"] == expected.notes()
    assert without_timings(final) == without_timings(
        {**expected.to_dict(), "notes": expected.notes(), "done": True}
    )
    assert texts[-1].strip() == final["answer"]  # the checked answer is the streamed text


def test_only_public_endpoints_are_listed(app_url: str) -> None:
    info = client(app_url).view_api(print_info=False, return_format="dict")
    assert sorted(info["named_endpoints"]) == ["/ask", "/chat"]
    assert info["unnamed_endpoints"] == {}
    params = [p["parameter_name"] for p in info["named_endpoints"]["/chat"]["parameters"]]
    assert params == ["question", "k", "model"]


def test_ask_returns_the_cli_json_object(app_url: str, built_index: Path) -> None:
    out = client(app_url).predict(HOPPER, api_name="/ask")
    check_ask_json(json.dumps(out) + "\n")  # the CLI's own contract checks
    assert len(out["citations"]) >= 2
    cli = json.loads(run_cli("ask", "--json", HOPPER, env=cli_env(built_index)).stdout)
    del cli["timings_ms"], out["timings_ms"]  # all else is deterministic, retrieval included
    assert out == cli


def test_ask_takes_k_and_model_and_reports_bad_input(app_url: str) -> None:
    app = client(app_url)
    out = app.predict("How does TokenWeave overlap communication?", 3, OFFLINE, api_name="/ask")
    assert len(out["retrieved"]) == 3 and out["model"] == OFFLINE
    with pytest.raises(AppError, match="the question is empty"):
        app.predict("  ", api_name="/ask")
    with pytest.raises(AppError, match="k must be a whole number between 1 and 100"):
        app.predict(HOPPER, 0, api_name="/ask")


def test_ask_takes_only_the_models_the_page_offers(built_index: Path, embedder) -> None:
    server = FakeOpenAI(models=("fake-model",))
    try:
        settings = make_settings(built_index, openai_base_url=server.url, llm_context=65536)
        llm = Rag(settings, embedder=embedder)
        with serve_app(llm) as url:
            app = client(url)
            assert app.predict(HOPPER, 3, "fake-model", api_name="/ask")["model"] == "fake-model"
            server.reset()
            for name in ("gpt-4o", "o1-pro", "x" * 40):
                with pytest.raises(AppError, match=f"no model '{name}' here: choose one of"):
                    app.predict(HOPPER, 3, name, api_name="/ask")
            with pytest.raises(AppError, match="k must be a whole number between 1 and 100"):
                app.predict(HOPPER, 1.5, OFFLINE, api_name="/ask")
            with pytest.raises(AppError, match="no model 'gpt-4o' here: choose one of"):
                app.predict(HOPPER, 3, "gpt-4o", api_name="/chat")
            with pytest.raises(AppError, match="k must be a whole number between 1 and 100"):
                app.predict(HOPPER, 1.5, OFFLINE, api_name="/chat")
            assert server.chat_requests() == []  # no refused name reached the endpoint
    finally:
        server.close()


def test_the_app_takes_no_uploads(app_url: str) -> None:
    big = httpx.post(
        f"{app_url.rstrip('/')}/gradio_api/upload",
        files={"files": ("big.bin", b"x" * 300_000)},
        timeout=30,
    )
    assert big.status_code == 413
    assert httpx.get(f"{app_url.rstrip('/')}/gradio_api/file=big.bin", timeout=30).status_code in (
        403,
        404,
    )


def test_follow_ups_belong_to_their_session(app_url: str, rag: Rag) -> None:
    second = rag.ask(HOPPER, 8, model=OFFLINE).citations[1]
    alice, bob = client(app_url), client(app_url)
    alice.predict(HOPPER, 8, OFFLINE, api_name="/chat")
    hers = alice.predict(FOLLOW_UP, 8, OFFLINE, api_name="/chat")
    his = bob.predict(FOLLOW_UP, 8, OFFLINE, api_name="/chat")
    assert [c["title"] for c in hers["citations"]] == [second.title]  # her "second one"
    assert hers["answer"].startswith(f"On “{second.title}” [1]: ")  # named, not left to guess
    assert second.title not in [c["title"] for c in his["citations"]]  # his chat has none


def test_an_llm_failure_is_shown_and_the_app_keeps_answering(built_index: Path, embedder) -> None:
    server = FakeOpenAI()
    settings = make_settings(
        built_index, openai_base_url=server.url, llm_retries=0, llm_context=65536
    )
    try:
        with serve_app(Rag(settings, embedder=embedder)) as url:
            app = client(url)
            server.enqueue(Status(500))
            with pytest.raises(AppError, match=r"the LLM at .*HTTP 500 \(1 try\)"):
                app.predict(HOPPER, 8, "fake-model", api_name="/chat")
            answered = app.predict(HOPPER, 8, "fake-model", api_name="/chat")
    finally:
        server.close()
    assert answered["model"] == "fake-model" and len(answered["citations"]) >= 2


class SlowModel(ScriptedChatModel):
    """A chat model whose answers wait for the test to open ``gate`` (signalling ``entered``)."""

    def __init__(self) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()
        super().__init__(default=self.answer, name="slow")

    def answer(self, query: Any, sources: Any) -> str:
        self.entered.set()
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        return "A slow answer [1]."


def test_one_users_generation_does_not_hold_up_another(built_index: Path, embedder) -> None:
    slow = SlowModel()
    with serve_app(Rag(make_settings(built_index), embedder=embedder, chat_model=slow)) as url:
        waiting = client(url).submit(HOPPER, 8, "slow", api_name="/chat")
        try:
            assert slow.entered.wait(timeout=120)  # the slow answer is being generated...
            other = client(url).predict(HOPPER, 8, OFFLINE, api_name="/chat")
            assert other["citations"]  # ...and another user got theirs meanwhile
            assert not waiting.done()
        finally:
            slow.gate.set()
        assert waiting.result(timeout=120)["answer"] == "A slow answer [1]."


def test_the_queue_is_bounded(built_index: Path, embedder) -> None:
    slow = SlowModel()
    settings = make_settings(built_index, ui_concurrency=1, ui_queue_size=1)
    with serve_app(Rag(settings, embedder=embedder, chat_model=slow)) as url:
        running = client(url).submit(HOPPER, 8, "slow", api_name="/ask")
        try:
            assert slow.entered.wait(timeout=120)  # the one slot is taken
            jobs = [client(url).submit(HOPPER, 8, OFFLINE, api_name="/ask") for _ in range(2)]
            # While the slot is taken, one of the two can only wait in the queue; the other,
            # finding the queue full, is refused at once.
            calls = {job.future: job for job in jobs}
            done, _ = futures.wait(calls, timeout=120, return_when=futures.FIRST_COMPLETED)
            (refused,) = (calls[call] for call in done)
            (queued,) = (job for job in jobs if job is not refused)
            with pytest.raises(QueueError, match="Queue is full"):
                refused.result()
            assert not queued.done()
        finally:
            slow.gate.set()
        assert queued.result(timeout=120)["model"] == OFFLINE  # served once the slot is free
        assert running.result(timeout=120)["answer"] == "A slow answer [1]."


def test_monitoring_is_closed_without_a_login(app_url: str) -> None:
    for path in ("monitoring", "monitoring/summary", "monitoring/some-key"):
        response = httpx.get(app_url + path)
        assert response.status_code == 403, path


def test_a_login_guards_the_app_and_its_monitoring(built_index: Path, embedder) -> None:
    settings = make_settings(built_index, ui_auth="alice:pa:ss")
    with serve_app(Rag(settings, embedder=embedder)) as url:
        assert httpx.get(url + "config").status_code == 401
        assert httpx.get(url + "monitoring/summary").status_code == 401
        with pytest.raises(ValueError, match="Could not login"):
            client(url, auth=("alice", "pa"))  # the password is all after the first ':'
        with pytest.raises(ValueError, match="credentials were not provided"):
            client(url)
        out = client(url, auth=("alice", "pa:ss")).predict(HOPPER, api_name="/ask")
        assert out["citations"]

        with httpx.Client(base_url=url) as browser:
            login = browser.post("login", data={"username": "alice", "password": "pa:ss"})
            assert login.status_code == 200
            assert browser.get("config").status_code == 200
            summary = browser.get("monitoring/summary")
            assert summary.status_code == 200 and isinstance(summary.json(), dict)


# --- `rag chat`, the real command ---------------------------------------------------------------


def test_rag_chat_serves_the_app_on_localhost(built_index: Path, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "stderr").open("w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag", "chat", "--port", str(port)],
            env=cli_env(built_index),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            # Ctrl-C as in a terminal: a test run started in the background of a script has
            # SIGINT ignored, which its children would inherit, and Python then never sees it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        printed: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [printed.put(x) for x in proc.stdout])
        reader.start()
        try:
            first = printed.get(timeout=180)  # printed once the app is being served
            assert first == f"Chat running on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n"
            out = client(f"http://127.0.0.1:{port}/").predict(HOPPER, api_name="/ask")
            assert out["citations"]
            assert httpx.get(f"http://127.0.0.1:{port}/monitoring").status_code == 403
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            reader.join(timeout=60)  # everything it printed, up to its end
        stderr.seek(0)
        errors = stderr.read()
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors and "Public link" not in "".join(printed.queue)


def test_rag_chat_on_a_port_in_use(built_index: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("chat", "--port", str(port), env=cli_env(built_index))
    assert_one_line_error(
        done, contains=f"cannot serve on 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--port", "http"), {}, "'http' is not a valid integer"),
        (("--port", "70000"), {}, "70000 is not a port number"),
        (("--host", "192.0.2.1"), {}, "cannot serve on 192.0.2.1:7860"),
        (("--sahre",), {}, "No such option"),
        ((), {"RAG_UI_AUTH": "alice-s3cret"}, "RAG_UI_AUTH: Value error, must be 'user:password'"),
        ((), {"RAG_UI_CONCURRENCY": "0"}, "RAG_UI_CONCURRENCY"),
    ],
    ids=["port-text", "port-range", "host-not-here", "typo", "auth-format", "concurrency"],
)
def test_rag_chat_bad_options(
    built_index: Path, args: tuple[str, ...], env: dict, says: str
) -> None:
    done = run_cli("chat", *args, env=cli_env(built_index, **env))
    assert "s3cret" not in assert_one_line_error(done, contains=says)
