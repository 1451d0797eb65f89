"""Judgements from the chat: merged per question into a gold set that `rag eval` reads as it is."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.evaluation import load_dataset
from rag.feedback import FeedbackFile, Judged
from tests.conftest import cli_env, make_settings, run_cli

ANSWER = Judged(
    "Which papers target Hopper GPUs?",
    cited=("Paper A", "Paper B", "Paper C"),
    retrieved=("Paper A", "Paper B", "Paper C", "Paper D", "Paper E"),
    intent="list",
)


def test_judgements_merge_into_one_gold_record_per_question(tmp_path: Path) -> None:
    store = FeedbackFile(tmp_path / "feedback.jsonl")
    store.judge(ANSWER, "wrong", "Paper B", by="ana")
    record = store.judge(ANSWER, "missing", "Paper D", by="ben")
    again = Judged("which papers  target HOPPER gpus?", ANSWER.cited, ANSWER.retrieved, "list")
    store.judge(again, "wrong", "Paper C", by="ana")  # the same question, differently typed

    (saved,) = store.records()
    assert saved == {**record, **saved} and saved["question"] == ANSWER.question
    assert saved["gold_titles"] == ["Paper A", "Paper D"]  # unflagged citations, and the missing
    assert saved["not_gold_titles"] == ["Paper B", "Paper C"]
    assert saved["type"] == "list"
    assert [(j["judgement"], j["title"], j["by"]) for j in saved["judgements"]] == [
        ("wrong", "Paper B", "ana"),
        ("missing", "Paper D", "ben"),
        ("wrong", "Paper C", "ana"),
    ]
    assert all(j["at"].endswith("+00:00") for j in saved["judgements"])
    (gold,) = load_dataset(store.path)  # the file is a gold set as it is
    assert gold.gold_titles == ("Paper A", "Paper D") and gold.type == "list"


def test_should_have_declined_makes_an_unanswerable_question(tmp_path: Path) -> None:
    store = FeedbackFile(tmp_path / "feedback.jsonl")
    store.judge(ANSWER, "declined", None, by="ana")
    (gold,) = load_dataset(store.path)
    assert gold.type == "unanswerable" and gold.gold_titles == ()
    assert store.records()[0]["not_gold_titles"] == list(ANSWER.cited)


def test_a_judgement_must_fit_the_answer(tmp_path: Path) -> None:
    store = FeedbackFile(tmp_path / "feedback.jsonl")
    with pytest.raises(InputError, match="not cited"):
        store.judge(ANSWER, "wrong", "Paper D", by="x")
    with pytest.raises(InputError, match="not a retrieved, uncited"):
        store.judge(ANSWER, "missing", "Paper A", by="x")
    with pytest.raises(InputError, match="no judgement"):
        store.judge(ANSWER, "great", "Paper A", by="x")  # type: ignore[arg-type]
    assert not store.path.exists()


def test_an_unreadable_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"question": "q", "gold_titles": []}\n{not json\n')
    with pytest.raises(InputError, match="cannot record the judgement"):
        FeedbackFile(path).judge(ANSWER, "wrong", "Paper A", by="x")
    assert path.read_text().endswith("{not json\n")


def _judge_many(path: str, worker: int) -> None:
    store = FeedbackFile(Path(path))
    for i in range(15):
        question = Judged(f"question {worker}-{i}", ("P",), ("P", "Q"))
        store.judge(question, "missing", "Q", by=f"worker {worker}")


def test_concurrent_processes_lose_no_judgement(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_judge_many, args=(str(path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert len(FeedbackFile(path).records()) == 60


def test_export_writes_a_clean_gold_file_and_eval_scores_it(
    tmp_path: Path, built_index: Path, rag
) -> None:
    hopper = rag.ask("Which papers target Hopper GPUs?", 8, model="offline")
    cited = tuple(c.title for c in hopper.citations)
    judged = Judged(hopper.question, cited, tuple(r.paper.title for r in hopper.retrieved), "list")
    feedback = tmp_path / "feedback.jsonl"
    FeedbackFile(feedback).judge(judged, "wrong", cited[-1], by="test")

    env = cli_env(built_index, RAG_FEEDBACK_FILE=str(feedback))
    out = tmp_path / "gold.jsonl"
    done = run_cli("feedback", "export", str(out), env=env)
    assert done.returncode == 0, done.stderr
    (line,) = out.read_text().splitlines()
    assert set(json.loads(line)) == {
        "id",
        "question",
        "type",
        "category",
        "gold_titles",
        "partial_titles",
    }

    scored = run_cli(
        "eval", str(feedback), "--out", str(tmp_path / "eval"), "--judge", "proxy", env=env
    )
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The judged citation was wrong: precision of that answer is (n-1)/n, recall 1.
    by_type = metrics["by_type"]["list"]
    assert by_type["citation_precision"] == pytest.approx((len(cited) - 1) / len(cited))
    assert by_type["citation_recall"] == pytest.approx(1.0)

    empty = run_cli("feedback", "export", str(out), env=cli_env(built_index))
    assert empty.returncode == 2 and "no judgements" in empty.stderr


def test_a_rebuild_keeps_the_judgements(tmp_path: Path, corpus, embedder) -> None:
    from rag.pipeline import Rag

    settings = make_settings(tmp_path / "index")
    rag = Rag(settings, embedder=embedder)
    rag.index.ingest(corpus[:3])
    store = FeedbackFile.of(settings)
    assert store.path.parent == settings.index_dir
    store.judge(ANSWER, "declined", None, by="x")
    from rag.rebuild import rebuild

    rebuild(rag, corpus[:3], None)
    assert len(FeedbackFile.of(settings).records()) == 1
