"""Citation-accuracy evaluation: gold questions in, per-question scores and averages out.

Every question goes through ``Rag.ask`` exactly as ``rag ask`` would run it; scoring reads only
the ``rag ask --json`` object, so any run's ``results.jsonl`` can be re-scored later. Gold answers
are exact corpus titles (not ids), so any index build can be scored. The metrics are defined in
eval/README.md; ``score`` below is that definition in code.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag.citations import MARKER, claims, expand, sentence_support
from rag.corpus import json_lines, normalise_title
from rag.errors import CorpusError, InputError, RagError

QuestionType = Literal["single", "list", "comparison", "unanswerable"]
TYPES: tuple[QuestionType, ...] = ("single", "list", "comparison", "unanswerable")
# What kind of question it is, for the per-category tables: answerable by one paper (paraphrased,
# or naming it), by several, comparing named papers; or not answerable (a record detail abstracts
# never hold, the field present but not the thing asked, outside the collection).
CATEGORIES = ("single", "named", "list", "comparison", "metadata", "near-miss", "off-collection")
_DEFAULT_CATEGORY = {"single": "single", "list": "list", "comparison": "comparison",
                     "unanswerable": "near-miss"}  # fmt: skip
RETRIEVAL_METRICS = ("recall@5", "recall@10", "recall@20", "mrr", "ndcg@10")
CITATION_METRICS = ("citation_precision", "citation_recall", "citation_f1", "citation_validity")
ABSTENTION_METRICS = ("abstention_accuracy", "false_abstention_rate")
METRICS = (*RETRIEVAL_METRICS, *CITATION_METRICS, *ABSTENTION_METRICS)  # every per-question score
PROXY_SUPPORT = 0.5  # share of a claim's terms one cited sentence must contain (proxy judge)


@dataclass(frozen=True, slots=True)
class GoldQuestion:
    """One line of a gold dataset."""

    id: str
    question: str
    type: QuestionType
    gold_titles: tuple[str, ...]
    partial_titles: tuple[str, ...] = ()
    dataset: str = ""  # the file it came from (its stem), e.g. "dev" or "heldout"
    category: str = ""  # one of CATEGORIES
    phrasing: str = ""  # the wording family ("which-papers", "find", "do-any", ...)
    group: str = ""  # paraphrases of one intent share it (cross-validation keeps them together)
    asks: str = ""  # for a metadata question, the record field it asks for (rag.question.FIELDS)


def load_dataset(path: Path) -> list[GoldQuestion]:
    """Read a JSONL gold set; extra keys are ignored, a missing type is inferred from the gold."""
    questions = [_question(record, Path(path), number) for number, record in json_lines(Path(path))]
    if not questions:
        raise CorpusError(str(path), None, "no questions found")
    return questions


def _question(record: dict[str, Any], path: Path, number: int) -> GoldQuestion:
    def titles(key: str) -> tuple[str, ...]:
        value = record.get(key) or []
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise CorpusError(str(path), number, f"'{key}' must be a list of titles")
        return tuple(value)

    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise CorpusError(str(path), number, "missing or empty 'question'")
    gold = titles("gold_titles")
    kind = record.get("type") or (
        "unanswerable" if not gold else "single" if len(gold) == 1 else "list"
    )
    if kind not in TYPES:
        raise CorpusError(str(path), number, f"'type' must be one of {', '.join(TYPES)}")
    if (kind == "unanswerable") != (not gold):
        raise CorpusError(
            str(path), number, f"a {kind} question needs {'no' if gold else 'some'} gold_titles"
        )
    category = record.get("category") or _DEFAULT_CATEGORY[kind]
    if category not in CATEGORIES:
        raise CorpusError(str(path), number, f"'category' must be one of {', '.join(CATEGORIES)}")
    qid = str(record.get("id") or f"{path.stem}:{number}")
    return GoldQuestion(
        qid,
        question,
        kind,
        gold,
        titles("partial_titles"),
        path.stem,
        category,
        str(record.get("phrasing") or ""),
        str(record.get("group") or qid),
        str(record.get("asks") or ""),
    )


# -- scoring one question -----------------------------------------------------------------------


def title_keys(titles: Iterable[str]) -> set[str]:
    """Titles as compared everywhere: normalised, so case, spacing and link rewrites don't count."""
    return {normalise_title(t) for t in titles}


