"""`rag eval`: every metric pinned on hand-computed cases, the dataset format, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rag.errors import CorpusError, InputError
from rag.evaluation import (
    CATEGORIES,
    GoldQuestion,
    aggregate,
    check_gate,
    load_dataset,
    marker_count,
    ndcg_at,
    proxy_judge,
    recall_at,
    reciprocal_rank,
    score,
    support,
)
from rag.policy import Policy
from tests.conftest import REPO, cli_env, run_cli


def result(retrieved: list[str], cited: list[str], answer: str = "", **extra: object) -> dict:
    """A `rag ask --json` object with the given titles (ids are the titles)."""
    return {
        "answer": answer or " ".join(f"Claim [{n}]." for n in range(1, len(cited) + 1)),
        "abstained": not cited and "not found" in answer,
        "citations": [{"n": n, "paper_id": t, "title": t} for n, t in enumerate(cited, 1)],
        "retrieved": [{"paper_id": t, "title": t, "score": 1.0} for t in retrieved],
        "invalid_citations": [],
        **extra,
    }


# --- retrieval metrics ------------------------------------------------------------------------


def test_recall_at_k() -> None:
    ranked = ["a", "x", "b", "y", "z", "c"]
    assert recall_at(ranked, {"a", "b", "c"}, 5) == pytest.approx(2 / 3)
    assert recall_at(ranked, {"a", "b", "c"}, 6) == 1.0
    assert recall_at(ranked, {"q"}, 5) == 0.0


def test_reciprocal_rank() -> None:
    assert reciprocal_rank(["x", "y", "a"], {"a", "b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["a"], {"a"}) == 1.0
    assert reciprocal_rank(["x"], {"a"}) == 0.0


def test_ndcg_binary_gain() -> None:
    # Gold at ranks 1 and 3 of two gold: (1 + 1/log2(4)) / (1 + 1/log2(3)).
    expected = (1 + 1 / 2) / (1 + 1 / math.log2(3))
    assert ndcg_at(["a", "x", "b"], {"a", "b"}, 10) == pytest.approx(expected)
    assert ndcg_at(["a", "b"], {"a", "b"}, 10) == 1.0
    assert ndcg_at(["x"] * 10 + ["a"], {"a"}, 10) == 0.0  # beyond the cut-off


# --- citation metrics --------------------------------------------------------------------------


def test_single_question_scores() -> None:
    gold = GoldQuestion("s1", "q", "single", ("Gold Paper",), ("Near Paper",))
    # Cites the gold, the partial (not an error) and a wrong one: precision 2/3, recall 1.
    row = score(
        gold, result(["Wrong", "Gold Paper", "Near Paper"], ["Gold Paper", "Near Paper", "Wrong"])
    )
    assert row["citation_precision"] == pytest.approx(2 / 3)
    assert row["citation_recall"] == 1.0
    assert row["citation_f1"] == pytest.approx(0.8)
    assert row["mrr"] == 0.5 and row["recall@5"] == 1.0
    assert row["false_abstention_rate"] == 0.0 and row["abstention_accuracy"] is None


def test_list_question_scores_with_partial_titles_and_title_normalisation() -> None:
    gold = GoldQuestion(
        "l1", "q", "list", ("A paper", "B paper", "C paper", "D paper"), ("P paper",)
    )
    cited = ["a PAPER", "B paper.", "P paper"]  # case and punctuation do not matter
    row = score(gold, result(["a paper", "X", "B paper", "P paper"], cited))
    assert row["citation_precision"] == 1.0  # the partial is acceptable
    assert row["citation_recall"] == 0.5  # but does not count as recall
    assert row["citation_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert row["recall@5"] == 0.5


def test_nothing_cited_is_precision_zero_and_a_false_abstention() -> None:
    gold = GoldQuestion("s1", "q", "single", ("Gold",))
    row = score(gold, result(["Gold"], [], answer="The answer was not found in this collection."))
    assert row["citation_precision"] == 0.0 and row["citation_f1"] == 0.0
    assert row["false_abstention_rate"] == 1.0
    assert row["citation_validity"] is None  # no markers at all: does not apply


def test_unanswerable_scores() -> None:
    gold = GoldQuestion("u1", "q", "unanswerable", ())
    abstained = score(
        gold, result(["X"], [], answer="The answer was not found in this collection.")
    )
    assert abstained["abstention_accuracy"] == 1.0
    assert abstained["citation_f1"] is None and abstained["recall@5"] is None
    answered = score(gold, result(["X"], ["X"]))
    assert answered["abstention_accuracy"] == 0.0


def test_citation_validity_counts_markers() -> None:
    gold = GoldQuestion("s1", "q", "single", ("A",))
    row = score(
        gold, result(["A", "B"], ["A", "B"], answer="One [1][2]. Two [1].", invalid_citations=[9])
    )
    assert marker_count("One [1][2]. Two [1, 3-4].") == 5
    assert row["citation_validity"] == pytest.approx(3 / 4)


def test_macro_averages_and_overall() -> None:
    single = GoldQuestion("s", "q", "single", ("A",))
    listq = GoldQuestion("l", "q", "list", ("A", "B"))
    unans = GoldQuestion("u", "q", "unanswerable", (), category="near-miss")
    meta = GoldQuestion("m", "q", "unanswerable", (), category="metadata")
    compare = GoldQuestion("c", "q", "comparison", ("A", "B"), category="comparison")
    declined = result([], [], answer="The answer was not found in this collection.")
    rows = [
        (single, score(single, result(["A"], ["A"]))),  # F1 1
        (listq, score(listq, result(["A", "B"], ["A"]))),  # P 1, R .5, F1 2/3
        (unans, score(unans, result(["A"], ["A"]))),  # not abstained
        (unans, score(unans, declined)),
        (meta, score(meta, declined)),
        (compare, score(compare, result(["A", "B"], ["A", "C"]))),  # P .5, R .5
    ]
    summary = aggregate(rows)
    assert summary["by_type"]["list"]["citation_f1"] == pytest.approx(2 / 3)
    assert summary["by_type"]["comparison"]["citation_f1"] == pytest.approx(0.5)
    # answerable only: single, list, comparison
    assert summary["overall"]["citation_f1"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # Questions the collection cannot answer, and record details, counted apart.
    assert summary["overall"]["abstention_accuracy"] == 0.5
    assert summary["overall"]["metadata_declined"] == 1.0
    assert summary["overall"]["false_abstention_rate"] == 0.0
    assert summary["overall"]["n"] == 6 and summary["by_type"]["unanswerable"]["n"] == 3


def test_per_category_figures_have_group_bootstrap_intervals() -> None:
    from rag.evaluation import by_category

    rows = []
    for i, value in enumerate([1.0, 1.0, 0.0, 0.0]):
        gold = GoldQuestion(f"s{i}", "q", "single", ("A",), category="single", group=f"g{i // 2}")
        rows.append((gold, score(gold, result(["A"], ["A"] if value else ["B"]))))
    listq = GoldQuestion("l", "q", "list", ("A", "B"), category="list", phrasing="find")
    rows.append((listq, score(listq, result(["A", "B"], ["A", "B"]))))
    cats = by_category(rows)
    assert cats["single"]["n"] == 4 and cats["single"]["citation_f1"] == 0.5
    # Two groups, one right and one wrong: resampling groups gives 0, 0.5 or 1.
    assert cats["single"]["interval"] == [0.0, 1.0]
    assert cats["list:find"]["citation_f1"] == 1.0 and cats["list"]["n"] == 1


def test_calibration_bins_predictions_against_the_gold() -> None:
    from rag.eval_stats import calibration

    gold = GoldQuestion("l", "q", "list", ("A", "B"), ("P",))
    res = result(["A", "B", "P", "C"], ["A"])
    for r, p in zip(res["retrieved"], (0.95, 0.15, 0.9, 0.05), strict=True):
        r["probability"] = p
    cal = calibration([gold], [res])
    assert cal["papers"] == 3  # the partial paper is neither right nor wrong
    assert [(b["from"], b["n"], b["observed"]) for b in cal["bins"]] == [
        (0.0, 1, 0.0),
        (0.1, 1, 1.0),
        (0.9, 1, 1.0),
    ]
    assert cal["brier"] == pytest.approx((0.05**2 + 0.85**2 + 0.05**2) / 3, abs=1e-4)


# --- support ------------------------------------------------------------------------------------


def test_support_proxy_and_per_claim_share() -> None:
    texts = {
        "a": "Alpha. We fuse attention kernels on GPUs to cut memory traffic.",
        "b": "Beta. Bread.",
    }
    answer = "They fuse attention kernels to cut memory traffic [1]. Bread is baked from a sourdough starter [2]. No cite."
    r = result([], ["a", "b"], answer=answer)
    assert proxy_judge("fuse attention kernels cut memory traffic", texts["a"])
    assert not proxy_judge("fuse attention kernels cut memory traffic", texts["b"])
    assert support(r, texts, proxy_judge) == 0.5  # claim 1 supported, claim 2 not, 3 not cited
    assert support(result([], [], answer="Nothing cited."), texts, proxy_judge) is None


# --- datasets -----------------------------------------------------------------------------------


def test_dataset_extra_keys_and_missing_type(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    lines = [
        {"question": "one?", "gold_titles": ["A"], "note": "ignored"},
        {"id": "x", "question": "many?", "gold_titles": ["A", "B"], "partial_titles": ["C"]},
        {"id": "y", "question": "none?", "gold_titles": []},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    questions = load_dataset(path)
    assert [q.type for q in questions] == ["single", "list", "unanswerable"]
    assert questions[0].id == "gold:1" and questions[1].partial_titles == ("C",)
    assert {q.dataset for q in questions} == {"gold"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ('{"gold_titles": []}', "missing or empty 'question'"),
        ('{"question": "q", "gold_titles": "A"}', "'gold_titles' must be a list"),
        ('{"question": "q", "type": "single", "gold_titles": []}', "needs some gold_titles"),
        ('{"question": "q", "type": "maybe", "gold_titles": ["A"]}', "'type' must be one of"),
    ],
)
def test_dataset_errors_name_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "fine?", "gold_titles": ["A"]}\n' + line + "\n")
    with pytest.raises(CorpusError, match=rf"bad\.jsonl:2: .*{reason}"):
        load_dataset(path)


def test_the_bundled_gold_sets_are_well_formed(corpus) -> None:
    titles = {p.title for p in corpus}
    names = ("dev.jsonl", "heldout.jsonl", "train.jsonl", "blind/blind.jsonl")
    questions = [q for name in names for q in load_dataset(REPO / "eval" / name)]
    blind = [q for q in questions if q.dataset == "blind"]
    kinds = [q.type for q in questions]
    categories = {q.category for q in questions}
    assert len(questions) >= 400 and len(blind) >= 0.3 * len(questions)
    assert kinds.count("single") >= 100 and kinds.count("list") >= 100
    assert kinds.count("comparison") >= 30 and kinds.count("unanswerable") >= 100
    assert categories == set(CATEGORIES)
    # At least five wording families of list questions, in the tuning and the blind part.
    for part in ([q for q in questions if q.dataset != "blind"], blind):
        assert len({q.phrasing for q in part if q.type == "list"}) >= 5
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        assert set(q.gold_titles) | set(q.partial_titles) <= titles, q.id
    assert "Which papers target Hopper GPUs?" in {q.question for q in questions}


def test_gate(tmp_path: Path) -> None:
    metrics = {"overall": {"citation_f1": 0.8, "false_abstention_rate": 0.1}}
    gate = tmp_path / "gate.json"
    gate.write_text(
        json.dumps(
            {"min": {"overall.citation_f1": 0.75}, "max": {"overall.false_abstention_rate": 0.05}}
        )
    )
    assert check_gate(metrics, gate) == ["overall.false_abstention_rate = 0.100, max allowed 0.05"]
    gate.write_text(json.dumps({"min": {"overall.nope": 0.5}}))
    with pytest.raises(InputError, match=r"no metric 'overall\.nope'"):
        check_gate(metrics, gate)


# --- the command ------------------------------------------------------------------------------


def test_rag_eval_writes_everything_and_compare_reads_it(built_index: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "mini.jsonl"
    questions = [
        json.loads(line) for line in (REPO / "eval" / "dev.jsonl").read_text().splitlines()
    ]
    picked = [
        next(q for q in questions if q["type"] == t) for t in ("single", "list", "unanswerable")
    ]
    dataset.write_text("".join(json.dumps(q) + "\n" for q in picked))
    env = cli_env(built_index)
    runs = []
    for retriever in ("hybrid", "bm25"):
        out = tmp_path / retriever
        done = run_cli(
            "eval", str(dataset), "--out", str(out), "--retriever", retriever, "-k", "5", env=env
        )
        assert done.returncode == 0, done.stderr
        assert "citation F1" in done.stdout and "3/3 questions" in done.stderr
        results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [r["id"] for r in results] == [q["id"] for q in picked]
        assert {"question", "answer", "citations", "retrieved", "invalid_citations"} <= set(
            results[0]
        )
        metrics = json.loads((out / "metrics.json").read_text())
        assert set(metrics["by_type"]) == {"single", "list", "comparison", "unanswerable"}
        assert {"single", "list", "off-collection"} <= set(metrics["by_category"])
        assert metrics["calibration"]["papers"] > 0
        assert metrics["config"]["policy"]["decline_list"] == Policy.load().decline_list
        for key in ("recall@5", "recall@10", "recall@20", "mrr", "ndcg@10", "citation_precision",
                    "citation_recall", "citation_f1", "citation_validity", "abstention_accuracy",
                    "false_abstention_rate"):  # fmt: skip
            assert key in metrics["overall"]
        assert metrics["config"]["retriever"] == retriever and metrics["config"]["k"] == 5
        assert metrics["support"]["method"] == "lexical proxy"
        report = (out / "report.md").read_text()
        assert report.startswith("# Evaluation report") and "| citation_f1 |" in report
        assert (out / "metrics.png").read_bytes().startswith(b"\x89PNG")
        assert (out / "calibration.png").read_bytes().startswith(b"\x89PNG")
        assert "## By category" in report and "## Calibration" in report
        runs.append(out)
    done = run_cli("compare", *map(str, runs), "--out", str(tmp_path / "cmp"), env=env)
    assert done.returncode == 0, done.stderr
    assert "| hybrid | hybrid | 5 | offline |" in done.stdout and "| bm25 | bm25 |" in done.stdout
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_rag_eval_bad_input(built_index: Path, tmp_path: Path) -> None:
    env = cli_env(built_index)
    missing = run_cli("eval", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), env=env)
    assert (
        missing.returncode == 2
        and missing.stderr.startswith("error: ")
        and "nope.jsonl" in missing.stderr
    )
    assert "Traceback" not in missing.stderr and not (tmp_path / "o").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "gold_titles": ["A"]}\n{oops\n')
    done = run_cli("eval", str(bad), "--out", str(tmp_path / "o"), env=env)
    assert done.returncode == 2 and "bad.jsonl:2: invalid JSON" in done.stderr


def test_gold_titles_missing_from_the_index_are_reported(built_index: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "gold.jsonl"
    dataset.write_text(
        json.dumps({"question": "what is X?", "gold_titles": ["A Paper Nobody Wrote"]}) + "\n"
    )
    done = run_cli("eval", str(dataset), "--out", str(tmp_path / "o"), env=cli_env(built_index))
    assert done.returncode == 0, done.stderr
    assert "warning: gold title not in the index: A Paper Nobody Wrote" in done.stderr
    assert "- A Paper Nobody Wrote" in (tmp_path / "o" / "report.md").read_text()
