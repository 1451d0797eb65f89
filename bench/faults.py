"""Fault scenarios on one index, run N times: what the single-writer issue (13) promised holds.

    python bench/faults.py [--runs 20] [--papers 600] [--json out.json]

Each scenario uses real `rag` processes on a fresh index in a temp dir, with the deterministic
hash embedder (the scenarios are about the store, not the model; it keeps a run to seconds):

  concurrent ingests   `rag ingest A` is mid-write when `rag ingest B` starts: B must be refused in
                       one line naming A, A must finish, B re-run must finish
  asks during ingest   while `rag ingest` adds 2N papers to an index of N, a long-lived reader
                       (as `rag chat` is) and fresh `rag ask` processes ask exact titles in a loop:
                       every ask must answer, and papers already indexed must be found first
  killed rebuild       `rag ingest --rebuild B` killed with SIGKILL half-way: the old index must
                       answer as before; a second rebuild must replace it completely

After each, the index is audited: vectors that cannot be read back, chunks missing from the
published lexical (BM25) index, and papers whose exact title does not find them first through
keyword search. Prints, per scenario: runs, failures, and those three counts (all should be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rag.corpus import load_bundled  # noqa: E402
from rag.pipeline import Rag  # noqa: E402
from rag.retrieval import Retriever  # noqa: E402
from rag.settings import Settings  # noqa: E402

SYLLABLES = ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu", "va", "ze", "bo", "di", "fa", "gu")
READ_BATCH = 500  # ids per audit read: a failure is then narrowed down to single ids
BATCH = "16"  # papers per stored batch: progress lines (and kill points) come often


@dataclass
class Outcome:
    """One scenario run: what went wrong (in words) and the audit's counts."""

    failures: list[str] = field(default_factory=list)
    unreadable: int = 0
    missing_lexical: int = 0
    not_first: int = 0
    asks: int = 0

    def clean(self) -> bool:
        return not (self.failures or self.unreadable or self.missing_lexical or self.not_first)


def codename(i: int) -> str:
    """A made-up word unique to ``i``: it tells apart papers that share a recombined title."""
    word = ""
    while True:
        i, digit = divmod(i, len(SYLLABLES))
        word += SYLLABLES[digit]
        if i == 0:
            return word.capitalize() + "xo"


def synthetic(count: int, start: int = 0) -> list[dict[str, str]]:
    """``count`` papers made from the bundled ones, each with a unique id, title and codename."""
    base = load_bundled()
    out = []
    for i in range(start, start + count):
        paper = base[i % len(base)]
        name = codename(i)
        out.append(
            {
                "id": f"synthetic-{i:06d}",
                "title": f"{paper.title} ({name})",
                "abstract": f"{name}: {paper.abstract}",
            }
        )
    return out


def write_jsonl(path: Path, papers: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in papers), encoding="utf-8")
    return path