def recall_at(ranked: Sequence[str], gold: set[str], k: int) -> float:
    """Share of the gold papers among the first ``k`` retrieved."""
    return len(gold & set(ranked[:k])) / len(gold) if gold else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: set[str]) -> float:
    """1 / rank of the first gold paper retrieved (0 when none is)."""
    return next((1.0 / rank for rank, key in enumerate(ranked, start=1) if key in gold), 0.0)


def ndcg_at(ranked: Sequence[str], gold: set[str], k: int) -> float:
    """Binary-gain nDCG: gold papers gain 1, discounted by log2(rank + 1)."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, key in enumerate(ranked[:k], 1) if key in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal if ideal else 0.0


def marker_count(answer: str) -> int:
    """Citation numbers in an answer's markers ("[1][2]" and "[1, 2]" are both 2)."""
    return sum(len(expand(m.group(1))) for m in MARKER.finditer(answer))


def score(gold: GoldQuestion, result: dict[str, Any]) -> dict[str, float | None]:
    """The metrics of one answered question (None where a metric does not apply)."""
    ranked = list(dict.fromkeys(normalise_title(r["title"]) for r in result["retrieved"]))
    cited = list(dict.fromkeys(normalise_title(c["title"]) for c in result["citations"]))
    gold_keys = title_keys(gold.gold_titles)
    acceptable = title_keys(gold.gold_titles + gold.partial_titles)
    valid, invalid = marker_count(result["answer"]), len(result.get("invalid_citations", []))
    abstained = bool(result["abstained"])
    out: dict[str, float | None] = dict.fromkeys(RETRIEVAL_METRICS + CITATION_METRICS)
    out["citation_validity"] = valid / (valid + invalid) if valid + invalid else None
    if gold.type == "unanswerable":
        out["abstention_accuracy"] = float(abstained and not cited)
        out["false_abstention_rate"] = None
        return out
    for k in (5, 10, 20):
        out[f"recall@{k}"] = recall_at(ranked, gold_keys, k)
    out["mrr"] = reciprocal_rank(ranked, gold_keys)
    out["ndcg@10"] = ndcg_at(ranked, gold_keys, 10)
    precision = len([c for c in cited if c in acceptable]) / len(cited) if cited else 0.0
    recall = len(gold_keys & set(cited)) / len(gold_keys)
    out["citation_precision"], out["citation_recall"] = precision, recall
    out["citation_f1"] = (
        2 * precision * recall / (precision + recall) if precision + recall else 0.0
    )
    out["abstention_accuracy"] = None
    out["false_abstention_rate"] = float(abstained)
    return out


# -- support (ALCE-style): is each cited claim backed by the abstracts it cites? ---------------

Judge = Callable[[str, str], bool]  # (claim, cited source text) -> supported?


def proxy_judge(claim: str, evidence: str) -> bool:
    """Lexical proxy: one sentence of the evidence holds at least half of the claim's terms."""
    return any(share >= PROXY_SUPPORT for _, _, share in sentence_support(claim, evidence))


def support(result: dict[str, Any], texts: dict[str, str], judge: Judge) -> float | None:
    """Share of the cited claims whose cited sources (together) support them; None if none cite.

    ``texts`` maps paper id to "title. abstract"; numbers are those of ``result["citations"]``.
    """
    by_number = {c["n"]: texts.get(c["paper_id"], "") for c in result["citations"]}
    verdicts = [
        judge(claim.text, "\n\n".join(by_number[n] for n in claim.cited if n in by_number))
        for claim in claims(result["answer"])
        if claim.cited
    ]
    return sum(verdicts) / len(verdicts) if verdicts else None


