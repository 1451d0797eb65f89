"""Question analysis: what a question asks, decided once and passed to every later step.

``analyse`` reads a question and returns an ``Analysis``:

- its topic terms, each weighted by its IDF in the collection (rarer terms say more), with the
  glossary's alternatives ("hopper" is also matched by "h100"), and those the collection never
  uses;
- the versions and quantities it names ("TPU v5e", "10 million": ``rag.relevance.specifics``);
- the papers it names, from the collection's own catalog of names (``rag.names``);
- its intent: one paper answers it (single), several (list), it compares the papers it names
  (comparison), or it asks for a record detail such as the authors or the venue (metadata). A
  fitted text model decides (``rag.policy.TextModel``, trained by ``rag fit``), from the question's
  wording with the named papers and numbers masked, so "Compare <name> and <name>" or "Who wrote
  <name>?" is the same question whatever the names, and a topic word never decides the intent;
- for a metadata question, the record field it asks for (``FIELDS``).

How many papers are shown follows from the intent (``shown``), for the offline answerer and an
LLM alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Literal

from rag.index import PaperRecord
from rag.lexical import Glossary, Terms, terms
from rag.names import Catalog, coined
from rag.policy import Policy
from rag.relevance import specifics

Intent = Literal["single", "list", "comparison", "metadata"]
INTENTS: tuple[Intent, ...] = ("single", "list", "comparison", "metadata")

# What a metadata question can ask for: the record attribute that may hold it (None: no record
# does; the bundled corpus holds none of them), how a declining answer names it, how an answer
# gives it, and the question that asks for it, which ``nearest_field`` compares questions with.
FIELDS: dict[str, tuple[str | None, str, str, str]] = {
    "authors": ("authors", "who wrote it", "was written by {}",
                "Who wrote this paper? Who are its authors?"),
    "date": ("date", "when it appeared", "is dated {}",
             "When was this paper published? In which year did it appear?"),
    "link": ("url", "a link to it", "is at {}",
             "Where can I find the code, the link or the project page of this paper?"),
    "venue": (None, "where it was published", "",
              "Where was this paper published? At which conference or in which journal?"),
    "citations": (None, "how often it has been cited", "",
                  "How many times has this paper been cited?"),
    "affiliation": (None, "where its authors work", "",
                    "Which university, lab or company are the authors of this paper from?"),
    "funding": (None, "who funded it", "", "Who funded or sponsored this paper?"),
    "other": (None, "that detail", "",
              "What is the licence, the page count or the award of this paper?"),
}  # fmt: skip


def nearest_field(vector: Sequence[float], fields: Mapping[str, Sequence[float]]) -> str:
    """The field whose question (``FIELDS``, embedded as ``fields``) is nearest to ``vector``, the
    embedding of a masked metadata question: zero-shot, since a few labelled questions per field
    are too few to fit on (a fitted model got 16 of 38 right in leave-one-out, this 24)."""
    return max(fields, key=lambda f: sum(a * b for a, b in zip(vector, fields[f], strict=True)))


_URL = re.compile(r"https?://\S+[\w/]")


# Words that shape a question but say nothing about its topic: "which papers ..." must not reward
# abstracts for containing "paper", and "when", "so" or "only" are not what a question is about.
# (BM25 keeps its own short stop list: this one only decides which question terms are the topic.)
@lru_cache(maxsize=1)
def _scaffold() -> frozenset[str]:
    return frozenset(
        terms(
            "paper papers work works study studies article articles list name find show give "
            "which what who whom whose why when where while how collection research researchers "
            "author authors publication discuss describe mention address about propose proposes "
            "target targets focus focuses tackle explore investigate deal can could would should "
            "do does did doing done use used using uses both also way ways help get got make made "
            "there is are was were be been being am any some all each every few many much more "
            "most less least other others same such than too very so only just even still yet "
            "either neither nor rather instead like well again further once here now then over "
            "under up down out off above below between among across within without via per upon "
            "from into onto through during before after against until because whether however "
            "it its itself he she we you they them their theirs our ours your yours his her hers "
            "me my mine us one ones thing things something anything let lets need needs tell "
            "exist exists existing know known kind kinds sort type types example e.g i.e etc"
        )
    )


@dataclass(frozen=True, slots=True)
class Analysis:
    """A question as every step after analysis sees it."""

    text: str
    intent: Intent = "single"
    intents: Mapping[str, float] = field(default_factory=dict)  # P(intent), when a model decided
    named: tuple[tuple[str, ...], ...] = ()  # per name mentioned, the paper ids it denotes
    asks_for: str | None = None  # the FIELDS key a metadata question asks for
    weights: Mapping[str, float] = field(default_factory=dict)  # topic term -> IDF
    alternatives: Mapping[str, list[str]] = field(default_factory=dict)  # term -> glossary phrases
    specifics: tuple[str, ...] = ()  # versions and numbers the question names
    unknown: tuple[str, ...] = ()  # topic terms the collection never uses
    unknown_names: tuple[str, ...] = ()  # ... of them, those the question writes as a name
    wording: tuple[str, ...] = ()  # the features the intent model read
    search: str = ""  # the text searched: the question and its glossary members

    @property
    def named_papers(self) -> tuple[str, ...]:
        """Every paper the question names, in the order named, each once."""
        return tuple(dict.fromkeys(pid for group in self.named for pid in group))

    def probability(self, intent: Intent) -> float:
        """P(intent) from the model, or 1/0 for the decided intent when no model ran."""
        if self.intents:
            return float(self.intents.get(intent, 0.0))
        return 1.0 if intent == self.intent else 0.0

    def matched(self, text: Terms) -> set[str]:
        """The topic terms a text (a sentence or a title, as ``Terms``) holds, directly or via
        the glossary."""
        found = {t for t in self.weights if t in text.present}
        if self.alternatives:
            found |= {
                t
                for t, alternatives in self.alternatives.items()
                if t in self.weights
                and t not in found
                and any(f" {alt} " in text.joined for alt in alternatives)
            }
        return found


_WORDING = re.compile(r"<name>|<num>|[a-z]+(?:'[a-z]+)?")
_NUMBERISH = re.compile(r"\b[\w.\-]*\d[\w.\-]*\b")


def wording(question: str, names: Sequence[tuple[int, int]] = ()) -> tuple[str, ...]:
    """The question's wording as features for the intent model: its words and word pairs, with
    the spans of named papers masked as ``<name>`` and numbers as ``<num>``; the sentence start is
    ``<s>``, so "<s> which" (a question opening) differs from "which" inside one."""
    masked, last = [], 0
    for start, end in sorted(names):
        masked += [question[last:start], " <name> "]
        last = end
    masked.append(question[last:])
    text = _NUMBERISH.sub(" <num> ", "".join(masked).lower().replace("’", "'"))
    words = _WORDING.findall(text)
    features = [f"w:{w}" for w in words]
    features += [f"b:{a} {b}" for a, b in pairwise(["<s>", *words])]
    features.append(f"names:{min(len(names), 2)}")
    return tuple(dict.fromkeys(features))


def decide(intents: Mapping[str, float], n_named: int) -> Intent:
    """The intent to act on: the likeliest, except that a comparison needs two named papers to
    compare (without them the likelier of single and list stands)."""
    intent = max(INTENTS, key=lambda i: intents.get(i, 0.0))
    if intent == "comparison" and n_named < 2:
        intent = "list" if intents.get("list", 0.0) > intents.get("single", 0.0) else "single"
    return intent


def masked(question: str, spans: Sequence[tuple[int, int]]) -> str:
    """``question`` with the named papers' spans replaced by "this paper" ("Who wrote this
    paper?"), so that what is asked, not what it is asked about, decides the metadata field."""
    for start, end in sorted(spans, reverse=True):
        question = f"{question[:start]}this paper{question[end:]}"
    return question


