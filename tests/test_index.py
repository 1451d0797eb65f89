"""The index at library level: idempotent ingest, replacement, chunk bounds, model records, retrieval.

Everything is real: Chroma in temp dirs and the real embedding model. Tests that write build small
indexes of their own; the session index of the whole corpus (``built_index``) is only read.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import chromadb
import pytest
from tokenizers import Tokenizer

from rag.chat import NOT_FOUND
from rag.chunking import Chunk, chunk_id, chunk_papers, split_sentences
from rag.corpus import Paper
from rag.embedding import Embedder, HashEmbedder
from rag.errors import CorpusError, IndexMissingError, ModelMismatchError
from rag.pipeline import Rag
from rag.retrieval import Retriever
from tests.conftest import cli_env, make_settings, run_cli

HOPPER_PAPERS = {
    "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture",
    "TokenWeave: Efficient Compute-Communication Overlap for Distributed LLM Inference",
    "Characterizing and Optimizing LLM Inference Workloads on CPU-GPU Coupled Architectures",
}


def write_jsonl(path: Path, papers: list[Paper]) -> Path:
    path.write_text(
        "".join(json.dumps({"title": p.title, "abstract": p.abstract}) + "\n" for p in papers),
        encoding="utf-8",
    )
    return path


def ids_by_paper(rag: Rag) -> dict[str, set[str]]:
    got = rag.index.collection().get(include=["metadatas"])
    out: dict[str, set[str]] = defaultdict(set)
    for cid, meta in zip(got["ids"], got["metadatas"], strict=True):
        out[meta["paper_id"]].add(cid)
    return dict(out)


def open_chroma(index_dir: Path) -> chromadb.api.ClientAPI:
    return chromadb.PersistentClient(
        path=str(index_dir), settings=chromadb.Settings(anonymized_telemetry=False)
    )


# --- idempotent ingest -----------------------------------------------------------------------


def test_reingest_embeds_nothing_and_keeps_everything(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    papers = corpus[100:125]
    source = write_jsonl(tmp_path / "papers.jsonl", papers)
    index_dir = tmp_path / "index"
    expected = {c.id for c in chunk_papers(papers, embedder, overlap=48)}

    first = Rag(make_settings(index_dir), embedder=embedder).ingest([source])
    assert (first.papers, first.chunks) == (25, len(expected))
    assert first.embedded == first.chunks and first.skipped == 0 and first.deleted == 0

    rag = Rag(make_settings(index_dir), embedder=embedder)
    ids_before = set(rag.index.collection().get(include=[])["ids"])
    assert ids_before == expected
    generation = rag.index.generation()

    second = rag.ingest([source])
    assert (second.papers, second.chunks) == (25, len(expected))
    assert second.embedded == 0 and second.skipped == second.chunks and second.deleted == 0
    assert set(rag.index.collection().get(include=[])["ids"]) == ids_before
    assert rag.index.count() == len(expected)
    # Nothing changed: every paper's digest was stored, so the records were not written at all.
    assert second.unchanged == 25
    assert rag.index.generation() == generation


def test_reingest_of_the_session_index_writes_nothing(
    built_index: Path, rag: Rag, embedder: Embedder
) -> None:
    count = rag.index.count()
    generation = rag.index.generation()

    stats = Rag(make_settings(built_index), embedder=embedder).ingest()

    assert stats.papers == 554
    assert stats.chunks == count
    assert stats.embedded == 0 and stats.skipped == count and stats.deleted == 0
    assert rag.index.count() == count
    assert rag.index.generation() == generation


# --- a changed abstract ----------------------------------------------------------------------


def test_changed_abstract_replaces_its_chunks_only(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    papers = list(corpus[200:225])
    rag = Rag(make_settings(tmp_path / "index"), embedder=embedder)
    rag.index.ingest(papers)
    before = ids_by_paper(rag)

    # A paper with several chunks, so "its other chunks" are exercised too.
    target = next(p for p in papers if len(before[p.id]) > 1)
    first_sentence = target.abstract[slice(*split_sentences(target.abstract)[0])]
    new_sentence = "Quokkaflux is a zyxwvut scheduler for photonic interconnect fabrics."
    changed = replace(target, abstract=target.abstract.replace(first_sentence, new_sentence))
    assert changed.abstract != target.abstract
    old_ids = {c.id for c in chunk_papers([target], embedder, overlap=48)}
    new_ids = {c.id for c in chunk_papers([changed], embedder, overlap=48)}
    assert old_ids == before[target.id]
    assert old_ids - new_ids, "the change must retire at least one chunk"

    stats = rag.index.ingest([changed if p.id == target.id else p for p in papers])

    assert stats.embedded == len(new_ids - old_ids) > 0
    assert stats.deleted == len(old_ids - new_ids)
    after = ids_by_paper(rag)
    assert after[target.id] == new_ids  # exactly the new chunks, none of the old ones left
    assert not (old_ids - new_ids) & set(rag.index.collection().get(include=[])["ids"])
    assert {pid: ids for pid, ids in after.items() if pid != target.id} == {
        pid: ids for pid, ids in before.items() if pid != target.id
    }
    records = rag.index.lexicon()
    assert records.chunk_ids_of([target.id]) == new_ids  # the keyword index too
    assert records.papers([target.id])[target.id].abstract == changed.abstract
    assert records.count_papers() == len(papers)  # replaced in place, not added

    for mode in ("hybrid", "bm25"):
        found = Retriever(rag.index, mode).retrieve("Quokkaflux zyxwvut scheduler", 3)
        assert found[0].paper.id == target.id, mode
        assert found[0].paper.abstract == changed.abstract


# --- ids, metadata, distance -----------------------------------------------------------------


def test_chunk_ids_are_deterministic_and_stored_with_metadata(
    tmp_path: Path,
    corpus: list[Paper],
    embedder: Embedder,
) -> None:
    papers = list(corpus[300:320])
    chunks = chunk_papers(papers, embedder, overlap=48)
    assert [c.id for c in chunk_papers(papers, embedder, overlap=48)] == [c.id for c in chunks]
    assert len({c.id for c in chunks}) == len(chunks)
    for c in chunks:
        assert c.id == chunk_id(c.paper_id, c.position, c.text)
        assert c.id.startswith(f"{c.paper_id}#{c.position}-")
    assert chunk_id("p", 0, "text") != chunk_id("p", 0, "text!")
    assert chunk_id("p", 0, "text") != chunk_id("p", 1, "text")
    assert chunk_id("p", 0, "text") != chunk_id("q", 0, "text")

    rag = Rag(make_settings(tmp_path / "index"), embedder=embedder)
    rag.index.ingest(papers)
    col = rag.index.collection()
    assert col.configuration["hnsw"]["space"] == "cosine"
    assert col.metadata["embed_model"] == embedder.name
    assert col.metadata["embed_dim"] == embedder.dim == 384
    assert col.metadata["embed_fingerprint"] == embedder.fingerprint

    got = col.get(include=["documents", "metadatas", "embeddings"])
    assert sorted(got["ids"]) == sorted(c.id for c in chunks)
    by_id: dict[str, Chunk] = {c.id: c for c in chunks}
    for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
        chunk = by_id[cid]
        # Locally a chunk is its vector and its paper: text and records live once, in the records.
        assert meta == {"paper_id": chunk.paper_id, "position": chunk.position}
        assert doc is None
    records = rag.index.lexicon()
    assert records.chunk_ids() == set(by_id)
    stored = records.papers([p.id for p in papers])
    assert {pid: r.title for pid, r in stored.items()} == {p.id: p.title for p in papers}
    assert all(stored[p.id].abstract == p.abstract for p in papers)

    # Cosine space: a stored vector queried against itself is at distance ~0 (score ~1).
    hits = rag.index.search_dense(got["embeddings"][3], 5)
    assert hits[0].chunk_id == got["ids"][3]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(-1.0 - 1e-4 <= h.score <= 1.0 + 1e-4 for h in hits)


# --- chunk bounds on the real corpus ---------------------------------------------------------


def _body(chunk: Chunk, title: str) -> str:
    prefix = title if title.endswith((".", "?", "!")) else f"{title}."
    assert chunk.text.startswith(prefix + " "), chunk.text[:120]
    return chunk.text[len(prefix) + 1 :]


def _layout(paper: Paper, chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Where each chunk's body lies in the abstract, as (start, end), in chunk order."""
    spans = []
    at = 0
    for chunk in chunks:
        body = _body(chunk, paper.title)
        start = paper.abstract.find(body, at)
        assert start >= 0, f"{paper.id} chunk {chunk.position} is not a window of the abstract"
        spans.append((start, start + len(body)))
        at = start + 1
    return spans


