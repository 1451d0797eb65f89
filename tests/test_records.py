"""The records file (SQLite: papers, FTS5 BM25, names) written incrementally, against a rebuild.

Every write adds, replaces or deletes only what it names, so after any sequence of writes the
file must answer exactly as one written from scratch with the final papers would: the same
chunks, the same document frequencies, the same BM25 hits and scores, the same names, and the
names the same as ``rag.names.Catalog.build`` gives from all papers at once. Then the same at the
level of ``Index.ingest`` (real Chroma), and the bounded memory of a streaming ingest.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from bench.scale import write_snapshot
from rag import records as records_module
from rag.chunking import chunk_papers
from rag.corpus import Paper
from rag.embedding import Embedder, HashEmbedder
from rag.index import _record
from rag.names import Catalog
from rag.pipeline import Rag
from rag.records import Records, StoredChunk
from rag.retrieval import Retriever
from tests.conftest import REPO, cli_env, make_settings


def stored(papers: list[Paper], embedder: Embedder) -> list[StoredChunk]:
    return [
        StoredChunk(c.id, c.paper_id, c.position, c.text)
        for c in chunk_papers(papers, embedder, overlap=48)
    ]


def vocabulary(records: Records) -> dict[str, int]:
    conn = records._connect()
    return dict(conn.execute("SELECT term, doc FROM chunk_vocab").fetchall())


def answers(records: Records, questions: list[str]) -> list[list[tuple[str, str, float]]]:
    return [[(c, p, round(s, 9)) for c, p, s in records.search(q, 10)] for q in questions]


def names_found(finder: object, questions: list[str]) -> list[list[tuple[str, tuple[str, ...]]]]:
    return [[(m.name.text, m.name.papers) for m in finder.find(q)] for q in questions]  # type: ignore[attr-defined]


def test_adds_replacements_and_deletions_answer_as_a_rebuild_does(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    rng = random.Random(7)
    papers = list(corpus[:400])
    live = Records(tmp_path / "live.sqlite3")
    for start in range(0, 300, 50):  # added in batches, as an ingest does
        batch = papers[start : start + 50]
        live.write([(_record(p), "v1") for p in batch], stored(batch, embedder))

    # Replace 40 papers: a sentence of each abstract swapped for one of another paper's.
    final = {p.id: p for p in papers[:300]}
    for paper in rng.sample(papers[:300], 40):
        donor = rng.choice(corpus[400:])
        sentence = donor.abstract.split(". ")[0]
        changed = replace(paper, abstract=f"{sentence}. {paper.abstract.split('. ', 1)[-1]}")
        old_ids = live.chunk_ids_of([paper.id])
        new_chunks = stored([changed], embedder)
        stale = sorted(old_ids - {c.id for c in new_chunks})
        live.write([(_record(changed), "v2")], new_chunks, stale)
        final[paper.id] = changed
    gone = rng.sample(sorted(final), 25)
    live.delete_papers(gone)
    for pid in gone:
        del final[pid]
    more = papers[300:400]
    live.write([(_record(p), "v1") for p in more], stored(more, embedder))
    final |= {p.id: p for p in more}

    rebuilt = Records(tmp_path / "rebuilt.sqlite3")
    everything = list(final.values())
    rebuilt.write([(_record(p), "v") for p in everything], stored(everything, embedder))

    assert live.chunk_ids() == rebuilt.chunk_ids() and live.size == rebuilt.size
    assert live.paper_ids() == rebuilt.paper_ids() == set(final)
    assert live.papers(sorted(final)) == rebuilt.papers(sorted(final))
    assert vocabulary(live) == vocabulary(rebuilt)
    words = sorted(vocabulary(rebuilt))
    assert all(live.idf(t) == rebuilt.idf(t) for t in rng.sample(words, 300))

    questions = [p.title for p in rng.sample(everything, 30)]
    questions += [" ".join(rng.sample(p.abstract.split(), 6)) for p in rng.sample(everything, 30)]
    questions += [corpus[i].abstract.split(". ")[0] for i in (5, 50, 150)]  # deleted or replaced
    assert answers(live, questions) == answers(rebuilt, questions)
    assert any(answers(live, questions))

    reference = Catalog.build([(p.id, p.title, p.abstract) for p in everything])
    asked = [f"What does {n.text} do?" for n in reference.names.values()]
    asked += [
        f"Compare {a.text} and {b.text}" for a, b in pairwise(list(reference.names.values())[::2])
    ]
    assert names_found(live.names, asked) == names_found(reference, asked)
    assert names_found(rebuilt.names, asked) == names_found(reference, asked)
    gone_names = Catalog.build([(p.id, p.title, p.abstract) for p in corpus[:400]])
    lost = [f"What is {n.text}?" for n in gone_names.names.values() if set(n.papers) <= set(gone)]
    assert lost and names_found(live.names, lost) == names_found(reference, lost)


def rows(records: Records) -> dict[str, list[tuple[object, ...]]]:
    conn = records._connect()
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
        for table in ("papers", "chunks", "names", "chunk_vocab")
    }


def test_a_write_analysed_in_worker_processes_stores_what_one_analysed_here_does(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large batches on a machine of many cores spread the analysis over processes: the same
    records, names and BM25 come of it, in the same order."""
    papers = list(corpus[:300])
    here = Records(tmp_path / "here.sqlite3")
    here.write([(_record(p), "v") for p in papers], stored(papers, embedder))
    monkeypatch.setattr(records_module, "ANALYSIS_WORKERS", 2)
    monkeypatch.setattr(records_module, "PARALLEL_MIN", 1)
    monkeypatch.setattr(records_module, "_pool", None)
    spread = Records(tmp_path / "spread.sqlite3")
    spread.write([(_record(p), "v") for p in papers], stored(papers, embedder))
    pool = records_module._pool
    assert pool is not None  # the processes did the work
    pool.shutdown()
    assert rows(spread) == rows(here)
    questions = [p.title for p in papers[::15]]
    assert answers(spread, questions) == answers(here, questions)
    plain = "SELECT rowid FROM plain_index WHERE plain_index MATCH 'memory' ORDER BY rowid"
    assert spread._connect().execute(plain).fetchall() == here._connect().execute(plain).fetchall()


