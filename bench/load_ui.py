"""Load-test the browser chat: concurrent gradio_client sessions against a real `rag chat`.

    python bench/load_ui.py [--sessions 20] [--questions 3] [--json out.json]

Starts `rag chat` in its own process (offline answerer; the index in RAG_INDEX_DIR, or one built
in a temp dir), opens SESSIONS gradio_client sessions that start together and each ask QUESTIONS
questions in one conversation through the chat's /chat endpoint, and checks that every answer
arrived, without an error notice, with its sources. Prints p50/p95 of:
  latency           from submitting a question to its last update (answer and sources)
  first token       from submitting to the first update carrying answer text
Exits 1 if any answer failed. The app's own settings apply (RAG_UI_CONCURRENCY, RAG_UI_QUEUE_SIZE).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import REPO, percentile, questions  # bench/bench.py: the same question mix


@dataclass
class Answer:
    """One question's timings, or what went wrong."""

    session: int
    question: str
    latency_s: float = 0.0
    first_token_s: float = 0.0
    updates: int = 0
    error: str = ""


def start_app(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`rag chat` on a free port; returns the process and its URL once it serves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "chat", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=900)  # the first start builds the index: a minute or two
    except queue.Empty:
        proc.kill()
        sys.exit("rag chat did not start within 15 minutes")
    if not line.startswith("Chat running on "):
        proc.kill()
        sys.exit(f"rag chat said: {line}")
    return proc, line.split()[3]


def run_session(url: str, session: int, asked: list[str], start: threading.Barrier) -> list[Answer]:
    """One user: connect, wait for the others, then ask each question once the last is answered."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    start.wait()
    answers = []
    for question in asked:
        answer = Answer(session, question)
        began = time.perf_counter()
        try:
            job = client.submit(question, 8, "offline", api_name="/chat")
            for update in job:  # each update as it arrives: the text so far, then the sources
                answer.updates += 1
                if not answer.first_token_s and update["answer"]:
                    answer.first_token_s = time.perf_counter() - began
            final = job.result()  # raises what the call raised
            answer.latency_s = time.perf_counter() - began
            if not final["done"] or not (final["citations"] or final["abstained"]):
                answer.error = f"no answer with sources: {str(final)[:200]}"
        except Exception as exc:  # noqa: BLE001 - a load test counts every failure, whatever it is
            answer.error = f"{type(exc).__name__}: {exc}"
        answers.append(answer)
    return answers


def run_sessions(url: str, sessions: int, per_session: int) -> tuple[list[Answer], float]:
    """Run the sessions at once; returns every answer and the wall time they took together."""
    pool = questions(sessions * per_session)
    start = threading.Barrier(sessions)
    results: list[list[Answer]] = [[] for _ in range(sessions)]

    def session(i: int) -> None:
        asked = pool[i * per_session : (i + 1) * per_session]
        results[i] = run_session(url, i, asked, start)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [a for r in results for a in r], time.perf_counter() - began


def main() -> None:
    """Start the app, run the sessions, print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--questions", type=int, default=3, help="questions per session")
    parser.add_argument("--json", type=Path, help="also write every answer's timings here")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    keep = ("RAG_INDEX_DIR", "RAG_UI_CONCURRENCY", "RAG_UI_QUEUE_SIZE")
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    with tempfile.TemporaryDirectory(prefix="rag-load-") as scratch:
        env.setdefault("RAG_INDEX_DIR", str(Path(scratch) / ".rag"))  # rag chat builds it
        proc, url = start_app(env)
        try:
            answers, wall = run_sessions(url, args.sessions, args.questions)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    failed = [a for a in answers if a.error]
    ok = [a for a in answers if not a.error]
    print(
        f"{args.sessions} sessions x {args.questions} questions: {len(ok)}/{len(answers)} answered"
        f" without error, {wall:.1f} s wall ({len(ok) / wall:.1f} answers/s)"
    )
    if ok:
        for name in ("latency_s", "first_token_s"):
            values = [getattr(a, name) for a in ok]
            print(
                f"  {name:<14} p50 {percentile(values, 50):6.2f} s   p95 "
                f"{percentile(values, 95):6.2f} s   max {max(values):6.2f} s"
            )
        print(f"  updates/answer median {statistics.median(a.updates for a in ok):.0f}")
    for a in failed:
        print(f"  FAILED session {a.session}: {a.question!r}: {a.error}")
    if args.json:
        args.json.write_text(json.dumps([asdict(a) for a in answers], indent=1))
    sys.exit(1 if failed or len(answers) != args.sessions * args.questions else 0)


if __name__ == "__main__":
    main()