def _grouped(chunks: list[Chunk]) -> dict[str, list[Chunk]]:
    out: dict[str, list[Chunk]] = defaultdict(list)
    for c in chunks:
        out[c.paper_id].append(c)
    return out


def test_chunks_fit_the_model_cover_the_abstract_and_overlap(
    corpus: list[Paper], embedder: Embedder
) -> None:
    tokenizer = Tokenizer.from_file(str(embedder.model_dir / "tokenizer.json"))
    tokenizer.no_truncation()  # count every token: a truncating tokenizer would hide overflows
    tokenizer.no_padding()

    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=True).ids)

    overlap = make_settings(Path("/unused")).chunk_overlap
    assert overlap > 0
    chunks = chunk_papers(corpus, embedder, overlap=overlap)
    by_paper = _grouped(chunks)
    assert set(by_paper) == {p.id for p in corpus}

    lengths = [n_tokens(c.text) for c in chunks]
    assert max(lengths) <= embedder.max_tokens == 256
    assert max(lengths) > 230  # windows are packed, not timid
    assert max(n_tokens(f"{p.title}. {p.abstract}") for p in corpus) > 256  # the bound matters

    multi = 0
    boundaries = carried = 0
    for paper in corpus:
        mine = by_paper[paper.id]
        assert [c.position for c in mine] == list(range(len(mine)))
        whole = n_tokens(f"{paper.title}. {paper.abstract}")
        assert (len(mine) > 1) == (whole > embedder.max_tokens), paper.id
        multi += len(mine) > 1

        layout = _layout(paper, mine)
        # Coverage: starts at the start, ends at the end, nothing skipped between chunks.
        assert layout[0][0] == 0
        assert layout[-1][1] == len(paper.abstract.rstrip())
        for (s1, e1), (s2, _e2) in pairwise(layout):
            assert s1 < s2, paper.id
            assert s2 <= e1 or not paper.abstract[e1:s2].strip(), paper.id
        texts = [c.text for c in mine]
        for s, e in split_sentences(paper.abstract):
            assert any(paper.abstract[s:e] in t for t in texts), (paper.id, s)

        # Overlap: the next chunk repeats the previous one's closing sentence(s), within budget.
        token_starts = [s for s, _ in embedder.token_spans([paper.abstract])[0]]
        sentences = split_sentences(paper.abstract)
        for (s1, e1), (s2, _e2) in pairwise(layout):
            boundaries += 1
            repeated = sum(s2 <= t < e1 for t in token_starts)
            assert repeated <= overlap, paper.id
            last = next(((s, e) for s, e in sentences if e == e1), None)
            if (
                last is not None
                and last[0] > s1
                and sum(last[0] <= t < last[1] for t in token_starts) <= overlap
            ):
                assert s2 <= last[0], f"{paper.id}: closing sentence not repeated"
                carried += 1
    assert multi > 300  # most abstracts are longer than one window
    assert carried > boundaries // 2  # the overlap is the rule, not the exception

    # With overlap 0 nothing is repeated, and still nothing is skipped.
    for paper_id, mine in _grouped(chunk_papers(corpus, embedder, overlap=0)).items():
        paper = next(p for p in corpus if p.id == paper_id)
        layout = _layout(paper, mine)
        for (_s1, e1), (s2, _e2) in pairwise(layout):
            assert s2 >= e1 and not paper.abstract[e1:s2].strip(), paper_id


