"""One index, many processes: a second writer is refused, readers never see half a write.

The scenarios of bench/faults.py (which runs them N times and counts), run once each here with
real ``rag`` processes, then the cases it does not cover: an interrupted ingest reported and
repaired, a reader that never writes, and the chat app answering while another process ingests.
The multi-process scenarios use the hash embedder: the race is in the store, not in the model.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import faults
from rag.corpus import Paper
from rag.pipeline import Rag
from tests.conftest import cli_env, make_settings, run_cli, serve_app


def test_a_second_writer_is_refused_in_one_line_and_nothing_is_lost(tmp_path: Path) -> None:
    outcome = faults.concurrent_ingests(tmp_path, 150)
    assert outcome.failures == []
    assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)


def test_questions_during_an_ingest_leave_keyword_search_complete(tmp_path: Path) -> None:
    outcome = faults.asks_during_ingest(tmp_path, 250)
    assert outcome.asks >= 4, "the asks must have overlapped the ingest"
    assert outcome.failures == []
    assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)


def test_a_rebuild_killed_half_way_leaves_the_old_index_answering(tmp_path: Path) -> None:
    outcome = faults.killed_rebuild(tmp_path, 150)
    assert outcome.failures == []
    assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)
    assert not (tmp_path / "index.rebuilding").exists()  # the second rebuild cleared the first's


COVERS = re.compile(r"covers (\d+) of (\d+) chunks")


def test_an_interrupted_ingest_is_reported_then_repaired_and_readers_write_nothing(
    tmp_path: Path,
) -> None:
    index_dir = tmp_path / "index"
    env = faults.environment(index_dir)
    old, new = faults.synthetic(60), faults.synthetic(300, start=60)
    assert (
        run_cli("ingest", str(faults.write_jsonl(tmp_path / "old.jsonl", old)), env=env).returncode
        == 0
    )
    source = faults.write_jsonl(tmp_path / "new.jsonl", new)
    with faults.ingesting(str(source), env=env, after=2) as running:
        running.send_signal(signal.SIGKILL)
        running.wait()
    records = faults.reader(index_dir).index.records
    before = (records.version(), records.chunk_ids(), records.paper_ids())
    assert 60 < len(before[2]) < 360, "the kill must have landed half-way"

    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 1
    line = next(x for x in doctor.stdout.splitlines() if "lexical" in x)
    assert line.startswith("FAIL") and "interrupted" in line and "rag ingest" in line
    asked = run_cli("ask", "--json", old[5]["title"], env=env)
    assert asked.returncode == 0, asked.stderr
    out = json.loads(asked.stdout)
    assert out["retrieved"][0]["paper_id"] == old[5]["id"]  # what was stored answers
    assert "interrupted" in out["lexical"]
    plain = run_cli("ask", old[5]["title"], env=env)
    assert plain.returncode == 0 and "note: an ingest was interrupted" in plain.stderr
    # Neither the doctor nor the readers wrote to the records.
    assert (records.version(), records.chunk_ids(), records.paper_ids()) == before

    again = run_cli("ingest", "--json", str(source), env=env)
    assert again.returncode == 0, again.stderr
    doctor = run_cli("doctor", env=env)
    line = next(x for x in doctor.stdout.splitlines() if "lexical" in x)
    assert line.startswith("ok") and "as the last ingest left it" in line
    covered, chunks = map(int, COVERS.search(line).groups())
    assert covered == chunks > json.loads(again.stdout)["chunks"]  # the old papers' and the new
    found = run_cli("ask", "--json", new[-1]["title"], env=env)
    assert json.loads(found.stdout)["retrieved"][0]["paper_id"] == new[-1]["id"]
    assert json.loads(found.stdout)["lexical"] is None


def test_the_chat_app_answers_while_another_process_ingests(
    tmp_path: Path, built_index: Path, embedder, corpus: list[Paper]
) -> None:
    from gradio_client import Client

    index_dir = tmp_path / "index"
    shutil.copytree(built_index, index_dir)
    rag = Rag(make_settings(index_dir), embedder=embedder)
    added = faults.synthetic(40, start=1000)
    source = faults.write_jsonl(tmp_path / "more.jsonl", added)
    env = cli_env(index_dir, RAG_INGEST_BATCH="1")  # many batches: the ingest lasts a while
    with serve_app(rag) as url:
        app = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        answered = 0
        with faults.ingesting(str(source), env=env) as running:
            while running.poll() is None:
                paper = corpus[answered % len(corpus)]
                out = app.predict(paper.title, 3, "offline", api_name="/ask")
                assert out["retrieved"][0]["paper_id"] == paper.id
                answered += 1
            assert faults.finish(running) == 0
        assert answered >= 2, "the questions must have overlapped the ingest"
        # The app follows the new publication on its next question: no restart.
        asked = [(p["title"], p["id"]) for p in (added[0], added[-1])] + [
            (corpus[3].title, corpus[3].id)
        ]
        for title, paper_id in asked:
            out = app.predict(title, 3, "offline", api_name="/ask")
            assert out["retrieved"][0]["paper_id"] == paper_id
            assert out["lexical"] is None


# --- a full disk -----------------------------------------------------------------------------


@contextmanager
def small_disk(root: Path, megabytes: int) -> Iterator[tuple[Path, Callable[[int], None], Any]]:
    """A folder on a disk of ``megabytes``, a way to grow it, and a ``preexec_fn`` for the
    processes that write there. A tmpfs where this process may mount one (root, as in CI); else
    the kernel's file-size limit (RLIMIT_FSIZE) on those processes: writes past it fail too."""
    folder = root / "disk"
    folder.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                capture_output=True,
            ).returncode
            == 0
        )
    except OSError:  # no mount command here
        mounted = False
    if mounted:
        try:
            yield (
                folder,
                lambda size: subprocess.run(
                    ["mount", "-o", f"remount,size={size}m", str(folder)], check=True
                ),
                None,
            )
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    limit = {"bytes": megabytes * 2**20}

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit["bytes"], limit["bytes"]))

    yield folder, lambda size: limit.update(bytes=size * 2**20), limited


