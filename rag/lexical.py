"""Lexical analysis: the terms of a text, and the glossary of names that stand for others.

One tokenizer (``terms``) serves the BM25 index (``rag.records``), the queries and the answerer's
word matching, so "GPUs" in a question and "GPUs" in an abstract always become the same term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

_WORD = re.compile(r"(?u)\b\w\w+\b")


# English stop words: bm25s 0.3's list (STOPWORDS_EN), kept as it was when BM25 ran on bm25s.
STOPWORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    )
)


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer  # PyStemmer: Snowball, C speed

    return Stemmer.Stemmer("english")


def terms(text: str) -> list[str]:
    """Lower-cased, stop-word-free, stemmed word terms of ``text``, in order.

    Snowball leaves acronym plurals alone ("GPUs", "LLMs" keep their s), so a final s left after
    stemming is dropped too: "GPUs" and "GPU" must be one term. Both sides use this function, so a
    word merely losing an s ("corpus" -> "corpu") costs nothing.
    """
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return [
        t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t
        for t in _stemmer().stemWords(words)
    ]


@dataclass(frozen=True, slots=True)
class Terms:
    """A text's terms, as matching needs them: as a set, and joined (for multi-word phrases)."""

    present: frozenset[str]
    joined: str

    @classmethod
    def of(cls, text_terms: Sequence[str]) -> Terms:
        """The ``Terms`` of a text given as its terms (``rag.lexical.terms``)."""
        return cls(frozenset(text_terms), f" {' '.join(text_terms)} ")


class Glossary:
    """Names that denote the same thing: a family in a question also matches its members.

    "Hopper GPUs" in a question should find abstracts that only say "H100" or "GH200"; no
    embedding model this small knows that. Entries are stored as term phrases, so matching goes
    through the same tokenizer as everything else.
    """

    def __init__(self, entries: dict[str, list[str]]) -> None:
        self.raw = {" ".join(terms(k)): members for k, members in entries.items() if terms(k)}
        self.entries = {
            key: [" ".join(terms(m)) for m in members if terms(m)]
            for key, members in self.raw.items()
        }

    @classmethod
    def load(cls, path: Path) -> Glossary:
        """Read "family: member, member" lines; '#' starts a comment."""
        entries: dict[str, list[str]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if ":" in line:
                key, members = line.split(":", 1)
                entries[key.strip()] = [m.strip() for m in members.split(",") if m.strip()]
        return cls(entries)

    def alternatives(self, question_terms: Sequence[str]) -> dict[str, list[str]]:
        """For each glossary family named in the question (as terms), its member phrases."""
        text = f" {' '.join(question_terms)} "
        return {key: members for key, members in self.entries.items() if f" {key} " in text}

    def expand(self, question: str) -> str:
        """The question followed by the members of every family it names (for search)."""
        extra = [m for key in self.alternatives(terms(question)) for m in self.raw[key]]
        return f"{question} ({', '.join(extra)})" if extra else question
