"""``rag fit``: train the answering policy's models on gold questions, with grouped cross-validation.

What is fitted runs exactly as ``rag ask`` runs it: every question goes through ``Rag.analyse``
and the same retrieval, pool and features (``rag.selection``), with the models left out.

1. **Intent** (``Policy.intent``): a multinomial logistic regression from a question's wording
   (``rag.question.wording``: words and word pairs, names and numbers masked) to single, list,
   comparison or metadata. A wording feature counts only when questions of at least
   ``MIN_GROUPS`` different paraphrase groups use it, so a word of one topic cannot become a rule.
2. **Citation** (``Policy.selection``): a logistic regression from a candidate paper's features to
   "it is a gold paper of the question" (partial papers are left out: neither right nor wrong).
   Its P(list) feature is the *out-of-fold* intent probability, as noisy as it will be on new
   questions.
3. **Declining**: on out-of-fold citation probabilities, the thresholds below which the answer
   declines (``Policy.decline_single`` and ``decline_list``, by the question's intent) that
   maximise the mean of single-answer citation F1, list citation F1 and abstention accuracy, with
   false abstentions held at most ``max_false_abstention``; the objective is averaged over
   neighbouring thresholds first, so the choice sits on a plateau, not a spike. How many papers are cited needs no threshold: the
   expected-F1 cut (``rag.selection.expected_f1_cut``).

Regularisation strengths are chosen by the same grouped folds (paraphrases of one question are
always in the same fold). The result records its data, folds and out-of-fold figures.

scikit-learn is needed here only (``pip install 'rag-papers[fit]'``); the fitted models run with
plain Python at ask time.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rag.corpus import normalise_title
from rag.errors import InputError
from rag.evaluation import GoldQuestion, load_dataset
from rag.policy import LinearModel, Policy, TextModel
from rag.question import INTENTS, Analysis, decide, shown
from rag.relevance import Judged
from rag.selection import FEATURES, decide_citations, features, pool

MIN_GROUPS = 3  # a wording feature must occur in this many paraphrase groups to be learned
FOLDS = 5
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# The question embedding's weight beside the wording features (0: wording alone), chosen in CV.
VECTOR_WEIGHTS = (0.0, 1.0, 3.0)
THRESHOLDS = tuple(round(0.02 + 0.01 * i, 2) for i in range(95))  # 0.02 .. 0.96
SMOOTH = 3  # thresholds on each side averaged into the objective (a plateau, not a spike)


@dataclass
class Example:
    """One gold question, analysed and retrieved, with its candidates' labels."""

    gold: GoldQuestion
    analysis: Analysis
    vector: list[float]  # the embedding of the searched text
    pool: list[Judged]
    labels: list[int | None]  # per pool paper: 1 gold, 0 not, None partial of an answerable one

    @property
    def intent(self) -> str | None:
        """The intent the gold implies (None: an unanswerable question's wording is not labelled)."""
        if self.gold.category == "metadata" or self.gold.asks:
            return "metadata"  # a record detail, held or not (a code link may be in the abstract)
        return None if self.gold.type == "unanswerable" else self.gold.type


def collect(
    rag: Any, questions: Sequence[GoldQuestion], progress: Callable[[int, int], None] | None = None
) -> list[Example]:
    """Analyse and retrieve every question with an unfitted copy of ``rag``'s policy."""
    from rag.pipeline import Rag
    from rag.retrieval import Retriever

    base = Policy.from_json({**rag.policy.to_json(), "intent": None, "selection": None})
    blank = Rag(rag.settings, embedder=rag.embedder, client=rag.index.client, policy=base)
    out = []
    for done, gold in enumerate(questions, start=1):
        vector = blank.embedder.embed_query(blank.glossary.expand(gold.question))
        analysis = blank.analyse(gold.question, vector)
        wanted = max(shown(analysis, rag.settings.top_k, rag.settings.list_k), base.pool)
        found = Retriever(blank.index).retrieve(
            analysis.search, base.fetch_factor * wanted, vector, include=analysis.named_papers
        )
        judged = pool(analysis, found, base)
        gold_keys = {normalise_title(t) for t in gold.gold_titles}
        # Partial papers of an answerable question may be cited; those of an unanswerable one are
        # the closest misses, the very papers it must not cite: negatives, not left out.
        partial = (
            set()
            if gold.type == "unanswerable"
            else {normalise_title(t) for t in gold.partial_titles}
        )
        labels: list[int | None] = []
        for j in judged:
            key = normalise_title(j.source.paper.title)
            labels.append(1 if key in gold_keys else None if key in partial else 0)
        out.append(Example(gold, analysis, [float(v) for v in vector], judged, labels))
        if progress is not None:
            progress(done, len(questions))
    return out


