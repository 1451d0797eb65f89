"""The answering policy: every weight, threshold and limit that decides what is retrieved, shown
and cited, in one frozen object that reranking, selection and the offline answerer all read.

Two kinds of field live here. Rules set by hand (how relevance mixes meaning and coverage, how
many papers are scored) carry the reason for their value in a comment. Fitted parameters (the
question-intent model, the citation model and its thresholds) come from ``rag fit``, which trains
them on gold questions with cross-validation grouped by question (see ``rag.fit``) and writes them,
with a record of how they were made, to ``rag/data/policy.json``. ``RAG_POLICY`` points at
another file (a policy fitted to your own collection and gold set).

``rag eval`` records the policy it ran with (``Policy.describe``) in ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rag.errors import InputError
from rag.resources import data_path

POLICY_FILE = "policy.json"


@dataclass(frozen=True, slots=True)
class LinearModel:
    """A logistic regression over named numeric features, standardised as when it was fitted."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def probability(self, values: Mapping[str, float]) -> float:
        """P(positive) for one row of ``values`` (every feature the model names must be there)."""
        z = self.intercept
        for name, mu, sd, w in zip(self.features, self.mean, self.scale, self.coef, strict=True):
            z += w * (values[name] - mu) / sd
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@dataclass(frozen=True, slots=True)
class TextModel:
    """A multinomial logistic regression over a question's wording features (binary) and, when
    fitted with them, its embedding (see ``rag.question``)."""

    classes: tuple[str, ...]
    vocabulary: Mapping[str, int]
    coef: tuple[tuple[float, ...], ...]  # one row per class, one column per vocabulary entry
    intercept: tuple[float, ...]
    vector_coef: tuple[tuple[float, ...], ...] = ()  # one row per class over the embedding

    def probabilities(
        self, features: Iterable[str], vector: Sequence[float] | None = None
    ) -> dict[str, float]:
        """P(class) for a text given as its features; unknown features carry no weight."""
        columns = {self.vocabulary[f] for f in features if f in self.vocabulary}
        scores = [
            b + sum(row[c] for c in columns)
            for row, b in zip(self.coef, self.intercept, strict=True)
        ]
        if self.vector_coef and vector is not None and len(vector) == len(self.vector_coef[0]):
            scores = [
                s + sum(w * v for w, v in zip(row, vector, strict=True))
                for s, row in zip(scores, self.vector_coef, strict=True)
            ]
        top = max(scores)
        exp = [math.exp(s - top) for s in scores]
        total = sum(exp)
        return {c: e / total for c, e in zip(self.classes, exp, strict=True)}


@dataclass(frozen=True, slots=True)
class Policy:
    """How questions are answered. Hand-set rules first, then what ``rag fit`` learned."""

    # -- relevance: the order candidates are judged in (rag.relevance) ---------------------------
    # relevance = cosine of the question to the paper's best chunk + this x IDF-weighted coverage of
    # the question's topic terms; chosen on eval/dev.jsonl (list recall@20 0.94 -> 0.98 as a rerank).
    coverage_weight: float = 0.35
    # A topic term found only after a comparison cue ("outperforms X on H100") counts this much: the
    # paper is about something else and mentions X as a baseline.
    compared_weight: float = 0.25
    # Papers fused from dense + BM25 hits per paper scored: fusion finds, relevance orders.
    fetch_factor: int = 2
    # Papers scored for every question, whatever its intent: the citation model's features are
    # relative to this pool (its median, its best), so it must not change with k or the intent.
    pool: int = 30
    # -- what is quoted -----------------------------------------------------------------------------
    # Sentences quoted per cited paper: a single answer quotes more of its one paper, a list or a
    # comparison one line per paper.
    single_sentences: int = 2
    list_sentences: int = 1
    # -- fitted by ``rag fit`` -----------------------------------------------------------------------
    # P(intent) of a question from its wording: single, list, comparison or metadata.
    intent: TextModel | None = None
    # P(paper answers the question) from its features (rag.selection.FEATURES).
    selection: LinearModel | None = None
    # Decline when no paper is at least this probable to answer, for a question one paper answers
    # and for one several do: a list's best paper is very probable whenever its topic is in the
    # collection, a paraphrased single answer's need not be. Chosen together by cross-validation
    # under a cap on false abstentions (rag.fit). Otherwise the most probable papers are cited, as
    # many as maximise the expected citation F1 (rag.selection.choose).
    decline_single: float = 0.5
    decline_list: float = 0.5
    # The embedding model the fitted part was fitted with (its weights' fingerprint): the intent
    # model reads question embeddings, and the citation model cosine similarities, of that model.
    embed_fingerprint: str = ""
    # How the fitted part was made: command, data, folds, cross-validated figures.
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        """Whether the fitted models are present (a policy without them cannot answer)."""
        return self.intent is not None and self.selection is not None

    def fitted_for(self, fingerprint: str) -> bool:
        """Whether the fitted models were fitted with the embedding model of ``fingerprint``."""
        return bool(self.embed_fingerprint) and self.embed_fingerprint == fingerprint

    def describe(self) -> dict[str, Any]:
        """The hand-set rules, the thresholds and a digest of the fitted models, for eval records."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        models = {k: plain.pop(k) for k in ("intent", "selection")}
        plain.pop("provenance")
        digest = hashlib.sha256(json.dumps(_to_json(models), sort_keys=True).encode()).hexdigest()
        return {
            **plain,
            "models_sha256": digest[:16],
            "selection_features": list(self.selection.features) if self.selection else [],
            "fitted_on": dict(self.provenance).get("datasets", []),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, as ``policy.json`` holds it."""
        return _to_json({f.name: getattr(self, f.name) for f in fields(self)})

    def save(self, path: Path) -> None:
        """Write ``to_json`` to ``path`` (stable key order, so a refit diffs cleanly)."""
        path.write_text(
            json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8"
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """The policy ``to_json`` wrote; unknown keys are refused (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy fields: {', '.join(unknown)}")
        values = dict(data)
        for key, kind in (("intent", TextModel), ("selection", LinearModel)):
            if values.get(key) is not None:
                values[key] = _model(kind, values[key])
        return cls(**values)

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        """The policy in ``path``, or the one shipped in the package."""
        where = path or data_path(POLICY_FILE)
        try:
            return cls.from_json(json.loads(Path(where).read_text(encoding="utf-8")))
        except OSError as exc:
            raise InputError(
                f"cannot read the policy {where}: {exc.strerror} (RAG_POLICY)"
            ) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"the policy {where} is not a valid policy file: {exc}") from None

    def with_fitted(self, **values: Any) -> Policy:
        """A copy with fitted fields replaced (what ``rag fit`` writes)."""
        return replace(self, **values)


def _model(kind: type, data: Mapping[str, Any]) -> Any:
    if kind is TextModel:
        return TextModel(
            tuple(data["classes"]),
            dict(data["vocabulary"]),
            tuple(tuple(float(v) for v in row) for row in data["coef"]),
            tuple(float(v) for v in data["intercept"]),
            tuple(tuple(float(v) for v in row) for row in data.get("vector_coef", ())),
        )
    return LinearModel(
        tuple(data["features"]),
        tuple(map(float, data["mean"])),
        tuple(map(float, data["scale"])),
        tuple(map(float, data["coef"])),
        float(data["intercept"]),
    )


def _to_json(value: Any) -> Any:
    if isinstance(value, LinearModel | TextModel):
        return _to_json(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_to_json(v) for v in value]
    if isinstance(value, float):
        return round(value, 8)  # fitted weights beyond 1e-8 are noise, and diffs stay readable
    return value
