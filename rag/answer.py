"""The offline extractive answerer: quotes the sentences of the papers it cites.

What to cite is decided by ``rag.selection.choose`` (the fitted probabilities and the policy's
thresholds); this module writes the answer: for a single answer the sentences of its paper that
hold the most of the question's topic, for a list one line per paper, for a comparison one line
per compared paper quoting what it says about the aspect compared, and for a metadata question
the field from the paper's record.

A quote must read on its own. A sentence that opens by pointing back ("However, ...", "To this
end, ...", "In this paper, ...") loses that opening; one whose subject points back ("This
approach ...", "It ...") is passed over for an almost as good sentence, or else quoted after the
sentence it points back to. Both use closed classes of English words (connectives, pronouns and
demonstratives), never topic words.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import replace

from rag.chat import NOT_FOUND, OFFLINE
from rag.citations import defuse_markers
from rag.followup import Turn, offline_rewrite, own_name
from rag.lexical import Terms, terms
from rag.policy import Policy
from rag.question import Analysis, held, stated, unheld
from rag.relevance import evidence
from rag.retrieval import Retrieved
from rag.selection import choose

# An opening clause (up to its comma) that points back to what came before.
_CONNECTIVE = (
    r"however|therefore|thus|hence|moreover|furthermore|additionally|consequently|accordingly|"
    r"nevertheless|nonetheless|instead|meanwhile|specifically|notably|importantly|finally|lastly|"
    r"overall|besides|also|further|first|second|third|next|then|similarly|likewise|conversely|"
    r"unfortunately|fortunately|interestingly|surprisingly|crucially|in (?:addition|contrast|"
    r"particular|practice|summary|short|turn|general)|as a result|by contrast|on the other hand|"
    r"in other words|for example|for instance|to (?:this|that) end"
)
_POINTS_BACK = re.compile(
    rf"^(?:(?:{_CONNECTIVE})\b[^,]{{0,40}}|[^,]{{0,50}}\b(?:this|these|that|those|such)\b[^,]{{0,30}}),\s+",
    re.IGNORECASE,
)
# A subject that needs the previous sentence to be understood ("This approach", not "This paper").
_ANAPHOR = re.compile(
    r"^(?:(?:this|these|those)(?!\s+(?:paper|work|study|article|survey)\b)|it|its|they|their|"
    r"such|both|the (?:former|latter))\b",
    re.IGNORECASE,
)
# The paper speaking of its own work: what it did, not the background it starts from.
_OWN_WORK = re.compile(r"\b(?:we|our|this (?:paper|work|study|article|survey))\b", re.IGNORECASE)
# Words of a comparison question that ask to compare, not what to compare on.
_COMPARING = re.compile(
    r"\b(?:compar\w*|differ\w*|versus|vs\.?|contrast\w*|common|similar\w*|better|worse|"
    r"against|between)\b",
    re.IGNORECASE,
)
# Quote choice weighs each sentence's share of the question's topic by these factors: a sentence
# whose subject points back is passed over for one almost as good; one on the paper's own work
# is preferred to background of about the same weight.
_POINTS_BACK_SHARE = 0.8
_OWN_WORK_SHARE = 1.25


def readable(sentence: str) -> str:
    """``sentence`` without an opening that points back ("However, we ..." -> "We ...")."""
    opening = _POINTS_BACK.match(sentence)
    if not opening or len(sentence) - opening.end() < 20:
        return sentence
    rest = sentence[opening.end() :]
    return rest[:1].upper() + rest[1:]


class ExtractiveAnswerer:
    """Deterministic, offline: quotes the most relevant sentences of the papers it cites."""

    name = OFFLINE

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def quotes(self, question: Analysis, source: Retrieved, limit: int) -> list[str]:
        """Up to ``limit`` sentences of ``source`` that answer ``question``, readable alone, in
        abstract order: the best, then others only while each adds a topic term the ones before
        it lack (a second sentence saying the same adds length, not an answer)."""
        sentences = evidence(question, source.paper, self.policy).sentences
        if not any(w > 0 for _, w in sentences):
            # Related in meaning, not in words: quote what the paper says it is (the sentence that
            # shares most with its own title).
            title = set(terms(source.paper.title))
            sentences = [(s, float(len(title & set(terms(s))))) for s, _ in sentences]
        name = own_name(source.paper.title)

        def merit(i: int) -> float:
            sentence, weight = sentences[i]
            weight *= _POINTS_BACK_SHARE if _ANAPHOR.match(sentence) else 1.0
            own = _OWN_WORK.search(sentence) or (name and name in sentence)
            return weight * (_OWN_WORK_SHARE if own else 1.0)

        ranked = sorted(range(len(sentences)), key=lambda i: (-merit(i), i))
        chosen, covered = (
            ranked[:1],
            self._topic(question, sentences[ranked[0]][0]) if ranked else set(),
        )
        for i in ranked[1:]:
            if len(chosen) >= limit or merit(i) <= 0:
                break
            new = self._topic(question, sentences[i][0]) - covered
            if new:
                chosen.append(i)
                covered |= new
        chosen.sort()
        if len(chosen) == 1 and chosen[0] > 0 and _ANAPHOR.match(sentences[chosen[0]][0]):
            chosen = [chosen[0] - 1, chosen[0]]  # it needs what it points back to
        return [readable(defuse_markers(sentences[i][0])) for i in chosen]

    @staticmethod
    def _topic(question: Analysis, sentence: str) -> set[str]:
        return question.matched(Terms.of(terms(sentence)))

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Follow-ups by the offline rule (``rag.followup.offline_rewrite``)."""
        return offline_rewrite(question, history)

    def stream(self, question: Analysis, sources: Sequence[Retrieved]) -> Iterator[str]:
        """The answer: one line per paper for lists and comparisons, quoted sentences otherwise."""
        if question.intent == "metadata":
            yield from self._metadata(question, sources)
            return
        chosen = choose(question, sources, self.policy)
        if not chosen:
            yield NOT_FOUND
            return
        if question.intent == "comparison" and len(chosen) >= 2:
            # Quote each paper on the aspect compared: the question's topic without the names
            # and the words that ask for a comparison.
            names = {t for i in chosen for t in terms(sources[i - 1].paper.title)}
            names |= {t for m in _COMPARING.finditer(question.text) for t in terms(m.group(0))}
            aspect = replace(
                question, weights={t: w for t, w in question.weights.items() if t not in names}
            )
            for i in chosen:
                quote = " ".join(self.quotes(aspect, sources[i - 1], self.policy.list_sentences))
                yield f"- {defuse_markers(sources[i - 1].paper.title)}: {quote} [{i}]\n"
            return
        if question.intent == "list":
            yield "Papers in this collection on this question:\n"
            for i in chosen:
                quote = " ".join(self.quotes(question, sources[i - 1], self.policy.list_sentences))
                yield f"- {defuse_markers(sources[i - 1].paper.title)}: {quote} [{i}]\n"
            return
        parts = []
        for i in chosen:
            for sentence in self.quotes(question, sources[i - 1], self.policy.single_sentences):
                parts.append(f"{sentence} [{i}]")
        yield " ".join(parts)

    def _metadata(self, question: Analysis, sources: Sequence[Retrieved]) -> Iterator[str]:
        """A record field of the paper asked about (the pipeline declines when none holds it)."""
        position = subject(question, sources)
        field_name = question.asks_for or "other"
        value = held(sources[position - 1].paper, field_name) if position else None
        if position is None or value is None:
            yield decline_metadata(question, sources)
            return
        paper = sources[position - 1].paper
        said = next(
            (s for s, _ in evidence(question, paper, self.policy).sentences if value in s), ""
        )
        if said and value not in (paper.url or ""):  # the abstract gives it: quote the sentence
            yield f"{readable(defuse_markers(said))} [{position}]"
        else:
            told = defuse_markers(f"“{paper.title}” {stated(field_name, value)}.")
            yield f"{told} [{position}]"


def subject(question: Analysis, sources: Sequence[Retrieved]) -> int | None:
    """The position of the paper a metadata question asks about: the first it names, else the
    most probable source."""
    for group in question.named:
        for i, s in enumerate(sources, start=1):
            if s.paper.id in group:
                return i
    return 1 if sources else None


def decline_metadata(question: Analysis, sources: Sequence[Retrieved]) -> str:
    """The not-found answer for a record detail the collection does not hold."""
    position = subject(question, sources)
    about = f"“{sources[position - 1].paper.title}”" if position else "its papers"
    return (
        f"{NOT_FOUND} It holds the title and abstract of {about}, not {unheld(question.asks_for)}."
    )