# -- the models -----------------------------------------------------------------------------------


def _folds(examples: Sequence[Example], folds: int) -> list[int]:
    """Each example's fold, by paraphrase group: groups dealt round-robin in order of first
    appearance (deterministic, and every fold gets a mix of files and types)."""
    order = list(dict.fromkeys(e.gold.group for e in examples))
    fold_of = {g: i % folds for i, g in enumerate(order)}
    return [fold_of[e.gold.group] for e in examples]


def _vocabulary(
    texts: Sequence[Sequence[str]], groups: Sequence[str], min_groups: int
) -> dict[str, int]:
    seen: dict[str, set[str]] = {}
    for text, group in zip(texts, groups, strict=True):
        for f in set(text):
            seen.setdefault(f, set()).add(group)
    kept = sorted(f for f, g in seen.items() if len(g) >= min_groups)
    return {f: i for i, f in enumerate(kept)}


def _matrix(texts: Sequence[Sequence[str]], vocabulary: dict[str, int]) -> Any:
    import numpy as np

    x = np.zeros((len(texts), len(vocabulary)))
    for row, text in enumerate(texts):
        for f in text:
            if f in vocabulary:
                x[row, vocabulary[f]] = 1.0
    return x


@dataclass(frozen=True)
class Texts:
    """Questions as a text model learns from them: wording features, label, group, embedding."""

    wording: list[Sequence[str]]
    labels: list[str]
    groups: list[str]
    vectors: list[Sequence[float]]

    def subset(self, indices: Sequence[int]) -> Texts:
        """The questions at ``indices``."""
        return Texts(
            [self.wording[i] for i in indices],
            [self.labels[i] for i in indices],
            [self.groups[i] for i in indices],
            [self.vectors[i] for i in indices],
        )


def _fit_text(
    data: Texts, c: float, vector_weight: float = 0.0, min_groups: int = MIN_GROUPS
) -> TextModel:
    """A multinomial logistic regression over the wording features and, scaled by
    ``vector_weight`` (0: not used), the embeddings."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    vocabulary = _vocabulary(data.wording, data.groups, min_groups)
    x = _matrix(data.wording, vocabulary)
    if vector_weight:
        x = np.hstack([x, vector_weight * np.asarray(data.vectors, dtype=float)])
    model = LogisticRegression(C=c, max_iter=5000).fit(x, list(data.labels))
    classes = [str(k) for k in model.classes_]
    coef, intercept = model.coef_, model.intercept_
    if len(classes) == 2:  # sklearn keeps one row for two classes: expand to one per class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    words = len(vocabulary)
    return TextModel(
        tuple(classes),
        vocabulary,
        tuple(tuple(float(v) for v in row[:words]) for row in coef),
        tuple(float(v) for v in intercept),
        tuple(tuple(float(v) * vector_weight for v in row[words:]) for row in coef)
        if vector_weight
        else (),
    )


def _log_loss(probabilities: Sequence[float], labels: Sequence[int]) -> float:
    eps = 1e-9
    return -sum(
        math.log(max(p, eps)) if y else math.log(max(1 - p, eps))
        for p, y in zip(probabilities, labels, strict=True)
    ) / max(len(labels), 1)


def _cv_text(
    data: Texts, fold: Sequence[int], folds: int
) -> tuple[tuple[float, float], list[dict[str, float]]]:
    """The (C, embedding weight) with the best out-of-fold log loss, and the out-of-fold
    probabilities with them."""
    best: tuple[float, tuple[float, float], list[dict[str, float]]] | None = None
    for c in C_GRID:
        for weight in VECTOR_WEIGHTS:
            oof: list[dict[str, float]] = [{} for _ in data.labels]
            for f in range(folds):
                model = _fit_text(
                    data.subset([i for i in range(len(fold)) if fold[i] != f]), c, weight
                )
                for i in range(len(fold)):
                    if fold[i] == f:
                        oof[i] = model.probabilities(data.wording[i], data.vectors[i])
            loss = -sum(
                math.log(max(p.get(label, 0.0), 1e-9))
                for p, label in zip(oof, data.labels, strict=True)
            ) / len(oof)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, (c, weight), oof)
    assert best is not None
    return best[1], best[2]


def _fit_linear(rows: Sequence[dict[str, float]], labels: Sequence[int], c: float) -> LinearModel:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[r[f] for f in FEATURES] for r in rows])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, list(labels))
    return LinearModel(
        FEATURES,
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in model.coef_[0]),
        float(model.intercept_[0]),
    )


# -- thresholds -----------------------------------------------------------------------------------


def _cited(
    example: Example, probabilities: Sequence[float], policy: Policy, k: int, list_k: int
) -> list[int]:
    """What ``rag ask`` would cite for ``example`` (pool indices): the sources it would show, most
    probable first, then ``choose``'s decision over them."""
    question = example.analysis
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    n = shown(question, k, list_k)
    named = set(question.named_papers)
    ids = [j.source.paper.id for j in example.pool]
    visible = order[:n] + [i for i in order[n:] if ids[i] in named]
    groups = [[pos for pos, i in enumerate(visible) if ids[i] in g] for g in question.named]
    picked = decide_citations(
        question.intent,
        [probabilities[i] for i in visible],
        groups,
        policy,
        question.probability("list"),
    )
    return [visible[pos] for pos in picked]


