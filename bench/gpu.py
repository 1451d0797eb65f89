"""Document embedding on a GPU: `embed_documents` (rag.embedding.PackedEncoder) against the model's
forward-only ceiling, measured in one process.

    python bench/gpu.py [--texts 300000] [--model DIR_OR_NAME] [--budgets 131072 262144]
                        [--workers 4 8] [--baseline 4000] [--json out.json]

Texts are chunks as `rag ingest` makes them: a title and an abstract recombined from the bundled
corpus's sentences (as bench/scale.py's synthetic snapshots are), "title. abstract", the abstract
cut to the sentences that fit the model's 256 word pieces with the title (chunk_papers's first
window). Measured, in order: the forward-only ceiling (float16, random ids, 1024 x 234 tokens,
timed between CUDA synchronisations: the model alone, and with the packed path's mask, pooling
and normalisation); the CPU side alone (tokenizer processes: tokenize, plan, pad; then pin), by
worker count if asked, and the tokenizer alone; the GPU side alone (the same batches staged on
the GPU first; with the packed path's 4-D mask and with transformers' 2-D one); `embed_documents`
on all texts, warm; the token budget swept on a third of them; optionally the old path
(sentence-transformers `encode`, batches of 32); and the cosine of the float16 vectors to
sentence-transformers' float32 ones. Prints each step's results as it goes (stderr), then one JSON
object and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # our processes are the parallelism

CEILING_SHAPE = (1024, 234)  # sequences x tokens of the forward-only ceiling (issue 15's figure)
CEILING_REPEATS = 20  # timed forward passes, after 3 untimed
WARM_TEXTS = 20_000  # embedded once before a timed run: kernels chosen, pools started
BASELINE_BATCH = 32  # what the old path used (Settings.embed_batch_size)
AGREEMENT_TEXTS = 2_000  # texts compared against sentence-transformers float32
TOKENIZER_TEXTS = 10_000  # texts for the tokenizer-alone figures


def chunk_texts(n: int, tokenizer: Any, room: int = 253, seed: int = 0) -> list[str]:
    """``n`` chunk texts of at most ``room`` word pieces (+2 special tokens): bench/scale.py's
    recombined titles and abstracts, the abstract's sentences kept while they fit."""
    from rag.corpus import load_bundled

    papers = load_bundled()
    words = sorted({w for p in papers for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", p.title)})
    said = [s for p in papers for s in re.split(r"(?<=[.!?])\s+", p.abstract) if len(s) > 40]
    # BERT splits on whitespace before word pieces, so a join's tokens are its parts' tokens.
    count = {
        piece: len(e.ids)
        for piece, e in zip(
            words + said,
            tokenizer.encode_batch(words + said, add_special_tokens=False),
            strict=True,
        )
    }
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        title_words = rng.sample(words, 6)
        used = sum(count[w] for w in title_words) + 5  # the number (4 pieces at most) and the "."
        kept = []
        for sentence in rng.sample(said, rng.randint(5, 9)):
            if used + count[sentence] > room:
                break
            kept.append(sentence)
            used += count[sentence]
        texts.append(f"{' '.join(title_words).title()} {i:07d}. {' '.join(kept)}")
    return texts


def timed(fn: Any, sync: Any) -> float:
    """Seconds ``fn()`` takes, between two device synchronisations."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def said(result: dict[str, Any], step: str, since: float) -> None:
    """The results so far, after ``step``: a run cut short still reports what it measured."""
    print(f"# {step} ({time.perf_counter() - since:.0f} s): {json.dumps(result)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=300_000)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--budgets", type=int, nargs="*", default=[131_072, 262_144])
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="CPU-side sweep")
    parser.add_argument("--baseline", type=int, default=0, help="texts for the old path (0: none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import numpy as np
    import tokenizers
    import torch
    import transformers

    import rag.embedding as embedding
    from rag.embedding import PackedEncoder, SentenceTransformerEmbedder, resolve_model_dir

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU")
    sync = torch.cuda.synchronize
    began = time.perf_counter()
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "cpu_cores": os.cpu_count(),
        "tokenizer_workers": embedding.TOKENIZER_WORKERS,
        "tokenize_window": embedding.TOKENIZE_WINDOW,
        "token_budget": embedding.GPU_TOKEN_BUDGET,
        "pad_multiple": embedding.PAD_MULTIPLE,
    }

    model_dir, expected = resolve_model_dir(args.model)
    embedder = SentenceTransformerEmbedder(args.model, model_dir, expected, device="cuda")
    started = time.perf_counter()
    texts = chunk_texts(args.texts, embedder._tokenizer)
    result["texts"], result["make_texts_s"] = len(texts), round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    packed = embedder._packed  # torch, weights, one float16 replica per GPU
    result["load_s"] = round(time.perf_counter() - started, 1)
    assert isinstance(packed, PackedEncoder), "the packed path was not chosen on this GPU"
    result["runtime"] = embedder.runtime.name
    model = packed.replicas[0]
    said(result, "loaded", began)

    # (i) The forward-only ceiling: random ids, every row full length.
    rows, width = CEILING_SHAPE
    ids = torch.randint(1000, 30000, CEILING_SHAPE, device="cuda")
    full = torch.full((rows,), width, device="cuda", dtype=torch.int32)
    ones = torch.ones_like(ids)
    with torch.inference_mode():
        for name, step in {
            "forward_only_seq_s": lambda: model(input_ids=ids, attention_mask=ones),
            "forward_masked_pooled_seq_s": lambda: packed.forward(model, ids, full),
        }.items():
            for _ in range(3):
                step()
            seconds = timed(lambda step=step: [step() for _ in range(CEILING_REPEATS)], sync)
            result[name] = round(rows * CEILING_REPEATS / seconds)
    said(result, "ceiling", began)

    # (ii) The CPU side alone: tokenize, plan and pad (processes), pin (here), every batch.
    for _ in packed.batches(texts[:WARM_TEXTS]):  # starts the processes
        pass
    started = time.perf_counter()
    batches = list(packed.batches(texts))
    seconds = time.perf_counter() - started
    tokens = sum(int(b.lengths.sum()) for b in batches)
    padded = sum(b.ids.numel() for b in batches)
    result.update(
        cpu_side_texts_s=round(len(texts) / seconds),
        batches=len(batches),
        uniform_batches=sum(b.uniform for b in batches),
        mean_tokens=round(tokens / len(texts), 1),
        padding_overhead=round(padded / tokens - 1, 4),
    )
    for workers in args.workers:
        packed.workers = workers
        for _ in packed.batches(texts[:WARM_TEXTS]):
            pass
        started = time.perf_counter()
        for _ in packed.batches(texts[: len(texts) // 3]):
            pass
        result[f"cpu_side_texts_s_{workers}_workers"] = round(
            len(texts) // 3 / (time.perf_counter() - started)
        )
    packed.workers = embedding.TOKENIZER_WORKERS
    few = texts[:TOKENIZER_TEXTS]
    encode = getattr(packed.tokenizer, "encode_batch_fast", packed.tokenizer.encode_batch)
    for parallel in ("false", "true"):  # one call: one thread, then the tokenizer's own pool
        os.environ["TOKENIZERS_PARALLELISM"] = parallel
        started = time.perf_counter()
        encode(few)
        name = "tokenizer_pool" if parallel == "true" else "1_thread"
        result[f"tokenize_only_texts_s_{name}"] = round(len(few) / (time.perf_counter() - started))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    said(result, "cpu side", began)

    # (iii) The GPU side alone: the same batches, staged on the GPU first, run back to back.
    staged = [(b.ids.cuda(), b.lengths.cuda(), b.uniform) for b in batches]
    del batches
    with torch.inference_mode():
        for mask_4d, name in ((True, "gpu_side_texts_s"), (False, "gpu_side_2d_mask_texts_s")):
            packed.mask_4d = mask_4d
            for batch in staged[:3]:
                packed.forward(model, *batch)
            seconds = timed(lambda run=staged: [packed.forward(model, *s) for s in run], sync)
            result[name] = round(len(texts) / seconds)
    packed.mask_4d = embedding._transformers_major() >= 5
    result["gpu_side_tokens_s"] = round(tokens / (len(texts) / result["gpu_side_texts_s"]))
    del staged
    said(result, "gpu side", began)

    # (iv) embed_documents, warm, on every text.
    embedder.embed_documents(texts[:WARM_TEXTS])
    started = time.perf_counter()
    vectors = embedder.embed_documents(texts)
    seconds = time.perf_counter() - started
    result["embed_documents_s"] = round(seconds, 2)
    result["embed_documents_texts_s"] = round(len(texts) / seconds)
    result["embed_documents_tokens_s"] = round(tokens / seconds)
    result["max_norm_error"] = float(np.abs(np.linalg.norm(vectors, axis=1) - 1).max())
    said(result, "embed_documents", began)

    # (v) The token budget, swept on a third of the texts.
    part = texts[: len(texts) // 3]
    for budget in args.budgets:
        packed.budget = budget
        packed.encode(part[:WARM_TEXTS])
        started = time.perf_counter()
        packed.encode(part)
        result[f"budget_{budget}_texts_s"] = round(len(part) / (time.perf_counter() - started))
    packed.budget = embedding.GPU_TOKEN_BUDGET
    said(result, "sweeps", began)

    # (vi) The old path (sentence-transformers encode, batches of 32, float16 as the runtime says)
    # and the agreement of the new float16 vectors with sentence-transformers' float32 ones.
    from sentence_transformers import SentenceTransformer

    if args.baseline:
        old = SentenceTransformer(str(model_dir), device="cuda").half()
        few = texts[: args.baseline]
        old.encode(few[:256], batch_size=BASELINE_BATCH)
        started = time.perf_counter()
        for start in range(0, len(few), BASELINE_BATCH):
            old.encode(few[start : start + BASELINE_BATCH], batch_size=BASELINE_BATCH)
        result["old_path_texts_s"] = round(len(few) / (time.perf_counter() - started))
        del old
    reference = SentenceTransformer(str(model_dir), device="cuda").float()  # whatever the files
    sample = texts[-AGREEMENT_TEXTS:]  # in input order: also checks rows land where they belong
    want = reference.encode(sample, normalize_embeddings=True, batch_size=256)
    cosine = np.sum(vectors[-AGREEMENT_TEXTS:] * want, axis=1)
    result["cosine_to_fp32_min"] = round(float(cosine.min()), 6)
    result["cosine_to_fp32_mean"] = round(float(cosine.mean()), 6)
    result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    packed.close()

    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    keys = [
        "forward_only_seq_s",
        "forward_masked_pooled_seq_s",
        "gpu_side_texts_s",
        "gpu_side_2d_mask_texts_s",
        "cpu_side_texts_s",
        "embed_documents_texts_s",
    ] + [
        k
        for k in result
        if k.startswith(("budget_", "old_path", "cpu_side_texts_s_", "tokenize_only"))
    ]
    print(f"\n{result['gpu']} x{result['gpus']}, torch {result['torch']}, CUDA {result['cuda']}")
    print("| measurement | per second |\n|---|---|")
    for key in keys:
        print(f"| {key} | {result[key]:,} |")


if __name__ == "__main__":
    main()
