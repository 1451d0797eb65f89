"""The embedding runtime: chosen for the CPU at hand, recorded by the index, and its document
vectors agreeing with the question path's (onnxruntime float32)."""

from __future__ import annotations

import json
from pathlib import Path

import chromadb
import numpy as np
import pytest

from rag.corpus import Paper
from rag.embedding import SentenceTransformerEmbedder, load_embedder
from rag.errors import EmbedderError, ModelMismatchError
from rag.pipeline import Rag
from rag.runtime import TOLERANCE, choose, cpu_flags, engines, measured, native_bf16
from tests.conftest import cli_env, make_settings, run_cli

WITHIN = {
    "torch-cpu-float32": {"seconds": 40.0, "within": True},
    "torch-cpu-bfloat16": {"seconds": 21.0, "within": True},
}
OUTSIDE = {**WITHIN, "torch-cpu-bfloat16": {"seconds": 21.0, "within": False}}
OPENVINO = {
    **WITHIN,
    "openvino-cpu-float32": {"seconds": 36.0, "within": True},
    "openvino-cpu-bfloat16": {"seconds": 17.0, "within": True},
}
BOTH = frozenset({"torch", "openvino"})


@pytest.mark.parametrize(
    ("flags", "verdicts", "device", "dtype", "says"),
    [
        ({"avx2", "amx_bf16"}, WITHIN, "cpu", "bfloat16", "native bf16 (amx_bf16)"),
        ({"avx2", "avx512_bf16"}, WITHIN, "cpu", "bfloat16", "native bf16 (avx512_bf16)"),
        ({"avx2", "avx512f"}, WITHIN, "cpu", "float32", "no native bf16"),
        ({"amx_bf16"}, OUTSIDE, "cpu", "float32", "not measured within tolerance"),
        ({"amx_bf16"}, {}, "cpu", "float32", "not measured within tolerance"),
        (set(), WITHIN, "cuda", "float16", "a GPU"),
        ({"amx_bf16"}, WITHIN, "mps", "float32", "mps: float32"),
    ],
)
def test_auto_takes_bf16_only_where_it_is_native_and_was_measured_within_tolerance(
    flags: set[str], verdicts: dict, device: str, dtype: str, says: str
) -> None:
    runtime = choose("auto", device, frozenset(flags), verdicts)
    assert (runtime.device, runtime.dtype) == (device, dtype)
    assert says in runtime.reason


@pytest.mark.parametrize(
    ("flags", "verdicts", "installed", "name"),
    [
        ({"avx512_bf16"}, OPENVINO, BOTH, "openvino-cpu-bfloat16"),  # the fastest within
        ({"avx512_bf16"}, OPENVINO, frozenset({"torch"}), "torch-cpu-bfloat16"),  # not installed
        (  # OpenVINO bf16 faster, but outside the tolerance
            {"avx512_bf16"},
            {**OPENVINO, "openvino-cpu-bfloat16": {"seconds": 9.0, "within": False}},
            BOTH,
            "torch-cpu-bfloat16",
        ),
        ({"avx2"}, OPENVINO, BOTH, "openvino-cpu-float32"),  # no native bf16: fp32 engines only
        ({"avx2"}, WITHIN, BOTH, "torch-cpu-float32"),  # OpenVINO never measured: not chosen
    ],
)
def test_auto_takes_the_fastest_installed_candidate_within_tolerance(
    flags: set[str], verdicts: dict, installed: frozenset[str], name: str
) -> None:
    runtime = choose("auto", "cpu", frozenset(flags), verdicts, installed)
    assert runtime.name == name
    if runtime.engine == "openvino":
        assert "the fastest candidate installed here" in runtime.reason


def test_openvino_asked_for_but_not_installed_says_how_to_install() -> None:
    with pytest.raises(EmbedderError, match=r"pip install 'rag-papers\[openvino\]'"):
        choose("openvino", "cpu", frozenset(), WITHIN, frozenset({"torch"}))
    chosen = choose("openvino", "cpu", frozenset({"amx_bf16"}), WITHIN, BOTH)
    assert (chosen.engine, chosen.dtype) == ("openvino", "bfloat16")


def test_an_explicit_runtime_is_honoured_and_emulation_is_said() -> None:
    assert choose("fp32", "cpu", frozenset({"amx_bf16"}), WITHIN).dtype == "float32"
    emulated = choose("bf16", "cpu", frozenset({"avx2"}), WITHIN)
    assert emulated.dtype == "bfloat16" and "emulated" in emulated.reason


def test_the_shipped_verdicts_come_from_the_benchmark() -> None:
    verdicts = measured()
    reference = verdicts["torch-cpu-float32"]
    assert reference["within"] and reference["max_delta"] == 0.0
    for name, row in verdicts.items():
        if "max_delta" in row:  # run: its verdict is what the tolerance says of its deltas
            assert row["within"] == (row["max_delta"] <= TOLERANCE), name


def test_this_machines_choice_is_named(embedder: SentenceTransformerEmbedder) -> None:
    """The fastest candidate installed and native here that the shipped verdicts call within."""
    verdicts, flag = measured(), native_bf16(cpu_flags())
    dtypes = ["float32", "bfloat16"] if flag else ["float32"]
    names = [f"{engine}-cpu-{dtype}" for engine in sorted(engines()) for dtype in dtypes]
    within = [n for n in names if verdicts[n]["within"]]
    assert embedder.runtime.name == min(within, key=lambda n: verdicts[n]["seconds"])


def test_document_vectors_of_every_runtime_agree_with_the_question_path(
    corpus: list[Paper], built_index: Path
) -> None:
    """Questions are embedded by onnxruntime in float32: a document's vector from either torch
    runtime must point the same way (the same text, embedded both ways)."""
    settings = make_settings(built_index)
    texts = [f"{p.title} {p.abstract}" for p in corpus[::5]]
    question_path = load_embedder(settings)
    questions = np.stack([question_path.embed_query(t) for t in texts])
    for choice in ("fp32", "bf16", "openvino"):
        documents = load_embedder(settings.model_copy(update={"embed_runtime": choice}))
        cosine = (documents.embed_documents(texts) * questions).sum(1)
        assert cosine.min() >= 0.999, (choice, float(cosine.min()))


def test_an_index_of_another_vector_family_is_refused_with_the_rebuild_command(
    tmp_path: Path, corpus: list[Paper], embedder
) -> None:
    index_dir = tmp_path / "index"
    rag = Rag(make_settings(index_dir), embedder=embedder)
    rag.index.ingest(corpus[:5])
    meta = rag.index.collection().metadata
    assert meta["embed_family"] == "float" and meta["embed_runtime"] == embedder.runtime.name
    rag.index.close()
    client = chromadb.PersistentClient(
        path=str(index_dir), settings=chromadb.Settings(anonymized_telemetry=False)
    )
    col = client.get_collection("papers")
    col.modify(metadata={**col.metadata, "embed_family": "int8", "embed_runtime": "onnx-int8"})
    del client

    with pytest.raises(ModelMismatchError, match="rag ingest --rebuild"):
        Rag(make_settings(index_dir), embedder=embedder).ask(corpus[0].title)
    done = run_cli("ask", "--json", corpus[0].title, env=cli_env(index_dir))
    assert done.returncode == 2 and "onnx-int8" in done.stderr and "--rebuild" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    doctor = json.loads(run_cli("doctor", "--json", env=cli_env(index_dir)).stdout)
    assert not doctor["index"]["ok"] and "int8" in doctor["index"]["detail"]