def _outcome(example: Example, cited: Sequence[int]) -> float:
    """Citation F1 (answerable) or 1/0 declined (unanswerable) of one question's citations."""
    if example.gold.type == "unanswerable":
        return float(not cited)
    if not cited:
        return 0.0
    right = sum(1 for i in cited if example.labels[i] != 0)  # gold or partial: not an error
    found = sum(1 for i in cited if example.labels[i] == 1)
    precision, recall = right / len(cited), found / len(example.gold.gold_titles)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _bucket(example: Example) -> str:
    gold = example.gold
    return "abstain" if gold.type == "unanswerable" else "list" if gold.type == "list" else "single"


def _choose_decline(
    examples: Sequence[Example],
    oof: Sequence[Sequence[float]],
    policy: Policy,
    max_false: float,
    k: int,
    list_k: int,
) -> tuple[float, float, dict[str, float]]:
    """The (single, list) decline thresholds of the best smoothed objective within the
    false-abstention cap, and the out-of-fold figures at them.

    A question is declined or answered by the threshold of its intent only, so each question's
    outcome is computed once per threshold, and every pair of thresholds combines them.
    """
    import numpy as np

    n = len(THRESHOLDS)
    buckets = ("single", "list", "abstain")
    sums = {(b, m): np.zeros(n) for b in buckets for m in ("single", "list")}
    false = {m: np.zeros(n) for m in ("single", "list")}
    counts = Counter(_bucket(e) for e in examples)
    answerable = sum(1 for e in examples if e.gold.type != "unanswerable")
    for example, probabilities in zip(examples, oof, strict=True):
        mode = "list" if example.analysis.intent == "list" else "single"
        for i, t in enumerate(THRESHOLDS):
            trial = replace(policy, decline_single=t, decline_list=t)
            cited = _cited(example, probabilities, trial, k, list_k)
            sums[(_bucket(example), mode)][i] += _outcome(example, cited)
            if example.gold.type != "unanswerable":
                false[mode][i] += float(not cited)
    present = [b for b in buckets if counts[b]]
    objective = sum(
        (sums[(b, "single")][:, None] + sums[(b, "list")][None, :]) / counts[b] for b in present
    ) / len(present)
    false_rate = (false["single"][:, None] + false["list"][None, :]) / max(answerable, 1)
    padded = np.pad(objective, SMOOTH, mode="edge")
    width = 2 * SMOOTH + 1
    smooth = sum(padded[a : a + n, b : b + n] for a in range(width) for b in range(width))
    smooth = smooth / width**2
    smooth[false_rate > max_false] = -1.0
    i, j = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    figures = {
        b: float((sums[(b, "single")][i] + sums[(b, "list")][j]) / counts[b]) for b in present
    }
    figures["false_abstention"] = float(false_rate[i, j])
    return THRESHOLDS[i], THRESHOLDS[j], figures


