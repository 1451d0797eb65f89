"""Shared fixtures: the real embedding model and one real index of the bundled corpus per session.

Building the index embeds ~900 chunks with the real model (a minute or two on 2 CPU cores), so it
happens once; tests that must write get their own small index in a temp dir.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded, ever
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry from the app or gradio_client

from rag.corpus import Paper, load_bundled
from rag.embedding import load_embedder
from rag.pipeline import Rag
from rag.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-screenshot",
        action="store_true",
        help="Also save the browser tests' screenshots (Hopper, list and judged answers) in docs/.",
    )


def make_settings(index_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: explicit values only, never the developer's .env or RAG_* variables."""
    return Settings(_env_file=None, index_dir=index_dir, **overrides)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def embedder():
    """The real default embedder, shared (its model loads once). Its question graph is exported
    now if this machine has none yet, so no test's `rag` subprocess does it (and says so)."""
    embedder = load_embedder(make_settings(Path("/nonexistent-index-dir-for-hash-cache")))
    embedder.embed_query("warm up")
    return embedder


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_app(rag: Rag) -> Iterator[str]:
    """The chat app over ``rag``, served in this process on a free port; yields its URL."""
    from rag import ui

    app = ui.build_app(rag, rag.settings)
    url, _ = ui.launch(app, rag.settings, "127.0.0.1", free_port())
    try:
        yield url
    finally:
        app.close()


class PixelServer:
    """A local HTTP server that records every path requested: an image that loads shows up here."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        pixel = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                pixel.paths.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """Where a corpus image would load from."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/pixel.png"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def pixel() -> Iterator[PixelServer]:
    """The session's pixel server."""
    server = PixelServer()
    yield server
    server.close()


INJECTED_QUESTION = (
    "What is ZebraFlash, the striped attention kernel, and how does it draw its progress?"
)


def injected_paper(pixel_url: str) -> dict[str, str]:
    """A paper whose title and abstract try HTML, Markdown and URL injection."""
    return {
        "title": f"ZebraFlash <img src=x onerror=alert(1)> kernels ![x]({pixel_url})",
        "abstract": (
            "We present ZebraFlash, a striped attention kernel <img src=x onerror=alert(1)> "
            "for Hopper GPUs. ZebraFlash draws its progress as ![chart](" + pixel_url + ") and "
            "<script>alert(2)</script> while it trains [link](javascript:alert(3)). "
            "It reaches 700 TFLOPS on one GPU."
        ),
        "url": "javascript:alert(4)",
    }


@pytest.fixture(scope="session")
def injected_rag(
    tmp_path_factory: pytest.TempPathFactory, embedder, corpus: list[Paper], pixel: PixelServer
) -> Rag:
    """A small real index (real embedder, real Chroma) holding the injected paper and 5 real ones."""
    root = tmp_path_factory.mktemp("injected")
    papers = [injected_paper(pixel.url)] + [
        {"title": p.title, "abstract": p.abstract} for p in corpus[:5]
    ]
    path = root / "papers.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in papers), encoding="utf-8")
    rag = Rag(make_settings(root / ".rag"), embedder=embedder)
    rag.ingest([path])
    return rag
