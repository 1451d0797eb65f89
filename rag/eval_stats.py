"""Statistics for ``rag eval``: intervals for small categories, and calibration of the fitted
citation probabilities (are papers given P = 0.8 gold four times in five?)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rag.corpus import normalise_title

if TYPE_CHECKING:
    from rag.evaluation import GoldQuestion

BOOTSTRAP_SAMPLES = 2000
CALIBRATION_BINS = 10


def bootstrap_interval(values: Sequence[tuple[str, float | None]]) -> tuple[float, float]:
    """A 95% interval of the mean of ``(group, value)`` pairs, resampling whole groups.

    Paraphrases of one question are not independent evidence, so groups, not questions, are
    drawn; the seed is fixed so a report is reproducible.
    """
    groups: dict[str, list[float]] = {}
    for group, value in values:
        if value is not None:
            groups.setdefault(group, []).append(value)
    if not groups:
        return (0.0, 0.0)
    pools = list(groups.values())
    rng = random.Random(0)
    means = []
    for _ in range(BOOTSTRAP_SAMPLES):
        drawn = [v for _ in pools for v in rng.choice(pools)]
        means.append(sum(drawn) / len(drawn))
    means.sort()
    return (
        round(means[int(0.025 * len(means))], 4),
        round(means[int(0.975 * len(means)) - 1], 4),
    )


def calibration(
    questions: Sequence[GoldQuestion], results: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Reliability of the retrieved papers' ``probability``: per bin of predicted probability,
    the mean prediction and the share that are gold; with the expected calibration error and
    the Brier score. Partial papers are left out (neither right nor wrong); every paper shown for
    an unanswerable question is a negative."""
    pairs = []
    for gold, result in zip(questions, results, strict=True):
        keys = {normalise_title(t) for t in gold.gold_titles}
        partial = {normalise_title(t) for t in gold.partial_titles}
        for item in result.get("retrieved", []):  # an error row retrieved nothing
            p = item.get("probability")
            key = normalise_title(item["title"])
            if p is None or (key in partial and gold.type != "unanswerable"):
                continue
            pairs.append((float(p), 1.0 if key in keys else 0.0))
    bins = []
    for b in range(CALIBRATION_BINS):
        lo, hi = b / CALIBRATION_BINS, (b + 1) / CALIBRATION_BINS
        inside = [(p, y) for p, y in pairs if lo <= p < hi or (hi == 1.0 and p == 1.0)]
        if inside:
            bins.append(
                {
                    "from": round(lo, 2),
                    "to": round(hi, 2),
                    "n": len(inside),
                    "predicted": round(sum(p for p, _ in inside) / len(inside), 4),
                    "observed": round(sum(y for _, y in inside) / len(inside), 4),
                }
            )
    n = len(pairs)
    ece = sum(b["n"] * abs(b["predicted"] - b["observed"]) for b in bins) / n if n else None
    brier = sum((p - y) ** 2 for p, y in pairs) / n if n else None
    return {
        "papers": n,
        "bins": bins,
        "ece": None if ece is None else round(ece, 4),
        "brier": None if brier is None else round(brier, 4),
    }
