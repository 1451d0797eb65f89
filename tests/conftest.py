"""Shared fixtures: the real embedding model and one real index of the bundled corpus per session.

Building the index embeds ~900 chunks with the real model (a minute or two on 2 CPU cores), so it
happens once; tests that must write get their own small index in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rag.corpus import Paper, load_bundled
from rag.embedding import load_embedder
from rag.pipeline import Rag
from rag.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def make_settings(index_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: explicit values only, never the developer's .env or RAG_* variables."""
    return Settings(_env_file=None, index_dir=index_dir, **overrides)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def embedder():
    """The real default embedder, shared (its model loads once)."""
    return load_embedder(make_settings(Path("/nonexistent-index-dir-for-hash-cache")))


@pytest.fixture(scope="session")
def corpus() -> list[Paper]:
    """The bundled corpus, parsed."""
    return load_bundled()


@pytest.fixture(scope="session")
def built_index(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """Directory of a real index of the whole bundled corpus, built once per session."""
    index_dir = tmp_path_factory.mktemp("index") / ".rag"
    rag = Rag(make_settings(index_dir), embedder=embedder)
    stats = rag.ingest()
    assert stats.papers == 554 and stats.embedded == stats.chunks
    return index_dir


@pytest.fixture(scope="session")
def rag(built_index: Path, embedder) -> Rag:
    """A ``Rag`` over the session index (read-only use, please)."""
    return Rag(make_settings(built_index), embedder=embedder)


def cli_env(index_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for running the real ``rag`` command against ``index_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env.update(RAG_INDEX_DIR=str(index_dir), HF_HUB_OFFLINE="1", **extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``rag ARGS`` in a real subprocess (as a user would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        env=env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