def test_an_ingest_that_adds_and_replaces_matches_a_fresh_index(
    tmp_path: Path, corpus: list[Paper]
) -> None:
    """Through ``Index.ingest`` with real Chroma: incremental batches and replacements leave the
    index answering, by keywords and by vectors, as a fresh ingest of the final papers does."""
    embedder = HashEmbedder()
    papers = list(corpus[100:260])
    settings = make_settings(tmp_path / "live", ingest_batch=32)
    live = Rag(settings, embedder=embedder)
    live.index.ingest(papers[:100])
    changed = [replace(p, abstract=p.abstract + " Glimmerfang revisits it.") for p in papers[40:60]]
    final = papers[:40] + changed + papers[60:160]
    stats = live.index.ingest(final)
    assert stats.replaced == 20 and stats.unchanged == 80
    fresh = Rag(make_settings(tmp_path / "fresh"), embedder=embedder)
    fresh.index.ingest(final)

    questions = [p.title for p in final[::7]] + ["Glimmerfang revisits", "sparse attention"]
    for mode in ("bm25", "dense", "hybrid"):
        got = [[r.paper.id for r in Retriever(live.index, mode).retrieve(q, 8)] for q in questions]
        want = [
            [r.paper.id for r in Retriever(fresh.index, mode).retrieve(q, 8)] for q in questions
        ]
        assert got == want, mode
    assert live.index.lexicon().chunk_ids() == set(live.index.collection().get(include=[])["ids"])
    assert live.index.lexicon().chunk_ids() == fresh.index.lexicon().chunk_ids()


def peak_rss_mb(source: Path, index_dir: Path) -> float:
    """Peak RSS of a `rag ingest` process (its own, read as it exits)."""
    script = (
        "import resource, sys\n"
        "from rag.cli import main\n"
        "try:\n    main()\n"
        "finally:\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    print(f'peak {peak}', file=sys.stderr)\n"
    )
    env = cli_env(index_dir, RAG_EMBED_MODEL="hash", RAG_INGEST_BATCH="500")
    done = subprocess.run(
        [sys.executable, "-c", script, "ingest", "--json", str(source)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["embedded"] > 0
    return int(done.stderr.strip().splitlines()[-1].split()[1]) / 1024


@pytest.mark.parametrize("small, large", [(2_000, 10_000)])
def test_a_streaming_ingest_holds_a_batch_not_the_corpus(
    tmp_path: Path, small: int, large: int
) -> None:
    """Memory grows with the corpus only by what is kept per paper (a scan entry, ~0.5 KB of our
    own, and Chroma's in-memory vector index, ~1.2 KB per chunk of 256 floats), not by the
    corpus itself: loading it whole, as ingest once did, took ~50 KB per paper."""
    peaks = {}
    for n in (small, large):
        source = tmp_path / f"papers-{n}.jsonl"
        write_snapshot(source, n)
        peaks[n] = peak_rss_mb(source, tmp_path / f"index-{n}")
    per_paper_kb = (peaks[large] - peaks[small]) * 1024 / (large - small)
    assert per_paper_kb < 5.0, peaks
