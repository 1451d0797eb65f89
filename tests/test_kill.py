"""An ingest killed with SIGKILL half-way, then re-run, ends complete and without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import chromadb

from rag.chunking import chunk_papers
from tests.conftest import REPO, cli_env, run_cli


def test_ingest_killed_mid_way_then_rerun_is_complete(tmp_path: Path, corpus, embedder) -> None:
    papers = corpus[:60]
    source = tmp_path / "papers.jsonl"
    source.write_text(
        "\n".join(json.dumps({"title": p.title, "abstract": p.abstract}) for p in papers) + "\n"
    )
    expected_ids = {c.id for c in chunk_papers(papers, embedder, overlap=48)}
    index_dir = tmp_path / "index"
    env = cli_env(index_dir, RAG_INGEST_BATCH="8")

    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "ingest", str(source)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # progress lines arrive after each stored batch
        seen.append(line)
        if line.startswith("stored 16/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)

    client = chromadb.PersistentClient(
        path=str(index_dir), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    partial = client.get_collection("papers").count()
    del client
    assert 16 <= partial < len(expected_ids), "the kill must have landed half-way"

    rerun = run_cli("ingest", "--json", str(source), env=env)
    assert rerun.returncode == 0, rerun.stderr
    stats = json.loads(rerun.stdout)
    assert stats["chunks"] == len(expected_ids)
    assert stats["embedded"] == len(expected_ids) - partial  # resumes, does not start over

    client = chromadb.PersistentClient(
        path=str(index_dir), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    ids = client.get_collection("papers").get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == len(expected_ids)
    assert set(ids) == expected_ids

    # The records the killed run left half-way are complete again: a title finds its paper.
    ask = run_cli("ask", "--json", papers[7].title, env=env)
    assert ask.returncode == 0, ask.stderr
    assert json.loads(ask.stdout)["retrieved"][0]["title"] == papers[7].title
