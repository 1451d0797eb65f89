"""The ``rag`` command in real subprocesses: output contracts, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from rag.corpus import Paper
from tests.conftest import cli_env, run_cli

ASK_KEYS = {
    "question", "answer", "abstained", "citations", "retrieved", "intent", "model", "timings_ms",
    "invalid_citations", "uncited_sentences", "truncated", "echoed_sentences", "prompt", "lexical",
    "widened",
}  # fmt: skip
MARKER = re.compile(r"\[(\d+(?:\s*[-–,]\s*\d+)*)\]")


def write_jsonl(path: Path, papers: list[Paper]) -> Path:
    path.write_text(
        "".join(json.dumps({"title": p.title, "abstract": p.abstract}) + "\n" for p in papers),
        encoding="utf-8",
    )
    return path


def marker_numbers(answer: str) -> list[int]:
    """Every number cited in ``answer``, in order of appearance ([1, 3-4] gives 1, 3, 4)."""
    numbers: list[int] = []
    for group in MARKER.findall(answer):
        for part in re.split(r"\s*,\s*", group):
            bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part)]
            numbers.extend(range(bounds[0], bounds[-1] + 1))
    return numbers


def check_ask_json(stdout: str) -> dict:
    """Check the ``rag ask --json`` contract; return the object."""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout  # one line, nothing else
    out = json.loads(stdout)
    assert set(out) == ASK_KEYS
    assert isinstance(out["question"], str) and isinstance(out["answer"], str)
    assert isinstance(out["abstained"], bool)
    assert out["model"] == "offline"

    citations = out["citations"]
    assert isinstance(citations, list)
    for c in citations:
        assert set(c) == {"n", "paper_id", "title"}
        assert isinstance(c["n"], int) and isinstance(c["paper_id"], str)
        assert isinstance(c["title"], str) and c["title"]
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    cited = marker_numbers(out["answer"])
    first_seen = list(dict.fromkeys(cited))
    assert first_seen == [c["n"] for c in citations]  # numbered by first appearance, none missing

    assert out["intent"] in {"single", "list", "comparison", "metadata"}
    retrieved = out["retrieved"]
    for r in retrieved:
        assert set(r) == {"paper_id", "title", "score", "probability"}
        assert isinstance(r["paper_id"], str) and isinstance(r["title"], str)
        assert isinstance(r["score"], float) and 0.0 <= r["probability"] <= 1.0
    # Shown most probable first (a paper the question names may follow, out of order).
    named = out["intent"] in {"comparison", "metadata"}
    probabilities = [r["probability"] for r in retrieved]
    assert named or probabilities == sorted(probabilities, reverse=True)
    assert len({r["paper_id"] for r in retrieved}) == len(retrieved)
    titles = {r["paper_id"]: r["title"] for r in retrieved}
    assert all(titles.get(c["paper_id"]) == c["title"] for c in citations)  # cites what it found

    timings = out["timings_ms"]
    assert set(timings) == {"retrieve", "generate", "total"}
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert timings["total"] >= timings["retrieve"]
    return out


# --- rag ask --json --------------------------------------------------------------------------


def test_ask_json_contract(built_index: Path) -> None:
    question = "How does FlashAttention reduce memory traffic?"
    done = run_cli("ask", "--json", question, env=cli_env(built_index))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = check_ask_json(done.stdout)
    assert out["question"] == question
    assert not out["abstained"] and out["citations"]
    assert len(out["retrieved"]) == 8  # the default top_k


def test_ask_json_list_question_cites_the_hopper_papers(built_index: Path) -> None:
    done = run_cli("ask", "--json", "which papers target Hopper GPUs", env=cli_env(built_index))
    assert done.returncode == 0, done.stderr
    out = check_ask_json(done.stdout)
    assert len(out["retrieved"]) == 30  # list questions show list_k papers
    assert {
        "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture",
        "TokenWeave: Efficient Compute-Communication Overlap for Distributed LLM Inference",
        "Characterizing and Optimizing LLM Inference Workloads on CPU-GPU Coupled Architectures",
    } <= {c["title"] for c in out["citations"]}


def test_ask_json_k(built_index: Path) -> None:
    done = run_cli(
        "ask", "--json", "-k", "3", "What is speculative decoding?", env=cli_env(built_index)
    )
    assert done.returncode == 0, done.stderr
    out = check_ask_json(done.stdout)
    assert len(out["retrieved"]) == 3


def test_ask_plain_text_streams_answer_and_sources(built_index: Path) -> None:
    done = run_cli("ask", "which papers target Hopper GPUs", env=cli_env(built_index))
    assert done.returncode == 0, done.stderr
    answer, _, sources = done.stdout.partition("\nSources:\n")
    assert sources, done.stdout
    lines = sources.strip().splitlines()
    assert [int(re.match(r"\s*\[(\d+)\] ", line).group(1)) for line in lines] == list(
        range(1, len(lines) + 1)
    )
    assert set(marker_numbers(answer)) == set(range(1, len(lines) + 1))


# --- rag ingest --json -----------------------------------------------------------------------


def test_ingest_json_then_again(tmp_path: Path, corpus: list[Paper]) -> None:
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    write_jsonl(corpus_dir / "a.jsonl", corpus[500:512])
    write_jsonl(corpus_dir / "b.jsonl", corpus[512:520])
    env = cli_env(tmp_path / "index")

    first = run_cli("ingest", "--json", str(corpus_dir), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1
    counts = json.loads(first.stdout)
    assert set(counts) == {
        "papers", "chunks", "embedded", "skipped", "replaced", "duplicates", "truncated", "seconds",
        "phases",
    }  # fmt: skip
    assert set(counts["phases"]) == {"scan", "chunk", "embed", "vectors", "records"}
    assert all(isinstance(counts[k], int) for k in ("papers", "chunks", "embedded", "skipped"))
    assert isinstance(counts["seconds"], float)
    assert counts["papers"] == 20
    assert counts["chunks"] >= 20
    assert counts["embedded"] == counts["chunks"] and counts["skipped"] == 0
    # Progress is on stderr (one line per stored batch when not a terminal), never on stdout.
    progress = [line for line in first.stderr.splitlines() if line.startswith("stored ")]
    assert progress and re.fullmatch(
        r"stored 20/20 papers, [\d,]+ papers/s, 00:00:00 left", progress[-1]
    )
    assert "stored" not in first.stdout

    second = run_cli("ingest", "--json", str(corpus_dir), env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["papers"] == 20 and again["chunks"] == counts["chunks"]
    assert again["embedded"] == 0 and again["skipped"] == counts["chunks"]
    assert not [line for line in second.stderr.splitlines() if line.startswith("stored ")]


# --- bad inputs: exit 2, one line, no traceback ----------------------------------------------


def assert_one_line_error(done: subprocess.CompletedProcess[str], *, contains: str = "") -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ")
    assert contains in lines[0], lines[0]
    assert done.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("question", "contains"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 100_000, "100,000 characters"),
    ],
    ids=["empty", "blank", "huge"],
)
def test_unusable_question(built_index: Path, question: str, contains: str) -> None:
    assert_one_line_error(run_cli("ask", question, env=cli_env(built_index)), contains=contains)


def test_k_zero(built_index: Path) -> None:
    done = run_cli("ask", "-k", "0", "what is FlashAttention?", env=cli_env(built_index))
    assert_one_line_error(done, contains="k must be a whole number between 1 and 100")


def test_non_integer_top_k(built_index: Path) -> None:
    done = run_cli("ask", "what is FlashAttention?", env=cli_env(built_index, RAG_TOP_K="eight"))
    assert_one_line_error(done, contains="RAG_TOP_K")


def test_ingest_missing_path(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    done = run_cli("ingest", "/missing/path", env=cli_env(index_dir))
    assert_one_line_error(done, contains="/missing/path")
    assert not index_dir.exists()


def test_ask_without_index_creates_nothing(tmp_path: Path) -> None:
    index_dir = tmp_path / "empty"
    index_dir.mkdir()
    done = run_cli("ask", "what is FlashAttention?", env=cli_env(index_dir))
    line = assert_one_line_error(done, contains="no index yet")
    assert "rag ingest" in line
    assert list(index_dir.iterdir()) == []


def test_ingest_malformed_jsonl_names_file_and_line(tmp_path: Path, corpus: list[Paper]) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"title": p.title, "abstract": p.abstract}) for p in corpus[:4]]
    lines[2] = '{"title": "A paper", "abstract": '
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    index_dir = tmp_path / "index"
    done = run_cli("ingest", str(bad), env=cli_env(index_dir))
    assert_one_line_error(done, contains=f"{bad}:3:")
    assert not index_dir.exists()


def test_other_model_against_the_index(built_index: Path) -> None:
    done = run_cli(
        "ask", "what is FlashAttention?", env=cli_env(built_index, RAG_EMBED_MODEL="hash")
    )
    line = assert_one_line_error(done, contains="rag ingest --rebuild")
    assert "sentence-transformers/all-MiniLM-L6-v2" in line and "'hash'" in line


# --- rag doctor and --help -------------------------------------------------------------------


def test_doctor_on_the_index(built_index: Path) -> None:
    done = run_cli("doctor", env=cli_env(built_index))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip()}
    assert lines["embedder"].startswith("ok") and "all-MiniLM-L6-v2" in lines["embedder"]
    assert lines["store"].startswith("ok") and str(built_index) in lines["store"]
    assert lines["index"].startswith("ok") and "554 papers" in lines["index"]
    assert lines["policy"].startswith("ok") and "shipped: fitted on" in lines["policy"]

    as_json = run_cli("doctor", "--json", env=cli_env(built_index))
    assert as_json.returncode == 0
    checks = json.loads(as_json.stdout)
    assert all(c["ok"] for c in checks.values())
    assert "554 papers" in checks["index"]["detail"]


def test_doctor_flags_a_policy_fitted_with_another_embedding_model(tmp_path: Path) -> None:
    done = run_cli("doctor", env=cli_env(tmp_path / "nothing", RAG_EMBED_MODEL="hash"))
    policy = next(line for line in done.stdout.splitlines() if " policy " in line)
    assert policy.startswith("FAIL") and "another embedding model" in policy and "rag fit" in policy


def test_doctor_without_index(tmp_path: Path) -> None:
    done = run_cli("doctor", env=cli_env(tmp_path / "nothing"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    index_line = next(line for line in done.stdout.splitlines() if " index " in line)
    assert index_line.startswith("FAIL")
    assert "no index" in index_line


@pytest.mark.parametrize("args", [(), ("ask",), ("ingest",), ("chat",), ("doctor",)])
def test_help(args: tuple[str, ...]) -> None:
    done = run_cli(*args, "--help", env=cli_env(Path("/nonexistent-index")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: rag")
    assert done.stderr == ""