def rag_on(env: dict[str, str], preexec: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return faults.rag_command(*args, env=env, timeout=300, preexec=preexec)


def test_a_full_disk_is_one_line_and_loses_nothing_stored(tmp_path: Path) -> None:
    old, new = faults.synthetic(40), faults.synthetic(400, start=40)
    first = faults.write_jsonl(tmp_path / "old.jsonl", old)
    more = faults.write_jsonl(tmp_path / "new.jsonl", new)
    with small_disk(tmp_path, 4) as (disk, grow, preexec):
        env = faults.environment(disk / "index")
        assert rag_on(env, preexec, "ingest", str(first)).returncode == 0

        full = rag_on(env, preexec, "ingest", str(more))
        error = [x for x in full.stderr.splitlines() if not x.startswith("stored ")]
        assert full.returncode == 1 and len(error) == 1 and "Traceback" not in full.stderr
        assert error[0].startswith("error: cannot store the papers in the index")
        assert "run `rag ingest` again: it resumes" in error[0]

        asked = rag_on(env, preexec, "ask", "--json", old[3]["title"])
        if asked.returncode != 0:  # the store may need room even to read: then one line too
            lines = asked.stderr.strip().splitlines()
            assert asked.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")

        grow(64)  # space freed: everything stored before is there, and the ingest resumes
        asked = rag_on(env, preexec, "ask", "--json", old[3]["title"])
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["retrieved"][0]["paper_id"] == old[3]["id"]
        resumed = rag_on(env, preexec, "ingest", "--json", str(more))
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["skipped"] > 0  # what was stored before the disk filled
        outcome = faults.Outcome()
        faults.audit(disk / "index", old + new, outcome)
        assert (outcome.unreadable, outcome.missing_lexical, outcome.not_first) == (0, 0, 0)
