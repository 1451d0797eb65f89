"""Hybrid retrieval: dense (Chroma) and BM25 chunk hits, aggregated to papers, fused by RRF.

Aggregating before fusing matters: a paper split into three chunks must not take three of the k
places, and a paper should not rank higher just because it has more chunks. Each paper is ranked by
its best chunk in each list, and the two paper rankings are fused with reciprocal rank fusion, which
needs no score calibration between cosine similarities and BM25 scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rag.index import Index, PaperRecord

Mode = Literal["hybrid", "dense", "bm25"]
RRF_K = 60  # the constant from Cormack et al. (2009); flattens the head of each ranking
MIN_CHUNKS = 50  # chunk hits asked of each search, at least: some papers have several chunks
# Chunk hits asked per distinct paper wanted: papers average 1.7 chunks, and the best chunks of one
# paper often rank together.
CHUNKS_PER_PAPER = 2


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A paper found for a question, with what the answerer needs to judge it."""

    paper: PaperRecord
    score: float  # fused rank score (hybrid), cosine (dense) or BM25 (bm25): higher is better
    dense: float  # cosine similarity of the question to the paper's best chunk
    lexical: float  # BM25 score of the paper's best chunk (0 when no query term matches)
    probability: float | None = None  # fitted P(it answers the question): rag.selection.score


def _best_per_paper(hits: Sequence[tuple[str, float]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for paper_id, score in hits:
        if score > best.get(paper_id, float("-inf")):
            best[paper_id] = score
    return best


def _ranks(scores: dict[str, float]) -> dict[str, int]:
    ordered = sorted(scores, key=lambda pid: (-scores[pid], pid))
    return {pid: rank for rank, pid in enumerate(ordered, start=1)}


class Retriever:
    """Finds the ``k`` papers most likely to answer a question."""

    def __init__(self, index: Index, mode: Mode = "hybrid") -> None:
        self.index = index
        self.mode = mode

    def retrieve(
        self,
        question: str,
        k: int,
        vector: np.ndarray | None = None,
        include: Sequence[str] = (),
    ) -> list[Retrieved]:
        """The top ``k`` distinct papers, best first, then any of the papers ``include`` names that
        were not among them (a paper the question names is always a candidate); ``vector`` is the
        question's embedding."""
        if vector is None:
            vector = self.index.embedder.embed_query(question)
        n_chunks = max(MIN_CHUNKS, CHUNKS_PER_PAPER * k)
        dense: dict[str, float] = {}
        lexical: dict[str, float] = {}
        if self.mode in ("hybrid", "dense"):
            hits = self.index.search_dense(vector, n_chunks)
            dense = _best_per_paper([(h.paper_id, h.score) for h in hits])
        if self.mode in ("hybrid", "bm25"):
            hits_bm25 = self.index.lexicon().search(question, n_chunks)
            lexical = _best_per_paper([(pid, score) for _, pid, score in hits_bm25])
        if self.mode == "dense":
            fused = dense
        elif self.mode == "bm25":
            fused = lexical
        else:
            fused = {}
            for ranking in (_ranks(dense), _ranks(lexical)):
                for pid, rank in ranking.items():
                    fused[pid] = fused.get(pid, 0.0) + 1.0 / (RRF_K + rank)
        # RRF ties are common (ranks 1+2 vs 2+1): the raw scores settle them before the id does.
        top = sorted(
            fused,
            key=lambda pid: (-fused[pid], -lexical.get(pid, 0.0), -dense.get(pid, -1.0), pid),
        )[:k]
        top += [pid for pid in dict.fromkeys(include) if pid not in top]
        records, similarity = self.index.papers_with_similarity(top, vector)
        return [
            Retrieved(
                records[pid], fused.get(pid, 0.0), similarity.get(pid, 0.0), lexical.get(pid, 0.0)
            )
            for pid in top
            if pid in records
        ]
