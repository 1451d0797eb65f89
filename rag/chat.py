"""Chat models: the protocol every answer writer follows, and the sentence that declines.

A chat model gets the analysed question and the numbered sources and streams text whose claims
carry [n] markers, n being the source's position as given. ``rag.citations`` checks and renumbers
them later, whatever wrote them. Two implementations ship: the offline extractive answerer
(``rag.answer``) and any OpenAI-compatible endpoint (``rag.llm``); ``ScriptedChatModel`` says what
it is told, for tests and demos.

Declining is one fixed sentence, ``NOT_FOUND``, written here only: the prompts receive it as a
placeholder, and an answer declines when it *is* that sentence (optionally followed by why), not
when the sentence merely appears somewhere inside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rag.followup import Turn, offline_rewrite

if TYPE_CHECKING:
    from rag.question import Analysis
    from rag.retrieval import Retrieved

NOT_FOUND = "The answer was not found in this collection."
OFFLINE = "offline"  # the name of the extractive answerer wherever a model is chosen

_MARKERS = re.compile(r"\[[\d\s,\-–]*\]")


def declines(text: str) -> bool:
    """Whether an answer declines: it begins with ``NOT_FOUND`` (markdown emphasis, quotes and
    citation markers aside), whatever explanation follows it."""
    plain = _MARKERS.sub("", text).strip().lstrip("*_\"'“ ").casefold()
    return plain.startswith(NOT_FOUND.rstrip(".").casefold())


@dataclass(frozen=True, slots=True)
class Note:
    """Something a chat model tells the pipeline beside its text, never shown as text.

    - ``shown``: the model saw only the first ``count`` sources (the rest did not fit its context
      window); ``detail`` is the ``rag.budget.Fitted`` record. Comes before any text.
    - ``truncated``: the answer was cut at ``count`` tokens (the model's ``finish_reason`` was
      "length"). Comes after the text.
    - ``echo``: ``count`` sentences of the text repeated the model's instructions (``detail``).
    """

    kind: Literal["shown", "truncated", "echo"]
    count: int
    detail: Any = None


class ChatModel(Protocol):
    """Writes an answer from numbered sources, streaming it piece by piece."""

    name: str

    def stream(self, question: Analysis, sources: Sequence[Retrieved]) -> Iterator[str | Note]:
        """Yield the answer text (and any ``Note``); cite source i (1-based, as given) as [i]."""
        ...

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """The follow-up ``question`` as a standalone question, given the conversation so far."""
        ...


Reply = str | Callable[["Analysis", Sequence["Retrieved"]], str]


class ScriptedChatModel:
    """A chat model that says what it is told: for tests and demos (no network, deterministic).

    Replies are queued with ``enqueue`` (a string, or a function of the question and the sources,
    e.g. one that cites every source it was given); with an empty queue it answers ``default``.
    Each reply streams word by word. ``history`` records every (question, sources) it was asked.
    """

    def __init__(self, default: Reply = NOT_FOUND, name: str = "scripted") -> None:
        self.name = name
        self.default = default
        self.replies: list[Reply] = []
        self.history: list[tuple[Analysis, list[Retrieved]]] = []
        self.rewrites: list[str] = []

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next questions with ``replies``, in order."""
        self.replies.extend(replies)

    def stream(self, question: Analysis, sources: Sequence[Retrieved]) -> Iterator[str]:
        """Stream the next reply in word-sized pieces."""
        self.history.append((question, list(sources)))
        reply = self.replies.pop(0) if self.replies else self.default
        text = reply if isinstance(reply, str) else reply(question, sources)
        yield from re.findall(r"\S+\s*|\s+", text)

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Queued rewrites first (``rewrites``), else the offline rule."""
        return self.rewrites.pop(0) if self.rewrites else offline_rewrite(question, history)
