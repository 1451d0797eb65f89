"""Chat models: the protocol, and the offline extractive answerer that is the default.

A chat model gets the question and the numbered sources and streams text whose claims carry [n]
markers, n being the source's position as given. ``rag.citations`` checks and renumbers them later,
whatever wrote them.

The extractive answerer quotes abstracts. For each retrieved paper it judges relevance from two
signals: the cosine similarity of the question to the paper's best chunk (meaning), and how much of
the question's rare vocabulary the paper contains (``coverage``, IDF-weighted; it keeps "Hopper" from
being outvoted by "GPU"). A paper that merely shares common words scores low on both. It then quotes
the sentence(s) of each relevant abstract that contain the most question vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

from rag.chunking import split_sentences
from rag.followup import Turn, offline_rewrite
from rag.lexical import Glossary, terms
from rag.retrieval import Retrieved

NOT_FOUND = "The answer was not found in this collection."
OFFLINE = "offline"  # the name of the extractive answerer wherever a model is chosen

QuestionKind = Literal["single", "list"]

_LIST_QUESTION = re.compile(
    # Plural nouns only: "which paper proposes X" has one answer, "which papers target X" many.
    r"^\s*(?:which|what)\s+(?:\w+\s+){0,2}?(?:papers|works|studies|articles|publications|"
    r"methods|approaches|systems|techniques|models|frameworks|benchmarks|datasets|tools)\b"
    r"|^\s*(?:list|name|enumerate|find all|show all|give me all|are there)\b"
    r"|\b(?:all|any|every|other)\s+(?:the\s+)?(?:papers|works|studies)\b",
    re.IGNORECASE,
)


# Words that shape a question but say nothing about its topic: "which papers ..." must not reward
# abstracts for containing "paper".
@lru_cache(maxsize=1)
def _scaffold() -> frozenset[str]:
    return frozenset(
        terms(
            "paper papers work works study studies article articles list name find show give "
            "which what who whose collection research researchers author authors publication "
            "discuss describe mention address about propose proposes target targets focus "
            "focuses tackle explore investigate deal how can could would should do does did use "
            "used using uses both also way ways help get make there is are any some"
        )
    )


_SUMMARY = re.compile(
    r"\b(?:we (?:propose|present|introduce|develop|design|study|describe)|this (?:paper|work)|"
    r"in this (?:paper|work))\b",
    re.IGNORECASE,
)

# Where a sentence starts comparing, what follows is a baseline, not the paper's subject.
_COMPARISON = re.compile(
    r"\b(?:outperform\w*|surpass\w*|compared (?:to|with)|in comparison|than|versus|vs\.?|"
    r"relative to|over (?:the )?(?:baseline|state-of-the-art)|against)\b",
    re.IGNORECASE,
)
_COMPARED = 0.25


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
    )


class ChatModel(Protocol):
    """Writes an answer from numbered sources, streaming it piece by piece."""

    name: str

    def stream(self, query: Query, sources: Sequence[Retrieved]) -> Iterator[str]:
        """Yield the answer text; cite source i (1-based, as given) as [i]."""
        ...

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """The follow-up ``question`` as a standalone question, given the conversation so far."""
        ...


@dataclass(frozen=True, slots=True)
class Judged:
    """A source with the extractive answerer's relevance estimate."""

    position: int  # 1-based, as given
    source: Retrieved
    coverage: float  # share of the question's term weight found in title + abstract
    relevance: float


