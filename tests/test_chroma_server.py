"""The index on a real Chroma server (``chroma run``), driven through the ``rag`` command."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import chromadb
import pytest

from bench import faults
from rag.corpus import Paper
from tests.conftest import cli_env, run_cli

STARTUP_DEADLINE_S = 60


@dataclass
class Server:
    url: str
    port: int
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
            return response.status == 200 and "heartbeat" in response.read().decode()
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    chroma = Path(sys.executable).parent / "chroma"
    assert chroma.exists(), f"no chroma executable next to {sys.executable}"
    root = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(chroma),
                "run",
                "--path",
                str(root / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while not heartbeat(url):
            assert time.monotonic() < deadline, f"no heartbeat in {STARTUP_DEADLINE_S} s"
            try:  # between polls, wait on the process itself: an early exit fails at once
                code = proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"chroma exited with {code}:\n{log.read_text(errors='replace')}")
        yield Server(url, port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_server_listens_on_loopback_only(chroma_server: Server) -> None:
    assert urlparse(chroma_server.url).hostname == "127.0.0.1"
    log = re.sub(r"\x1b\[[0-9;]*m", "", chroma_server.log.read_text(errors="replace"))
    assert f"127.0.0.1:{chroma_server.port}" in log


def test_ingest_and_ask_through_the_server(
    chroma_server: Server,
    tmp_path: Path,
    corpus: list[Paper],
) -> None:
    papers = corpus[240:260]
    source = tmp_path / "papers.jsonl"
    source.write_text(
        "".join(json.dumps({"title": p.title, "abstract": p.abstract}) + "\n" for p in papers),
        encoding="utf-8",
    )
    index_dir = tmp_path / "index"
    env = cli_env(index_dir, RAG_CHROMA_URL=chroma_server.url)

    first = run_cli("ingest", "--json", str(source), env=env)
    assert first.returncode == 0, first.stderr
    counts = json.loads(first.stdout)
    assert counts["papers"] == 20
    assert counts["embedded"] == counts["chunks"] >= 20 and counts["skipped"] == 0

    second = run_cli("ingest", "--json", str(source), env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["embedded"] == 0 and again["skipped"] == counts["chunks"]

    target = papers[11]
    asked = run_cli("ask", "--json", target.title, env=env)
    assert asked.returncode == 0, asked.stderr
    out = json.loads(asked.stdout)
    assert out["retrieved"][0]["paper_id"] == target.id
    assert out["retrieved"][0]["title"] == target.title

    # The chunks and vectors are on the server; only the BM25 index is local.
    client = chromadb.HttpClient(
        host="127.0.0.1",
        port=chroma_server.port,
        settings=chromadb.Settings(anonymized_telemetry=False),
    )
    names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
    assert "papers" in names
    col = client.get_collection("papers")
    assert col.count() == counts["chunks"]
    assert col.metadata["embed_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    stored = col.get(include=["metadatas"])
    assert {m["paper_id"] for m in stored["metadatas"]} == {p.id for p in papers}
    assert not (index_dir / "chroma.sqlite3").exists()
    assert (index_dir / "records-papers.sqlite3").exists()  # this machine's mirror of the records
    # On a server each paper's record travels once, on its first chunk, for the other clients.
    firsts = [m for m in stored["metadatas"] if m["position"] == 0]
    assert sorted(m["title"] for m in firsts) == sorted(p.title for p in papers)
    assert all("title" not in m for m in stored["metadatas"] if m["position"] > 0)

    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"Chroma server {chroma_server.url}" in doctor.stdout
    assert "20 papers" in doctor.stdout


def test_writers_on_one_server_from_two_machines_lose_nothing(
    chroma_server: Server, tmp_path: Path
) -> None:
    """What a shared server guarantees: one writer per index folder (the lock is local, so two
    ingests from one place are refused as on a local index); writers on two machines (two index
    folders) both land, the server serialising their writes; once both have finished, every
    client finds every paper, vectors and keywords (a client whose saved keyword index is older
    than the published collection rebuilds it in memory)."""
    first, second = faults.synthetic(120), faults.synthetic(120, start=120)
    a = faults.write_jsonl(tmp_path / "a.jsonl", first)
    b = faults.write_jsonl(tmp_path / "b.jsonl", second)
    server = {"RAG_CHROMA_URL": chroma_server.url, "RAG_COLLECTION": "shared"}
    here = {**faults.environment(tmp_path / "here"), **server}
    there = {**faults.environment(tmp_path / "there"), **server}
    with faults.ingesting(str(a), env=here, pause=True) as running:
        refused = run_cli("ingest", str(b), env=here)
        assert refused.returncode == 1 and "is being written by `rag ingest" in refused.stderr
        other = run_cli("ingest", "--json", str(b), env=there)
        assert other.returncode == 0, other.stderr
        assert faults.finish(running) == 0
    for client_dir in ("here", "there"):
        outcome = faults.Outcome()
        faults.audit(
            tmp_path / client_dir,
            first + second,
            outcome,
            chroma_url=chroma_server.url,
            collection="shared",
        )
        assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)
        assert outcome.failures == []

    # A third machine, which never wrote, mirrors both writers' papers on its first question.
    elsewhere = {**faults.environment(tmp_path / "elsewhere"), **server}
    for paper in (first[7], second[-1]):
        asked = run_cli("ask", "--json", paper["title"], env=elsewhere)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["retrieved"][0]["paper_id"] == paper["id"]

    # One writer replaces a paper of the other's: every mirror drops the old text, finds the new.
    changed = {**first[7], "abstract": " ".join(["Zorblatt quantises photonic tensor cores."] * 3)}
    edit = faults.write_jsonl(tmp_path / "edit.jsonl", [changed])
    assert run_cli("ingest", str(edit), env=there).returncode == 0
    for env in (here, elsewhere):
        asked = run_cli("ask", "--json", "What does Zorblatt quantise?", env=env)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["retrieved"][0]["paper_id"] == changed["id"]
        reader = faults.reader(
            Path(env["RAG_INDEX_DIR"]), chroma_url=chroma_server.url, collection="shared"
        )
        records = reader.index.lexicon()
        assert records.papers([changed["id"]])[changed["id"]].abstract == changed["abstract"]
        assert records.chunk_ids() == set(reader.index.collection().get(include=[])["ids"])
        reader.index.close()


def test_a_rebuild_on_the_server_replaces_the_collection_when_complete(
    chroma_server: Server, tmp_path: Path
) -> None:
    old, new = faults.synthetic(30), faults.synthetic(30, start=500)
    env = {
        **faults.environment(tmp_path / "index"),
        "RAG_CHROMA_URL": chroma_server.url,
        "RAG_COLLECTION": "rebuilt",
    }
    assert (
        run_cli("ingest", str(faults.write_jsonl(tmp_path / "a.jsonl", old)), env=env).returncode
        == 0
    )
    done = run_cli(
        "ingest", "--rebuild", str(faults.write_jsonl(tmp_path / "b.jsonl", new)), env=env
    )
    assert done.returncode == 0, done.stderr
    client = chromadb.HttpClient(
        host="127.0.0.1",
        port=chroma_server.port,
        settings=chromadb.Settings(anonymized_telemetry=False),
    )
    names = {c if isinstance(c, str) else c.name for c in client.list_collections()}
    assert "rebuilt" in names and "rebuilt-rebuild" not in names  # swapped in, nothing left over
    stored = client.get_collection("rebuilt").get(include=["metadatas"])["metadatas"]
    assert {m["paper_id"] for m in stored} == {p["id"] for p in new}
    outcome = faults.Outcome()
    faults.audit(
        tmp_path / "index", new, outcome, chroma_url=chroma_server.url, collection="rebuilt"
    )
    assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)
