"""Which runtime embeds documents on this machine, chosen where it runs, and why.

Measured (bench/embed_runtimes.py, the results in ``rag/data/runtimes.json``): on a CPU with native
bf16 (AMX or AVX512-BF16), PyTorch in bfloat16 embeds the bundled corpus 1.4-1.9x faster than in
float32 with the same retrieval and citations, and OpenVINO in bf16 on the exported graph
(``rag.graph``) 2.1-2.3x; where bf16 would be emulated it is slower, so float32 stays. On a GPU,
float16. A runtime is chosen automatically only if the benchmark found its eval/ metrics within
``TOLERANCE`` of float32 (``within`` in that file), the fastest such one of those installed:
speed never buys quality here. OpenVINO is optional (~180 MB): ``rag-papers[openvino]``.

Questions are embedded apart (onnxruntime, float32: ``rag.graph``), so every runtime's document
vectors must agree with float32 ones: all runtimes here are of one ``FAMILY`` (cosine to float32
>= 0.999, pinned by a test), and an index records the runtime that built it; an index of another
family (a quantised one, say) is refused like another model.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from rag.errors import EmbedderError
from rag.resources import data_path

Choice = Literal["auto", "fp32", "bf16", "fp16", "openvino"]
Engine = Literal["torch", "openvino"]
FAMILY = "float"  # vectors that agree with float32 to cosine >= 0.999
TOLERANCE = 0.005  # the most an eval/ metric may move for a runtime to be chosen automatically
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16
RESULTS_FILE = "runtimes.json"


@dataclass(frozen=True, slots=True)
class Runtime:
    """How documents are embedded: ``engine`` in ``dtype`` on ``device``, and why."""

    device: str
    dtype: str  # "float32", "bfloat16" or "float16"
    reason: str
    family: str = FAMILY
    engine: Engine = "torch"  # PyTorch (sentence-transformers), or OpenVINO on the exported graph

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.device}-{self.dtype}"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str]) -> str | None:
    """The flag that makes bf16 native on this CPU, if any."""
    return next((flag for flag in NATIVE_BF16 if flag in flags), None)


def engines() -> frozenset[str]:
    """The engines installed here: torch always; OpenVINO with ``pip install 'rag-papers[openvino]'``."""
    found = {"torch"}
    if importlib.util.find_spec("openvino") is not None:
        found.add("openvino")
    return frozenset(found)


def measured() -> dict[str, dict[str, object]]:
    """The benchmark's verdict per runtime name: ``within`` TOLERANCE of float32 or not."""
    try:
        return json.loads(data_path(RESULTS_FILE).read_text(encoding="utf-8"))["runtimes"]
    except (OSError, ValueError, KeyError):
        return {}


def choose(
    choice: Choice,
    device: str,
    flags: frozenset[str],
    verdicts: dict[str, dict[str, object]],
    installed: frozenset[str] = frozenset({"torch"}),
) -> Runtime:
    """The runtime for ``choice`` ("auto" decides) on ``device`` ("cuda", "cpu", ...).

    "auto" on a CPU takes, of the candidates installed here (``installed``: see ``engines``) and
    native on this CPU, the fastest the benchmark measured whose eval/ metrics stayed within
    ``TOLERANCE`` of PyTorch float32; float32 itself when none is.
    """
    if choice == "fp32":
        return Runtime(device, "float32", "asked for (RAG_EMBED_RUNTIME=fp32)")
    if choice == "fp16":
        return Runtime(device, "float16", "asked for (RAG_EMBED_RUNTIME=fp16)")
    if choice == "bf16":
        native = native_bf16(flags) if device == "cpu" else "cuda"
        said = f"native: {native}" if native else "emulated on this CPU: slower than float32"
        return Runtime(device, "bfloat16", f"asked for (RAG_EMBED_RUNTIME=bf16; {said})")
    if choice == "openvino":
        if "openvino" not in installed:
            raise EmbedderError(
                "RAG_EMBED_RUNTIME=openvino needs OpenVINO: pip install 'rag-papers[openvino]'"
            )
        dtype = "bfloat16" if native_bf16(flags) else "float32"
        return Runtime("cpu", dtype, "asked for (RAG_EMBED_RUNTIME=openvino)", engine="openvino")
    if device.startswith("cuda"):
        return Runtime(device, "float16", "a GPU: float16 tensor cores")
    if device != "cpu":  # another accelerator (mps, xpu): nothing measured there, so float32
        return Runtime(device, "float32", f"{device}: float32, no other precision measured there")
    flag = native_bf16(flags)
    reference = Runtime("cpu", "float32", "")
    candidates = [reference]
    if flag:
        candidates.append(Runtime("cpu", "bfloat16", ""))
    if "openvino" in installed:
        candidates.append(Runtime("cpu", "float32", "", engine="openvino"))
        if flag:
            candidates.append(Runtime("cpu", "bfloat16", "", engine="openvino"))
    within = [c for c in candidates if c is reference or verdicts.get(c.name, {}).get("within")]
    base = _seconds(verdicts, reference)
    best = min(within, key=lambda c: (_seconds(verdicts, c), c is not reference))
    if best is reference:
        if flag:
            return replace(
                reference, reason="bf16 is native here but not measured within tolerance"
            )
        return replace(reference, reason="no native bf16 on this CPU (AMX or AVX512-BF16)")
    native = f"native bf16 ({flag}); " if best.dtype == "bfloat16" else ""
    return replace(
        best,
        reason=f"{native}the fastest candidate installed here that kept eval/ within {TOLERANCE} "
        f"of float32 ({_seconds(verdicts, best):g} s against {base:g} s for PyTorch float32 in "
        "bench/embed_runtimes.py)",
    )


def _seconds(verdicts: dict[str, dict[str, object]], runtime: Runtime) -> float:
    value = verdicts.get(runtime.name, {}).get("seconds")
    return float(value) if isinstance(value, int | float) else float("inf")
