"""What ``rag eval`` writes (results.jsonl, metrics.json, report.md, PNG plots) and ``rag compare``.

The report is for a newcomer: the metrics table first, what each number means one line below it,
then the questions that went worst, each with what was cited against the gold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.corpus import normalise_title
from rag.errors import InputError
from rag.evaluation import METRICS, TYPES, EvalRun, GoldQuestion, title_keys

COMPARED = ("recall@20", "mrr", "citation_precision", "citation_recall", "citation_f1",
            "abstention_accuracy", "false_abstention_rate")  # fmt: skip
MEANING = {
    "recall@5": "share of the gold papers among the first 5 retrieved",
    "recall@10": "... among the first 10",
    "recall@20": "... among the first 20 (list questions retrieve 30, others k)",
    "mrr": "1 / rank of the first gold paper retrieved",
    "ndcg@10": "rank-discounted gain of the gold papers in the first 10",
    "citation_precision": "cited papers that are gold or partial / all cited (0 if none cited)",
    "citation_recall": "gold papers cited / all gold papers",
    "citation_f1": "harmonic mean of the two: the headline citation accuracy",
    "citation_validity": "citation markers that name a source that was given / all markers",
    "abstention_accuracy": "unanswerable questions answered 'not found' citing nothing",
    "false_abstention_rate": "answerable questions answered 'not found'",
}
CATEGORY_MEANING = {
    "single": "one paper answers, the question paraphrases it",
    "named": "one paper answers, the question names it",
    "list": "several papers answer (all phrasings)",
    "comparison": "compares papers it names",
    "metadata": "a record detail abstracts never carry: must decline",
    "near-miss": "the field is in the collection, the thing asked is not: must decline",
    "off-collection": "outside the collection: must decline",
}


def fmt(value: float | None) -> str:
    """A metric for a table: 3 decimals, or a dash where it does not apply."""
    return "–" if value is None else f"{value:.3f}"


def write_run(run: EvalRun, out: Path, worst: int = 15) -> dict[str, Any]:
    """Write every output of one run into ``out``; returns the metrics object."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as f:
        for result in run.results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
    metrics = run.metrics()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plots = plot_run(metrics, out)
    (out / "report.md").write_text(report(run, metrics, plots, worst), encoding="utf-8")
    return metrics


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    """The metrics as a Markdown table: one row per metric, one column per question type."""
    types = [t for t in TYPES if metrics["by_type"][t]["n"]]
    head = ["metric", "overall", *types, "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in METRICS:
        cells = [fmt(metrics["overall"].get(name))]
        cells += [fmt(metrics["by_type"][t].get(name)) for t in types]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {MEANING[name]} |")
    counts = [str(metrics["overall"]["n"])] + [str(metrics["by_type"][t]["n"]) for t in types]
    lines.append("| questions | " + " | ".join(counts) + " | |")
    return lines


def _policy_line(policy: dict[str, Any]) -> str:
    if not policy:
        return "not recorded"
    fitted = ", ".join(d.get("file", "?") for d in policy.get("fitted_on", [])) or "nothing"
    return (
        f"declines below P {policy.get('decline_single')} (single) / {policy.get('decline_list')} "
        f"(list), models {policy.get('models_sha256')} fitted on {fitted}"
    )


def category_table(metrics: dict[str, Any]) -> list[str]:
    """One row per question category and per list phrasing family."""
    rows = metrics.get("by_category", {})
    if not rows:
        return []
    head = ["category", "n", "recall@20", "precision", "recall", "citation F1", "declined",
            "95% interval", "what"]  # fmt: skip
    lines = [
        "## By category",
        "",
        "The interval is of the headline figure (citation F1; for categories that must decline, "
        "the share declined), by a bootstrap over paraphrase groups.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, m in rows.items():
        low, high = m["interval"]
        what = CATEGORY_MEANING.get(name, "list questions worded this way")
        cells = [
            name, str(m["n"]), fmt(m.get("recall@20")), fmt(m.get("citation_precision")),
            fmt(m.get("citation_recall")), fmt(m.get("citation_f1")),
            fmt(m.get("abstention_accuracy")), f"{low:.2f}-{high:.2f}", what,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def calibration_section(metrics: dict[str, Any]) -> list[str]:
    """How well the fitted probabilities match how often papers turn out gold."""
    cal = metrics.get("calibration") or {}
    if not cal.get("bins"):
        return []
    lines = [
        "## Calibration of the citation probabilities",
        "",
        f"Every paper shown with a fitted probability ({cal['papers']} papers): expected "
        f"calibration error {fmt(cal['ece'])}, Brier score {fmt(cal['brier'])}. A calibrated "
        "model's papers at P = 0.8 are gold 80% of the time (the diagonal of calibration.png).",
        "",
        "| predicted | papers | mean predicted | share gold |",
        "|---|---|---|---|",
    ]
    for b in cal["bins"]:
        lines.append(
            f"| {b['from']:.1f}-{b['to']:.1f} | {b['n']} | {b['predicted']:.3f} | "
            f"{b['observed']:.3f} |"
        )
    return [*lines, ""]


def report(run: EvalRun, metrics: dict[str, Any], plots: Sequence[str], worst: int) -> str:
    """The report.md text."""
    config = metrics["config"]
    lines = [
        "# Evaluation report",
        "",
        f"{config['questions']} questions from {', '.join(config['datasets'])}; retriever "
        f"`{config['retriever']}`, k={config['k']} (list questions: {config['list_k']}), answers by "
        f"`{config['model']}`, embeddings `{config['embed_model']}`; {config['seconds']} s.",
        "",
        "Each metric is computed per question, then averaged over the questions it applies to "
        "(macro average). *overall* averages the answerable (single, list, comparison) "
        "questions; its abstention accuracy is that of the questions the collection cannot "
        "answer (near-misses and off-collection ones), and metadata questions are counted apart. "
        "Definitions: eval/README.md.",
        "",
        *metrics_table(metrics),
        "",
        f"Record details declined (metadata questions): "
        f"{fmt(metrics['overall'].get('metadata_declined'))}. Policy: "
        f"{_policy_line(config.get('policy', {}))}.",
        "",
        *category_table(metrics),
        "",
        *calibration_section(metrics),
    ]
    if len(metrics["by_dataset"]) > 1:
        lines += ["## By dataset", "", "| dataset | questions | " + " | ".join(COMPARED) + " |"]
        lines.append("|---|---|" + "---|" * len(COMPARED))
        for name, part in metrics["by_dataset"].items():
            cells = [fmt(part["overall"].get(m)) for m in COMPARED]
            lines.append(f"| {name} | {part['overall']['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    support = metrics["support"]
    lines += [
        f"## Support ({support['method']})",
        "",
        "Share of the answer's cited claims that the cited abstracts support, averaged over "
        "questions with cited claims. Reported apart from citation accuracy"
        + (
            ": the offline figure is a lexical proxy (one cited sentence holds at least half of "
            "the claim's words), not a judgement of meaning."
            if "proxy" in support["method"]
            else "."
        ),
        "",
        "| overall | " + " | ".join(TYPES) + " |",
        "|---|" + "---|" * len(TYPES),
        f"| {fmt(support['overall'])} | "
        + " | ".join(fmt(support["by_type"][t]) for t in TYPES)
        + " |",
        "",
    ]
    failed = [r for r in run.results if "error" in r]
    if failed:
        lines += [
            f"## Questions that failed ({len(failed)})",
            "",
            "Not scored, and left out of every figure above:",
            "",
            *[f"- {r['id']}: {r['error']}" for r in failed],
            "",
        ]
    if run.missing_titles:
        lines += [
            "## Gold titles not in the index",
            "",
            "These papers cannot be retrieved or cited by this index, so they count as misses:",
            "",
            *[f"- {t}" for t in run.missing_titles],
            "",
        ]
    lines += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += worst_questions(run, worst)
    return "\n".join(lines)


def _badness(gold: GoldQuestion, row: dict[str, float | None]) -> float:
    if gold.type == "unanswerable":
        return 1.0 - (row["abstention_accuracy"] or 0.0)
    return 1.0 - (row["citation_f1"] or 0.0)


def worst_questions(run: EvalRun, limit: int) -> list[str]:
    """The questions that went worst, each with its citations marked against the gold."""
    rows = list(zip(run.questions, run.scores, run.results, strict=True))
    rows = [r for r in rows if "error" not in r[2] and _badness(r[0], r[1]) > 0]
    rows.sort(key=lambda r: (-_badness(r[0], r[1]), r[0].id))
    lines = [
        f"## Worst questions ({min(limit, len(rows))} of {len(rows)} not perfect)",
        "",
        "✓ gold, ~ partial (fine to cite), ✗ not relevant; *missed* are gold papers not cited, "
        "with their rank in the retrieved list.",
        "",
    ]
    for gold, row, result in rows[:limit]:
        gold_keys, partial = title_keys(gold.gold_titles), title_keys(gold.partial_titles)
        figure = (
            f"abstained: {result['abstained']}"
            if gold.type == "unanswerable"
            else f"citation F1 {fmt(row['citation_f1'])}, recall@20 {fmt(row['recall@20'])}"
        )
        lines += [f"### {gold.id} ({gold.type}): {gold.question}", "", f"{figure}", ""]
        for c in result["citations"]:
            key = normalise_title(c["title"])
            mark = "✓" if key in gold_keys else "~" if key in partial else "✗"
            lines.append(f"- {mark} [{c['n']}] {c['title']}")
        if not result["citations"]:
            lines.append("- (nothing cited)")
        ranks = {normalise_title(r["title"]): i for i, r in enumerate(result["retrieved"], 1)}
        cited = title_keys(c["title"] for c in result["citations"])
        for title in gold.gold_titles:
            if normalise_title(title) not in cited:
                rank = ranks.get(normalise_title(title))
                where = f"retrieved at rank {rank}" if rank else "not retrieved"
                lines.append(f"- *missed*: {title} ({where})")
        lines.append("")
    return lines


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax: Any, names: Sequence[str], series: Sequence[tuple[str, list[float]]]) -> None:
    """One group of bars per metric name, one bar per labelled series, on a 0-1 scale."""
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series):
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))], names)
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylim(0, 1.05)
    ax.legend()


