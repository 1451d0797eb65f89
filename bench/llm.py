"""Measure the LLM path against a real OpenAI-compatible server: what is sent, how soon it answers.

    python bench/llm.py [--url http://127.0.0.1:8080/v1] [--index .rag] [--json out.json]

Without ``--url`` it starts the test tier's llama.cpp server (tests/llama_server.py: Gemma 3 270M,
two slots of 2,048 tokens; built and cached on first use). For a single and a list question it
reports the prompt tokens, counted by the server's tokenizer, of the landed behaviour (every
shown source whole: 8 for a single question, 30 for a list) and of the budgeted prompt, and the
time to the first streamed text and to the whole answer: on the first run (the server reads the
whole prompt) and on two repeats (llama.cpp reuses the prompt it has already read).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = {
    "single": "How does TokenWeave overlap communication?",
    "list": "Which papers target Hopper GPUs?",
}


def main() -> None:
    """Run the measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="OpenAI-compatible base URL of a running server")
    parser.add_argument("--index", type=Path, default=REPO / ".rag")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rag import prompts
    from rag.chat import NOT_FOUND
    from rag.pipeline import AskResult, Rag
    from rag.settings import Settings
    from tests.llama_server import server_tokens

    server = None
    url = args.url
    if url is None:
        from tests.conftest import free_port
        from tests.llama_server import LlamaServer

        server = LlamaServer(free_port(), context=4096, parallel=2)
        url = server.url
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, index_dir=args.index, openai_base_url=url,
            llm_max_tokens=args.max_tokens,
        )  # fmt: skip
        rag = Rag(settings)
        model = rag.model(None)
        system, template = model.instructions()  # type: ignore[attr-defined]
        results: dict[str, dict[str, float]] = {}
        for kind, question in QUESTIONS.items():
            analysis = rag.analyse(question)
            sources = rag.sources(analysis, settings.top_k)
            landed = prompts.fill(
                template, sources=prompts.render_sources(sources),
                question=prompts.defuse(question), not_found=NOT_FOUND,
            )  # fmt: skip
            messages, fitted, _ = model.messages(analysis, sources)  # type: ignore[attr-defined]
            first, whole = [], []
            for _ in range(3):
                started = time.perf_counter()
                seen = None
                for item in rag.stream(question):
                    if seen is None and isinstance(item, str) and item.strip():
                        seen = time.perf_counter() - started
                    if isinstance(item, AskResult):
                        whole.append(time.perf_counter() - started)
                first.append(seen if seen is not None else float("nan"))
            results[kind] = {
                "sources_shown": len(sources),
                "landed_prompt_tokens": server_tokens(url, system) + server_tokens(url, landed),
                "budgeted_prompt_tokens": sum(server_tokens(url, m["content"]) for m in messages),
                "budgeted_estimate": fitted.tokens,
                "sources_sent": len(fitted.sources),
                "sources_cut": fitted.cut,
                "first_text_s": round(first[0], 2),
                "answer_s": round(whole[0], 2),
                "first_text_repeat_s": round(statistics.median(first[1:]), 2),
            }
        window = model.window  # type: ignore[attr-defined]
        print(f"server {url}: window {window.tokens} tokens ({window.source}), "
              f"{window.chars_per_token:.2f} characters a token")  # fmt: skip
        for kind, r in results.items():
            print(
                f"{kind:6s} landed prompt {r['landed_prompt_tokens']} tokens ({r['sources_shown']} "
                f"whole sources) -> budgeted {r['budgeted_prompt_tokens']} (estimated "
                f"{r['budgeted_estimate']}; {r['sources_sent']} sources, {r['sources_cut']} cut); "
                f"first text {r['first_text_s']} s, answer {r['answer_s']} s "
                f"({args.max_tokens} tokens at most); repeated: first text "
                f"{r['first_text_repeat_s']} s"
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
