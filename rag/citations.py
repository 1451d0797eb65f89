"""Citation markers: parse [n], [n, m] and [n-m], check them against the sources, renumber.

Whatever wrote the answer (the extractive answerer or an LLM) numbers sources as they were given to
it. Readers want [1] to be the first paper mentioned, and a marker that points at no given source
must never reach them as if it were evidence: it is removed and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rag.chunking import split_sentences
from rag.lexical import terms

MARKER = re.compile(r"\s?\[(\d+(?:\s*[-–,]\s*\d+)*)\]")
# What looks like a marker inside a source ("available at [9]", "sqrt[3]", "Barron [1993]", an
# abstract that says "[1][2][3]") is the source's text, not a citation: it is quoted and shown to
# models with look-alike brackets, which read the same and are never parsed as markers.
_SOURCE_MARKER = re.compile(r"\[(\d+(?:\s*[-–,]\s*\d+)*)\]")
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")  # a list line's "- ", "* ", "2. "
# "Claim. [1]" and "Claim [1]." both cite the claim: move trailing markers before the full stop.
_TRAILING_MARKERS = re.compile(r"([.!?])((?:\s*\[[\d\s,\-–]+\])+)")


@dataclass(frozen=True, slots=True)
class Citation:
    """A cited paper, numbered as in the answer text."""

    n: int
    paper_id: str
    title: str


@dataclass(frozen=True, slots=True)
class CheckedText:
    """An answer after checking: its markers renumbered, and what was wrong with it."""

    text: str
    cited: list[int]  # source positions (1-based, as given) in order of first appearance
    invalid: list[int] = field(default_factory=list)  # markers that named no given source
    uncited_sentences: int = 0


_LOOK_ALIKE = ("\uff3b", "\uff3d")  # FULLWIDTH LEFT and RIGHT SQUARE BRACKET


def defuse_markers(text: str) -> str:
    """``text`` with every marker-shaped bracket made inert: "[9]" in fullwidth brackets."""
    left, right = _LOOK_ALIKE
    return _SOURCE_MARKER.sub(lambda m: f"{left}{m.group(1)}{right}", text)


def expand(group: str) -> list[int]:
    """``"1, 3-5"`` -> ``[1, 3, 4, 5]``; a reversed or huge range yields its end points only."""
    numbers: list[int] = []
    for part in re.split(r"\s*,\s*", group.strip()):
        bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part)]
        if len(bounds) == 2 and 0 < bounds[1] - bounds[0] <= 50:
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    return numbers


class Renumberer:
    """Renumbers markers as text streams in, so streamed and final text carry the same numbers.

    A marker can arrive split across pieces ("... [1", "2]"), so text from an unclosed "[" (and the
    whitespace before it, which goes if the marker turns out invalid) is held back until it closes.
    """

    _HOLD = 40  # an "[" open for longer than this is not a marker: release it

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self.order: dict[int, int] = {}  # source position -> number shown
        self.invalid: list[int] = []
        self._pending = ""

    def _renumber(self, match: re.Match[str]) -> str:
        shown = []
        for n in expand(match.group(1)):
            if 1 <= n <= self.n_sources:
                self.order.setdefault(n, len(self.order) + 1)
                if self.order[n] not in shown:
                    shown.append(self.order[n])
            elif n not in self.invalid:
                self.invalid.append(n)
        if not shown:
            return ""
        lead = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip())]
        return lead + "".join(f"[{n}]" for n in sorted(shown))

    def feed(self, piece: str) -> str:
        """Text that is safe to show now."""
        text = self._pending + piece
        cut = len(text)
        bracket = text.rfind("[")
        if bracket != -1 and "]" not in text[bracket:] and len(text) - bracket <= self._HOLD:
            cut = bracket
        while cut > 0 and text[cut - 1].isspace():
            cut -= 1  # keep trailing space with what may follow: an invalid marker takes it along
        self._pending = text[cut:]
        return MARKER.sub(self._renumber, text[:cut])

    def flush(self) -> str:
        """Whatever is still held back, at the end of the stream."""
        text, self._pending = self._pending, ""
        return MARKER.sub(self._renumber, text)


def check(text: str, n_sources: int) -> CheckedText:
    """Renumber valid markers by first appearance; drop and report invalid ones."""
    renumberer = Renumberer(n_sources)
    renumbered = renumberer.feed(text) + renumberer.flush()
    return finish(renumberer, renumbered)


def finish(renumberer: Renumberer, text: str) -> CheckedText:
    """The check result for ``text``, all of which went through ``renumberer``."""
    return CheckedText(
        text=text.strip(),
        cited=list(renumberer.order),
        invalid=renumberer.invalid,
        uncited_sentences=count_uncited(text),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A sentence of an answer (or one line of a list), its markers taken out."""

    text: str
    cited: list[int]  # the numbers its markers name, as written


def claims(text: str) -> list[Claim]:
    """The claims of an answer: each sentence, or each list line whole; headings (':') are not."""
    text = _TRAILING_MARKERS.sub(r"\2\1", text)
    out: list[Claim] = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.endswith(":"):
            continue
        spans = [(0, len(line))] if BULLET.match(line) else split_sentences(line)
        for start, end in spans:
            sentence = line[start:end]
            cited = [n for m in MARKER.finditer(sentence) for n in expand(m.group(1))]
            plain = BULLET.sub("", MARKER.sub("", sentence)).strip()
            if plain:
                out.append(Claim(plain, cited))
    return out


def count_uncited(text: str) -> int:
    """Claims that carry no marker."""
    return sum(1 for claim in claims(text) if not claim.cited)


def sentence_support(claim: str, text: str) -> list[tuple[int, int, float]]:
    """Each sentence of ``text`` as (start, end, share of the claim's terms it contains).

    A lexical measure: a quoted or closely paraphrased sentence scores near 1, an unrelated one 0.
    The UI highlights the best-supporting sentences of a source with it; the evaluation's offline
    support proxy is built on it (and is named as a proxy: it cannot judge meaning).
    """
    wanted = set(terms(claim))
    spans = split_sentences(text) or [(0, len(text))]
    if not wanted:
        return [(a, b, 0.0) for a, b in spans]
    return [(a, b, len(wanted & set(terms(text[a:b]))) / len(wanted)) for a, b in spans]
