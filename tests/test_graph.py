"""The question path: the model's ONNX graph on onnxruntime, exported once, verified every load.

Against the real model: sentence-transformers (float32) is the reference the graph must
reproduce, and the cache is exercised by really corrupting, staling and half-writing exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag import graph
from rag.embedding import SentenceTransformerEmbedder, load_embedder
from tests.conftest import REPO, make_settings

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


def fresh(tmp_path: Path) -> SentenceTransformerEmbedder:
    """The real embedder with its own, empty cache: nothing exported yet."""
    settings = make_settings(tmp_path / "index", cache_dir=tmp_path / "cache")
    embedder = load_embedder(settings)
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return embedder


@pytest.fixture(scope="module")
def st_model(embedder: SentenceTransformerEmbedder) -> object:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder.model_dir), device="cpu")


def folder_of(embedder: SentenceTransformerEmbedder) -> Path:
    assert embedder.cache_dir is not None
    return graph.graph_dir(embedder.cache_dir, embedder.fingerprint)


def test_questions_match_sentence_transformers_in_float32(
    embedder: SentenceTransformerEmbedder, st_model: object
) -> None:
    reference = st_model.encode(TEXTS, normalize_embeddings=True)  # type: ignore[attr-defined]
    ours = np.stack([embedder.embed_query(t) for t in TEXTS])
    assert ours.dtype == np.float32
    assert ((ours * reference).sum(1)).min() >= 0.99999
    assert np.abs(ours - reference).max() <= 1e-4


def test_a_long_question_is_truncated_like_sentence_transformers(
    embedder: SentenceTransformerEmbedder,
) -> None:
    """256 tokens with [CLS]/[SEP]: a text and its first 254 word pieces embed the same."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedder.model_dir / "tokenizer.json"))
    tok.no_truncation()
    ids = tok.encode(LONG_TEXT, add_special_tokens=False).ids
    assert len(ids) > 300
    head = tok.decode(ids[:254])
    cosine = float(embedder.embed_query(LONG_TEXT) @ embedder.embed_query(head))
    assert cosine >= 0.99999


def test_an_ingest_exports_the_graph_so_asking_never_imports_torch(tmp_path: Path) -> None:
    embedder = fresh(tmp_path)
    assert not (folder_of(embedder) / graph.MANIFEST_FILE).exists()
    embedder.embed_documents(["Hopper GPUs and their tensor memory accelerator."])
    manifest = json.loads((folder_of(embedder) / graph.MANIFEST_FILE).read_text())
    assert manifest["weights_sha256"] == embedder.fingerprint
    assert manifest["format"] == graph.GRAPH_FORMAT
    code = (
        "import sys; from pathlib import Path; from rag.embedding import load_embedder; "
        "from rag.settings import Settings; "
        f"e = load_embedder(Settings(_env_file=None, cache_dir=Path({str(tmp_path / 'cache')!r}))); "
        "v = e.embed_query('which papers target Hopper GPUs?'); "
        "print(len(v), 'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.split() == ["384", "False", "False"], out.stderr
    assert out.stderr == ""  # nothing was exported again


def _export_again(embedder: SentenceTransformerEmbedder, capsys: pytest.CaptureFixture) -> str:
    """Embed a question in a new embedder on the same cache; returns what it said on stderr."""
    capsys.readouterr()
    again = load_embedder(
        make_settings(Path("/nonexistent"), cache_dir=embedder.cache_dir)  # type: ignore[arg-type]
    )
    vector = again.embed_query("tensor cores")
    assert abs(float(vector @ embedder.embed_query("tensor cores")) - 1.0) < 1e-5
    return capsys.readouterr().err


def test_a_corrupted_export_is_exported_again_never_used(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    embedder = fresh(tmp_path)
    embedder.embed_query("warm up")  # exports
    path = folder_of(embedder) / graph.GRAPH_FILE
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zero some weights: still loadable
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    said = _export_again(embedder, capsys)
    assert "exporting" in said and "corrupt" in said
    assert graph.verified_graph(folder_of(embedder), embedder.fingerprint)[0] is not None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"weights_sha256": "0" * 64}, "other weights"),
        ({"format": graph.GRAPH_FORMAT - 1}, "another format"),
    ],
)
def test_a_stale_export_is_exported_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, why: str
) -> None:
    embedder = fresh(tmp_path)
    embedder.embed_query("warm up")
    manifest_path = folder_of(embedder) / graph.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, **change}))
    said = _export_again(embedder, capsys)
    assert "exporting" in said and why in said
    assert json.loads(manifest_path.read_text())["weights_sha256"] == embedder.fingerprint


def test_an_export_killed_before_its_manifest_is_exported_again(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    embedder = fresh(tmp_path)
    embedder.embed_query("warm up")
    (folder_of(embedder) / graph.MANIFEST_FILE).unlink()  # what a kill -9 mid-export leaves
    said = _export_again(embedder, capsys)
    assert "not exported yet" in said


def test_doctor_names_both_paths(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    empty = fresh(tmp_path)
    assert "not exported yet" in empty.question_path()
    said = embedder.question_path()
    assert said.startswith("onnxruntime float32 on ") and "verified" in said


def test_a_model_the_graph_cannot_reproduce_is_not_exported(tmp_path: Path) -> None:
    model = load_embedder(make_settings(tmp_path)).model_dir  # type: ignore[attr-defined]
    assert graph.exportable(model)
    copy = tmp_path / "cls-model"
    copy.mkdir()
    for name in ("modules.json", "tokenizer.json", "sentence_bert_config.json"):
        (copy / name).write_bytes((model / name).read_bytes())
    (copy / "1_Pooling").mkdir()
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    (copy / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    )
    assert not graph.exportable(copy)
    assert not graph.exportable(tmp_path / "missing")
