"""Lexical search: a BM25 index (bm25s) over the same chunks as the vector store.

Chroma's own sparse indexes are not available in local mode, so BM25 lives in a folder beside the
index, with the catalog of the papers' names (``rag.names``), which is derived from the same text
and goes stale with it. One tokenizer (``terms``) serves the index, the queries and the answerer's
word matching, so "GPUs" in a question and "GPUs" in an abstract always become the same term.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rag.locking import exchange
from rag.names import Catalog

LOAD_ATTEMPTS = 3  # reads of a lexical index that a writer swapped mid-read
_WORD = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


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
    words = [w for w in _WORD.findall(text.lower()) if w not in _stopwords()]
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


@dataclass
class Bm25:
    """A BM25 index of chunk texts, with each chunk's paper, document frequencies and the
    catalog of paper names."""

    generation: str
    chunk_ids: list[str]
    paper_ids: list[str]
    df: dict[str, int]
    retriever: Any = field(repr=False)
    names: Catalog = field(default_factory=lambda: Catalog(()), repr=False)

    @classmethod
    def build(
        cls,
        chunk_ids: Sequence[str],
        texts: Sequence[str],
        paper_ids: Sequence[str],
        generation: str,
        papers: Sequence[tuple[str, str, str]] = (),
    ) -> Bm25:
        """Index ``texts`` (one per chunk); ``papers`` (id, title, abstract) feed the names."""
        import bm25s

        tokens = [terms(t) for t in texts]
        retriever = bm25s.BM25()
        if tokens:
            retriever.index(tokens, show_progress=False)
        df = Counter(term for doc in tokens for term in set(doc))
        return cls(
            generation,
            list(chunk_ids),
            list(paper_ids),
            dict(df),
            retriever,
            Catalog.build(papers),
        )

    @property
    def size(self) -> int:
        """Number of chunks indexed."""
        return len(self.chunk_ids)

    def idf(self, term: str) -> float:
        """BM25's inverse document frequency of a term (0 for an unknown term)."""
        df = self.df.get(term, 0)
        if df == 0:
            return 0.0
        return math.log((self.size - df + 0.5) / (df + 0.5) + 1.0)

    @property
    def max_idf(self) -> float:
        """The IDF of a term found in a single chunk: the rarest a known term can be."""
        return math.log((self.size - 0.5) / 1.5 + 1.0) if self.size else 1.0

    def search(self, query: str, n: int) -> list[tuple[str, str, float]]:
        """Up to ``n`` (chunk id, paper id, score) with a positive BM25 score, best first."""
        vocab = self.retriever.vocab_dict if self.size else {}
        query_terms = [t for t in terms(query) if t in vocab]
        if not query_terms:
            return []
        docs, scores = self.retriever.retrieve(
            [query_terms], k=min(n, self.size), show_progress=False, n_threads=1
        )
        return [
            (self.chunk_ids[int(i)], self.paper_ids[int(i)], float(s))
            for i, s in zip(docs[0], scores[0], strict=True)
            if s > 0
        ]

    def save(self, directory: Path) -> None:
        """Write atomically: a crash mid-save leaves the previous index or none, never half of one."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bm25-", dir=directory.parent))
        try:
            if self.size:
                self.retriever.save(str(tmp / "bm25s"), show_progress=False)
            meta = {
                "generation": self.generation,
                "chunk_ids": self.chunk_ids,
                "paper_ids": self.paper_ids,
                "df": self.df,
                "names": self.names.to_json(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            if directory.exists():
                exchange(tmp, directory)  # readers find the old index or the new, never none
            else:
                os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def saved_generation(directory: Path) -> str | None:
        """The generation of the index saved in ``directory`` (None if none), without loading it."""
        try:
            return str(json.loads((directory / "meta.json").read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return None

    @classmethod
    def load(cls, directory: Path) -> Bm25 | None:
        """The saved index, or None when there is none or it cannot be read. Its files are read
        one by one, so a save that swaps the folder in between is noticed and the load redone."""
        for _ in range(LOAD_ATTEMPTS):
            loaded = cls._load(directory)
            if loaded is None or cls.saved_generation(directory) == loaded.generation:
                return loaded
        return None

    @classmethod
    def _load(cls, directory: Path) -> Bm25 | None:
        try:
            meta = json.loads((directory / "meta.json").read_text())
            retriever: Any = None
            if meta["chunk_ids"]:
                import bm25s

                retriever = bm25s.BM25.load(str(directory / "bm25s"), show_progress=False)
            return cls(
                meta["generation"],
                meta["chunk_ids"],
                meta["paper_ids"],
                meta["df"],
                retriever,
                Catalog.from_json(meta["names"]),
            )
        except (OSError, ValueError, KeyError):
            return None
