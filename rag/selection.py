"""Which retrieved papers answer the question: a fitted probability per paper, and the choice.

Every candidate paper is described by the signals retrieval and relevance already computed
(``FEATURES``): how close its best chunk is in meaning, how much of the question's topic it
covers (overall, in the title, in one sentence), what it lacks (the rarest topic term it never
mentions), whether it names the question's versions and quantities, whether the question names
it, and where it stands in the pool of candidates (its rank, its gap to the best, how far it rises
above the pool's median). A logistic regression fitted by ``rag fit`` on gold questions turns them
into P(this paper answers the question). Several features are also crossed with P(list): what
makes a paper one of many answers (standing out from its field) is not what makes it the one answer.

``choose`` declines when no paper is probable enough (the fitted ``decline_single`` or
``decline_list``, by the question's intent), and otherwise cites the most probable papers, as many
as maximise the expected citation F1 under those probabilities, in expectation over whether the
question has one answer or several (``expected_f1_cut``). A comparison cites the papers it
names.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

from rag.policy import Policy
from rag.question import Analysis
from rag.relevance import Judged, judge
from rag.retrieval import Retrieved

# The per-paper signals, then the question-level ones; CROSSED are also multiplied by P(list).
PAPER_FEATURES = (
    "dense", "coverage", "title_coverage", "best_sentence", "lexical", "relevance", "gap",
    "standout", "z", "log_rank", "missing_max", "missing_known", "missing_share", "specifics",
    "named",
)  # fmt: skip
QUESTION_FEATURES = (
    "pool_best", "pool_median", "dense_best", "top_gap", "log_terms", "any_named", "p_list",
    "unknown_share", "unknown_terms", "unknown_names",
)  # fmt: skip
CROSSED = PAPER_FEATURES
FEATURES = (*PAPER_FEATURES, *QUESTION_FEATURES, *(f"{f}*p_list" for f in CROSSED))


def features(question: Analysis, pool: Sequence[Judged], rarest: float) -> list[dict[str, float]]:
    """The features of every paper of ``pool`` (judged, best relevance first).

    ``rarest`` is the IDF of a term found once in the collection: missing terms are measured
    against it, so the feature means the same in a small and a large collection.
    """
    if not pool:
        return []
    relevances = [j.relevance for j in pool]
    best, median = relevances[0], statistics.median(relevances)
    mean, spread = statistics.fmean(relevances), statistics.pstdev(relevances) or 1.0
    top_lexical = max(j.source.lexical for j in pool) or 1.0
    total = sum(question.weights.values()) or 1.0
    named = set(question.named_papers)
    unknown = set(question.unknown)
    p_list = question.probability("list")
    shared = {
        "pool_best": best,
        "pool_median": median,
        "dense_best": max(j.source.dense for j in pool),
        "top_gap": best - relevances[1] if len(pool) > 1 else best,
        "log_terms": math.log1p(len(question.weights)),
        "any_named": float(bool(named)),
        "p_list": p_list,
        # What the whole collection never mentions cannot be answered from it: the share of the
        # question's topic weight in such terms, and whether one is written as a name ("Loihi").
        "unknown_share": sum(question.weights[t] for t in question.unknown) / total,
        "unknown_terms": math.log1p(len(question.unknown)),
        "unknown_names": float(bool(question.unknown_names)),
    }
    rows = []
    for rank, j in enumerate(pool):
        found = j.evidence
        row = {
            "dense": j.source.dense,
            "coverage": found.coverage,
            "title_coverage": found.title_coverage,
            "best_sentence": max((w for _, w in found.sentences), default=0.0) / total,
            "lexical": j.source.lexical / top_lexical,
            "relevance": j.relevance,
            "gap": best - j.relevance,
            "standout": (j.relevance - median) / (best - median) if best > median else 1.0,
            "z": (j.relevance - mean) / spread,
            "log_rank": math.log1p(rank),
            "missing_max": max(found.missing.values(), default=0.0) / rarest,
            # The rarest term the collection knows but this paper lacks: the part of the question
            # that other papers, not this one, are about.
            "missing_known": max(
                (w for t, w in found.missing.items() if t not in unknown), default=0.0
            )
            / rarest,
            "missing_share": sum(found.missing.values()) / total,
            "specifics": float(found.specifics_named),
            "named": float(j.source.paper.id in named),
            **shared,
        }
        row.update({f"{f}*p_list": row[f] * p_list for f in CROSSED})
        rows.append(row)
    return rows


def pool(question: Analysis, candidates: Sequence[Retrieved], policy: Policy) -> list[Judged]:
    """The ``policy.pool`` most relevant candidates, judged, then any named one left out."""
    judged = judge(question, candidates, policy)
    named = set(question.named_papers)
    return judged[: policy.pool] + [j for j in judged[policy.pool :] if j.source.paper.id in named]


def score(
    question: Analysis, candidates: Sequence[Retrieved], policy: Policy, rarest: float
) -> list[Retrieved]:
    """The pool (``pool``), each paper with its relevance as ``score`` and its fitted
    ``probability``, most probable first."""
    judged = pool(question, candidates, policy)
    rows = features(question, judged, rarest)
    model = policy.selection
    scored = [
        replace(
            j.source,
            score=j.relevance,
            probability=model.probability(row) if model else None,
        )
        for j, row in zip(judged, rows, strict=True)
    ]
    if model is None:
        return scored  # relevance order: nothing fitted yet (``rag fit`` is collecting features)
    return sorted(scored, key=lambda s: -(s.probability or 0.0))


def expected_f1_cut(probabilities: Sequence[float], several: float = 1.0) -> int:
    """How many of the most probable papers to cite: the k that maximises the expected citation
    F1, over whether the question has several answers (probability ``several``) or one.

    With several, each paper answers independently with its probability, and the expected F1 of
    the top k is 2 * (their sum) / (k + sum of all): expected hits over the mean of cited and
    expected gold counts, so a broad question cites many, a narrow one few. With one, the
    probabilities are shares of the one right paper, and citing k of which it is one scores
    2 / (k + 1): a second paper must be at least half as probable as the first, a third a third
    as probable as the first two together, and so on.
    """
    ranked = sorted(probabilities, reverse=True)
    total = sum(probabilities) or 1.0
    best, best_k, running = -1.0, 1, 0.0
    for k, p in enumerate(ranked, start=1):
        running += p
        value = several * 2 * running / (k + total) + (1 - several) * (running / total) * 2 / (
            k + 1
        )
        if value > best + 1e-12:
            best, best_k = value, k
    return best_k


def choose(question: Analysis, sources: Sequence[Retrieved], policy: Policy) -> list[int]:
    """Positions (1-based, in ``sources``) of the papers to cite, in citing order; [] declines.

    A comparison cites the papers it names (the most probable paper of each name). Otherwise
    nothing is cited unless the most probable paper reaches ``policy.decline_single`` (or
    ``decline_list`` for a list question); then the most probable papers are cited, as many as
    ``expected_f1_cut`` says, weighing one answer against several by the intent model's P(list).
    """
    probabilities = [s.probability or 0.0 for s in sources]
    groups = [[i for i, s in enumerate(sources) if s.paper.id in g] for g in question.named]
    several = question.probability("list")
    picked = decide_citations(question.intent, probabilities, groups, policy, several)
    return [i + 1 for i in picked]


def decide_citations(
    intent: str,
    probabilities: Sequence[float],
    named: Sequence[Sequence[int]],
    policy: Policy,
    several: float | None = None,
) -> list[int]:
    """``choose`` on plain lists (0-based indices), shared with ``rag fit``'s cross-validation.

    ``named`` holds, per name the question mentions, the indices of the papers it denotes.
    """
    if intent == "comparison":
        chosen: list[int] = []
        for group in named:
            hits = [i for i in group if i not in chosen]
            if hits:
                chosen.append(max(hits, key=lambda i: probabilities[i]))
        if len(chosen) >= 2:
            return chosen
    floor = policy.decline_list if intent == "list" else policy.decline_single
    if not probabilities or max(probabilities) < floor:
        return []
    ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    if several is None:  # no intent model: the decided intent is certain
        several = 1.0 if intent == "list" else 0.0
    return ranked[: expected_f1_cut(probabilities, several)]
