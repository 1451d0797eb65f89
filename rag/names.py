"""The names papers go by, so a question that names a paper ("Compare Dovetail and EasySpec",
"What does GSPMD do?", "Who wrote ZeRO-Infinity?") is tied to that paper, whatever else it says.

Nothing here is a list of known systems: the catalog is derived from the collection. A paper's
names are the short head of its title before a colon ("ZeRO-Infinity: Breaking the GPU Memory
Wall..." -> "ZeRO-Infinity"), and coined words ("FlashAttention", "vLLM", "GPT-4": see ``coined``)
that its title carries or that its abstract repeats more than any other abstract does. A coined
word that many papers use ("H100", "GPT-4o") is a term, not a name, and is left out by its
document frequency.

A question matches a name case-insensitively when the name's lower-case form is not an ordinary
word of the collection ("tokenweave"); otherwise ("SOAP", "Heimdall" if abstracts said "heimdall")
only as written with its capitals.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

# A word that may be a name: letters and digits, joined by hyphens, dots, ^ or + ("ZeRO-Infinity",
# "Llama-3.1", "CoRe^2", "C++").
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9]*(?:[-.^+][A-Za-z0-9]+)*\+*")
_HEAD = re.compile(r"^(.{2,60}?)\s*:\s")
MAX_HEAD_WORDS = 3  # "Universal Checkpointing", "Mind the Memory Gap": longer heads are sentences
MAX_NAME_PAPERS = 3  # a coined word used by more papers than this is a term ("H100", "GPT-4o")
MIN_REPEATS = 2  # an abstract-only name must be repeated in its abstract (it is what the paper is)


def coined(word: str) -> bool:
    """Whether ``word`` looks coined: a lower-case letter followed by a capital in one of its parts
    ("FlashAttention", "vLLM", "QMoE"), or letters mixed with digits ("GPT-4", "H100").

    Title case ("Decision-Making") is not coined, nor is an all-capitals acronym ("GPUs", "DRAM"):
    acronyms mostly name concepts, so one counts as a paper's name only as its title's head.
    """
    parts = [p for p in re.split(r"[-.^+]", word) if p]
    letters = any(c.isalpha() for c in word)
    camel = any(a.islower() and b.isupper() for p in parts for a, b in pairwise(p))
    mixed = letters and any(c.isdigit() for c in word)
    return len(word) >= 2 and letters and (camel or mixed)


@dataclass(frozen=True, slots=True)
class Name:
    """One name and the papers it denotes."""

    text: str  # as the papers write it
    papers: tuple[str, ...]
    strict: bool  # match only with its capitals (its lower-case form is an ordinary word)


@dataclass(frozen=True, slots=True)
class Mention:
    """A name found in a question, and where."""

    name: Name
    span: tuple[int, int]


class Catalog:
    """Every name of the collection's papers, looked up in questions."""

    def __init__(self, names: Iterable[Name]) -> None:
        self.names = {n.text.lower(): n for n in names}
        # Longest first, so "ZeRO-Infinity" wins over "ZeRO" and phrases over their words.
        self._by_length = sorted(self.names.values(), key=lambda n: -len(n.text))

    @classmethod
    def build(cls, papers: Sequence[tuple[str, str, str]]) -> Catalog:
        """The catalog of ``(paper_id, title, abstract)`` triples."""
        words = [
            (pid, _TOKEN.findall(title), _TOKEN.findall(abstract))
            for pid, title, abstract in papers
        ]
        used: Counter[str] = Counter()  # papers using a coined word, in title or abstract
        titled = {w for _, title_words, _ in words for w in title_words}
        ordinary: Counter[str] = Counter()  # papers using a word in plain lower case
        for _, title_words, abstract_words in words:
            used.update({w for w in title_words + abstract_words if coined(w)})
            ordinary.update({w for w in abstract_words if w.islower()})
        owners: defaultdict[str, dict[str, str]] = defaultdict(dict)  # lower name -> paper -> text
        best_repeat: dict[str, tuple[int, int]] = {}  # abstract-only name -> (repeats, runner-up)
        repeat_owner: dict[str, tuple[str, str]] = {}
        for (pid, title, _), (_, title_words, abstract_words) in zip(papers, words, strict=True):
            head = _HEAD.match(title)
            if head and len(head.group(1).split()) <= MAX_HEAD_WORDS:
                owners[head.group(1).lower()][pid] = head.group(1)
            for w in title_words:
                if coined(w) and used[w] <= MAX_NAME_PAPERS:
                    owners[w.lower()][pid] = w
            for w, n in Counter(w for w in abstract_words if coined(w)).items():
                if n < MIN_REPEATS or used[w] > MAX_NAME_PAPERS or w in titled:
                    continue
                top, runner = best_repeat.get(w, (0, 0))
                if n > top:
                    best_repeat[w], repeat_owner[w] = (n, top), (pid, w)
                else:
                    best_repeat[w] = (top, max(runner, n))
        for w, (top, runner) in best_repeat.items():
            if top > runner:  # the paper that says it most, and more than any other: its owner
                pid, text = repeat_owner[w]
                owners[w.lower()].setdefault(pid, text)
        names = []
        for lower, by_paper in owners.items():
            if len(by_paper) > MAX_NAME_PAPERS:
                continue
            text = Counter(by_paper.values()).most_common(1)[0][0]
            strict = ordinary[lower] > 0 and " " not in lower
            names.append(Name(text, tuple(sorted(by_paper)), strict))
        return cls(names)

    def find(self, question: str) -> list[Mention]:
        """The names ``question`` mentions, in the order it mentions them (each once)."""
        found: list[Mention] = []
        taken: list[tuple[int, int]] = []
        lowered = question.lower()
        for name in self._by_length:
            haystack, needle = (
                (question, name.text) if name.strict else (lowered, name.text.lower())
            )
            for match in re.finditer(rf"(?<![\w^+-]){re.escape(needle)}(?![\w^+]|-\w)", haystack):
                span = match.span()
                if not any(a < span[1] and span[0] < b for a, b in taken):
                    taken.append(span)
                    found.append(Mention(name, span))
                    break
        return sorted(found, key=lambda m: m.span)

    def to_json(self) -> list[list[object]]:
        """A compact form for saving beside the BM25 index."""
        return [[n.text, list(n.papers), n.strict] for n in self.names.values()]

    @classmethod
    def from_json(cls, rows: Sequence[Sequence[object]]) -> Catalog:
        """The catalog ``to_json`` wrote."""
        return cls(Name(str(t), tuple(map(str, p)), bool(s)) for t, p, s in rows)  # type: ignore[call-overload]
