"""How relevant a paper is to a question: meaning, and coverage of the question's topic terms.

Relevance is the cosine similarity of the question to the paper's best chunk (meaning) plus a
weighted ``coverage``: the share of the question's topic vocabulary the title and abstract contain,
each term weighted by its IDF in the collection (so "Hopper" is not outvoted by "GPU"), a family
name matching its members through the glossary. The pipeline orders retrieved papers by it before
the fitted citation model (``rag.selection``) scores them; the weights are the policy's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from rag.chunking import split_sentences
from rag.index import PaperRecord
from rag.lexical import Terms, terms
from rag.policy import Policy
from rag.retrieval import Retrieved

if TYPE_CHECKING:
    from rag.question import Analysis

# Where a sentence starts comparing, what follows is a baseline, not the paper's subject.
_COMPARISON = re.compile(
    r"\b(?:outperform\w*|surpass\w*|compared (?:to|with)|in comparison|than|versus|vs\.?|"
    r"relative to|over (?:the )?(?:baseline|state-of-the-art)|against)\b",
    re.IGNORECASE,
)


# Specifics: versions, model numbers and quantities ("TPU v5e", "FlashAttention-3", "10 million").
# A question that names one asks about that exact thing, and an abstract that never mentions it
# does not answer it, however close the topic: "TPUv4" is not "TPU v5e", nor "103k" "10".
_RAW_TOKEN = re.compile(r"[A-Za-z0-9](?:[\w.,\-/]*[A-Za-z0-9])?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SCALE = re.compile(r"(\d)\s+(thousand|million|billion|trillion)\b", re.IGNORECASE)
_PERCENT = re.compile(r"(\d)\s*(?:%|percent\b)", re.IGNORECASE)
_APPROXIMATE = re.compile(
    r"(?:\b(?:about|around|roughly|approximately|nearly|almost|some)\s+|~\s*)\d[\d,.]*",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    str(n): word
    for n, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve")
    )
}  # fmt: skip


def _pieces(text: str) -> list[str]:
    """Lowercased tokens, hyphenated words split, a bare number kept on the name it versions.

    "FlashAttention-3" -> "flashattention3", "o1-style" -> "o1", "style"; "16-bit" -> "16", "bit";
    "100,000" -> "100000"; "1.5" stays a decimal; "10 million" -> "10million", "10%" -> "10pct".
    """
    # A quantity keeps its scale: "10 million" is not "10%" nor "10 tasks".
    text = _PERCENT.sub(r"\1pct", _SCALE.sub(r"\1\2", text))
    out = []
    for raw in _RAW_TOKEN.findall(text):
        parts = [p for p in re.split(r"[-/]", raw.lower().replace(",", "")) if p]
        for i, part in enumerate(parts):
            part = part.strip("._")
            if part[:1].isdigit() and i > 0 and out and parts[i - 1].isalpha():
                out[-1] += part  # a version: "gpt-4o", "llama-3.1"
            elif part:
                out.append(part)
    return out


def specifics(text: str) -> tuple[str, ...]:
    """The pieces of ``text`` that carry a digit: the exact things a question can name.

    A figure the asker hedges ("about 2 million tokens") is a paraphrase, not a name: the paper
    may say "1,900K".
    """
    text = _APPROXIMATE.sub(" ", text)
    return tuple(dict.fromkeys(p for p in _pieces(text) if any(c.isdigit() for c in p)))


@lru_cache(maxsize=4096)
def _specifics_index(title: str, abstract: str) -> tuple[str, frozenset[str]]:
    """A paper as one spaceless lowercase string (for names) and its set of pieces (for numbers)."""
    text = f"{title} {abstract}"
    pieces = _pieces(text)
    return "".join(pieces), frozenset(pieces)


def mentions(paper: PaperRecord, specific: str) -> bool:
    """Whether the paper names ``specific``: a name anywhere ("tpuv4" in "TPU v4"), a quantity
    whole ("10" in "10x" or "ten", not in "103k" or "2010"; "10million" not in "110 million")."""
    joined, pieces = _specifics_index(paper.title, paper.abstract)
    if not specific[:1].isdigit():
        return specific in joined
    if not _NUMBER.fullmatch(specific):
        return specific in pieces
    word = _NUMBER_WORDS.get(specific)
    return any(
        p in (specific, word) or (p.startswith(specific) and p[len(specific) :].isalpha())
        for p in pieces
    )


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a paper's title and abstract hold of a question's topic terms."""

    coverage: float  # share of the question's term weight in title + abstract
    title_coverage: float  # ... in the title alone
    sentences: list[tuple[str, float]]  # each abstract sentence and the term weight it holds
    missing: dict[str, float]  # each topic term the paper never mentions, with its IDF
    specifics_named: bool  # every version or quantity the question names appears in the paper


@dataclass(frozen=True, slots=True)
class Judged:
    """A source with its evidence and relevance."""

    position: int  # 1-based, as given
    source: Retrieved
    evidence: Evidence
    relevance: float

    @property
    def coverage(self) -> float:
        """Share of the question's term weight the paper holds."""
        return self.evidence.coverage


@lru_cache(maxsize=8192)
def _analysed(title: str, abstract: str) -> tuple[Terms, list[tuple[str, Terms, Terms | None]]]:
    """A paper's title terms, and each sentence with its terms before and after a comparison cue.

    Independent of the question, so cached: a warm ask judges ~60 papers, mostly seen before.
    """
    sentences = [abstract[a:b] for a, b in split_sentences(abstract)] or [abstract]
    analysed = []
    for sentence in sentences:
        cue = _COMPARISON.search(sentence)
        head, tail = (sentence[: cue.start()], sentence[cue.start() :]) if cue else (sentence, "")
        analysed.append((sentence, Terms.of(terms(head)), Terms.of(terms(tail)) if tail else None))
    return Terms.of(terms(title)), analysed


def evidence(question: Analysis, paper: PaperRecord, policy: Policy) -> Evidence:
    """What ``paper`` holds of ``question``'s topic terms, overall, in its title, per sentence.

    A term found only where the abstract compares against something ("outperforms ... on
    H100", "faster than X") counts ``policy.compared_weight``: that paper is about something else.
    """
    title_terms, sentences = _analysed(paper.title, paper.abstract)
    in_title = question.matched(title_terms)
    strength = dict.fromkeys(in_title, 1.0)
    weighted = []
    for sentence, head, tail in sentences:
        found = dict.fromkeys(question.matched(head), 1.0)
        if tail is not None:
            for t in question.matched(tail) - set(found):
                found[t] = policy.compared_weight
        for t, w in found.items():
            strength[t] = max(strength.get(t, 0.0), w)
        weighted.append((sentence, sum(question.weights[t] * w for t, w in found.items())))
    weights = question.weights
    total = sum(weights.values()) or 1.0
    return Evidence(
        coverage=sum(weights[t] * w for t, w in strength.items()) / total,
        title_coverage=sum(weights[t] for t in in_title) / total,
        sentences=weighted,
        missing={t: w for t, w in weights.items() if t not in strength},
        specifics_named=all(mentions(paper, s) for s in question.specifics),
    )


def judge(question: Analysis, sources: Sequence[Retrieved], policy: Policy) -> list[Judged]:
    """Relevance of every source (cosine + weighted coverage), best first; ties keep their order."""
    judged = []
    for position, source in enumerate(sources, start=1):
        found = evidence(question, source.paper, policy)
        relevance = source.dense + policy.coverage_weight * found.coverage
        judged.append(Judged(position, source, found, relevance))
    return sorted(judged, key=lambda j: -j.relevance)