# --- model mismatch --------------------------------------------------------------------------


def test_other_model_is_refused_and_touches_nothing(built_index: Path, rag: Rag) -> None:
    count = rag.index.count()
    generation = rag.index.generation()
    other = Rag(make_settings(built_index), embedder=HashEmbedder())

    with pytest.raises(ModelMismatchError) as exc:
        other.ask("which papers target Hopper GPUs")
    message = str(exc.value)
    assert "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "'hash'" in message
    assert "rag ingest --rebuild" in message
    assert "\n" not in message

    with pytest.raises(ModelMismatchError):
        other.has_index()
    assert rag.index.count() == count
    assert rag.index.generation() == generation
    assert (
        rag.index.collection().metadata["embed_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_rebuild_with_another_model_on_a_copy(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    papers = corpus[400:420]
    source = write_jsonl(tmp_path / "papers.jsonl", papers)
    original = tmp_path / "original"
    stats = Rag(make_settings(original), embedder=embedder).ingest([source])
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    env = cli_env(copy, RAG_EMBED_MODEL="hash")
    refused = run_cli("ingest", str(source), env=env)
    assert refused.returncode == 2
    assert "rag ingest --rebuild" in refused.stderr

    rebuilt = run_cli("ingest", "--json", "--rebuild", str(source), env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    counts = json.loads(rebuilt.stdout)
    hash_chunks = len(chunk_papers(papers, HashEmbedder(), overlap=48))
    assert counts["papers"] == 20
    assert counts["embedded"] == counts["chunks"] == hash_chunks

    col = open_chroma(copy).get_collection("papers")
    assert col.metadata["embed_model"] == "hash"
    assert col.metadata["embed_dim"] == HashEmbedder().dim
    assert col.metadata["embed_fingerprint"] == HashEmbedder().fingerprint
    assert col.count() == hash_chunks

    asked = run_cli("ask", "--json", papers[3].title, env=env)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["retrieved"][0]["paper_id"] == papers[3].id
    # The rebuilt copy now refuses the original model, and the original was not touched.
    with pytest.raises(ModelMismatchError):
        Rag(make_settings(copy), embedder=embedder).index.collection()
    untouched = Rag(make_settings(original), embedder=embedder)
    assert untouched.index.count() == stats.chunks
    assert untouched.index.collection().metadata["embed_model"] == embedder.name


# --- malformed input -------------------------------------------------------------------------


def test_malformed_file_leaves_the_index_as_it_was(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    index_dir = tmp_path / "index"
    indexed = write_jsonl(tmp_path / "indexed.jsonl", corpus[10:20])
    rag = Rag(make_settings(index_dir), embedder=embedder)
    rag.ingest([indexed])
    ids = set(rag.index.collection().get(include=[])["ids"])
    generation = rag.index.generation()

    good = write_jsonl(tmp_path / "good.jsonl", corpus[20:25])  # new papers, all valid
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"title": p.title, "abstract": p.abstract}) for p in corpus[25:28]]
    lines[2] = lines[2][:-5]  # line 3 is cut short: invalid JSON
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(CorpusError) as exc:
        Rag(make_settings(index_dir), embedder=embedder).ingest([good, bad])
    assert "bad.jsonl:3" in str(exc.value)
    assert exc.value.line == 3

    fresh = Rag(make_settings(index_dir), embedder=embedder)
    assert set(fresh.index.collection().get(include=[])["ids"]) == ids
    assert fresh.index.generation() == generation
    assert not {p.id for p in corpus[20:28]} & set(ids_by_paper(fresh))


# --- retrieval and answers on the whole corpus -----------------------------------------------


def test_a_search_does_not_depend_on_the_searches_before_it(built_index: Path, embedder) -> None:
    """Chroma keeps HNSW's search breadth widened after a large query; ours is fixed above any."""
    fresh = Rag(make_settings(built_index), embedder=embedder)  # a new client, nothing asked yet
    vector = embedder.embed_query("Which paper benchmarks LLM inference on TPU chips?")
    before = [h.chunk_id for h in fresh.index.search_dense(vector, 64)]
    fresh.index.search_dense(vector, 900)
    assert [h.chunk_id for h in fresh.index.search_dense(vector, 64)] == before
    configuration = fresh.index.collection().configuration
    assert configuration["hnsw"]["ef_search"] >= 900


def test_exact_title_finds_its_paper(corpus: list[Paper], rag: Rag) -> None:
    """Known gaps, asserted as such: the model alone misses 3 of these 31 titles at rank 1, and
    hybrid loses 2 exact RRF ties (dense rank 2 + BM25 rank 1 vs the reverse) to paper-id order."""
    sample = corpus[::18]
    assert len(sample) == 31
    first = {"hybrid": 0, "dense": 0, "bm25": 0}
    for paper in sample:
        vector = rag.embedder.embed_query(paper.title)  # once per title, for all three modes
        for mode in first:
            got = Retriever(rag.index, mode).retrieve(paper.title, 8, vector=vector)
            ids = [r.paper.id for r in got]
            assert len(ids) == len(set(ids)) == 8, (mode, paper.title)
            scores = [r.score for r in got]
            assert scores == sorted(scores, reverse=True)
            assert paper.id in ids[:5], (mode, paper.title, ids)
            first[mode] += ids[0] == paper.id
            if mode == "bm25":
                assert ids[0] == paper.id, paper.title
            if mode == "hybrid":
                # Rank 1, or tied on fused score with rank 1 (RRF ranks (1, 2) and (2, 1) tie).
                mine = scores[ids.index(paper.id)]
                assert mine == scores[0], (paper.title, [r.paper.title for r in got[:2]])
    assert first["bm25"] == 31
    assert first["hybrid"] >= 29, first
    assert first["dense"] >= 28, first


def test_ask_returns_k_papers_or_list_k_for_list_questions(rag: Rag) -> None:
    single = rag.ask("How does FlashAttention reduce memory traffic?", k=5)
    assert len(single.retrieved) == 5
    assert len({r.paper.id for r in single.retrieved}) == 5

    listing = rag.ask("which papers target Hopper GPUs", k=5)
    assert rag.settings.list_k > 5
    assert len(listing.retrieved) == rag.settings.list_k
    assert len({r.paper.id for r in listing.retrieved}) == rag.settings.list_k


def test_hopper_question_cites_the_hopper_papers(rag: Rag) -> None:
    result = rag.ask("which papers target Hopper GPUs")
    assert not result.abstained
    cited = {c.title for c in result.citations}
    assert cited >= HOPPER_PAPERS, cited
    assert [c.n for c in result.citations] == list(range(1, len(result.citations) + 1))
    retrieved = {r.paper.id: r.paper.title for r in result.retrieved}
    assert all(retrieved.get(c.paper_id) == c.title for c in result.citations)


def test_out_of_domain_question_abstains(rag: Rag) -> None:
    result = rag.ask("What is the best recipe for chocolate cake?")
    assert result.abstained
    assert result.citations == []
    assert NOT_FOUND in result.answer
    assert "[" not in result.answer


# --- BM25 staleness --------------------------------------------------------------------------


def test_deleted_records_are_named_to_the_reader_and_restored_by_ingest_without_embedding(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    """Also what an index from before the records file looks like: vectors without records."""
    papers = corpus[450:480]
    index_dir = tmp_path / "index"
    rag = Rag(make_settings(index_dir), embedder=embedder)
    rag.index.ingest(papers)
    questions = [papers[4].title, "sparse attention kernels for long context", papers[17].title]

    def results(r: Rag, mode: str) -> list[list[tuple[str, float]]]:
        return [
            [(x.paper.id, round(x.score, 6)) for x in Retriever(r.index, mode).retrieve(q, 6)]
            for q in questions
        ]

    before = {mode: results(rag, mode) for mode in ("bm25", "hybrid")}
    assert before["bm25"][0][0][0] == papers[4].id
    rag.index.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{make_settings(index_dir).records_path}{suffix}").unlink(missing_ok=True)

    again = Rag(make_settings(index_dir), embedder=embedder)  # as the next process would
    with pytest.raises(IndexMissingError, match=r"no paper records.*run `rag ingest`"):
        again.index.lexicon()
    assert not make_settings(index_dir).records_path.exists()  # a reader creates nothing
    stats = again.index.ingest(papers)
    assert stats.embedded == 0 and stats.skipped == stats.chunks > 0  # the vectors were kept
    assert {mode: results(again, mode) for mode in ("bm25", "hybrid")} == before


def test_bm25_follows_another_writer(
    tmp_path: Path, corpus: list[Paper], embedder: Embedder
) -> None:
    index_dir = tmp_path / "index"
    reader = Rag(make_settings(index_dir), embedder=embedder)
    reader.index.ingest(corpus[30:50])
    newcomer = corpus[60]
    assert newcomer.id not in {
        r.paper.id for r in Retriever(reader.index, "bm25").retrieve(newcomer.title, 5)
    }

    Rag(make_settings(index_dir), embedder=embedder).index.ingest([newcomer])

    reader.index.refresh()  # what Rag.stream does before every question
    found = Retriever(reader.index, "bm25").retrieve(newcomer.title, 5)
    assert found[0].paper.id == newcomer.id
