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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

# A word that may be a name: letters and digits, joined by hyphens, dots, ^ or + ("ZeRO-Infinity",
# "Llama-3.1", "CoRe^2", "C++").
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9]*(?:[-.^+][A-Za-z0-9]+)*\+*")
_HEAD = re.compile(r"^(.{2,60}?)\s*:\s")
MAX_HEAD_WORDS = 3  # "Universal Checkpointing", "Mind the Memory Gap": longer heads are sentences
MAX_NAME_PAPERS = 3  # a coined word used by more papers than this is a term ("H100", "GPT-4o")
MIN_REPEATS = 2  # an abstract-only name must be repeated in its abstract (it is what the paper is)
_AROUND = "\"'()[]{},.;:!?\u201c\u201d\u2018\u2019"  # punctuation a name may sit in


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


HEAD, TITLE, ABSTRACT = 0, 1, 2  # where a paper's word comes from: its title's head, its title,
# or its abstract


@dataclass(frozen=True, slots=True)
class Word:
    """A word (or title head) a paper may be named by, where it was found, and how often."""

    text: str
    kind: int  # HEAD, TITLE (a coined word of the title) or ABSTRACT (one of the abstract)
    repeats: int = 1  # times the abstract says it (ABSTRACT)


def paper_words(title: str, abstract: str) -> tuple[list[Word], set[str]]:
    """One paper's part of the catalog: the words it may be named by, and the words its abstract
    writes in plain lower case (which make a name of that spelling match only with capitals).

    The catalog is assembled from these per-paper parts (``assemble``), so a store can keep them
    per paper, replace a paper's alone, and assemble only the names a question may mention."""
    title_words, abstract_words = TOKEN.findall(title), TOKEN.findall(abstract)
    # A coined word has a digit or a capital after a lower-case letter: not a plain, capitalised
    # or all-capitals word of letters. These C-speed tests spare ``coined`` most of the words.
    maybe = [
        w
        for w in abstract_words
        if not (w.isalpha() and (w.islower() or w.isupper() or w.istitle()))
    ]
    words = []
    head = _HEAD.match(title)
    if head and len(head.group(1).split()) <= MAX_HEAD_WORDS:
        words.append(Word(head.group(1), HEAD))
    words += [Word(w, TITLE) for w in dict.fromkeys(title_words) if coined(w)]
    counts = Counter(w for w in maybe if coined(w))
    words += [Word(w, ABSTRACT, n) for w, n in counts.items()]
    return words, {w for w in abstract_words if w.islower()}


def assemble(rows: Iterable[tuple[str, Word]], ordinary: Callable[[str], bool]) -> list[Name]:
    """The names that ``(paper id, word)`` rows give, in paper order; ``ordinary(word)``: whether
    some abstract writes ``word`` in plain lower case.

    The rows for the names a question may mention (every row whose word has one of their
    lower-case spellings) give the same names as all rows do: each rule below counts papers per
    spelling only."""
    rows = list(rows)
    users: defaultdict[str, set[str]] = defaultdict(set)  # papers using a coined word, anywhere
    titled: set[str] = set()  # coined words some title uses
    for pid, w in rows:
        if w.kind != HEAD:
            users[w.text].add(pid)
        if w.kind == TITLE:
            titled.add(w.text)
    owners: defaultdict[str, dict[str, str]] = defaultdict(dict)  # lower name -> paper -> text
    best_repeat: dict[str, tuple[int, int]] = {}  # abstract-only name -> (repeats, runner-up)
    repeat_owner: dict[str, tuple[str, str]] = {}
    for pid, w in rows:
        if w.kind == HEAD or (w.kind == TITLE and len(users[w.text]) <= MAX_NAME_PAPERS):
            owners[w.text.lower()][pid] = w.text
        elif w.kind == ABSTRACT:
            if w.repeats < MIN_REPEATS or len(users[w.text]) > MAX_NAME_PAPERS or w.text in titled:
                continue
            top, runner = best_repeat.get(w.text, (0, 0))
            if w.repeats > top:
                best_repeat[w.text], repeat_owner[w.text] = (w.repeats, top), (pid, w.text)
            else:
                best_repeat[w.text] = (top, max(runner, w.repeats))
    for w, (top, runner) in best_repeat.items():
        if top > runner:  # the paper that says it most, and more than any other: its owner
            pid, text = repeat_owner[w]
            owners[w.lower()].setdefault(pid, text)
    names = []
    for lower, by_paper in owners.items():
        if len(by_paper) > MAX_NAME_PAPERS:
            continue
        text = Counter(by_paper.values()).most_common(1)[0][0]
        strict = " " not in lower and ordinary(lower)
        names.append(Name(text, tuple(sorted(by_paper)), strict))
    return names


def candidates(question: str) -> set[str]:
    """Lower-case spellings of everything in ``question`` that could be a name: its name-like
    words, and runs of up to MAX_HEAD_WORDS words stripped of the punctuation around them (a
    superset: ``Catalog.find`` decides what matches)."""
    found = {w.lower() for w in TOKEN.findall(question)}
    words = question.split()
    for i in range(len(words)):
        for j in range(i + 1, min(i + MAX_HEAD_WORDS, len(words)) + 1):
            run = " ".join(words[i:j]).strip(_AROUND).lower()
            found |= {run, run.removesuffix("'s"), run.removesuffix("’s")}
    return {f for f in found if f}


class Catalog:
    """Every name of the collection's papers, looked up in questions."""

    def __init__(self, names: Iterable[Name]) -> None:
        self.names = {n.text.lower(): n for n in names}
        # Longest first, so "ZeRO-Infinity" wins over "ZeRO" and phrases over their words.
        self._by_length = sorted(self.names.values(), key=lambda n: -len(n.text))

    @classmethod
    def build(cls, papers: Sequence[tuple[str, str, str]]) -> Catalog:
        """The catalog of ``(paper_id, title, abstract)`` triples."""
        rows: list[tuple[str, Word]] = []
        plain: set[str] = set()
        for pid, title, abstract in papers:
            words, lower_words = paper_words(title, abstract)
            rows += [(pid, w) for w in words]
            plain |= lower_words
        return cls(assemble(rows, plain.__contains__))

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
