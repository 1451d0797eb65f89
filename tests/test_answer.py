"""The offline extractive answerer on hand-made sources: what it cites, quotes and leaves out."""

from __future__ import annotations

import re

import pytest

from rag.answer import NOT_FOUND, ExtractiveAnswerer
from rag.index import PaperRecord
from rag.lexical import Glossary, terms
from rag.relevance import judge, make_query, question_kind
from rag.retrieval import Retrieved

IDF = {"hopper": 5.0, "gpu": 2.0, "kernel": 3.0, "fuse": 3.0, "quantum": 5.0}


def query(text: str, glossary: Glossary | None = None):
    return make_query(text, lambda t: IDF.get(t, 0.0), 6.0, glossary)


def source(title: str, abstract: str, dense: float) -> Retrieved:
    return Retrieved(PaperRecord(title.lower().replace(" ", "-"), title, abstract), 0.0, dense, 0.0)


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("which papers target Hopper GPUs?", "list"),
        ("What works study kernel fusion?", "list"),
        ("List work on speculative decoding", "list"),
        ("Are there papers about quantization?", "list"),
        ("How does TokenWeave overlap communication?", "single"),
        ("What is the speedup of FlashAttention-3?", "single"),
    ],
)
def test_question_kind(question: str, kind: str) -> None:
    assert question_kind(question) == kind


def test_scaffolding_words_are_not_topic_terms() -> None:
    q = query("Which papers target Hopper GPUs?")
    assert set(q.weights) == {"hopper", "gpu"}
    assert q.kind == "list"


def test_list_answer_has_one_cited_line_per_relevant_paper_and_leaves_out_the_rest() -> None:
    sources = [
        source("Dissecting Hopper", "We benchmark the Hopper GPU. Tensor cores are fast.", 0.55),
        source("Cooking", "We bake bread with sourdough. It rises.", 0.05),
        # List membership is relative to the best paper: this one is close enough to it.
        source(
            "Fused kernels", "We fuse kernels on Hopper GPUs for speed. Results are good.", 0.45
        ),
    ]
    text = "".join(ExtractiveAnswerer().stream(query("which papers target Hopper GPUs"), sources))
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(lines) == 2
    assert lines[0].startswith("- Dissecting Hopper: We benchmark the Hopper GPU.")
    assert lines[0].endswith("[1]") and lines[1].endswith("[3]")
    assert "sourdough" not in text


def test_a_match_only_inside_a_comparison_counts_less() -> None:
    uses = source("A", "We build a runtime for the H100 GPU.", 0.3)
    compares = source("B", "Our Intel GPU runtime outperforms the CUDA one on the H100 GPU.", 0.3)
    q = query("which papers target Hopper GPUs", Glossary({"hopper": ["h100"]}))
    judged = {j.source.paper.title: j for j in judge(q, [compares, uses])}
    assert judged["A"].coverage == pytest.approx(1.0)
    assert judged["B"].coverage < 0.6
    assert judged["A"].relevance > judged["B"].relevance


def test_glossary_lets_a_family_match_its_members() -> None:
    glossary = Glossary({"hopper": ["h100", "gh200"]})
    q = query("which papers target Hopper GPUs", glossary)
    assert q.matched(terms("closely-coupled GH200 systems")) == {"hopper"}
    assert glossary.expand("Hopper GPUs") == "Hopper GPUs (h100, gh200)"


def test_single_answer_quotes_the_sentence_with_the_rare_terms_verbatim() -> None:
    abstract = (
        "Deep learning is popular. We fuse attention kernels to cut memory traffic. "
        "Experiments use many GPUs."
    )
    text = "".join(
        ExtractiveAnswerer().stream(query("how to fuse kernels?"), [source("K", abstract, 0.6)])
    )
    assert text.startswith("We fuse attention kernels to cut memory traffic. [1]")
    assert "Deep learning is popular" not in text


def test_abstains_when_nothing_is_relevant() -> None:
    sources = [source("Cooking", "We bake bread.", 0.08), source("Birds", "Birds migrate.", 0.12)]
    text = "".join(ExtractiveAnswerer().stream(query("what is quantum gravity?"), sources))
    assert text == NOT_FOUND
    assert not re.search(r"\[\d+\]", text)


def test_deterministic() -> None:
    sources = [
        source(f"P{i}", f"We fuse kernels {i} times on GPUs.", 0.4 + i / 100) for i in range(6)
    ]
    q = query("which papers fuse kernels on GPUs?")
    runs = {"".join(ExtractiveAnswerer().stream(q, sources)) for _ in range(3)}
    assert len(runs) == 1