# -- averaging ----------------------------------------------------------------------------------


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that apply (None when none does)."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def aggregate(rows: Sequence[tuple[GoldQuestion, dict[str, float | None]]]) -> dict[str, Any]:
    """Macro averages: per type, and overall (answerable questions, plus the abstention figures).

    ``overall.abstention_accuracy`` is over the questions the collection cannot answer at all
    (near-misses and off-collection ones); ``overall.metadata_declined`` is the same figure for
    record details abstracts never carry (who wrote a paper, where it appeared).
    """

    def average(subset: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
        values = {name: mean(s.get(name) for s in subset) for name in METRICS}
        return {**values, "support": mean(s.get("support") for s in subset), "n": len(subset)}

    errors = sum(1 for _, s in rows if s.get("error"))
    rows = [(q, s) for q, s in rows if not s.get("error")]  # failed questions are not scored
    by_type = {t: average([s for q, s in rows if q.type == t]) for t in TYPES}
    answerable = average([s for q, s in rows if q.type != "unanswerable"])
    overall = {**answerable, "n": len(rows)}
    overall["abstention_accuracy"] = mean(
        s["abstention_accuracy"]
        for q, s in rows
        if q.type == "unanswerable" and q.category != "metadata"
    )
    overall["metadata_declined"] = mean(
        s["abstention_accuracy"] for q, s in rows if q.category == "metadata"
    )
    overall["citation_validity"] = mean(s.get("citation_validity") for _, s in rows)
    overall["errors"] = errors
    overall["n"] = len(rows) + errors
    return {"overall": overall, "by_type": by_type}


def by_category(
    rows: Sequence[tuple[GoldQuestion, dict[str, float | None]]],
) -> dict[str, dict[str, Any]]:
    """Per category (``CATEGORIES``), and per phrasing family of the list questions
    (``"list:<family>"``): every metric's mean, the count, and a 95% interval of the headline
    figure (citation F1, or abstention for unanswerable categories) by a bootstrap over
    paraphrase groups."""
    from rag.eval_stats import bootstrap_interval

    out: dict[str, dict[str, Any]] = {}
    keys = [(c, lambda q, c=c: q.category == c) for c in CATEGORIES]
    families = sorted({q.phrasing for q, _ in rows if q.type == "list" and q.phrasing})
    keys += [(f"list:{f}", lambda q, f=f: q.type == "list" and q.phrasing == f) for f in families]
    for name, member in keys:
        subset = [(q, s) for q, s in rows if member(q) and not s.get("error")]
        if not subset:
            continue
        headline = "abstention_accuracy" if subset[0][0].type == "unanswerable" else "citation_f1"
        values = {m: mean(s.get(m) for _, s in subset) for m in METRICS}
        low, high = bootstrap_interval([(q.group, s[headline]) for q, s in subset])
        out[name] = {**values, "n": len(subset), "headline": headline, "interval": [low, high]}
    return out


@dataclass
class EvalRun:
    """Everything ``rag eval`` writes: per-question results and scores, and their averages."""

    questions: list[GoldQuestion]
    results: list[dict[str, Any]]
    scores: list[dict[str, float | None]]
    config: dict[str, Any]
    support_method: str
    seconds: float = 0.0
    missing_titles: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The metrics.json object (support kept apart from the headline figures)."""
        rows = list(zip(self.questions, self.scores, strict=True))
        summary = aggregate(rows)
        datasets = sorted({q.dataset for q in self.questions})
        by_dataset = {d: aggregate([r for r in rows if r[0].dataset == d]) for d in datasets}
        from rag.eval_stats import calibration

        return {
            **summary,
            "by_category": by_category(rows),
            "by_dataset": by_dataset,
            "calibration": calibration(self.questions, self.results),
            "support": {
                "method": self.support_method,
                "overall": summary["overall"].pop("support"),
                "by_type": {t: summary["by_type"][t].pop("support") for t in TYPES},
            },
            "config": {**self.config, "questions": len(rows), "seconds": round(self.seconds, 1)},
        }


def evaluate(
    rag: Any,
    questions: Sequence[GoldQuestion],
    k: int | None = None,
    mode: str = "hybrid",
    model: str | None = None,
    judge: Judge | None = None,
    support_method: str = "lexical proxy",
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> EvalRun:
    """Ask every question through ``rag`` (a ``Rag``) and score the answers.

    ``jobs`` questions are asked at once (an LLM endpoint may serve several). A question that
    fails (an LLM error, say) becomes an error row, ``{"id", "question", "error"}``, counted and
    left out of every average, and the run goes on; ``sink`` receives each row as it is done, so
    a run that is stopped keeps what it had.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    started = time.perf_counter()

    def answer(gold: GoldQuestion) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            result = rag.ask(gold.question, k=k, mode=mode, model=model)
        except RagError as exc:
            failed = {"id": gold.id, "question": gold.question, "error": str(exc)}
            return failed, {**dict.fromkeys(METRICS), "support": None, "error": True}
        payload = {"id": gold.id, **result.to_dict()}
        texts = {r.paper.id: f"{r.paper.title}. {r.paper.abstract}" for r in result.retrieved}
        row: dict[str, Any] = score(gold, payload)
        try:
            row["support"] = support(payload, texts, judge or proxy_judge)
        except RagError:  # a judge that fails leaves support unjudged, not the answer unscored
            row["support"] = None
        return payload, row

    done = 0
    answered: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(answer, gold): i for i, gold in enumerate(questions)}
        for future in as_completed(futures):
            answered[futures[future]] = future.result()
            done += 1
            if sink is not None:
                sink(answered[futures[future]][0])
            if progress is not None:
                progress(done, len(questions))
    results = [answered[i][0] for i in range(len(questions))]
    scores = [answered[i][1] for i in range(len(questions))]
    chat_model = rag.model(model)
    config = {
        "retriever": mode,
        "k": k or rag.settings.top_k,
        "list_k": rag.settings.list_k,
        "model": chat_model.name,
        "embed_model": rag.settings.embed_model,
        "datasets": sorted({q.dataset for q in questions}),
        "policy": rag.policy.describe(),
    }
    return EvalRun(
        list(questions), results, scores, config, support_method, time.perf_counter() - started
    )