class ExtractiveAnswerer:
    """Deterministic, offline: quotes the most relevant sentences of the relevant abstracts."""

    name = OFFLINE

    def __init__(
        self,
        min_relevance: float = 0.42,
        list_relevance: float = 0.5,
        coverage_weight: float = 0.35,
        single_margin: float = 0.02,
    ) -> None:
        self.min_relevance = min_relevance  # below this for every source: abstain
        self.list_relevance = list_relevance  # list answers cite every source at least this good
        self.coverage_weight = coverage_weight
        self.single_margin = single_margin  # single answers add near-ties of the best only

    def evidence(self, query: Query, source: Retrieved) -> tuple[float, list[tuple[str, float]]]:
        """The paper's coverage of the question, and each abstract sentence with its weight.

        A term found only where the abstract compares against something ("outperforms ... on
        H100", "faster than X") counts a quarter: that paper is about something else.
        """
        abstract = source.paper.abstract
        sentences = [abstract[a:b] for a, b in split_sentences(abstract)] or [abstract]
        strength = dict.fromkeys(query.matched(terms(source.paper.title)), 1.0)
        weighted = []
        for sentence in sentences:
            cue = _COMPARISON.search(sentence)
            main = query.matched(terms(sentence[: cue.start()] if cue else sentence))
            compared = query.matched(terms(sentence[cue.start() :])) - main if cue else set()
            found = {t: 1.0 for t in main} | {t: _COMPARED for t in compared}
            for t, w in found.items():
                strength[t] = max(strength.get(t, 0.0), w)
            weighted.append((sentence, sum(query.weights[t] * w for t, w in found.items())))
        total = sum(query.weights.values()) or 1.0
        coverage = sum(query.weights[t] * w for t, w in strength.items()) / total
        return coverage, weighted

    def judge(self, query: Query, sources: Sequence[Retrieved]) -> list[Judged]:
        """Relevance of every source, best first (ties keep retrieval order)."""
        judged = []
        for position, source in enumerate(sources, start=1):
            coverage, _ = self.evidence(query, source)
            relevance = source.dense + self.coverage_weight * coverage
            judged.append(Judged(position, source, coverage, relevance))
        return sorted(judged, key=lambda j: -j.relevance)

    def select(self, query: Query, sources: Sequence[Retrieved]) -> list[Judged]:
        """The sources worth citing, in the order they will be cited (empty: abstain)."""
        judged = self.judge(query, sources)
        if not judged or judged[0].relevance < self.min_relevance:
            return []
        if query.kind == "list":
            # Absolute, not relative to the best: one paper about exactly the topic must not
            # push out the others that also answer the question.
            floor = max(self.min_relevance, self.list_relevance)
            return [j for j in judged if j.relevance >= floor] or judged[:1]
        best = judged[0].relevance
        return [j for j in judged[:2] if j.relevance >= best - self.single_margin]

    def best_sentences(self, query: Query, source: Retrieved, limit: int) -> list[str]:
        """Up to ``limit`` sentences carrying the most question weight, in abstract order."""
        _, weighted = self.evidence(query, source)
        ranked = sorted(range(len(weighted)), key=lambda i: (-weighted[i][1], i))
        chosen = [i for i in ranked[:limit] if weighted[i][1] > 0]
        if not chosen:  # related in meaning, not in words: quote what the paper says it does
            chosen = [next((i for i, (s, _) in enumerate(weighted) if _SUMMARY.search(s)), 0)]
        return [weighted[i][0] for i in sorted(chosen)]

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Follow-ups by the offline rule (``rag.followup.offline_rewrite``)."""
        return offline_rewrite(question, history)

    def stream(self, query: Query, sources: Sequence[Retrieved]) -> Iterator[str]:
        """One line per relevant paper for list questions; the best sentences otherwise."""
        selected = self.select(query, sources)
        if not selected:
            yield NOT_FOUND
            return
        if query.kind == "list":
            yield "Papers in this collection on this question:\n"
            for j in selected:
                quote = " ".join(self.best_sentences(query, j.source, 1))
                yield f"- {j.source.paper.title}: {quote} [{j.position}]\n"
            return
        parts = []
        for j in selected:
            for sentence in self.best_sentences(query, j.source, 2):
                parts.append(f"{sentence} [{j.position}]")
        yield " ".join(parts)


Reply = str | Callable[[Query, Sequence[Retrieved]], str]


class ScriptedChatModel:
    """A chat model that says what it is told: for tests and demos (no network, deterministic).

    Replies are queued with ``enqueue`` (a string, or a function of the query and the sources, e.g.
    one that cites every source it was given); with an empty queue it answers ``default``. Each
    reply streams word by word. ``history`` records every (query, sources) it was asked.
    """

    def __init__(self, default: Reply = NOT_FOUND, name: str = "scripted") -> None:
        self.name = name
        self.default = default
        self.replies: list[Reply] = []
        self.history: list[tuple[Query, list[Retrieved]]] = []
        self.rewrites: list[str] = []

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next questions with ``replies``, in order."""
        self.replies.extend(replies)

    def stream(self, query: Query, sources: Sequence[Retrieved]) -> Iterator[str]:
        """Stream the next reply in word-sized pieces."""
        self.history.append((query, list(sources)))
        reply = self.replies.pop(0) if self.replies else self.default
        text = reply if isinstance(reply, str) else reply(query, sources)
        yield from re.findall(r"\S+\s*|\s+", text)

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Queued rewrites first (``rewrites``), else the offline rule."""
        return self.rewrites.pop(0) if self.rewrites else offline_rewrite(question, history)
