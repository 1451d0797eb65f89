"""Citation markers: parsing, checking against the sources, renumbering, also mid-stream."""

from __future__ import annotations

import pytest

from rag.citations import Renumberer, check, claims, count_uncited, expand, sentence_support


@pytest.mark.parametrize(
    ("group", "numbers"),
    [("3", [3]), ("1, 2", [1, 2]), ("2-4", [2, 3, 4]), ("1,3–5", [1, 3, 4, 5]), ("5-2", [5, 2])],
)
def test_expand(group: str, numbers: list[int]) -> None:
    assert expand(group) == numbers


def test_check_renumbers_by_first_appearance_and_drops_invalid() -> None:
    checked = check("First [3]. Both [1, 3]. Bad [9]. Range [1-2].", n_sources=3)
    assert checked.text == "First [1]. Both [1][2]. Bad. Range [2][3]."
    assert checked.cited == [3, 1, 2]  # source positions in order of first appearance
    assert checked.invalid == [9]


def test_marker_outside_sources_is_removed_with_its_space() -> None:
    checked = check("Claim one [1]. Claim two [9].", n_sources=8)
    assert checked.text == "Claim one [1]. Claim two."
    assert checked.invalid == [9] and checked.cited == [1]


def test_streamed_pieces_give_the_same_text_as_checking_at_once() -> None:
    text = "Alpha [2]. Beta [7] and gamma [1, 2]. Delta [3-4]."
    pieces = ["Alp", "ha [", "2]. Be", "ta [7", "] and gamma [1,", " 2]. Delta [3", "-4]."]
    renumberer = Renumberer(4)
    streamed = "".join(renumberer.feed(p) for p in pieces) + renumberer.flush()
    assert streamed == check(text, 4).text
    assert renumberer.invalid == [7]


def test_an_unclosed_bracket_is_released_eventually() -> None:
    renumberer = Renumberer(2)
    out = renumberer.feed("see [the appendix of the long thing that never closes at all") + (
        renumberer.flush()
    )
    assert out == "see [the appendix of the long thing that never closes at all"


def test_uncited_sentences_are_counted() -> None:
    assert count_uncited("One [1]. Two. Three [2].") == 1
    assert count_uncited("Papers on this:\n- A: text. [1]\n- B: more. [2]") == 0
    assert count_uncited("Claim [1]. Another claim.") == 1


def test_claims_are_sentences_or_list_lines_with_their_numbers() -> None:
    text = (
        "Papers in this collection on this question:\n"
        "- Alpha: It uses e.g. FP8. It is fast. [1]\n"
        "- Beta: quoted [2, 3]\n"
        "First claim. [4] Second claim [5-6]. No citation here."
    )
    assert [(c.text, c.cited) for c in claims(text)] == [
        ("Alpha: It uses e.g. FP8. It is fast.", [1]),  # a list line is one claim, whole
        ("Beta: quoted", [2, 3]),
        ("First claim.", [4]),  # "Claim. [4]" cites the claim before it
        ("Second claim.", [5, 6]),
        ("No citation here.", []),
    ]
    assert count_uncited(text) == 1  # the heading is not a claim


def test_sentence_support_scores_each_sentence() -> None:
    abstract = "We study bread. Our kernel fuses attention on GPUs. It is 2x faster."
    scores = sentence_support("a kernel that fuses attention", abstract)
    assert [abstract[a:b] for a, b, _ in scores] == [
        "We study bread.", "Our kernel fuses attention on GPUs.", "It is 2x faster.",
    ]  # fmt: skip
    assert [round(share, 2) for _, _, share in scores] == [0.0, 1.0, 0.0]
