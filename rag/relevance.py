"""How relevant a paper is to a question: the question's topic terms, and two signals.

Relevance is the cosine similarity of the question to the paper's best chunk (meaning) plus a
weighted ``coverage``: the share of the question's topic vocabulary the title and abstract contain,
each term weighted by its IDF in the collection (so "Hopper" is not outvoted by "GPU"), a family
name matching its members through the glossary. The pipeline reranks retrieved papers with it, and
the extractive answerer decides what to cite with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

from rag.chunking import split_sentences
from rag.index import PaperRecord
from rag.lexical import Glossary, terms
from rag.retrieval import Retrieved

COVERAGE_WEIGHT = 0.35  # how much coverage adds to cosine (both in 0..1)

QuestionKind = Literal["single", "list"]

_LIST_QUESTION = re.compile(
    # Plural nouns only: "which paper proposes X" has one answer, "which papers target X" many.
    # The words in between may not be a singular noun: in "which paper benchmarks X" the plural
    # is a verb.
    r"^\s*(?:which|what)\s+(?:(?!(?:paper|work|study|article|publication|method|approach|"
    r"system|technique|model|framework|benchmark|dataset|tool)\b)\w+\s+){0,2}?"
    r"(?:papers|works|studies|articles|publications|"
    r"methods|approaches|systems|techniques|models|frameworks|benchmarks|datasets|tools)\b"
    r"|^\s*(?:list|name|enumerate|find all|show all|give me all|are there)\b"
    r"|\b(?:all|any|every|other)\s+(?:the\s+)?(?:papers|works|studies)\b",
    re.IGNORECASE,
)


# Words that shape a question but say nothing about its topic: "which papers ..." must not reward
# abstracts for containing "paper", and "when", "so" or "only" are not what a question is about.
# (BM25 keeps its own short stop list: this one only decides which question terms are the topic.)
@lru_cache(maxsize=1)
def _scaffold() -> frozenset[str]:
    return frozenset(
        terms(
            "paper papers work works study studies article articles list name find show give "
            "which what who whom whose why when where while how collection research researchers "
            "author authors publication discuss describe mention address about propose proposes "
            "target targets focus focuses tackle explore investigate deal can could would should "
            "do does did doing done use used using uses both also way ways help get got make made "
            "there is are was were be been being am any some all each every few many much more "
            "most less least other others same such than too very so only just even still yet "
            "either neither nor rather instead like well again further once here now then over "
            "under up down out off above below between among across within without via per upon "
            "from into onto through during before after against until because whether however "
            "it its itself he she we you they them their theirs our ours your yours his her hers "
            "me my mine us one ones thing things something anything let lets need needs tell "
            "exist exists existing know known kind kinds sort type types example e.g i.e etc"
        )
    )


# Where a sentence starts comparing, what follows is a baseline, not the paper's subject.
_COMPARISON = re.compile(
    r"\b(?:outperform\w*|surpass\w*|compared (?:to|with)|in comparison|than|versus|vs\.?|"
    r"relative to|over (?:the )?(?:baseline|state-of-the-art)|against)\b",
    re.IGNORECASE,
)
_COMPARED = 0.25


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


def question_kind(question: str) -> QuestionKind:
    """'list' for questions with many right answers ("which papers...", "list work on...")."""
    return "list" if _LIST_QUESTION.search(question) else "single"


@dataclass(frozen=True, slots=True)
class Query:
    """A question as the chat model sees it."""

    text: str
    kind: QuestionKind
    weights: dict[str, float] = field(default_factory=dict)  # topic term -> IDF in the collection
    alternatives: dict[str, list[str]] = field(default_factory=dict)  # term -> glossary phrases
    specifics: tuple[str, ...] = ()  # versions and numbers the question names (see ``specifics``)

    def matched(self, text_terms: Sequence[str]) -> set[str]:
        """The topic terms present in a text (given as its terms), directly or via the glossary."""
        present = set(text_terms)
        joined = f" {' '.join(text_terms)} "
        return {
            t
            for t in self.weights
            if t in present or any(f" {alt} " in joined for alt in self.alternatives.get(t, ()))
        }


def make_query(
    question: str, idf: Callable[[str], float], rarest: float, glossary: Glossary | None = None
) -> Query:
    """Classify the question and weigh its topic terms by IDF.

    A term the collection never uses gets the weight of the rarest term (``rarest``): a question
    about something absent should lower every paper's coverage, which is what abstention needs.
    A glossary family ("hopper") is matched by any of its members ("h100", "gh200").
    """
    question_terms = terms(question)
    topic = [t for t in dict.fromkeys(question_terms) if t not in _scaffold()]
    alternatives = glossary.alternatives(question_terms) if glossary else {}
    # A multi-word family ("kv cach") is represented by its last word, which is also a topic term.
    per_term = {key.split()[-1]: members for key, members in alternatives.items()}
    return Query(
        question,
        question_kind(question),
        {t: idf(t) or rarest for t in topic},
        {t: per_term[t] for t in topic if t in per_term},
        specifics(question),
    )


@dataclass(frozen=True, slots=True)
class Judged:
    """A source with the relevance estimate."""

    position: int  # 1-based, as given
    source: Retrieved
    coverage: float  # share of the question's term weight found in title + abstract
    relevance: float


@lru_cache(maxsize=4096)
def _analysed(
    title: str, abstract: str
) -> tuple[list[str], list[tuple[str, list[str], list[str]]]]:
    """A paper's title terms, and each sentence with its terms before and after a comparison cue.

    Independent of the question, so cached: a warm ask reranks ~16-60 papers, mostly seen before.
    """
    sentences = [abstract[a:b] for a, b in split_sentences(abstract)] or [abstract]
    analysed = []
    for sentence in sentences:
        cue = _COMPARISON.search(sentence)
        head, tail = (sentence[: cue.start()], sentence[cue.start() :]) if cue else (sentence, "")
        analysed.append((sentence, terms(head), terms(tail)))
    return terms(title), analysed


def evidence(query: Query, paper: PaperRecord) -> tuple[float, list[tuple[str, float]]]:
    """The paper's coverage of the question, and each abstract sentence with its weight.

    A term found only where the abstract compares against something ("outperforms ... on
    H100", "faster than X") counts a quarter: that paper is about something else.
    """
    title_terms, sentences = _analysed(paper.title, paper.abstract)
    strength = dict.fromkeys(query.matched(title_terms), 1.0)
    weighted = []
    for sentence, head, tail in sentences:
        main = query.matched(head)
        compared = query.matched(tail) - main if tail else set()
        found = {t: 1.0 for t in main} | {t: _COMPARED for t in compared}
        for t, w in found.items():
            strength[t] = max(strength.get(t, 0.0), w)
        weighted.append((sentence, sum(query.weights[t] * w for t, w in found.items())))
    total = sum(query.weights.values()) or 1.0
    coverage = sum(query.weights[t] * w for t, w in strength.items()) / total
    return coverage, weighted


def judge(
    query: Query, sources: Sequence[Retrieved], coverage_weight: float = COVERAGE_WEIGHT
) -> list[Judged]:
    """Relevance of every source (cosine + weighted coverage), best first; ties keep their order."""
    judged = []
    for position, source in enumerate(sources, start=1):
        coverage, _ = evidence(query, source.paper)
        relevance = source.dense + coverage_weight * coverage
        judged.append(Judged(position, source, coverage, relevance))
    return sorted(judged, key=lambda j: -j.relevance)


def rerank(query: Query, sources: Sequence[Retrieved]) -> list[Retrieved]:
    """``sources`` in order of relevance, each scored by it: a better order than fusion's alone."""
    return [replace(j.source, score=j.relevance) for j in judge(query, sources)]