def analyse(
    question: str,
    idf: Callable[[str], float],
    rarest: float,
    glossary: Glossary | None = None,
    catalog: Catalog | None = None,
    policy: Policy | None = None,
    vector: Sequence[float] | None = None,
    field_of: Callable[[str], str] | None = None,
) -> Analysis:
    """Analyse ``question`` against the collection's statistics, names and the fitted policy;
    ``vector`` is the question's embedding (the intent model may read it);
    ``field_of`` names the ``FIELDS`` key a metadata question asks for (``nearest_field``).

    A term the collection never uses gets the weight of the rarest term (``rarest``): a question
    about something absent should lower every paper's coverage, which is what declining needs.
    """
    mentions = catalog.find(question) if catalog else []
    question_terms = terms(question)
    topic = [t for t in dict.fromkeys(question_terms) if t not in _scaffold()]
    alternatives = glossary.alternatives(question_terms) if glossary else {}
    # A multi-word family ("kv cach") is represented by its last word, which is also a topic term.
    per_term = {key.split()[-1]: members for key, members in alternatives.items()}
    features = wording(question, [m.span for m in mentions])
    intents: dict[str, float] = {}
    if policy is not None and policy.intent is not None:
        intents = policy.intent.probabilities(features, vector)
    intent = decide(intents, len(mentions)) if intents else "single"
    asks_for = None
    if intent == "metadata":
        text = masked(question, [m.span for m in mentions])
        asks_for = field_of(text) if field_of else "other"
    return Analysis(
        text=question,
        intent=intent,
        intents=intents,
        named=tuple(m.name.papers for m in mentions),
        asks_for=asks_for,
        weights={t: idf(t) or rarest for t in topic},
        unknown=tuple(t for t in topic if not idf(t)),
        unknown_names=tuple(t for t in _written_as_names(question) if t in topic and not idf(t)),
        alternatives={t: per_term[t] for t in topic if t in per_term},
        specifics=specifics(question),
        wording=features,
        search=glossary.expand(question) if glossary else question,
    )