# -- the whole fit --------------------------------------------------------------------------------


@dataclass
class CrossValidation:
    """Out-of-fold results: what each question would get from models that never saw it."""

    examples: list[Example]  # each analysed with its out-of-fold intent, decided as at ask time
    probabilities: dict[int, list[float]]  # example index -> out-of-fold P(gold) per pool paper
    usable: list[int]  # the examples the citation model learns from (not metadata)
    labelled: list[int]  # the examples whose intent the gold implies
    intent_c: float
    vector_weight: float
    selection_c: float
    intent_accuracy: float
    log_loss: float
    rarest: float

    def rows(self, i: int) -> list[dict[str, float]]:
        """The citation features of example ``i``'s pool."""
        return features(self.examples[i].analysis, self.examples[i].pool, self.rarest)

    def labelled_rows(self, indices: Sequence[int]) -> tuple[list[dict[str, float]], list[int]]:
        """Feature rows and labels of the pools of ``indices``, partial papers left out."""
        rows, labels = [], []
        for i in indices:
            for row, y in zip(self.rows(i), self.examples[i].labels, strict=True):
                if y is not None:
                    rows.append(row)
                    labels.append(y)
        return rows, labels


def _texts(examples: Sequence[Example]) -> Texts:
    return Texts(
        [e.analysis.wording for e in examples],
        [e.intent or "" for e in examples],
        [e.gold.group for e in examples],
        [e.vector for e in examples],
    )


def cross_validate(examples: Sequence[Example], folds: int = FOLDS) -> CrossValidation:
    """Fit the intent and citation models fold by fold (folds by paraphrase group)."""
    fold = _folds(examples, folds)
    texts = _texts(examples)
    labelled = [i for i, e in enumerate(examples) if e.intent is not None]
    # 1. Intent, out of fold for every question (an unlabelled one by the model of its fold).
    (intent_c, weight), oof_labelled = _cv_text(
        texts.subset(labelled), [fold[i] for i in labelled], folds
    )
    oof_intents: list[dict[str, float]] = [{} for _ in examples]
    for i, probabilities in zip(labelled, oof_labelled, strict=True):
        oof_intents[i] = probabilities
    for f in range(folds):
        model = _fit_text(texts.subset([i for i in labelled if fold[i] != f]), intent_c, weight)
        for i, e in enumerate(examples):
            if e.intent is None and fold[i] == f:
                oof_intents[i] = model.probabilities(texts.wording[i], texts.vectors[i])
    analysed = []
    for e, intents in zip(examples, oof_intents, strict=True):
        intent = decide(intents, len(e.analysis.named))
        analysis = replace(e.analysis, intents=intents, intent=intent)
        analysed.append(replace(e, analysis=analysis))
    right = sum(
        1
        for i in labelled
        if max(oof_intents[i], key=oof_intents[i].__getitem__) == examples[i].intent
    )
    usable = [i for i, e in enumerate(analysed) if e.intent != "metadata"]
    cv = CrossValidation(
        analysed, {}, usable, labelled, intent_c, weight, C_GRID[0],
        right / max(len(labelled), 1), math.inf, _rarest(analysed),
    )  # fmt: skip
    # 2. The citation model over every candidate of the usable questions.
    rows = {i: cv.rows(i) for i in usable}
    for c in C_GRID:
        trial: dict[int, list[float]] = {}
        for f in range(folds):
            model = _fit_linear(*cv.labelled_rows([i for i in usable if fold[i] != f]), c)
            for i in usable:
                if fold[i] == f:
                    trial[i] = [model.probability(r) for r in rows[i]]
        pairs = [
            (p, y)
            for i in usable
            for p, y in zip(trial[i], analysed[i].labels, strict=True)
            if y is not None
        ]
        loss = _log_loss([p for p, _ in pairs], [y for _, y in pairs])
        if loss < cv.log_loss - 1e-9:
            cv.selection_c, cv.log_loss, cv.probabilities = c, loss, trial
    return cv


