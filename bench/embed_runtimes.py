"""Which runtime should embed documents on this CPU? Every candidate, timed and scored, in one run.

    python bench/embed_runtimes.py [--gold eval/*.jsonl ...] [--threads 2] [--write] [--json F]

Chunks the bundled corpus as `rag ingest` does (939 chunks, longest first, batches of 32) and embeds
them with each candidate that runs here:

  torch-fp32     sentence-transformers, PyTorch float32 eager (the reference)
  torch-bf16     the same in bfloat16 (only where the CPU has native bf16: AMX or AVX512-BF16)
  onnx-fp32      ONNX Runtime on a graph exported from the same weights, basic optimisations
  onnx-opt       the same graph with ONNX Runtime's BERT fusions, all optimisations
  onnx-int8      the exported graph with int8 dynamic quantisation of its weights
  openvino-fp32  OpenVINO on the exported graph, float32 asked for explicitly
  openvino-bf16  the same in bf16 (OpenVINO's default on a CPU with native bf16)

The ONNX and OpenVINO ones need `onnx` (and `openvino`), which the project does not depend on:
`pip install onnx openvino` (or with `--target DIR` and PYTHONPATH=DIR) to include them; missing
ones are listed as not run. Each candidate's vectors then go into a fresh index (questions are
embedded as `rag ask` does: onnxruntime, float32) and `rag eval` scores it on the gold files: recall@20,
list and single citation F1, abstention. A candidate is **within** when none of those moved more
than `rag.runtime.TOLERANCE` from torch-fp32; `--write` records the verdicts in
rag/data/runtimes.json, which `RAG_EMBED_RUNTIME=auto` reads.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

BATCH = 32
RUNTIME_NAMES = {  # candidate: its rag.runtime.Runtime.name, for those `auto` can choose
    "torch-fp32": "torch-cpu-float32",
    "torch-bf16": "torch-cpu-bfloat16",
    "openvino-fp32": "openvino-cpu-float32",
    "openvino-bf16": "openvino-cpu-bfloat16",
}
SCORED = {  # metric name in the table: its path in metrics.json
    "recall@20": ("by_type", "list", "recall@20"),
    "list F1": ("by_type", "list", "citation_f1"),
    "single F1": ("by_type", "single", "citation_f1"),
    "abstention": ("overall", "abstention_accuracy"),
}


class Precomputed:
    """An embedder that returns given vectors for the chunks and embeds questions as `rag ask`
    does: a candidate's documents, scored with the real question path."""

    def __init__(self, real: Any, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.real = real
        self.rows = {t: v for t, v in zip(texts, vectors, strict=True)}
        for name in ("name", "dim", "fingerprint", "family", "max_tokens", "special_tokens"):
            setattr(self, name, getattr(real, name))

    def token_spans(self, texts: Sequence[str]) -> Any:
        return self.real.token_spans(texts)

    def embed_documents(self, texts: Sequence[str], progress: Any = None) -> np.ndarray:
        return np.stack([self.rows[t] for t in texts]).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.real.embed_query(text)

    def preload(self) -> None:
        self.real.preload()


def torch_candidate(model_dir: Path, dtype: str) -> Callable[[list[str]], np.ndarray]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))

    def embed(texts: list[str]) -> np.ndarray:
        out = np.asarray(model.encode(texts, batch_size=BATCH), dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)  # in float32, as rag ingest does

    return embed


def export_onnx(model_dir: Path, work: Path, weights_sha256: str) -> Path:
    """The graph `rag ask` runs (rag.graph.export: tokens -> mean-pooled hidden states)."""
    from rag.graph import GRAPH_FILE, export

    export(model_dir, work, weights_sha256)
    return work / GRAPH_FILE


def tokenize(model_dir: Path) -> Callable[[list[str]], dict[str, np.ndarray]]:
    from tokenizers import Tokenizer

    config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(int(config.get("max_seq_length", 256)))
    tok.enable_padding()

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        rows = tok.encode_batch(texts)
        return {
            "input_ids": np.array([r.ids for r in rows], dtype=np.int64),
            "attention_mask": np.array([r.attention_mask for r in rows], dtype=np.int64),
        }

    return encode


