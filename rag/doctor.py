"""``rag doctor``: which components are usable, each checked for real and reported in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.errors import RagError
from rag.settings import Settings


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one component check."""

    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    """Check the embedder, the policy, the store, the index and the LLM endpoint, in that order."""
    from rag.embedding import load_embedder
    from rag.index import Index, make_client

    checks: list[Check] = []
    try:
        embedder = load_embedder(settings)
        detail = (
            f"{embedder.name} ({embedder.dim} dims, weights sha256 {embedder.fingerprint[:12]})"
        )
        runtime = getattr(embedder, "runtime", None)
        if runtime is not None:
            detail += (
                f"; documents: {runtime.engine} {runtime.dtype} on {runtime.device} ({runtime.reason}); "
                f"questions: {embedder.question_path()}"
            )
        checks.append(Check("embedder", True, detail))
    except RagError as exc:
        return [Check("embedder", False, str(exc))]
    checks.append(_policy_check(settings, embedder.fingerprint))
    if not settings.chroma_url and not (settings.index_dir / "chroma.sqlite3").exists():
        # Opening a PersistentClient would create an empty index here: report, don't create.
        checks.append(
            Check("store", True, f"local Chroma at {settings.index_dir} (not created yet)")
        )
        checks.append(Check("index", False, "no index yet: run `rag ingest` first"))
        checks.append(_llm_check(settings))
        return checks
    try:
        client = make_client(settings)
        client.heartbeat()
        where = f"Chroma server {settings.chroma_url}" if settings.chroma_url else "local Chroma"
        checks.append(
            Check("store", True, f"{where} at {settings.chroma_url or settings.index_dir}")
        )
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        checks.append(Check("store", False, str(exc).splitlines()[0] if str(exc) else repr(exc)))
        return checks
    try:
        stats = Index(settings, embedder, client=client).stats()
        checks.append(
            Check(
                "index",
                stats["chunks"] > 0,
                f"collection {stats['collection']!r}: {stats['papers']} papers, "
                f"{stats['chunks']} chunks, model {stats['embed_model']}, embedded by "
                f"{stats['embed_runtime'] or 'an earlier version'}",
            )
        )
        checks.append(_lexical_check(stats))
    except RagError as exc:
        checks.append(Check("index", False, str(exc)))
    checks.append(_llm_check(settings, embedder, client))
    return checks


def _lexical_check(stats: dict[str, Any]) -> Check:
    """The keyword (BM25) index: what it covers, and whether it lags behind the collection
    (fine while an ingest runs; to repair with `rag ingest` after one was interrupted)."""
    covered = f"covers {stats['lexical_chunks']} of {stats['chunks']} chunks"
    covered += f" of {stats['papers']} papers"
    note = stats["lexical_note"]
    if note is None:
        return Check("lexical", True, f"BM25 (SQLite FTS5) {covered}, as the last ingest left it")
    return Check("lexical", stats["lexical_current"] or stats["writing"], f"BM25 {covered}: {note}")


def _policy_check(settings: Settings, fingerprint: str) -> Check:
    """The answering policy: readable, fitted, and fitted with the configured embedding model."""
    from rag.policy import Policy

    try:
        policy = Policy.load(settings.policy)
    except RagError as exc:
        return Check("policy", False, str(exc))
    where = settings.policy or "shipped"
    if not policy.fitted:
        return Check("policy", False, f"{where}: not fitted; run `rag fit` on a gold set")
    cv = dict(policy.provenance).get("cross_validated", {})
    detail = (
        f"{where}: fitted on {dict(policy.provenance).get('questions', '?')} questions, declines "
        f"below P {policy.decline_single:.2f} / {policy.decline_list:.2f} (out of fold: list F1 "
        f"{cv.get('list', 0):.2f}, "
        f"abstention {cv.get('abstain', 0):.2f})"
    )
    if not policy.fitted_for(fingerprint):
        return Check(
            "policy",
            False,
            f"{detail}; fitted with another embedding model: answers will be poor until you run "
            "`rag fit` with this one",
        )
    return Check("policy", True, detail)


LIST_QUESTION = "Which papers target Hopper GPUs?"  # what doctor fits into the window


def _llm_check(settings: Settings, embedder: Any = None, client: Any = None) -> Check:
    """Ask the endpoint for its models and context window, once and quickly (doctor must not
    hang on a dead server), and show what a list question would send it."""
    if not settings.llm_configured:
        return Check("llm", True, "none configured: the offline extractive answerer is used")
    from rag.llm import OpenAIChatModel

    quick = settings.model_copy(
        update={"llm_retries": 0, "llm_timeout": min(settings.llm_timeout, 10)}
    )
    llm = OpenAIChatModel(quick)
    try:
        models = llm.models()
        name = llm.name
        window = llm.window
    except RagError as exc:
        return Check("llm", False, str(exc))
    listed = "listed" if name in models else f"not among the {len(models)} listed"
    said = "" if window.source != "assumed" else ": not reported by the server, set RAG_LLM_CONTEXT"
    detail = (
        f"{llm.endpoint}: model {name!r} ({listed}); context window {window.tokens} tokens "
        f"({window.source}{said})"
    )
    if embedder is not None and client is not None:
        detail += _list_fit(settings, embedder, client, llm)
    return Check("llm", name in models or not models, detail)


def _list_fit(settings: Settings, embedder: Any, client: Any, llm: Any) -> str:
    """What a list question would send the model: how many sources fit, at how many tokens."""
    from rag.pipeline import Rag

    try:
        rag = Rag(settings, embedder=embedder, client=client)
        analysis = rag.analyse(LIST_QUESTION)
        sources = rag.sources(analysis, settings.top_k)
        _, fitted, answer = llm.messages(analysis, sources)
    except RagError as exc:
        return f"; a list question cannot be sent: {exc}"
    cut = f", {fitted.cut} cut to their best sentences" if fitted.cut else ""
    return (
        f"; a list question sends {len(fitted.sources)} of {len(sources)} sources{cut}, "
        f"~{fitted.tokens} prompt tokens, and allows {answer} for the answer"
    )
