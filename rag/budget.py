"""Fitting the sources into the model's context window, so that no request overflows it.

A list question shows the answer writer 30 abstracts, about 10k tokens: more than llama.cpp's
default context of 2,048 and more than many local models hold. The sources are given in order of
the fitted probability that they answer, so when they do not fit, the least probable give way
first: their abstracts are cut to the sentences that hold the most of the question's topic, and
if that is still too long, they are left out. The most probable source is never cut before a
less probable one.

Tokens are counted with a characters-per-token estimate that stays on the safe side: measured
once on the server's own tokenizer where it has one (llama.cpp and vLLM expose ``/tokenize``:
``rag.llm_context``), else ``CHARS_PER_TOKEN``. Counting every prompt exactly would cost a request
per question, and the estimate only has to avoid an overflow, not to fill the window to the last
token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rag.relevance import evidence

if TYPE_CHECKING:
    from rag.policy import Policy
    from rag.question import Analysis
    from rag.retrieval import Retrieved

# Gemma 3's tokenizer (llama.cpp /tokenize) on every tenth bundled abstract: median 5.3 characters
# a token, the densest 3.95; on the system prompt 4.4. Without a measurement, 3.0 leaves room for
# tokenizers that split technical English finer: the estimate overcounts, never under.
CHARS_PER_TOKEN = 3.0
# A measured ratio (on the system prompt) is used at this share: abstracts are denser than prose.
MEASURED_SHARE = 0.85
# Tokens the chat template adds per message and around the answer (role markers, separators).
TEMPLATE_TOKENS = 32
# A source cut to fit keeps this many of its best sentences.
KEPT_SENTENCES = 2


def estimate_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """A safe (high) estimate of how many tokens ``text`` is."""
    return math.ceil(len(text) / chars_per_token)


@dataclass(frozen=True, slots=True)
class Fitted:
    """The sources as they will be sent, and what fitting did to them."""

    sources: list[Retrieved]
    whole: int  # sources sent with their whole abstract
    cut: int  # sources sent as their best sentences
    dropped: int  # sources left out (the least probable)
    tokens: int  # estimated prompt tokens of the request, answer not included

    @property
    def changed(self) -> bool:
        """Whether any source was cut or left out."""
        return bool(self.cut or self.dropped)


def cut_to_best(question: Analysis, source: Retrieved, policy: Policy) -> Retrieved:
    """``source`` with its abstract reduced to its best sentences (in abstract order)."""
    sentences = evidence(question, source.paper, policy).sentences
    ranked = sorted(range(len(sentences)), key=lambda i: (-sentences[i][1], i))
    kept = sorted(ranked[:KEPT_SENTENCES])
    text = " … ".join(sentences[i][0] for i in kept)
    return replace(source, paper=replace(source.paper, abstract=text))


def fit(
    question: Analysis,
    sources: Sequence[Retrieved],
    budget: int,
    render: Callable[[Sequence[Retrieved]], str],
    policy: Policy,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> Fitted:
    """The sources that fit in ``budget`` prompt tokens once rendered by ``render`` (the whole
    prompt for those sources), least probable cut first, then left out."""

    def estimate_tokens(text: str) -> int:
        return math.ceil(len(text) / chars_per_token)

    current = list(sources)
    first_cut = len(current)  # sources from this index on are cut to their best sentences
    tokens = estimate_tokens(render(current))
    # Cut abstracts from the last (least probable) up, then leave sources out from the last.
    while tokens > budget and first_cut > 0:
        first_cut -= 1
        current[first_cut] = cut_to_best(question, current[first_cut], policy)
        tokens = estimate_tokens(render(current))
    while tokens > budget and current:
        current.pop()
        tokens = estimate_tokens(render(current))
    whole = min(first_cut, len(current))
    return Fitted(current, whole, len(current) - whole, len(sources) - len(current), tokens)
