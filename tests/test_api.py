"""The public API, and what importing and asking cost in imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rag
from tests.conftest import REPO, cli_env


def test_public_names() -> None:
    assert set(rag.__all__) == {
        "NOT_FOUND", "Analysis", "AskResult", "ChatModel", "Citation", "CorpusError", "Embedder",
        "EmbedderError", "ExtractiveAnswerer", "HashEmbedder", "IndexMissingError", "InputError",
        "LLMError", "ModelMismatchError", "Paper", "Policy", "Rag", "RagError",
        "ScriptedChatModel", "Settings", "StoreError", "Turn", "load_paths",
    }  # fmt: skip
    for name in rag.__all__:
        assert getattr(rag, name) is not None


def test_errors_share_one_base() -> None:
    for name in ("CorpusError", "EmbedderError", "IndexMissingError", "InputError",
                 "ModelMismatchError", "StoreError", "LLMError"):  # fmt: skip
        assert issubclass(getattr(rag, name), rag.RagError)


def test_import_is_light() -> None:
    code = "import rag, sys; print(sorted(m for m in ('torch', 'sentence_transformers', 'chromadb', 'openai', 'gradio', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_asking_imports_neither_torch_nor_gradio(built_index: Path) -> None:
    """`rag ask` embeds the question on onnxruntime: torch would cost ~9 s per cold start (and
    gradio, which only `rag chat` needs, ~4 s)."""
    code = (
        "import sys, json; from rag.cli import cli; "
        "sys.argv = ['rag', 'ask', '--json', 'which papers target Hopper GPUs']\n"
        "try:\n    cli(prog_name='rag')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
        "print('GRADIO' if 'gradio' in sys.modules else 'NO-GRADIO', file=sys.stderr)\n"
        "print('SKLEARN' if 'sklearn' in sys.modules else 'NO-SKLEARN', file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=cli_env(built_index),
        cwd=REPO,
    )
    # Nor scikit-learn: the fitted policy runs as plain arithmetic; only `rag fit` needs it.
    assert out.stderr.strip().endswith("NO-TORCH\nNO-GRADIO\nNO-SKLEARN"), out.stderr
    assert '"citations"' in out.stdout
