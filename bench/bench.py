"""Benchmark the core paths against their targets (issues 2 and 14), on this machine, in one run.

    python bench/bench.py [--questions 60] [--json out.json]

Measures, on a fresh index in a temp dir and a fresh cache (XDG_CACHE_HOME), as on a new machine:
  first ingest      `rag ingest --json` of the bundled corpus (wall time of the command, and the
                    "seconds" it reports for the ingest itself); it includes the one-time export
                    of the question graph (rag.graph)
  no-op re-ingest   the same command again (must embed 0)
  warm ask          in-process `Rag.ask` latency over >= 50 questions, p50/p95
  cold ask          wall time of `rag ask --json ...` (a new process), median of 5, next to the
                    median time of `python -c "import sentence_transformers"` in the same run
Run it on an otherwise idle machine: the timings are CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"first_ingest_s": 25.0, "noop_ingest_s": 3.0, "warm_p50_ms": 50.0, "cold_ratio": 0.2}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of a command run to completion, and its result (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed, proc


def questions(n: int) -> list[str]:
    """Questions of the kinds users ask: paraphrased topics, list questions, out-of-domain ones."""
    from rag.corpus import load_bundled

    papers = load_bundled()
    step = max(1, len(papers) // n)
    out = []
    for i, paper in enumerate(papers[::step][:n]):
        words = paper.title.split(":")[-1].strip()
        if i % 5 == 0:
            out.append(f"which papers are about {words.lower()}?")
        elif i % 7 == 0:
            out.append(f"What is the best recipe for {words.split()[0].lower()} soup?")
        else:
            out.append(f"How does recent work approach {words.lower()}?")
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def main() -> None:
    """Run every measurement and print a table (and optionally JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()

    index_dir = Path(tempfile.mkdtemp(prefix="rag-bench-")) / ".rag"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    cache = index_dir.parent / "cache"
    env.update(RAG_INDEX_DIR=str(index_dir), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(cache))
    rag_cmd = [sys.executable, "-m", "rag"]

    first_wall, first = timed([*rag_cmd, "ingest", "--json"], env)
    first_stats = json.loads(first.stdout)
    noop_wall, noop = timed([*rag_cmd, "ingest", "--json"], env)
    noop_stats = json.loads(noop.stdout)
    assert noop_stats["embedded"] == 0, noop_stats

    os.environ.update(HF_HUB_OFFLINE="1")
    from rag.pipeline import Rag
    from rag.settings import Settings

    rag = Rag(Settings(_env_file=None, index_dir=index_dir, cache_dir=cache / "rag-papers"))  # type: ignore[call-arg]
    qs = questions(args.questions)
    for q in qs[:3]:
        rag.ask(q)  # warm-up: load the query encoder and BM25 once
    latencies = []
    for q in qs:
        start = time.perf_counter()
        rag.ask(q)
        latencies.append((time.perf_counter() - start) * 1000)

    cold = [timed([*rag_cmd, "ask", "--json", qs[i]], env)[0] for i in range(5)]
    imports = [
        timed([sys.executable, "-c", "import sentence_transformers"], env)[0] for _ in range(3)
    ]
    results = {
        "first_ingest_s": round(first_wall, 2),
        "first_ingest_reported_s": first_stats["seconds"],
        "first_ingest_chunks": first_stats["chunks"],
        "papers": first_stats["papers"],
        "noop_ingest_s": round(noop_wall, 2),
        "noop_ingest_reported_s": noop_stats["seconds"],
        "warm_questions": len(latencies),
        "warm_p50_ms": round(percentile(latencies, 50), 1),
        "warm_p95_ms": round(percentile(latencies, 95), 1),
        "cold_ask_s": round(statistics.median(cold), 2),
        "import_sentence_transformers_s": round(statistics.median(imports), 2),
    }
    results["cold_ratio"] = round(
        results["cold_ask_s"] / results["import_sentence_transformers_s"], 2
    )

    rows = [
        ("first ingest (wall, s)", results["first_ingest_s"], TARGETS["first_ingest_s"]),
        ("  of which ingest itself (s)", results["first_ingest_reported_s"], None),
        ("no-op re-ingest (wall, s)", results["noop_ingest_s"], TARGETS["noop_ingest_s"]),
        ("warm ask p50 (ms)", results["warm_p50_ms"], TARGETS["warm_p50_ms"]),
        ("warm ask p95 (ms)", results["warm_p95_ms"], None),
        ("cold rag ask --json (s)", results["cold_ask_s"], None),
        ("import sentence_transformers (s)", results["import_sentence_transformers_s"], None),
        ("cold ask / import", results["cold_ratio"], TARGETS["cold_ratio"]),
    ]
    print(f"{'measure':<34} {'value':>9} {'target':>8}  ")
    for name, value, target in rows:
        verdict = "" if target is None else ("ok" if value <= target else "MISSED")
        print(
            f"{name:<34} {value:>9} {'' if target is None else '<= ' + str(target):>8}  {verdict}"
        )
    print(
        f"({results['papers']} papers, {results['first_ingest_chunks']} chunks, "
        f"{results['warm_questions']} warm questions)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
