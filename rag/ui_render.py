"""HTML for the browser chat: answers whose [n] markers link to their sources, and those sources.

Pure functions of text, no Gradio. Everything that comes from the corpus or from a model (titles,
abstracts, answers that quote them) is HTML-escaped here, and the chat shows messages as HTML
without Markdown (``rag.ui``), so a title such as ``<img src=x onerror=alert(1)>`` or
``![x](http://host/pixel.png)`` is shown as those characters: it cannot run or load anything.
The only markup is the one written below.

Sources are numbered per answer, so their anchors carry the turn too: ``[2]`` in the third answer
links to ``#rag-t3-s2``, and earlier answers keep pointing at their own sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlsplit

from rag.citations import BULLET, claims, defuse_markers, sentence_support
from rag.feedback import KINDS

if TYPE_CHECKING:
    from rag.pipeline import AskResult
    from rag.retrieval import Retrieved

# A claim must share at least this much of its vocabulary with a sentence for it to be highlighted
# as support: below it, the claim paraphrases too loosely to point at one sentence.
MIN_SUPPORT = 0.3
_MARKER = re.compile(r"\[(\d+)\]")  # checked answers carry only [n] markers (rag.citations)
ECHO_CHARS = 300  # a question longer than this is echoed in the chat cut short, with its length


def anchor(turn: int, n: int) -> str:
    """The element id of source ``n`` of answer ``turn``."""
    return f"rag-t{turn}-s{n}"


def _inline(text: str, turn: int) -> str:
    """Escaped text with every [n] turned into a link to source n of this turn."""
    return _MARKER.sub(
        lambda m: f'<a class="rag-cite" href="#{anchor(turn, int(m.group(1)))}">[{m.group(1)}]</a>',
        escape(text),
    )


def _item(line: str, turn: int, titles: Sequence[str]) -> str:
    """A list line: "Title: quote [n]" with the title set apart above its quote."""
    for title in sorted(titles, key=len, reverse=True):  # "A: B" before a title that is "A"
        shown = defuse_markers(title)  # as the answer writes a title (rag.answer)
        if line.startswith(shown) and line[len(shown) :].lstrip().startswith(":"):
            quote = line[len(shown) :].lstrip()[1:].strip()
            return (
                f'<li><span class="rag-item-title">{escape(shown)}'
                '<span class="rag-item-sep">: </span></span>'
                f'<span class="rag-item-quote">{_inline(quote, turn)}</span></li>'
            )
    return f"<li>{_inline(line, turn)}</li>"


def answer_html(text: str, turn: int, titles: Sequence[str] = ()) -> str:
    """An answer (or the part streamed so far) as HTML: paragraphs, bullet lists, linked markers.

    ``titles``, the papers the answer may name, set a list line's title apart from its quote.
    """
    out: list[str] = []
    in_list = False
    for line in text.strip().split("\n"):
        bullet = BULLET.match(line)
        if bullet and not in_list:
            out.append("<ul>")
        elif not bullet and in_list:
            out.append("</ul>")
        in_list = bool(bullet)
        if bullet:
            out.append(_item(line[bullet.end() :], turn, titles))
        elif line.strip():
            out.append(f"<p>{_inline(line.strip(), turn)}</p>")
    if in_list:
        out.append("</ul>")
    return "".join(out)


def notice_html(message: str) -> str:
    """A one-line error or notice for the chat (escaped: it may quote the user's input)."""
    return f'<p class="rag-notice">⚠️ {escape(message)}</p>'


def text_html(text: str) -> str:
    """Plain text (e.g. the user's question) as HTML."""
    return f"<p>{escape(text)}</p>"


def question_html(question: str) -> str:
    """The user's question as the chat echoes it: a very long one cut short, with its length."""
    if len(question) <= ECHO_CHARS:
        return text_html(question)
    return text_html(f"{question[: ECHO_CHARS - 20].rstrip()}… ({len(question):,} characters)")


def supporting_spans(answer: str, n: int, title: str, abstract: str) -> list[tuple[int, int]]:
    """Character spans of the abstract sentences that best support the claims citing [n].

    For each claim citing [n], the sentence(s) sharing most of its vocabulary, if they share at
    least ``MIN_SUPPORT`` of it. A list answer's line names the paper first ("Title: quote [n]"):
    the title is left out of the claim, or it would dilute the quote's match.
    """
    spans: set[tuple[int, int]] = set()
    for claim in claims(answer):
        if n not in claim.cited:
            continue
        said = claim.text.removeprefix(title).lstrip(" :")
        support = sentence_support(said or claim.text, abstract)
        best = max((share for _, _, share in support), default=0.0)
        if best >= MIN_SUPPORT:
            spans.update((a, b) for a, b, share in support if share == best)
    return sorted(spans)


def highlighted(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` escaped, each span wrapped in <mark>."""
    out, at = [], 0
    for start, end in sorted(spans):
        out.append(escape(text[at:start]))
        out.append(f"<mark>{escape(text[start:end])}</mark>")
        at = end
    out.append(escape(text[at:]))
    return "".join(out)


def _link(url: str, label: str) -> str:
    return f'<a href="{escape(url)}" target="_blank" rel="noopener noreferrer">{escape(label)}</a>'


def paper_links(title: str, url: str | None) -> list[str]:
    """Links to look a paper up: its own URL (http/https only), then title searches."""
    links = []
    if url and urlsplit(url).scheme in ("http", "https"):
        links.append(_link(url, "paper"))
    query = quote_plus(title)
    links.append(_link(f"https://arxiv.org/search/?query={query}&searchtype=title", "arXiv"))
    links.append(_link(f"https://huggingface.co/papers?q={query}", "Hugging Face"))
    return links


def _score(retrieved: Retrieved, rank: int, total: int) -> str:
    return (
        f'<span class="rag-score">rank {rank} of {total} · retrieval score {retrieved.score:.4f}'
        f" · cosine similarity {retrieved.dense:.2f}</span>"
    )


def judge_button(turn: int, kind: str, judged: Mapping[str, str], paper: str = "") -> str:
    """The button that records a judgement, or what was recorded (``judged``: key -> kind)."""
    key = paper or "answer"
    if key in judged:
        return f'<span class="rag-judged">✓ recorded: {escape(KINDS[judged[key]])}</span>'
    return (
        f'<button type="button" class="rag-judge" data-turn="{turn}" data-kind="{kind}" '
        f'data-paper="{escape(paper)}">{escape(KINDS[kind])}</button>'
    )


def sources_html(result: AskResult, turn: int, judged: Mapping[str, str] | None = None) -> str:
    """The sources of one answer: each cited paper numbered as cited, then the others retrieved,
    each with the button that judges it (``judged``: what was judged already, by paper id)."""
    judged = judged or {}
    ranks = {r.paper.id: (i, r) for i, r in enumerate(result.retrieved, start=1)}
    total = len(result.retrieved)
    items = []
    for c in result.citations:
        rank, retrieved = ranks[c.paper_id]
        paper = retrieved.paper
        spans = supporting_spans(result.answer, c.n, paper.title, paper.abstract)
        items.append(
            f'<li class="rag-source" id="{anchor(turn, c.n)}">'
            f'<div class="rag-head"><span class="rag-n">[{c.n}]</span> '
            f'<span class="rag-title">{escape(paper.title)}</span> '
            f"{judge_button(turn, 'wrong', judged, paper.id)}</div>"
            f'<p class="rag-abstract">{highlighted(paper.abstract, spans)}</p>'
            f'<div class="rag-meta">{_score(retrieved, rank, total)} · '
            f"{' · '.join(paper_links(paper.title, paper.url))}</div></li>"
        )
    cited = {c.paper_id for c in result.citations}
    others = [(i, r) for i, r in enumerate(result.retrieved, start=1) if r.paper.id not in cited]
    parts = [
        f'<section class="rag-turn" id="rag-t{turn}">',
        f'<h3 class="rag-question">Sources for “{escape(result.question)}”</h3>',
    ]
    if result.widened:
        parts.append(f'<p class="rag-widened">ℹ️ {escape(result.widened)}</p>')
    if items and not result.abstained:
        parts.append(
            f'<p class="rag-judge-answer">Judge this answer: '
            f"{judge_button(turn, 'declined', judged)}</p>"
        )
    if items:
        parts.append(f'<ol class="rag-sources">{"".join(items)}</ol>')
    else:
        parts.append('<p class="rag-none">No source supports an answer.</p>')
    if others:
        label = "Also retrieved, not cited" if items else "Closest papers retrieved"
        rows = "".join(
            f'<li class="rag-other"><span class="rag-title">{escape(r.paper.title)}</span> '
            f"{judge_button(turn, 'missing', judged, r.paper.id)} {_score(r, i, total)} · "
            f"{' · '.join(paper_links(r.paper.title, r.paper.url))}</li>"
            for i, r in others
        )
        # Open again after a re-render when one of them was just judged from inside it.
        opened = " open" if any(r.paper.id in judged for _, r in others) else ""
        parts.append(
            f'<details class="rag-others"{opened}><summary>{label} ({len(others)})</summary>'
            f"<ul>{rows}</ul></details>"
        )
    parts.append("</section>")
    return "".join(parts)


def sources_panel(sections: Sequence[str]) -> str:
    """The sources panel: the newest answer's sources first (``sections`` are oldest first)."""
    if not sections:
        return '<p class="rag-empty">The sources of each answer appear here.</p>'
    return "".join(reversed(sections))


def index_html(stats: dict[str, Any]) -> str:
    """One line on the index: its size and embedding model."""
    return (
        f'<p class="rag-index">Index: {stats["papers"]:,} papers, {stats["chunks"]:,} chunks · '
        f"embedding model {escape(str(stats['embed_model']))}</p>"
    )


CSS = """
/* The panel scrolls by itself and stays in view: following a citation moves it, not the chat. */
#rag-sources { max-height: 80vh; overflow-y: auto !important; position: sticky; top: 0.5rem; }
#rag-chat ul { padding-left: 1.25rem; margin: 0.25rem 0; }
#rag-chat p { margin: 0.25rem 0; }
.rag-turn h3 { font-size: 1rem; margin: 0.5rem 0; }
.rag-sources { padding-left: 0; list-style: none; }
.rag-source { margin: 0 0 0.75rem; padding: 0.5rem 0.75rem; border-radius: 6px;
  border: 1px solid var(--border-color-primary); scroll-margin-top: 0.5rem; }
.rag-source:target { outline: 2px solid var(--color-accent); background: var(--color-accent-soft); }
.rag-n { font-weight: 600; color: var(--color-accent); }
.rag-title { font-weight: 600; }
.rag-abstract { font-size: 0.9rem; margin: 0.35rem 0; }
.rag-abstract mark { background: #fde68a; color: #1f2937; padding: 0 1px; }
.rag-meta, .rag-score, .rag-index { font-size: 0.8rem; color: var(--body-text-color-subdued); }
.rag-others li { margin: 0.25rem 0; }
/* Markers are links and look it, whatever the chat's own message styles say. */
#rag-chat a.rag-cite, #rag-chat a.rag-cite:visited { color: var(--link-text-color, #2563eb) !important;
  text-decoration: underline !important; text-underline-offset: 2px; cursor: pointer;
  font-weight: 500; }
#rag-chat a.rag-cite:hover { color: var(--link-text-color-hover, #1d4ed8) !important; }
/* A list answer: each paper's title on its own line, its quote below it. */
#rag-chat li { margin: 0.35rem 0; }
.rag-item-title { display: block; font-weight: 600; }
.rag-item-quote { display: block; }
.rag-item-sep { display: none; } /* the text still reads "Title: quote" when copied */
.rag-widened { font-size: 0.85rem; color: var(--body-text-color-subdued); margin: 0.25rem 0; }
button.rag-judge { font-size: 0.75rem; padding: 0 0.4rem; margin-left: 0.25rem; border-radius: 4px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary);
  color: var(--body-text-color-subdued); cursor: pointer; }
button.rag-judge:hover { border-color: var(--color-accent); color: var(--body-text-color); }
button.rag-judge:disabled { opacity: 0.5; cursor: wait; }
.rag-judged { font-size: 0.75rem; color: var(--color-accent); margin-left: 0.25rem; }
.rag-offline { font-size: 0.85rem; color: var(--body-text-color-subdued); margin: 0; }
.rag-judge-answer { font-size: 0.8rem; margin: 0.25rem 0 0.5rem; }
"""