def pooled(run: Callable[[dict[str, np.ndarray]], np.ndarray], encode: Any) -> Any:
    """Batches of BATCH through the graph (it mean-pools), then unit length in float32."""

    def embed(texts: list[str]) -> np.ndarray:
        out = [run(encode(texts[start : start + BATCH])) for start in range(0, len(texts), BATCH)]
        vectors = np.vstack(out).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return embed


def onnx_candidate(graph: Path, encode: Any, threads: int, level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return pooled(lambda feeds: session.run(None, feeds)[0], encode)


def openvino_candidate(graph: Path, encode: Any, threads: int, precision: str) -> Any:
    """OpenVINO at an explicit precision: its default on a bf16 CPU is bf16, not float32."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    compiled = core.compile_model(str(graph), "CPU", config)
    return pooled(lambda feeds: compiled(feeds)[0], encode)


def candidates(
    model_dir: Path, work: Path, threads: int, weights_sha256: str
) -> dict[str, Callable[[], Any] | str]:
    """name: a factory of the embed function, or why it does not run here."""
    from rag.runtime import cpu_flags, native_bf16

    out: dict[str, Callable[[], Any] | str] = {
        "torch-fp32": lambda: torch_candidate(model_dir, "float32"),
        "torch-bf16": (lambda: torch_candidate(model_dir, "bfloat16"))
        if native_bf16(cpu_flags())
        else "no native bf16 on this CPU (it would be emulated)",
    }
    try:
        import onnx  # noqa: F401
    except ImportError:
        for name in ("onnx-fp32", "onnx-opt", "onnx-int8", "openvino-fp32", "openvino-bf16"):
            out[name] = "needs the onnx package (pip install onnx)"
        return out
    encode = tokenize(model_dir)
    graphs: dict[str, Path] = {}

    def graph(kind: str) -> Path:
        if kind not in graphs:
            if kind == "plain":
                graphs[kind] = export_onnx(model_dir, work, weights_sha256)
            elif kind == "fused":
                from onnxruntime.transformers.optimizer import optimize_model

                fused = optimize_model(str(graph("plain")), model_type="bert", opt_level=2)
                graphs[kind] = work / "fused.onnx"
                fused.save_model_to_file(str(graphs[kind]))
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                graphs[kind] = work / "int8.onnx"
                from onnx import TensorProto

                # From the plain graph: the fused one's contrib ops defeat its shape inference.
                quantize_dynamic(
                    str(graph("plain")),
                    str(graphs[kind]),
                    weight_type=QuantType.QInt8,
                    extra_options={"DefaultTensorType": TensorProto.FLOAT},
                )
        return graphs[kind]

    out["onnx-fp32"] = lambda: onnx_candidate(graph("plain"), encode, threads, "ORT_ENABLE_BASIC")
    out["onnx-opt"] = lambda: onnx_candidate(graph("fused"), encode, threads, "ORT_ENABLE_ALL")
    out["onnx-int8"] = lambda: onnx_candidate(graph("int8"), encode, threads, "ORT_ENABLE_ALL")
    try:
        import openvino  # noqa: F401

        out["openvino-fp32"] = lambda: openvino_candidate(graph("plain"), encode, threads, "f32")
        out["openvino-bf16"] = (
            (lambda: openvino_candidate(graph("plain"), encode, threads, "bf16"))
            if native_bf16(cpu_flags())
            else "no native bf16 on this CPU (it would be emulated)"
        )
    except ImportError:
        for name in ("openvino-fp32", "openvino-bf16"):
            out[name] = "needs the openvino package (pip install openvino)"
    return out


def score(vectors: np.ndarray, texts: list[str], papers: Any, real: Any, gold: list[Path]) -> dict:
    from rag.evaluation import run_eval
    from rag.pipeline import Rag
    from rag.settings import Settings

    with tempfile.TemporaryDirectory(prefix="rag-runtime-") as tmp:
        settings = Settings(_env_file=None, index_dir=Path(tmp) / "index")  # type: ignore[call-arg]
        rag = Rag(settings, embedder=Precomputed(real, texts, vectors))
        rag.index.ingest(papers)
        metrics = run_eval(rag, gold, model="offline", judge="proxy").metrics()
        rag.index.close()
    values = {}
    for label, path in SCORED.items():
        value: Any = metrics
        for part in path:
            value = value[part]
        values[label] = None if value is None else round(float(value), 4)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gold", nargs="+", default=sorted(glob.glob(str(REPO / "eval/*.jsonl"))))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--write", action="store_true", help="record verdicts in rag/data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rag.chunking import chunk_papers
    from rag.corpus import load_bundled
    from rag.embedding import load_embedder
    from rag.runtime import TOLERANCE, cpu_flags, native_bf16
    from rag.settings import Settings

    real = load_embedder(Settings(_env_file=None, index_dir=Path("/nonexistent")))  # type: ignore[call-arg]
    papers = load_bundled()
    chunks = chunk_papers(papers, real, overlap=Settings(_env_file=None).chunk_overlap)  # type: ignore[call-arg]
    texts = [c.text for c in sorted(chunks, key=lambda c: -len(c.text))]
    flags = cpu_flags()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )  # fmt: skip
    print(f"{cpu}; {os.cpu_count()} cores, {args.threads} threads; native bf16: "
          f"{native_bf16(flags) or 'no'}; {len(texts)} chunks")  # fmt: skip

    rows: dict[str, dict[str, Any]] = {}
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="rag-graphs-") as work:
        found = candidates(real.model_dir, Path(work), args.threads, real.fingerprint)
        for name, make in found.items():
            if isinstance(make, str):
                rows[name] = {"not run": make}
                print(f"{name:<14} not run: {make}", flush=True)
                continue
            started = time.perf_counter()
            try:
                embed = make()
                prepared = time.perf_counter() - started
                embed(texts[:BATCH])  # warm-up
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported, not fatal
                rows[name] = {"not run": f"failed: {type(exc).__name__}: {str(exc)[:120]}"}
                print(f"{name:<14} {rows[name]['not run']}", flush=True)
                continue
            started = time.perf_counter()
            vectors = embed(texts)
            seconds = time.perf_counter() - started
            reference = vectors if reference is None else reference
            cosine = (vectors * reference).sum(1)
            row: dict[str, Any] = {
                "seconds": round(seconds, 2),
                "prepare_s": round(prepared, 1),
                "cosine_min": round(float(cosine.min()), 5),
                "cosine_mean": round(float(cosine.mean()), 6),
                **score(vectors, texts, papers, real, [Path(g) for g in args.gold]),
            }
            rows[name] = row
            print(f"{name:<14} {json.dumps(row)}", flush=True)
    base = rows["torch-fp32"]
    for row in rows.values():
        if "seconds" in row:
            row["speedup"] = round(base["seconds"] / row["seconds"], 2)
            moved = [abs(row[m] - base[m]) for m in SCORED if row[m] is not None]
            row["max_delta"] = round(max(moved, default=0.0), 4)
            row["within"] = row["max_delta"] <= TOLERANCE
    print()
    head = ["candidate", "s", "x fp32", "cos min", *SCORED, "max Δ", "within"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, row in rows.items():
        if "seconds" not in row:
            print(f"| {name} | not run: {row['not run']} |" + " |" * (len(head) - 2))
            continue
        cells = [row["seconds"], row["speedup"], row["cosine_min"], *(row[m] for m in SCORED)]
        print(f"| {name} | " + " | ".join(str(c) for c in cells)
              + f" | {row['max_delta']} | {'yes' if row['within'] else 'no'} |")  # fmt: skip
    record = {
        "measured": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "threads": args.threads,
        "gold": [Path(g).name for g in args.gold],
        "tolerance": TOLERANCE,
        # keyed as rag.runtime.Runtime.name for the ones `auto` can choose
        "runtimes": {RUNTIME_NAMES.get(n, n): r for n, r in rows.items()},
    }
    if args.write:
        (REPO / "rag" / "data" / "runtimes.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
