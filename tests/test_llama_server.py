"""The LLM path against a real llama.cpp server (tier ``llm_server``): what the fake never shows.

One ``llama-server`` (see tests/llama_server.py) serves Gemma 3 270M for the module, with
llama.cpp's default per-slot window of 2,048 tokens (4,096 over two slots). Calls are kept cheap:
a few dozen answer tokens each. The model is far too small to judge answer quality; these tests
judge the protocol: windows, overflows, deadlines, truncation, concurrent users.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.errors import LLMError
from rag.pipeline import AskResult, Rag
from tests.conftest import cli_env, free_port, make_settings, run_cli
from tests.llama_server import MODEL_ALIAS, LlamaServer

pytestmark = pytest.mark.llm_server

LIST = "Which papers target Hopper GPUs?"
SINGLE = "How does TokenWeave overlap communication?"
SLOT_CONTEXT = 2048


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    server = LlamaServer(free_port(), context=2 * SLOT_CONTEXT, parallel=2)
    yield server
    server.stop()


def env(built_index: Path, llama: LlamaServer, **extra: str) -> dict[str, str]:
    return cli_env(
        built_index, **{"OPENAI_BASE_URL": llama.url, "RAG_LLM_MAX_TOKENS": "32", **extra}
    )


def test_ask_streams_and_json_fit_the_window_the_server_reports(
    built_index: Path, llama: LlamaServer
) -> None:
    streamed = run_cli("ask", SINGLE, env=env(built_index, llama))
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() and "Traceback" not in streamed.stderr
    for question in (SINGLE, LIST):
        done = run_cli("ask", "--json", question, env=env(built_index, llama))
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["model"] == MODEL_ALIAS and isinstance(out["truncated"], bool)
        # Learnt from /props, the window held fewer sources than the 30 of a list: none overflowed.
        assert out["prompt"]["tokens"] <= SLOT_CONTEXT
        assert len(out["retrieved"]) == out["prompt"]["sources"]
    assert out["prompt"]["sources"] < 30 and out["prompt"]["dropped"] > 0


def test_the_estimate_never_undercounts_the_servers_tokens(
    built_index: Path, embedder, llama: LlamaServer
) -> None:
    settings = make_settings(built_index, openai_base_url=llama.url, llm_max_tokens=32)
    rag = Rag(settings, embedder=embedder)
    model = rag.model(None)
    for question in (SINGLE, LIST):
        analysis = rag.analyse(question)
        messages, fitted, answer = model.messages(analysis, rag.sources(analysis, 8))  # type: ignore[attr-defined]
        counted = sum(llama.tokens(m["content"]) for m in messages)
        assert counted <= fitted.tokens and counted + answer <= SLOT_CONTEXT


def test_doctor_reports_the_window_and_a_list_questions_fit(
    built_index: Path, llama: LlamaServer
) -> None:
    done = run_cli("doctor", "--json", env=env(built_index, llama))
    detail = json.loads(done.stdout)["llm"]["detail"]
    assert f"context window {SLOT_CONTEXT} tokens (llama.cpp /props)" in detail
    assert re.search(r"a list question sends \d+ of 30 sources", detail)


def test_a_context_overflow_is_named(built_index: Path, llama: LlamaServer) -> None:
    # Told a window far larger than the server's, the project sends a whole list: the server
    # streams an empty 200, and the probe brings back its 400.
    done = run_cli("ask", LIST, env=env(built_index, llama, RAG_LLM_CONTEXT="16384"))
    assert done.returncode == 1
    assert "exceeds the available context size" in done.stderr and "RAG_LLM_CONTEXT" in done.stderr
    assert done.stderr.count("\n") == 1


def test_an_answer_cut_at_the_token_limit_says_so(built_index: Path, llama: LlamaServer) -> None:
    done = run_cli("ask", "--json", SINGLE, env=env(built_index, llama, RAG_LLM_MAX_TOKENS="16"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["truncated"] is True  # a base model never stops in 16 tokens


def test_the_wait_for_the_first_token_is_bounded(built_index: Path, llama: LlamaServer) -> None:
    # Reading a list question's ~2k-token prompt takes this CPU seconds: 0.3 s is not enough.
    # (A question no other test asks: the server reuses what it read of a prompt it has seen.)
    question = "Find papers on pipeline parallelism for training."
    done = run_cli("ask", question, env=env(built_index, llama, RAG_LLM_TIMEOUT="0.3"))
    assert done.returncode == 1
    assert "did not start answering within 0.3 s" in done.stderr


def test_two_users_at_once_both_get_their_answers(
    built_index: Path, embedder, llama: LlamaServer
) -> None:
    settings = make_settings(built_index, openai_base_url=llama.url, llm_max_tokens=24)
    rag = Rag(settings, embedder=embedder)
    results: list[AskResult | Exception] = []
    lock = threading.Lock()

    def ask(question: str) -> None:
        try:
            outcome: AskResult | Exception = rag.ask(question)
        except LLMError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=ask, args=(q,)) for q in (SINGLE, LIST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 2 and all(isinstance(r, AskResult) for r in results), results
