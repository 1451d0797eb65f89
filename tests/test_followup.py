"""The offline follow-up rule, and follow-ups through the whole pipeline."""

from __future__ import annotations

import pytest

from rag.citations import Citation
from rag.followup import Turn, offline_rewrite, render_history
from rag.pipeline import Rag

PREVIOUS = Turn(
    "which papers target Hopper GPUs?",
    "Papers ... [1] ... [2] ... [3]",
    (Citation(1, "a", "Alpha Paper"), Citation(2, "b", "Beta Paper"), Citation(3, "c", "Gamma")),
)


@pytest.mark.parametrize(
    ("follow_up", "standalone"),
    [
        ("what about the second one?", 'what about "Beta Paper"?'),
        ("Tell me more about the last paper", 'Tell me more about "Gamma"'),
        ("summarise [1]", 'summarise "Alpha Paper"'),
        ("what does paper 3 measure?", 'what does "Gamma" measure?'),
        ("and the 2nd source?", 'and "Beta Paper"?'),
    ],
)
def test_a_numbered_reference_becomes_the_title(follow_up: str, standalone: str) -> None:
    assert offline_rewrite(follow_up, [PREVIOUS]) == standalone


@pytest.mark.parametrize(
    "follow_up",
    [
        "what about Ampere?",
        "How fast are they?",
        "and their memory use?",
        "does this method scale?",
    ],
)
def test_a_question_leaning_on_the_conversation_keeps_its_context(follow_up: str) -> None:
    assert offline_rewrite(follow_up, [PREVIOUS]) == f"{PREVIOUS.question} {follow_up}"


@pytest.mark.parametrize(
    "question",
    ["How does FlashAttention reduce memory traffic?", "Is there work that targets TPUs?"],
)
def test_a_standalone_question_is_left_alone(question: str) -> None:
    assert offline_rewrite(question, [PREVIOUS]) == question


def test_no_history_no_rewrite() -> None:
    assert offline_rewrite("what about the second one?", []) == "what about the second one?"


def test_a_number_the_answer_did_not_cite_is_left_alone() -> None:
    assert offline_rewrite("what about the ninth one?", [PREVIOUS]) == (
        f"{PREVIOUS.question} what about the ninth one?"  # still leans on the conversation
    )


def test_the_context_is_the_previous_standalone_question() -> None:
    second = Turn("and their memory use?", "...", (), standalone="Hopper GPUs and memory use?")
    assert offline_rewrite("why?", [PREVIOUS, second]) == "Hopper GPUs and memory use? why?"


def test_history_is_rendered_with_numbered_sources() -> None:
    text = render_history([PREVIOUS])
    assert text.splitlines()[:3] == [
        "User: which papers target Hopper GPUs?",
        "Assistant: Papers ... [1] ... [2] ... [3]",
        "  [1] Alpha Paper",
    ]


def test_follow_up_through_the_pipeline(rag: Rag) -> None:
    first = rag.ask("which papers target Hopper GPUs?")
    second_title = first.citations[1].title
    result = rag.ask("what about the second one?", history=[first.turn()])
    assert result.standalone == f'what about "{second_title}"?'
    assert result.retrieved[0].paper.title == second_title
    assert [c.title for c in result.citations] == [second_title]
