"""The question path: the model's ONNX graph on onnxruntime, with no torch import.

``rag ask`` is a short-lived process and importing torch costs seconds, so a question is embedded
by onnxruntime (a chromadb dependency) and ``tokenizers`` on a graph exported from the weights:
tokens -> the model -> mean pooling, then unit length in float32 here.

**Exported once, verified at every load.** The export needs torch, so it happens once per set of
weights: during the first ``rag ingest`` (torch is loaded there anyway) or, failing that, the first
question. It is cached under ``CACHE_DIR/onnx/<weights SHA-256>/`` with a manifest naming the
weights' SHA-256, the graph's own SHA-256 and ``GRAPH_FORMAT``. Every load reads the graph's bytes,
hashes them against the manifest and hands *those* bytes to onnxruntime, so a corrupted, truncated
or stale export (other weights, an older format) is exported again, never silently used.

Measured against the numpy BERT this replaced (2026-12-02, 2 cores, AVX512-BF16): one question
6-7 ms instead of 15 ms warm; a cold process pays ~0.12 s to import onnxruntime and ~0.3 s to build
the session, which ``QuestionEncoder.start`` does in a thread while chromadb imports.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import EmbedderError

GRAPH_FORMAT = 1  # bump when the exported graph changes (its inputs, its pooling): old ones rebuild
OPSET = 17
GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
_ST_PREFIX = "sentence_transformers."

Note = Callable[[str], None]


def exportable(model_dir: Path) -> bool:
    """True when the model's pipeline is Transformer -> mean Pooling (-> Normalize): what the
    exported graph reproduces. Anything else embeds its questions with sentence-transformers."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        kinds = [
            str(m["type"]).rsplit(".", 1)[-1] if str(m["type"]).startswith(_ST_PREFIX) else ""
            for m in modules
        ]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return False
        if modules[0].get("path", "") not in ("", "."):  # weights in a sub-folder: not handled
            return False
        pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
        modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
        sbert = model_dir / "sentence_bert_config.json"
        # sentence-transformers lowercases raw text itself when do_lower_case is set; not done here
        lower = sbert.is_file() and json.loads(sbert.read_text()).get("do_lower_case", False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False
    mean_only = modes.pop("pooling_mode_mean_tokens", False) is True and not any(modes.values())
    return mean_only and not lower and (model_dir / "tokenizer.json").is_file()


def graph_dir(cache_dir: Path, weights_sha256: str) -> Path:
    return cache_dir / "onnx" / weights_sha256


def verified_graph(folder: Path, weights_sha256: str) -> tuple[bytes | None, str]:
    """The graph's bytes if its manifest vouches for them, else (None, why not)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "not exported yet"
    except (OSError, ValueError) as exc:
        return None, f"its manifest is unreadable ({type(exc).__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != GRAPH_FORMAT:
        return None, "it was exported in another format"
    if manifest.get("weights_sha256") != weights_sha256:
        return None, "it was exported from other weights"
    try:
        data = (folder / GRAPH_FILE).read_bytes()
    except OSError as exc:
        return None, f"the graph is unreadable ({type(exc).__name__})"
    if hashlib.sha256(data).hexdigest() != manifest.get("graph_sha256"):
        return None, "the graph does not match its manifest's SHA-256 (corrupt)"
    return data, ""


def export(model_dir: Path, folder: Path, weights_sha256: str, loaded: Any = None) -> None:
    """Export the model (tokens -> mean-pooled hidden states) to ``folder``, then its manifest.

    ``loaded`` is the transformers model when the caller has it in float32 already. The manifest
    goes last, each file through a rename, so a kill -9 mid-export leaves a graph without a
    manifest, which the next load exports again.
    """
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a one-line CLI
    try:
        bert = (loaded or AutoModel.from_pretrained(str(model_dir))).eval()
    except Exception as exc:
        raise EmbedderError(f"cannot load {model_dir} to export its graph: {exc}") from exc

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{GRAPH_FILE}.{os.getpid()}.tmp"
    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on BERT's indexing: not ours
            torch.onnx.export(
                MeanPooled(),
                (ids, ids),
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript, dynamic shapes work
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure: one line, what to do
        tmp.unlink(missing_ok=True)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EmbedderError(
            f"cannot export the question graph of {model_dir} ({first}); `pip install onnx` "
            "if it is missing"
        ) from None
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, folder / GRAPH_FILE)
    manifest = {
        "format": GRAPH_FORMAT,
        "weights_sha256": weights_sha256,
        "graph_sha256": digest,
        "opset": OPSET,
        "torch": torch.__version__,
    }
    tmp_manifest = folder / f"{MANIFEST_FILE}.{os.getpid()}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp_manifest, folder / MANIFEST_FILE)


def ensure_graph(
    model_dir: Path, cache_dir: Path, weights_sha256: str, note: Note, loaded: Any = None
) -> bytes:
    """The verified graph's bytes, exported first when missing, corrupt or stale."""
    folder = graph_dir(cache_dir, weights_sha256)
    data, why = verified_graph(folder, weights_sha256)
    if data is not None:
        return data
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / "export.lock").open("a")
    except OSError as exc:
        raise EmbedderError(f"cannot write the question graph under {folder}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes: one exports, the other then reads it
        data, why_now = verified_graph(folder, weights_sha256)
        if data is None:
            note(f"exporting the question encoder's graph once ({why}); this imports torch")
            export(model_dir, folder, weights_sha256, loaded)
            data, why_now = verified_graph(folder, weights_sha256)
        if data is None:
            raise EmbedderError(f"the exported graph in {folder} does not verify: {why_now}")
    return data


class QuestionEncoder:
    """Questions -> unit vectors on onnxruntime; the session is built in a thread by ``start``."""

    def __init__(self, load_graph: Callable[[], bytes], model_dir: Path, max_tokens: int) -> None:
        self._load_graph = load_graph
        self._model_dir = model_dir
        self._max_tokens = max_tokens
        self._session: Any = None
        self._tokenizer: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Begin loading in the background (idempotent); ``encode`` waits for it."""
        with self._lock:
            if self._thread is None and self._session is None:
                # Not a daemon: a process that exits (a bad question, say) while onnxruntime builds
                # the session would abort in its C++ destructors; exit waits for it (< 0.5 s).
                self._thread = threading.Thread(target=self._load, name="rag-query")
                self._thread.start()

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.enable_truncation(self._max_tokens)  # counts [CLS]/[SEP] like HF's
            options = ort.SessionOptions()
            # One short question is a few small matmuls: more threads only add hand-off latency.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                self._load_graph(), options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = tokenizer
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by encode
            self._error = exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (padded as one batch)."""
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        rows = self._tokenizer.encode_batch(list(texts))
        width = max((len(r.ids) for r in rows), default=0)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row.ids)] = row.ids
            mask[i, : len(row.ids)] = 1
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        vectors = np.asarray(out, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.float32(1e-12))