def fit(
    examples: Sequence[Example],
    base: Policy,
    folds: int = FOLDS,
    max_false_abstention: float = 0.03,
    datasets: Sequence[Path] = (),
    k: int = 8,
    list_k: int = 30,
    embed_fingerprint: str = "",
    embedded_by: str = "",
) -> Policy:
    """The policy ``base`` with its models and thresholds fitted on ``examples``."""
    cv = cross_validate(examples, folds)
    usable = cv.usable
    # 3. The decline threshold, on the out-of-fold probabilities.
    decline_single, decline_list, figures = _choose_decline(
        [cv.examples[i] for i in usable],
        [cv.probabilities[i] for i in usable],
        base,
        max_false_abstention,
        k,
        list_k,
    )
    # The final models, on everything.
    labelled = cv.labelled
    intent_model = _fit_text(_texts(examples).subset(labelled), cv.intent_c, cv.vector_weight)
    all_rows, all_labels = cv.labelled_rows(usable)
    selection = _fit_linear(all_rows, all_labels, cv.selection_c)
    oof = [
        p
        for i in usable
        for p, y in zip(cv.probabilities[i], cv.examples[i].labels, strict=True)
        if y is not None
    ]
    provenance = {
        "command": "rag fit " + " ".join(str(p) for p in datasets),
        "datasets": [{"file": Path(p).name, "sha256": _sha256(Path(p))} for p in datasets],
        "questions": len(examples),
        "groups": len({e.gold.group for e in examples}),
        "candidate_rows": len(all_labels),
        "folds": folds,
        "min_groups": MIN_GROUPS,
        "intent_C": cv.intent_c,
        "intent_vector_weight": cv.vector_weight,
        "selection_C": cv.selection_c,
        # Runtimes within tolerance on eval/ still move a fitted threshold by a grid step or two:
        # what embedded the index says which one refitting must use to reproduce this policy.
        "embed_runtime": embedded_by or None,
        "cross_validated": {
            "intent_accuracy": round(cv.intent_accuracy, 4),
            "selection_log_loss": round(cv.log_loss, 4),
            **{k: round(v, 4) for k, v in figures.items()},
        },
        "calibration": _calibration(oof, all_labels),
    }
    return base.with_fitted(
        intent=intent_model,
        selection=selection,
        decline_single=decline_single,
        decline_list=decline_list,
        embed_fingerprint=embed_fingerprint,
        provenance=provenance,
    )


def _rarest(examples: Sequence[Example]) -> float:
    # The IDF of a term found once, as the index reports it: every analysis used the same lexicon,
    # so the largest weight any question term got is that value (unknown terms get it too).
    return max((w for e in examples for w in e.analysis.weights.values()), default=1.0)


def _calibration(
    probabilities: Sequence[float], labels: Sequence[int], bins: int = 10
) -> list[dict[str, float]]:
    """Out-of-fold reliability: per probability bin, the mean prediction and the share gold."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [
            (p, y)
            for p, y in zip(probabilities, labels, strict=True)
            if lo <= p < hi or (b == bins - 1 and p == 1.0)
        ]
        if inside:
            out.append(
                {
                    "bin": round(lo, 2),
                    "n": len(inside),
                    "predicted": round(sum(p for p, _ in inside) / len(inside), 4),
                    "observed": round(sum(y for _, y in inside) / len(inside), 4),
                }
            )
    return out


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def run_fit(
    rag: Any,
    paths: Sequence[Path],
    folds: int = FOLDS,
    progress: Callable[[int, int], None] | None = None,
) -> Policy:
    """Load the gold sets, collect their examples through ``rag`` and fit (``rag fit``)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError("rag fit needs scikit-learn: pip install 'rag-papers[fit]'") from None
    questions = [q for path in paths for q in load_dataset(Path(path))]
    examples = collect(rag, questions, progress)
    if not any(e.intent == "list" for e in examples) or not any(
        e.intent == "single" for e in examples
    ):
        raise InputError("rag fit needs both single-answer and list questions in its gold sets")
    return fit(
        examples,
        rag.policy,
        folds,
        datasets=paths,
        k=rag.settings.top_k,
        list_k=rag.settings.list_k,
        embed_fingerprint=rag.embedder.fingerprint,
        embedded_by=str(rag.index.stats().get("embed_runtime") or ""),
    )


__all__ = ["INTENTS", "Example", "collect", "fit", "run_fit"]