def plot_run(metrics: dict[str, Any], out: Path) -> list[str]:
    """Bar charts of the headline metrics and of recall@k, by question type; the file names."""
    plt = _pyplot()
    types = [t for t in ("single", "list", "comparison") if metrics["by_type"][t]["n"]]
    names = ["citation_precision", "citation_recall", "citation_f1", "mrr", "ndcg@10"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    _grouped_bars(
        left, names, [(t, [metrics["by_type"][t][n] or 0.0 for n in names]) for t in types]
    )
    left.set_title("Citations and ranking")
    for t in types:
        recall = [metrics["by_type"][t][f"recall@{k}"] or 0.0 for k in (5, 10, 20)]
        right.plot([5, 10, 20], recall, marker="o", label=t)
    abstain = metrics["overall"]["abstention_accuracy"]
    right.set_title(f"Retrieval recall@k (abstention accuracy {fmt(abstain)})")
    right.set_xticks([5, 10, 20])
    right.set_ylim(0, 1.05)
    right.set_xlabel("k")
    right.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    names = ["metrics.png"]
    bins = (metrics.get("calibration") or {}).get("bins") or []
    if bins:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
        ax.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            marker="o",
            label="fitted",
        )
        for b in bins:
            ax.annotate(str(b["n"]), (b["predicted"], b["observed"]), fontsize=7)
        ax.set_xlabel("predicted P(gold)")
        ax.set_ylabel("share gold")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"Reliability (ECE {fmt(metrics['calibration']['ece'])})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=110)
        plt.close(fig)
        names.append("calibration.png")
    return names


def compare(run_dirs: Sequence[Path], out: Path | None = None) -> str:
    """A side-by-side Markdown table of several runs (and compare.png in ``out``)."""
    runs = []
    for directory in run_dirs:
        try:
            runs.append((directory, json.loads((directory / "metrics.json").read_text())))
        except (OSError, ValueError) as exc:
            raise InputError(f"{directory}: no readable metrics.json ({exc})") from None
    head = ["run", "retriever", "k", "model", *COMPARED]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for directory, m in runs:
        c = m["config"]
        cells = [directory.name, c["retriever"], str(c["k"]), c["model"]]
        lines.append("| " + " | ".join(cells + [fmt(m["overall"].get(n)) for n in COMPARED]) + " |")
    table = "\n".join(lines) + "\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(11, 4))
        series = [(d.name, [m["overall"].get(n) or 0.0 for n in COMPARED]) for d, m in runs]
        _grouped_bars(ax, COMPARED, series)
        fig.tight_layout()
        fig.savefig(out / "compare.png", dpi=110)
        plt.close(fig)
    return table
