"""The library API: ``Rag(settings).ingest(...)`` and ``Rag(settings).ask(...)``.

The CLI and the UI are thin layers over this class. It owns nothing global: everything comes from
the ``Settings`` it is given, and the embedder, chat model and Chroma client can be passed in (tests
pass a scripted chat model, the UI shares one ``Rag`` between users).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rag import citations
from rag.answer import ExtractiveAnswerer, decline_metadata, subject
from rag.chat import OFFLINE, ChatModel, Note, declines
from rag.citations import Citation
from rag.corpus import (
    Corpus,
    Paper,
    Scan,
    bundled_corpus_dir,
    files_fingerprint,
    input_files,
    load_corpus,
)
from rag.embedding import Embedder, load_embedder
from rag.errors import IndexMissingError, InputError
from rag.followup import Turn, name_subjects
from rag.index import Index, IngestStats
from rag.lexical import Glossary
from rag.llm_text import without
from rag.locking import writer_lock
from rag.policy import Policy
from rag.question import FIELDS, Analysis, analyse, held, nearest_field, shown, widened
from rag.resources import data_path
from rag.retrieval import Mode, Retrieved, Retriever
from rag.selection import score
from rag.settings import Settings

# Lone surrogates: what Python makes of bytes that are not UTF-8 in a command line.
MAX_MODELS = 8  # chat models kept, least recently used dropped first
_UNDECODABLE = re.compile("[\ud800-\udfff]")


@dataclass
class AskResult:
    """A checked answer and everything needed to show or score it."""

    question: str
    answer: str
    abstained: bool
    citations: list[Citation]
    retrieved: list[Retrieved]
    model: str
    intent: str = "single"  # what the question analysis decided (rag.question)
    timings_ms: dict[str, float] = field(default_factory=dict)
    invalid_citations: list[int] = field(default_factory=list)  # markers naming no given source
    uncited_sentences: int = 0
    standalone: str = ""  # the question as searched (a follow-up, rewritten)
    truncated: bool = False  # the model stopped at its token limit: the answer is cut short
    echoed_sentences: int = 0  # sentences repeating the model's instructions, taken out
    prompt: dict[str, Any] | None = None  # how the sources were fitted to an LLM's context
    lexical: str | None = None  # why keyword search lags behind the collection, if it does
    widened: str | None = None  # why more papers were shown than the k asked for, if they were

    def notes(self) -> list[str]:
        """What a reader should know about how the answer was made, one sentence each."""
        out = []
        if self.prompt and (self.prompt["cut"] or self.prompt["dropped"]):
            held, total = self.prompt["sources"], self.prompt["sources"] + self.prompt["dropped"]
            cut = (
                f", {self.prompt['cut']} of them cut to their best sentences"
                if self.prompt["cut"]
                else ""
            )
            out.append(f"the model's context window held {held} of the {total} sources{cut}")
        if self.truncated:
            out.append(
                "the answer stopped at the model's token limit (RAG_LLM_MAX_TOKENS): it may be cut short"
            )
        if self.echoed_sentences:
            out.append(
                f"the model repeated {self.echoed_sentences} sentence(s) of its instructions; "
                "they were taken out of the answer"
            )
        if self.lexical:
            out.append(self.lexical)
        return out

    def turn(self) -> Turn:
        """This exchange as conversation history for a follow-up."""
        return Turn(self.question, self.answer, tuple(self.citations), self.standalone)

    def to_dict(self) -> dict[str, Any]:
        """The ``rag ask --json`` object."""
        return {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "citations": [
                {"n": c.n, "paper_id": c.paper_id, "title": c.title} for c in self.citations
            ],
            "retrieved": [
                {
                    "paper_id": r.paper.id,
                    "title": r.paper.title,
                    "score": round(r.score, 6),
                    "probability": None if r.probability is None else round(r.probability, 6),
                }
                for r in self.retrieved
            ],
            "intent": self.intent,
            "model": self.model,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "invalid_citations": list(self.invalid_citations),
            "uncited_sentences": self.uncited_sentences,
            "truncated": self.truncated,
            "echoed_sentences": self.echoed_sentences,
            "prompt": self.prompt,
            "lexical": self.lexical,
            "widened": self.widened,
        }


class Rag:
    """Ingest papers and answer questions about them with cited sources."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        chat_model: ChatModel | None = None,
        client: Any | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        if policy is not None:
            self.policy = policy  # fills the cached property: ``rag fit`` passes an unfitted one
        self._embedder = embedder
        self._chat_model = chat_model
        self._models: OrderedDict[str, ChatModel] = OrderedDict()
        self._client = client

    @cached_property
    def embedder(self) -> Embedder:
        """The configured embedder (weights verified, nothing heavy loaded yet)."""
        return self._embedder or load_embedder(self.settings)

    @cached_property
    def chat_model(self) -> ChatModel:
        """The default chat model: the one passed in, else the configured LLM, else offline."""
        if self._chat_model is not None:
            return self._chat_model
        return self.model(self._default_model())

    def _default_model(self) -> str:
        # "" stands for the configured endpoint's default model (resolved by OpenAIChatModel).
        if self.settings.llm_configured and self.settings.llm_model != OFFLINE:
            return self.settings.llm_model or ""
        return OFFLINE

    def model(self, name: str | None) -> ChatModel:
        """The chat model called ``name``: "offline", a model of the configured LLM endpoint, or
        (None) the default."""
        if name is None or (self._chat_model is not None and name == self._chat_model.name):
            return self.chat_model
        if name not in self._models:
            if name == OFFLINE:
                self._models[name] = ExtractiveAnswerer(self.policy)
            else:
                from rag.llm import OpenAIChatModel

                self._models[name] = OpenAIChatModel(
                    self.settings, name or None, policy=self.policy
                )
            while len(self._models) > MAX_MODELS:  # bounded: each holds an HTTP client
                self._models.popitem(last=False)
        self._models.move_to_end(name)
        return self._models[name]

    def model_choices(self) -> list[str]:
        """Models a user can pick: the default first, then "offline" if it is not the default."""
        default = self.chat_model.name
        return [default] if default == OFFLINE else [default, OFFLINE]

    @cached_property
    def policy(self) -> Policy:
        """The answering policy (the fitted one shipped in the package, unless ``RAG_POLICY``)."""
        return Policy.load(self.settings.policy)

    @cached_property
    def glossary(self) -> Glossary:
        """The query-expansion glossary (bundled unless ``RAG_GLOSSARY`` names another)."""
        path = self.settings.glossary or data_path("glossary.txt")
        try:
            return Glossary.load(path)
        except OSError as exc:
            raise InputError(f"cannot read the glossary {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"the glossary {path} is not UTF-8 text (RAG_GLOSSARY)") from None

    @cached_property
    def index(self) -> Index:
        """The configured index."""
        return Index(self.settings, self.embedder, client=self._client)

    def load(self, paths: Sequence[Path | str] | None = None) -> list[Paper]:
        """Parse ``paths`` (default: the bundled corpus); fails before anything is written."""
        return self.load_corpus(paths).papers

    def load_corpus(self, paths: Sequence[Path | str] | None = None) -> Corpus:
        """``load``, with what was dropped or cut on the way."""
        return load_corpus(paths or [bundled_corpus_dir()])

    def ingest(
        self,
        paths: Sequence[Path | str] | None = None,
        rebuild: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> IngestStats:
        """Index the papers in ``paths`` (or the bundled corpus) idempotently."""
        started = time.perf_counter()
        files = input_files(paths or [bundled_corpus_dir()])
        inputs = files_fingerprint(files)
        existing = self.index.records.exists()
        with ExitStack() as held:
            if existing:  # one writer; a second is told who writes
                held.enter_context(writer_lock(self.settings.index_dir))
            # The same files, unchanged since they were last ingested into records unchanged
            # since: nothing to read (a no-op re-ingest of 100k papers costs ~0.1 s, not a scan).
            if existing and not rebuild and (same := self.index.unchanged(inputs)) is not None:
                return replace(same, seconds=round(time.perf_counter() - started, 3))
            # Read all first (one entry per paper kept): a bad file must not touch the index,
            # nor create one.
            scan = Scan.of_files(files)
            scanned = time.perf_counter() - started
            if not existing:
                held.enter_context(writer_lock(self.settings.index_dir))
            if rebuild:
                from rag.rebuild import rebuild as rebuild_index

                stats = rebuild_index(self, scan, progress)
            else:
                stats = self.index.ingest(scan, progress=progress)
            stats = replace(
                stats,
                seconds=round(stats.seconds + scanned, 3),
                phases={"scan": round(scanned, 3), **stats.phases},
                warnings=(*scan.duplicates, *scan.truncated),
                duplicates=len(scan.duplicates),
                truncated=len(scan.truncated),
            )
            self.index.remember(inputs, stats)
        return stats

    def has_index(self) -> bool:
        """Whether a collection exists (it may be empty)."""
        try:
            self.index.collection()
        except IndexMissingError:
            return False
        return True

    def validate(self, question: str, k: int | None) -> tuple[str, int]:
        """The cleaned question and k, or an ``InputError`` saying what is wrong."""
        if not isinstance(question, str) or not question.strip():
            raise InputError(
                "the question is empty: ask something, e.g. 'which papers target Hopper GPUs?'"
            )
        if _UNDECODABLE.search(question):
            raise InputError("the question is not valid text (it holds bytes that are not UTF-8)")
        question = " ".join(question.split())
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise InputError(
                f"the question is {len(question):,} characters long; the limit is {limit:,} "
                "(RAG_MAX_QUESTION_CHARS)"
            )
        k = self.settings.top_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise InputError(f"k must be a whole number between 1 and 100, not {k!r}")
        return question, k

    def stream(
        self,
        question: str,
        k: int | None = None,
        mode: Mode = "hybrid",
        history: Sequence[Turn] = (),
        model: str | None = None,
    ) -> Iterator[str | AskResult]:
        """Yield the answer's text pieces as they are written, then the checked ``AskResult``.

        With ``history`` (earlier turns of a conversation), the question is first rewritten into
        a standalone one by the chat model, so "what about the second one?" can be searched.
        """
        started = time.perf_counter()
        question, k = self.validate(question, k)
        self.index.embedder.preload()  # the question encoder loads in a thread, while ...
        self.index.refresh()  # another process may have published, or swapped in, a newer index
        self.index.lexicon()  # ... the index opens (chromadb's import alone takes ~0.8 s)
        chat_model = self.model(model)
        standalone = question
        if history:
            standalone, _ = self.validate(chat_model.rewrite(question, history), k)
        vector = self.index.embedder.embed_query(self.glossary.expand(standalone))
        analysis = self.analyse(standalone, vector)
        sources = self.sources(analysis, k, mode, vector)
        retrieved_at = time.perf_counter()
        if analysis.intent == "metadata" and not self._holds(analysis, sources):
            pieces: Iterator[str] = iter([decline_metadata(analysis, sources)])  # no model knows it
        else:
            pieces = chat_model.stream(analysis, sources)
        renumberer = citations.Renumberer(len(sources))
        written: list[str] = []
        notes: dict[str, Note] = {}
        for piece in pieces:
            if isinstance(piece, Note):
                notes[piece.kind] = piece
                if piece.kind == "shown":  # the rest did not fit the model's context window
                    sources = sources[: piece.count]
                    renumberer.n_sources = piece.count
                continue
            if text := renumberer.feed(piece):
                written.append(text)
                yield text
        if text := renumberer.flush():
            written.append(text)
            yield text
        generated_at = time.perf_counter()
        echo = notes.get("echo")
        if echo is None:
            checked = citations.finish(renumberer, "".join(written))
        else:  # what repeats the instructions is no answer: out, and the rest checked again
            checked = citations.check(without("".join(written), echo.detail), len(sources))
        cited = [
            Citation(n, sources[pos - 1].paper.id, sources[pos - 1].paper.title)
            for n, pos in enumerate(checked.cited, start=1)
        ]
        text = checked.text
        if history and standalone != question:  # "what about the second one?": say which it is
            text = name_subjects(text, cited)
        yield AskResult(
            question=question,
            answer=text,
            abstained=not cited and declines(checked.text),
            citations=cited,
            retrieved=list(sources),
            model=chat_model.name,
            intent=analysis.intent,
            timings_ms={
                "retrieve": (retrieved_at - started) * 1000,
                "generate": (generated_at - retrieved_at) * 1000,
                "total": (time.perf_counter() - started) * 1000,
            },
            invalid_citations=checked.invalid,
            uncited_sentences=checked.uncited_sentences,
            standalone=standalone,
            truncated="truncated" in notes,
            echoed_sentences=echo.count if echo else 0,
            prompt=_prompt_record(notes.get("shown")),
            lexical=self.index.lexical_note,
            widened=widened(analysis, k, len(sources), self.settings.list_k),
        )

    def analyse(self, question: str, vector: np.ndarray | None = None) -> Analysis:
        """What ``question`` asks (``rag.question.analyse``), against this index and policy;
        ``vector``: the embedding of the searched text (computed when not given)."""
        lexicon = self.index.lexicon()
        if vector is None:
            vector = self.index.embedder.embed_query(self.glossary.expand(question))
        # The intent model reads the question's embedding only if it was fitted on this model's.
        own = self.policy.fitted_for(self.embedder.fingerprint)
        return analyse(
            question,
            lexicon.idf,
            lexicon.max_idf,
            self.glossary,
            lexicon.names,
            self.policy,
            [float(v) for v in vector] if own else None,
            self._field_of,
        )

    @cached_property
    def _field_vectors(self) -> dict[str, list[float]]:
        """The embedding of each metadata field's question (``rag.question.FIELDS``)."""
        return {
            name: [float(v) for v in self.index.embedder.embed_query(spec[3])]
            for name, spec in FIELDS.items()
        }

    def _field_of(self, question: str) -> str:
        vector = [float(v) for v in self.index.embedder.embed_query(question)]
        return nearest_field(vector, self._field_vectors)

    def sources(
        self,
        analysis: Analysis,
        k: int,
        mode: Mode = "hybrid",
        vector: np.ndarray | None = None,
    ) -> list[Retrieved]:
        """The papers the answer writer is shown for ``analysis``: the most probable first, as
        many as its intent needs (``rag.question.shown``), every paper it names among them.

        Every question scores the same pool (``policy.pool``, fetched ``fetch_factor`` times over:
        fusion finds candidates, relevance and the fitted model order them), so a paper's
        probability does not depend on k.
        """
        policy = self.policy
        n_shown = shown(analysis, k, self.settings.list_k)
        wanted = max(n_shown, policy.pool)
        found = Retriever(self.index, mode).retrieve(
            analysis.search, policy.fetch_factor * wanted, vector, include=analysis.named_papers
        )
        scored = score(analysis, found, policy, self.index.lexicon().max_idf)
        named = set(analysis.named_papers)
        top = scored[:n_shown]
        return top + [s for s in scored[n_shown:] if s.paper.id in named]

    @staticmethod
    def _holds(analysis: Analysis, sources: Sequence[Retrieved]) -> bool:
        position = subject(analysis, sources)
        return position is not None and held(sources[position - 1].paper, analysis.asks_for or "")

    def ask(
        self,
        question: str,
        k: int | None = None,
        mode: Mode = "hybrid",
        history: Sequence[Turn] = (),
        model: str | None = None,
    ) -> AskResult:
        """Answer ``question`` from the top-``k`` papers (more for list questions)."""
        result = None
        for item in self.stream(question, k, mode, history, model):
            if isinstance(item, AskResult):
                result = item
        assert result is not None  # stream always ends with the result
        return result


def _prompt_record(note: Note | None) -> dict[str, Any] | None:
    """The JSON record of how an LLM's sources were fitted (None for the offline answerer)."""
    if note is None or note.detail is None:
        return None
    fitted = note.detail
    return {
        "tokens": fitted.tokens,
        "sources": fitted.whole + fitted.cut,
        "cut": fitted.cut,
        "dropped": fitted.dropped,
    }
