"""Split abstracts into overlapping chunks that fit the embedder, in its own tokens.

all-MiniLM-L6-v2 reads at most 256 word pieces and silently drops the rest; about 60% of the
bundled abstracts are longer. A chunk is whole sentences packed up to the budget (a sentence longer
than the budget is cut at token boundaries), prefixed with the paper title so every chunk says what
paper it is about, and it repeats the previous chunk's last sentence(s) up to ``overlap`` tokens so a
statement that straddles a boundary is still found.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from rag.corpus import Paper
from rag.embedding import Embedder, Spans

# A boundary is end punctuation, optional closing quote/bracket, whitespace, then something that can
# start a sentence. Abbreviations that end in a period are rejected after matching.
_BOUNDARY = re.compile(r"[.!?][\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
_ABBREVIATIONS = re.compile(r"(?:\b(?:e\.g|i\.e|et al|vs|cf|Fig|Eq|Sec|approx|resp|No)|\b[A-Z])\.$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One embedded unit: a window of a paper's abstract, prefixed by its title."""

    id: str
    paper_id: str
    position: int
    text: str


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text`` (whitespace between them excluded)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.start() + 1
        if _ABBREVIATIONS.search(text[start:end]):
            continue
        end = match.end() - len(match.group()) + len(match.group().rstrip())
        spans.append((start, end))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return spans


def chunk_id(paper_id: str, position: int, text: str) -> str:
    """Deterministic: the same text at the same place always gets the same id, so re-ingest is a no-op."""
    digest = hashlib.sha256(f"{paper_id}\x00{position}\x00{text}".encode()).hexdigest()[:20]
    return f"{paper_id}#{position}-{digest}"


def _units(abstract: str, spans: Spans, budget: int) -> list[tuple[int, int, int]]:
    """Sentences as (start, end, tokens); a sentence over budget becomes several token windows."""
    units = []
    starts = [s for s, _ in spans]
    for s_start, s_end in split_sentences(abstract):
        inside = range(bisect_left(starts, s_start), bisect_left(starts, s_end))
        for k in range(0, max(len(inside), 1), budget):
            piece = inside[k : k + budget]
            if not piece:
                units.append((s_start, s_end, 0))
                continue
            a = s_start if k == 0 else spans[piece[0]][0]
            b = s_end if k + budget >= len(inside) else spans[piece[-1]][1]
            units.append((a, b, len(piece)))
    return units


def chunk_papers(papers: Sequence[Paper], embedder: Embedder, overlap: int = 48) -> list[Chunk]:
    """All chunks of ``papers``; every chunk's text fits ``embedder.max_tokens`` exactly."""
    abstract_spans = embedder.token_spans([p.abstract for p in papers])
    title_lengths = [len(s) for s in embedder.token_spans([p.title for p in papers])]
    chunks: list[Chunk] = []
    for paper, spans, title_len in zip(papers, abstract_spans, title_lengths, strict=True):
        # The title costs its tokens plus one for the separating newline-free join; keep at least
        # half the window for the abstract even when a title is absurdly long.
        title = paper.title
        room = embedder.max_tokens - embedder.special_tokens
        if title_len > room // 2:
            title_spans = embedder.token_spans([title])[0]
            title = title[: title_spans[room // 2 - 1][1]]
            title_len = room // 2
        budget = room - title_len - 1
        units = _units(paper.abstract, spans, budget)
        windows: list[tuple[int, int]] = []  # (first unit, last unit + 1)
        i = 0
        while i < len(units):
            j, used = i, 0
            while j < len(units) and used + units[j][2] <= budget:
                used += units[j][2]
                j += 1
            windows.append((i, j))
            if j >= len(units):
                break
            k, carried = j, 0
            while k - 1 > i and carried + units[k - 1][2] <= overlap:
                carried += units[k - 1][2]
                k -= 1
            i = k
        for position, (a, b) in enumerate(windows):
            body = paper.abstract[units[a][0] : units[b - 1][1]]
            text = f"{title}. {body}" if not title.endswith((".", "?", "!")) else f"{title} {body}"
            chunks.append(Chunk(chunk_id(paper.id, position, text), paper.id, position, text))
    return chunks
