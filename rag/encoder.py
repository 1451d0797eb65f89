"""Torch-free numpy inference of sentence-transformers BERT encoders (e.g. all-MiniLM-L6-v2).

``rag ask`` is a short-lived process and importing torch costs seconds, so the question is embedded
here instead: Transformer -> mean Pooling -> optional Normalize, reproducing
``SentenceTransformer.encode`` to float32 rounding. Only numpy and tokenizers are imported and the
safetensors file is memory-mapped, so import plus loading takes a small fraction of a second.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer

from rag.errors import EmbedderError

_WORD_KEY = "embeddings.word_embeddings.weight"
_ST_PREFIX = "sentence_transformers."
_BERT_ARCH = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}  # others (int ids, bf16) are never needed
# Eigen/XLA float32 erf: x * P(x^2) / Q(x^2) on [-4, 4]. Its absolute error is ~4e-7, so GELU is
# within ~1.5e-6 of torch's exact-erf GELU, far inside the embedding tolerance, and it needs no exp.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip
# Tokens per forward pass (rows x padded length): small enough that the attention scores and the
# FFN activation stay in the L3 cache across softmax's and GELU's many elementwise passes.
_MAX_TOKENS = 512


class _Layer(NamedTuple):
    """An encoder layer: linears as (weight transposed to (in, out), bias), norms (gamma, beta)."""

    qkv: tuple[np.ndarray, np.ndarray]  # query/key/value fused; query pre-scaled by 1/sqrt(d_head)
    out: tuple[np.ndarray, np.ndarray]
    ln1: tuple[np.ndarray, np.ndarray]
    inter: tuple[np.ndarray, np.ndarray]
    ffn: tuple[np.ndarray, np.ndarray]
    ln2: tuple[np.ndarray, np.ndarray]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as read-only views of a memory map.

    The 47 MB word-embedding table is only gathered from, so a query reads a few of its pages
    instead of the whole file (safetensors.numpy.load_file costs ~90 ms).
    """
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] in _DTYPES:
            start, end = info["data_offsets"]
            buf = raw[8 + size + start : 8 + size + end]
            tensors[name] = buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def _module_kinds(modules: list[dict[str, Any]]) -> list[str]:
    """Class names of the sentence-transformers modules ("" for anything from another package)."""
    types = [str(module["type"]) for module in modules]
    return [t.rsplit(".", 1)[-1] if t.startswith(_ST_PREFIX) else "" for t in types]


