"""The package as users get it: a wheel, installed (not editable) into a fresh virtual environment,
works from another directory: the bundled data and the prompts come from inside the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from rag.corpus import Paper
from tests.conftest import REPO
from tests.openai_server import FakeOpenAI


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_the_wheel_installs_and_answers_from_another_directory(
    tmp_path: Path, corpus: list[Paper]
) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO)
    wheel = next(dist.glob("rag_papers-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_files = ("glossary.txt", "policy.json", "runtimes.json")
    for shipped in (*(f"rag/data/{f}" for f in shipped_files), "rag/_prompts/system.md"):
        assert shipped in names
    assert sum(n.startswith("rag/data/corpus/") and n.endswith(".txt") for n in names) == len(
        list((REPO / "rag" / "data" / "corpus").glob("*.txt"))
    )

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    # The dependencies are this environment's (nothing to download): a plain path entry, after
    # the new environment's own site-packages, where the wheel goes. Its .pth files (this
    # checkout's editable install among them) are not read from a plain path entry.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    own = venv / "lib" / version / "site-packages"
    (own / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env.update(RAG_INDEX_DIR=str(tmp_path / "index"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    where = run(
        venv / "bin" / "python", "-c", "import rag; print(rag.__file__)", cwd=elsewhere, env=env
    )
    assert Path(where.stdout.strip()).is_relative_to(own)

    papers = tmp_path / "papers.jsonl"
    papers.write_text(
        "".join(json.dumps({"title": p.title, "abstract": p.abstract}) + "\n" for p in corpus[:12])
    )
    rag = venv / "bin" / "rag"
    run(rag, "ingest", papers, cwd=elsewhere, env=env)
    asked = run(rag, "ask", "--json", corpus[5].title, cwd=elsewhere, env=env)
    assert json.loads(asked.stdout)["retrieved"][0]["title"] == corpus[5].title

    # The LLM path reads the prompts shipped in the wheel.
    server = FakeOpenAI()
    try:
        llm = run(
            rag,
            "ask",
            "--json",
            corpus[5].title,
            cwd=elsewhere,
            env={**env, "OPENAI_BASE_URL": server.url},
        )
        system = server.chat_requests()[0].body["messages"][0]["content"]
    finally:
        server.close()
    assert json.loads(llm.stdout)["citations"]
    assert system.startswith((REPO / "prompts" / "system.md").read_text().splitlines()[0])
