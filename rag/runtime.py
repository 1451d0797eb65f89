"""Which runtime embeds documents on this machine, chosen where it runs, and why.

Measured (bench/embed_runtimes.py, the results in ``rag/data/runtimes.json``): on a CPU with native
bf16 (AMX or AVX512-BF16), PyTorch in bfloat16 embeds the bundled corpus 2-3x faster than in
float32 with the same retrieval and citations; where bf16 would be emulated it is slower, so
float32 stays. On a GPU, float16. A runtime is chosen automatically only if the benchmark found
its eval/ metrics within ``TOLERANCE`` of float32 (``within`` in that file): speed never buys
quality here.

Questions are embedded apart (onnxruntime, float32: ``rag.graph``), so every runtime's document
vectors must agree with float32 ones: all runtimes here are of one ``FAMILY`` (cosine to float32
>= 0.999, pinned by a test), and an index records the runtime that built it; an index of another
family (a quantised one, say) is refused like another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from rag.resources import data_path

Choice = Literal["auto", "fp32", "bf16", "fp16"]
FAMILY = "float"  # vectors that agree with float32 to cosine >= 0.999
TOLERANCE = 0.005  # the most an eval/ metric may move for a runtime to be chosen automatically
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16
RESULTS_FILE = "runtimes.json"


@dataclass(frozen=True, slots=True)
class Runtime:
    """How documents are embedded: torch ``dtype`` on ``device``, and why."""

    device: str
    dtype: str  # "float32", "bfloat16" or "float16"
    reason: str
    family: str = FAMILY

    @property
    def name(self) -> str:
        return f"torch-{self.device}-{self.dtype}"


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


def measured() -> dict[str, dict[str, object]]:
    """The benchmark's verdict per runtime name: ``within`` TOLERANCE of float32 or not."""
    try:
        return json.loads(data_path(RESULTS_FILE).read_text(encoding="utf-8"))["runtimes"]
    except (OSError, ValueError, KeyError):
        return {}


def choose(
    choice: Choice, device: str, flags: frozenset[str], verdicts: dict[str, dict[str, object]]
) -> Runtime:
    """The runtime for ``choice`` ("auto" decides) on ``device`` ("cuda" or "cpu")."""
    if choice == "fp32":
        return Runtime(device, "float32", "asked for (RAG_EMBED_RUNTIME=fp32)")
    if choice == "fp16":
        return Runtime(device, "float16", "asked for (RAG_EMBED_RUNTIME=fp16)")
    if choice == "bf16":
        native = native_bf16(flags) if device == "cpu" else "cuda"
        said = f"native: {native}" if native else "emulated on this CPU: slower than float32"
        return Runtime(device, "bfloat16", f"asked for (RAG_EMBED_RUNTIME=bf16; {said})")
    if device.startswith("cuda"):
        return Runtime(device, "float16", "a GPU: float16 tensor cores")
    if device != "cpu":  # another accelerator (mps, xpu): nothing measured there, so float32
        return Runtime(device, "float32", f"{device}: float32, no other precision measured there")
    flag = native_bf16(flags)
    verdict = verdicts.get(Runtime("cpu", "bfloat16", "").name, {})
    if flag and verdict.get("within"):
        return Runtime(
            "cpu",
            "bfloat16",
            f"this CPU has native bf16 ({flag}), and bf16 kept eval/ within {TOLERANCE} of float32",
        )
    if flag:
        return Runtime("cpu", "float32", "bf16 is native here but not measured within tolerance")
    return Runtime("cpu", "float32", "no native bf16 on this CPU (AMX or AVX512-BF16)")
