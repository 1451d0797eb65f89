"""What a model writes that is not its answer: hidden reasoning, and its instructions repeated.

- Reasoning models (DeepSeek-R1, Qwen3 served by Ollama or llama.cpp) may write their thinking
  inside the answer as ``<think>...</think>``; ``Thinking`` keeps it out, also while streaming, so
  its "[3]" never becomes a citation. (Servers that send it apart, as ``reasoning_content``, are
  already kept out: only ``content`` is read.)
- A base model, or a small one, may repeat the rules it was given instead of answering.
  ``echoed`` finds the answer's sentences that are the instructions' own (long, verbatim up to
  case and spacing), so they can be dropped and reported rather than read as an answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.chunking import split_sentences

OPEN, CLOSE = "<think>", "</think>"
ECHO_MIN_CHARS = 40  # a shorter sentence may match the instructions by accident ("Be brief.")
ECHO_SHORT_CHARS = 12  # ... but once a long one repeats them, short ones do too
_SPACE = re.compile(r"\s+")
_MARKERS = re.compile(r"\[[\d\s,\-–]*\]")
_BARE = re.compile(r"[\W\d_]*")  # a line of numbering and punctuation only


class Thinking:
    """Removes ``<think>...</think>`` from streamed text, holding back a possible tag's start."""

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""

    def feed(self, piece: str) -> str:
        """The part of ``piece`` (after what was held back) that is answer, not thinking."""
        text, out = self._pending + piece, []
        self._pending = ""
        while text:
            tag = CLOSE if self._inside else OPEN
            at = text.find(tag)
            if at == -1:
                keep = _partial_tag(text, tag)
                if not self._inside:
                    out.append(text[: len(text) - keep])
                self._pending = text[len(text) - keep :] if keep else ""
                break
            if not self._inside:
                out.append(text[:at])
            self._inside = not self._inside
            text = text[at + len(tag) :]
        return "".join(out)

    def flush(self) -> str:
        """What is still held back at the end (an unfinished tag is just text)."""
        text, self._pending = ("" if self._inside else self._pending), ""
        return text


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _plain(text: str) -> str:
    return _SPACE.sub(" ", _MARKERS.sub("", text)).strip().casefold()


def echoed(answer: str, instructions: Sequence[str], expected: Sequence[str] = ()) -> list[str]:
    """The sentences of ``answer`` that repeat ``instructions`` verbatim (case, spacing and
    citation markers aside), but for the ``expected`` ones (the not-found sentence the
    instructions tell the model to write)."""
    said = " ".join(_plain(text) for text in instructions)
    allowed = {_plain(text) for text in expected}
    candidates = []
    for line in answer.split("\n"):
        for start, end in split_sentences(line) or [(0, len(line))]:
            sentence = line[start:end].strip()
            plain = _plain(sentence).lstrip("0123456789.-*• ")
            if plain and plain in said and plain not in allowed:
                candidates.append((sentence, plain))
    # A long sentence of the instructions is repeated, not said by accident; once one is, the
    # short ones around it ("Use only the sources.") are repeated too.
    if not any(len(plain) >= ECHO_MIN_CHARS for _, plain in candidates):
        return []
    return [s for s, plain in candidates if len(plain) >= ECHO_SHORT_CHARS]


def without(answer: str, sentences: Sequence[str]) -> str:
    """``answer`` with ``sentences`` taken out (each once), and the lines left with nothing but
    numbering or punctuation ("4.") removed."""
    for sentence in sentences:
        answer = answer.replace(sentence, "", 1)
    lines = [_SPACE.sub(" ", line).strip() for line in answer.split("\n")]
    return "\n".join(line for line in lines if not _BARE.fullmatch(line))
