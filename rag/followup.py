"""Follow-up questions: turning "what about the second one?" into a question retrieval can use.

With an LLM, the model rewrites the follow-up from the conversation (``prompts/rewrite.md``).
Offline, one documented rule does it (``offline_rewrite``):

1. A reference to a numbered source of the previous answer ("the second one", "the last paper",
   "[2]", "paper 3") is replaced by that paper's title in quotes.
2. Otherwise, a question that leans on the conversation (it starts with "and", "also", "what
   about", "how about", "tell me more"..., or uses "it", "they", "them", "these", "those", "this
   paper", "that method"...) is asked together with the previous standalone question.
3. Anything else is already standalone and is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag.citations import Citation

_ORDINALS = {
    "first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
    "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "seventh": 7, "7th": 7, "eighth": 8, "8th": 8,
    "ninth": 9, "9th": 9, "tenth": 10, "10th": 10, "last": -1,
}  # fmt: skip
_NOUN = r"(?:one|paper|source|result|reference|citation|article|work|study)"
_REFERENCE = re.compile(
    rf"\b(?:the\s+)?(?P<ordinal>{'|'.join(_ORDINALS)})\s+{_NOUN}\b"
    r"|\[(?P<marker>\d+)\]"
    r"|\b(?:paper|source|reference|citation)\s+(?:#|no\.?\s*|number\s+)?(?P<number>\d+)\b",
    re.IGNORECASE,
)
_LEANS = re.compile(
    r"^\s*(?:and|also|but|so|what about|how about|what else|tell me more|more about|more on|"
    r"why|how so|and why)\b"
    r"|\b(?:it|its|they|them|their|these|those|such)\b"
    r"|\b(?:this|that|the same)\s+(?:one|paper|work|method|approach|system|model|technique|idea|"
    r"study|result|benchmark|framework)s?\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange of a conversation, as later follow-ups need it."""

    question: str  # as the user asked it
    answer: str
    citations: Sequence[Citation] = field(default_factory=tuple)
    standalone: str = ""  # the question as it was searched (defaults to ``question``)

    @property
    def searched(self) -> str:
        """The standalone form of this turn's question."""
        return self.standalone or self.question


def offline_rewrite(question: str, history: Sequence[Turn]) -> str:
    """The follow-up rule of the module docstring: deterministic, no model needed."""
    if not history:
        return question
    previous = history[-1]
    cited = list(previous.citations)
    by_number = {c.n: c.title for c in cited}

    def title_for(match: re.Match[str]) -> str:
        if match.group("ordinal"):
            n = _ORDINALS[match.group("ordinal").lower()]
            n = len(cited) if n == -1 else n
        else:
            n = int(match.group("marker") or match.group("number"))
        return f'"{by_number[n]}"' if n in by_number else match.group(0)

    resolved = _REFERENCE.sub(title_for, question)
    if resolved != question:
        return resolved
    if _LEANS.search(question):
        return f"{previous.searched} {question}"
    return question


def own_name(title: str) -> str | None:
    """The name a paper calls itself by: its title's short head ("TokenWeave: ..."), if any."""
    head, colon, _ = title.partition(":")
    return head.strip() if colon and len(head.split()) <= 3 else None


def name_subjects(answer: str, cited: Sequence[Citation], most: int = 3) -> str:
    """A follow-up's answer, opened by the paper(s) it is about when it names none of them.

    "What about the second one?" is answered from that paper's abstract, whose sentences rarely
    say its title: without this, the reader must work out which paper the answer is about.
    """
    if not cited or len(cited) > most:
        return answer
    folded = answer.casefold()
    names = [own_name(c.title) or c.title for c in cited]
    if any(name.casefold() in folded for name in names):
        return answer
    about = " and ".join(f"“{c.title}” [{c.n}]" for c in cited)
    return f"On {about}: {answer}"


def render_history(history: Sequence[Turn], max_turns: int = 6) -> str:
    """The last turns as text for the rewrite prompt, each answer with its numbered sources."""
    lines = []
    for turn in history[-max_turns:]:
        lines.append(f"User: {turn.question}")
        lines.append(f"Assistant: {turn.answer}")
        for c in turn.citations:
            lines.append(f"  [{c.n}] {c.title}")
    return "\n".join(lines)