def environment(index_dir: Path) -> dict[str, str]:
    """The environment of the `rag` processes: this index, the hash embedder, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env.update(
        RAG_INDEX_DIR=str(index_dir),
        RAG_EMBED_MODEL="hash",
        RAG_INGEST_BATCH=BATCH,
        HF_HUB_OFFLINE="1",
    )
    return env


def rag_command(
    *args: str, env: dict[str, str], timeout: float = 600, preexec: Any = None
) -> subprocess.CompletedProcess:
    """`rag ARGS` in a new process (``preexec``: run in the child first, e.g. to limit it)."""
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,
    )


def indexed(root: Path, papers: list[dict[str, str]]) -> tuple[Outcome, Path, dict[str, str]]:
    """A fresh index of ``papers`` under ``root``: the outcome to fill, the folder, the env."""
    outcome = Outcome()
    index_dir = root / "index"
    env = environment(index_dir)
    done = rag_command("ingest", str(write_jsonl(root / "old.jsonl", papers)), env=env)
    if done.returncode:
        outcome.failures.append(f"the first ingest failed: {done.stderr[-300:]}")
    return outcome, index_dir, env


@contextmanager
def ingesting(
    *args: str, env: dict[str, str], after: int = 1, pause: bool = False
) -> Iterator[subprocess.Popen]:
    """A `rag ingest ARGS` process, yielded once it has stored ``after`` batches of papers (so it
    holds the lock and is mid-write), stopped there (SIGSTOP) if ``pause`` until ``finish``;
    killed on the way out if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "ingest", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        stored = 0
        for line in proc.stderr:
            stored += line.startswith("stored ")
            if stored >= after:
                break
        else:
            raise RuntimeError(f"the ingest ended before storing {after} groups: rc {proc.wait()}")
        if pause:
            proc.send_signal(signal.SIGSTOP)  # mid-write, for as long as the caller needs
        yield proc
    finally:
        if proc.poll() is None and proc.returncode is None:
            proc.kill()
        proc.stderr.close()
        proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    """Wait for an `ingesting` process, draining what it still prints."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGCONT)  # if it was paused
    for _ in proc.stderr:
        pass
    return proc.wait(timeout=timeout)


def reader(index_dir: Path, **settings: object) -> Rag:
    """A `Rag` on the index, as `rag chat` would open it (``settings``: a server, a collection)."""
    options = {"index_dir": index_dir, "embed_model": "hash", **settings}
    return Rag(Settings(_env_file=None, **options))  # type: ignore[call-arg]


def audit(
    index_dir: Path, papers: list[dict[str, str]], outcome: Outcome, **settings: object
) -> None:
    """Count unreadable vectors, chunks missing from the lexical index a fresh reader uses, and
    papers their exact title does not find first through it (as the next process would)."""
    rag = reader(index_dir, **settings)
    try:
        col = rag.index.collection()
        ids = col.get(include=[])["ids"]
        for start in range(0, len(ids), READ_BATCH):
            batch = ids[start : start + READ_BATCH]
            try:
                col.get(ids=batch, include=["embeddings"])
            except Exception:  # noqa: BLE001 - narrowed down: which ids cannot be read
                for one in batch:
                    try:
                        col.get(ids=[one], include=["embeddings"])
                    except Exception:  # noqa: BLE001
                        outcome.unreadable += 1
        lexical = rag.index.lexicon()
        outcome.missing_lexical += len(set(ids) - lexical.chunk_ids())
        if rag.index.lexical_note and not settings:  # one machine: the saved index is complete
            outcome.failures.append(f"the lexical index lags: {rag.index.lexical_note}")
        search = Retriever(rag.index, "bm25")
        for paper in papers:
            found = search.retrieve(paper["title"], 1)
            outcome.not_first += not found or found[0].paper.id != paper["id"]
    finally:
        rag.index.close()


def concurrent_ingests(root: Path, n: int) -> Outcome:
    outcome = Outcome()
    index_dir = root / "index"
    env = environment(index_dir)
    first, second = synthetic(n), synthetic(n, start=n)
    a = write_jsonl(root / "a.jsonl", first)
    b = write_jsonl(root / "b.jsonl", second)
    with ingesting(str(a), env=env, pause=True) as running:
        refused = rag_command("ingest", str(b), env=env)
        lines = refused.stderr.strip().splitlines()
        if refused.returncode == 0 or len(lines) != 1 or "is being written by" not in lines[0]:
            outcome.failures.append(f"second writer not refused in one line: {refused.stderr!r}")
        same = rag_command("ingest", str(a), env=env)  # the same file, as a mistaken re-run
        if same.returncode == 0:
            outcome.failures.append("a second ingest of the same file was not refused")
        if finish(running) != 0:
            outcome.failures.append("the first ingest failed")
    again = rag_command("ingest", str(b), env=env)
    if again.returncode != 0:
        outcome.failures.append(f"the refused ingest, re-run, failed: {again.stderr[-300:]}")
    audit(index_dir, first + second, outcome)
    return outcome


def asks_during_ingest(root: Path, n: int) -> Outcome:
    old, new = synthetic(n), synthetic(2 * n, start=n)
    outcome, index_dir, env = indexed(root, old)
    if outcome.failures:
        return outcome
    chat = reader(index_dir)  # a long-lived reader, as `rag chat` is
    pick = random.Random(n)
    with ingesting(str(write_jsonl(root / "new.jsonl", new)), env=env) as running:
        while running.poll() is None:
            paper = pick.choice(old)
            try:
                got = chat.ask(paper["title"])
            except Exception as exc:  # noqa: BLE001 - counted, with what it was
                outcome.failures.append(f"in-process ask: {type(exc).__name__}: {exc}")
                continue
            outcome.asks += 1
            if not got.retrieved or got.retrieved[0].paper.id != paper["id"]:
                outcome.failures.append(f"in-process ask did not find {paper['id']} first")
            if outcome.asks % 4 == 0:  # and now and then a new process, as `rag ask` is
                cold = rag_command("ask", "--json", paper["title"], env=env)
                if cold.returncode != 0:
                    outcome.failures.append(f"rag ask failed: {cold.stderr.strip()[-300:]}")
                elif json.loads(cold.stdout)["retrieved"][0]["paper_id"] != paper["id"]:
                    outcome.failures.append(f"rag ask did not find {paper['id']} first")
        if finish(running) != 0:
            outcome.failures.append("the ingest failed")
    # The reader follows the publication on its next question: a new paper is found first.
    latest = new[-1]
    got = chat.ask(latest["title"])
    if not got.retrieved or got.retrieved[0].paper.id != latest["id"]:
        outcome.failures.append("the long-lived reader did not pick up the new index")
    chat.index.close()
    audit(index_dir, old + new, outcome)
    return outcome


def killed_rebuild(root: Path, n: int) -> Outcome:
    old, new = synthetic(n), synthetic(n, start=3 * n)
    outcome, index_dir, env = indexed(root, old)
    if outcome.failures:
        return outcome
    fresh = str(write_jsonl(root / "new.jsonl", new))
    with ingesting("--rebuild", fresh, env=env, after=3) as running:
        os.kill(running.pid, signal.SIGKILL)
        running.wait()
    asked = rag_command("ask", "--json", old[n // 2]["title"], env=env)
    if (
        asked.returncode != 0
        or json.loads(asked.stdout)["retrieved"][0]["paper_id"] != old[n // 2]["id"]
    ):
        outcome.failures.append(f"after the killed rebuild, ask failed: {asked.stderr[-300:]}")
    audit(index_dir, old, outcome)
    done = rag_command("ingest", "--rebuild", fresh, env=env)
    if done.returncode != 0:
        outcome.failures.append(f"the second rebuild failed: {done.stderr[-300:]}")
    audit(index_dir, new, outcome)
    stale = rag_command("ask", "--json", old[0]["title"], env=env)
    if stale.returncode == 0 and any(
        r["paper_id"] == old[0]["id"] for r in json.loads(stale.stdout)["retrieved"]
    ):
        outcome.failures.append("the rebuilt index still holds a paper of the old one")
    return outcome


SCENARIOS = {
    "concurrent ingests": concurrent_ingests,
    "asks during ingest": asks_during_ingest,
    "killed rebuild": killed_rebuild,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--papers", type=int, default=600, help="papers per file (N)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    table: dict[str, dict[str, object]] = {}
    for name, scenario in SCENARIOS.items():
        row = {"runs": 0, "failures": 0, "unreadable": 0, "missing_lexical": 0, "not_first": 0}
        row["asks"], started, notes = 0, time.perf_counter(), []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="rag-faults-") as tmp:
                outcome = scenario(Path(tmp), args.papers)
            row["runs"] += 1
            row["failures"] += not outcome.clean()
            row["unreadable"] += outcome.unreadable
            row["missing_lexical"] += outcome.missing_lexical
            row["not_first"] += outcome.not_first
            row["asks"] += outcome.asks
            notes.extend(outcome.failures[:3])
            print(f"{name}: run {row['runs']} {'ok' if outcome.clean() else 'FAILED'}", flush=True)
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["notes"] = notes[:10]
        table[name] = row
    print()
    print(
        f"{'scenario':<20} {'runs':>5} {'failures':>9} {'unreadable':>11} {'missing BM25':>13} "
        f"{'title not 1st':>14} {'asks':>6} {'s':>7}"
    )
    for name, row in table.items():
        print(
            f"{name:<20} {row['runs']:>5} {row['failures']:>9} {row['unreadable']:>11} "
            f"{row['missing_lexical']:>13} {row['not_first']:>14} {row['asks']:>6} "
            f"{row['seconds']:>7}"
        )
        for note in row["notes"]:
            print(f"    {note}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    sys.exit(0 if all(r["failures"] == 0 for r in table.values()) else 1)


if __name__ == "__main__":
    main()