def is_supported(model_dir: Path) -> bool:
    """True when ``model_dir`` holds a BERT sentence-transformers model this encoder reproduces.

    That is: config ``model_type`` "bert" with exact GELU and absolute positions, modules
    Transformer + Pooling (mean tokens only) + optional Normalize, and ``model.safetensors`` plus
    ``tokenizer.json`` next to them. Anything else should go through sentence-transformers.
    """
    model_dir = Path(model_dir)
    try:
        # HF defaults apply to keys the config leaves out; model_type has no default.
        config = {**_BERT_ARCH, "model_type": None, **_read_json(model_dir / "config.json")}
        modules = _read_json(model_dir / "modules.json")
        if any(config[key] != value for key, value in _BERT_ARCH.items()):
            return False
        kinds = _module_kinds(modules)
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return False
        # The weights must be the root files, not a Transformer stored in a sub-folder.
        if modules[0].get("path", "") not in ("", "."):
            return False
        pooling = _read_json(model_dir / modules[1].get("path", "") / "config.json")
        modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
        if modes.pop("pooling_mode_mean_tokens", False) is not True or any(modes.values()):
            return False
        sbert_path = model_dir / "sentence_bert_config.json"
        # ST lowercases the raw text itself when do_lower_case is set; not reproduced here.
        if sbert_path.is_file() and _read_json(sbert_path).get("do_lower_case", False):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False
    return (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()


def _linear(x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    y = x @ weight_bias[0]
    y += weight_bias[1]
    return y


def _layer_norm(x: np.ndarray, gamma_beta: tuple[np.ndarray, np.ndarray], eps: float) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(x * x, axis=-1, keepdims=True)
    x *= 1.0 / np.sqrt(var + np.float32(eps))
    x *= gamma_beta[0]
    x += gamma_beta[1]
    return x


def _horner(x: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    out = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        out *= x
        out += np.float32(c)
    return out


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU computed in place: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    z = np.clip(x, -4.0 * math.sqrt(2.0), 4.0 * math.sqrt(2.0))
    z *= np.float32(1.0 / math.sqrt(2.0))
    z2 = z * z
    p, q = _horner(z2, _ERF_P), _horner(z2, _ERF_Q)
    p *= z
    p /= q
    p += 1.0
    x *= p
    x *= 0.5
    return x


class BertEncoder:
    """A sentence-transformers BERT model (mean pooling, optional Normalize) run with numpy."""

    def __init__(self, model_dir: Path) -> None:
        """Load float32 weights and the tokenizer from ``model_dir`` (see :func:`is_supported`)."""
        model_dir = Path(model_dir)
        if not is_supported(model_dir):
            raise EmbedderError(f"{model_dir}: not a model the numpy BERT encoder can run")
        config = _read_json(model_dir / "config.json")
        modules = _read_json(model_dir / "modules.json")
        self.dim: int = int(config["hidden_size"])
        self.normalize: bool = "Normalize" in _module_kinds(modules)
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        max_positions = int(config.get("max_position_embeddings", 512))
        sbert_path = model_dir / "sentence_bert_config.json"
        sbert = _read_json(sbert_path) if sbert_path.is_file() else {}
        limit = int(sbert.get("max_seq_length") or max_positions)
        self.max_seq_length: int = min(limit, max_positions)

        # tokenizer.json ships with truncation/padding to 128 baked in; callers count tokens and
        # take offsets with this tokenizer, so both are switched off and encode() truncates.
        self.tokenizer: Tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._specials = self.tokenizer.num_special_tokens_to_add(is_pair=False)

        try:
            tensors = _map_safetensors(model_dir / "model.safetensors")
            # Checkpoints saved from a task head carry "bert." / "model." in front of every key.
            prefix = next(k[: -len(_WORD_KEY)] for k in tensors if k.endswith(_WORD_KEY))
            self._load(lambda name: np.asarray(tensors[prefix + name], dtype=np.float32), config)
        except (StopIteration, KeyError, ValueError, OSError) as exc:
            raise EmbedderError(f"{model_dir}: cannot load BERT weights ({exc!r})") from exc

    def _load(self, w: Callable[[str], np.ndarray], config: dict[str, Any]) -> None:
        """Keep the weights in the layout the forward pass wants (transposed, QKV fused)."""

        def lin(name: str) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(w(name + ".weight").T), w(name + ".bias")

        def norm(name: str) -> tuple[np.ndarray, np.ndarray]:
            return w(name + ".weight"), w(name + ".bias")

        self._word = w(_WORD_KEY)
        # Every token has type id 0, so its embedding is folded into the position table.
        pos = w("embeddings.position_embeddings.weight")
        self._pos_type = pos + w("embeddings.token_type_embeddings.weight")[0]
        self._emb_ln = norm("embeddings.LayerNorm")
        scale = np.float32(1.0 / math.sqrt(self.dim // self._heads))
        self._layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            parts = [lin(f"{p}attention.self.{n}") for n in ("query", "key", "value")]
            qkv_w = np.concatenate([part[0] for part in parts], axis=1)
            qkv_b = np.concatenate([part[1] for part in parts])
            qkv_w[:, : self.dim] *= scale  # fold the attention scale into the query projection
            qkv_b[: self.dim] *= scale
            self._layers.append(
                _Layer(
                    (qkv_w, qkv_b),
                    lin(p + "attention.output.dense"),
                    norm(p + "attention.output.LayerNorm"),
                    lin(p + "intermediate.dense"),
                    lin(p + "output.dense"),
                    norm(p + "output.LayerNorm"),
                )
            )

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP], truncated like HF's ``truncation="longest_first"``."""
        budget = self.max_seq_length - self._specials
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for enc in encodings:
            if len(enc.ids) > budget:
                enc.truncate(budget)
        return [self.tokenizer.post_process(enc).ids for enc in encodings]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled last hidden states for one padded batch: (b, n) ids -> (b, dim)."""
        b, n = ids.shape
        h, heads = self.dim, self._heads
        x = self._word[ids] + self._pos_type[:n]
        x = _layer_norm(x.reshape(b * n, h), self._emb_ln, self._eps)
        # Padded keys get a huge negative score so their softmax weight underflows to exactly 0,
        # which is what makes a text's embedding independent of the batch it is padded into.
        key_bias = np.where(mask, 0.0, -1e9).astype(np.float32)[:, None, None]
        for lay in self._layers:
            qkv = _linear(x, lay.qkv).reshape(b, n, 3, heads, h // heads)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (b, heads, n, d_head)
            scores = q @ k.transpose(0, 1, 3, 2)
            if not mask.all():
                scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            # Softmax's division is applied to the (n, d_head) context rather than the (n, n) scores.
            ctx = scores @ v
            ctx /= scores.sum(axis=-1, keepdims=True)
            attn = _linear(ctx.transpose(0, 2, 1, 3).reshape(b * n, h), lay.out)
            attn += x
            x = _layer_norm(attn, lay.ln1, self._eps)
            ffn = _linear(_gelu_(_linear(x, lay.inter)), lay.ffn)
            ffn += x
            x = _layer_norm(ffn, lay.ln2, self._eps)
        weights = mask.astype(np.float32)[:, :, None]
        summed = (x.reshape(b, n, h) * weights).sum(axis=1)
        return summed / np.maximum(weights.sum(axis=1), np.float32(1e-9))

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts`` as an (n, dim) float32 array, rows in input order.

        Each text is truncated to ``max_seq_length`` tokens including [CLS]/[SEP]. Texts are sorted
        by length and padded per batch, so batches stay tight; results do not depend on batching.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        token_ids = self._token_ids(texts)
        order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        start = 0
        while start < len(order):
            n = len(token_ids[order[start]])  # the longest of its batch: order is by length
            chunk = order[start : start + min(batch_size, max(1, _MAX_TOKENS // n))]
            start += len(chunk)
            mask = np.arange(n) < np.array([len(token_ids[i]) for i in chunk])[:, None]
            ids = np.zeros(mask.shape, dtype=np.int64)
            ids[mask] = np.concatenate([token_ids[i] for i in chunk])
            out[chunk] = self._forward(ids, mask)
        if self.normalize:
            # Same as torch.nn.functional.normalize: divide by max(norm, 1e-12).
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, np.float32(1e-12))
        return out
