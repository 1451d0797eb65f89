"""Embedding throughput of the ingest path on this machine's device: the part of `rag ingest`
that a GPU changes, measured without Chroma so it runs wherever torch does.

    python bench/embed.py [--model DIR_OR_NAME] [--device cuda|cpu] [--batch-size 32 128 ...]
                          [--compare vectors.npy] [--json out.json]

Chunks the bundled corpus exactly as `rag ingest` does, then times, per batch size, embedding every
chunk longest-first with `SentenceTransformerEmbedder.embed_documents` (what `Index.ingest` calls),
after one warm-up batch. Prints the model load time (torch import included), seconds and word
pieces per second. `--compare` takes vectors of the same chunks in the same order (e.g. saved from
a CPU index) and prints the cosine agreement with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or directory (default: settings)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32])
    parser.add_argument("--compare", type=Path, help=".npy of reference vectors, chunk order")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from rag.chunking import chunk_papers
    from rag.corpus import load_bundled
    from rag.embedding import SentenceTransformerEmbedder, load_embedder, resolve_model_dir
    from rag.settings import Settings

    settings = Settings(_env_file=None)
    if args.model is None:
        embedder = load_embedder(settings)
    else:
        model_dir, expected = resolve_model_dir(args.model)
        embedder = SentenceTransformerEmbedder(args.model, model_dir, expected, args.device)
    assert isinstance(embedder, SentenceTransformerEmbedder)
    embedder.device = args.device
    chunks = chunk_papers(load_bundled(), embedder, overlap=settings.chunk_overlap)
    texts = [c.text for c in chunks]
    pieces = sum(len(s) + embedder.special_tokens for s in embedder.token_spans(texts))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as Index.ingest does

    started = time.perf_counter()
    model = embedder._model  # torch import and weights onto the device
    load_s = time.perf_counter() - started
    device = str(model.device)
    result: dict[str, object] = {
        "device": device,
        "torch_threads": __import__("torch").get_num_threads(),
        "chunks": len(texts),
        "word_pieces": pieces,
        "load_s": round(load_s, 2),
        "runs": [],
    }
    if device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    print(f"{device}: {len(texts)} chunks, {pieces} word pieces; model loaded in {load_s:.2f} s")
    for batch_size in args.batch_size:
        embedder.batch_size = batch_size
        embedder.embed_documents([texts[i] for i in order[:batch_size]])  # warm-up
        started = time.perf_counter()
        vectors = embedder.embed_documents([texts[i] for i in order])
        seconds = time.perf_counter() - started
        run = {"batch_size": batch_size, "seconds": round(seconds, 3)}
        run["pieces_per_s"] = round(pieces / seconds)
        line = f"batch {batch_size:4d}: {seconds:6.2f} s, {pieces / seconds:8.0f} word pieces/s"
        if args.compare is not None:
            reference = np.load(args.compare)[order]
            cosine = np.sum(vectors * reference, axis=1)
            run["cosine_min"] = round(float(cosine.min()), 6)
            line += f", cosine to reference min {cosine.min():.6f}"
        result["runs"].append(run)  # type: ignore[union-attr]
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