_WORD = re.compile(r"[A-Za-z0-9][\w\-.]*[\w]|[A-Za-z0-9]")


def _written_as_names(question: str) -> set[str]:
    """Terms of the words ``question`` writes as names: capitalised after its first word, or
    coined ("Loihi", "ROCm", "Jetson"), whatever the collection knows of them."""
    out: set[str] = set()
    for i, match in enumerate(_WORD.finditer(question)):
        word = match.group(0)
        if (i > 0 and word[:1].isupper()) or coined(word):
            out.update(terms(word))
    return out


def shown(analysis: Analysis, k: int, list_k: int) -> int:
    """How many papers the answer writer is shown: a list needs room for every right answer."""
    return max(k, list_k) if analysis.intent == "list" else k


def widened(analysis: Analysis, k: int, count: int, list_k: int) -> str | None:
    """Why ``count`` papers were shown for a question asked with top-``k``, when more than k."""
    if count <= k:
        return None
    if analysis.intent == "list" and list_k > k:
        why = (
            f"a list question is shown up to {list_k} papers (RAG_LIST_K), so that every paper "
            "that belongs in the list can be cited"
        )
    else:
        why = "papers the question names are always shown"
    return f"{count} papers were considered, more than top-k ({k}): {why}"


def held(record: PaperRecord, field_name: str) -> str | None:
    """The value of a metadata field in a paper's record, or None when the record lacks it.

    A link is also held when the abstract itself gives one ("code at https://...").
    """
    attribute = FIELDS.get(field_name, FIELDS["other"])[0]
    value = getattr(record, attribute, None) if attribute else None
    if not value and field_name == "link":
        found = _URL.search(record.abstract)
        value = found.group(0) if found else None
    return value or None


def unheld(field_name: str | None) -> str:
    """How a declined metadata answer names what the records lack."""
    return FIELDS.get(field_name or "other", FIELDS["other"])[1]


def stated(field_name: str, value: str) -> str:
    """How an answer gives a held field ("was written by A, B")."""
    return FIELDS[field_name][2].format(value)