def run_eval(
    rag: Any,
    paths: Sequence[Path],
    k: int | None = None,
    mode: str = "hybrid",
    model: str | None = None,
    judge: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    jobs: int = 1,
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> EvalRun:
    """Load the datasets, check their titles against the index, evaluate, with the chosen judge."""
    questions = [q for path in paths for q in load_dataset(Path(path))]
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"question id {duplicate!r} appears more than once in the datasets")
    rag.validate(questions[0].question, k)  # a bad k fails now, not at the first question
    use_llm = judge == "llm" or (judge == "auto" and rag.settings.llm_configured)
    if use_llm:
        from rag.llm import OpenAIChatModel

        llm = OpenAIChatModel(rag.settings)
        judge_fn, method = llm.judge_support, f"judged by {llm.name}"
    else:
        judge_fn, method = proxy_judge, "lexical proxy"
    known = title_keys(rag.index.titles())
    wanted = dict.fromkeys(t for q in questions for t in q.gold_titles)
    run = evaluate(rag, questions, k, mode, model, judge_fn, method, progress, jobs, sink)
    run.missing_titles = [t for t in wanted if normalise_title(t) not in known]
    return run


def check_gate(metrics: dict[str, Any], path: Path) -> list[str]:
    """Metrics past their thresholds: ``{"min": {"by_type.single.citation_f1": 0.9}, "max": {...}}``."""
    try:
        gate = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the gate {path}: {exc}") from None
    failures = []
    for bound, limits in gate.items():
        for dotted, limit in limits.items():
            value: Any = metrics
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if not isinstance(value, int | float):
                raise InputError(f"gate {path}: no metric {dotted!r}")
            if (bound == "min" and value < limit) or (bound == "max" and value > limit):
                failures.append(f"{dotted} = {value:.3f}, {bound} allowed {limit}")
    return failures
