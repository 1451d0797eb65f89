"""Chroma's local writes in a child process, so that they overlap the ingest's own work.

Chroma's local client holds the GIL while it writes: measured here, a Python thread beside an
``add`` of 20,000 vectors ran at 0.6% of its speed, so a writer thread overlaps nothing. A child
process (spawned: the parent's Chroma and torch threads must not be forked) opens the collection
and applies the batches it is sent, in order, acknowledging each; the parent chunks, embeds and
writes the records meanwhile, and writes a batch's records only once its vectors are
acknowledged (what a reader finds in the records has its vectors). The child stops when told,
when its parent dies (a kill -9 of ``rag ingest`` leaves no writer behind) or on its first error,
which the parent raises as its own.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from pathlib import Path
from typing import Any

POLL_S = 1.0  # how often a waiting child checks that its parent lives, and a parent its child


class WriterError(RuntimeError):
    """The child's error, as one line (its type and message)."""


class ChromaWriter:
    """A child process writing to one local collection: ``send`` returns at once, ``wait``
    blocks until the jobs sent are written."""

    def __init__(self, index_dir: Path, collection: str) -> None:
        context = multiprocessing.get_context("spawn")
        # Unbounded: the ingest waits for a batch's writes before it prepares the batch after the
        # next, so at most two batches are ever queued.
        self._jobs: Any = context.Queue()
        self._acks: Any = context.Queue()
        self._sent = 0
        self._acked = 0
        self._process = context.Process(
            target=_serve,
            args=(str(index_dir), collection, self._jobs, self._acks, os.getpid()),
            name="rag-chroma-writer",
            daemon=True,
        )
        self._process.start()

    @property
    def sent(self) -> int:
        """Jobs sent so far."""
        return self._sent

    def send(self, kind: str, batch: dict[str, Any]) -> None:
        """Queue ``collection.<kind>(**batch)`` (``upsert`` or ``delete``)."""
        while True:
            try:
                self._jobs.put((kind, batch), timeout=POLL_S)
                break
            except queue.Full:
                self._check()
        self._sent += 1

    def wait(self, mark: int | None = None) -> None:
        """Block until the first ``mark`` jobs (all, by default) are written; raise
        ``WriterError`` with the child's error if one failed."""
        target = self._sent if mark is None else mark
        while self._acked < target:
            try:
                error = self._acks.get(timeout=POLL_S)
            except queue.Empty:
                self._check()
                continue
            if error is not None:
                raise WriterError(error)
            self._acked += 1

    def _check(self) -> None:
        if self._process.is_alive():
            return
        try:  # its last word, if it had one, says why
            while (error := self._acks.get(timeout=POLL_S)) is None:
                self._acked += 1
            raise WriterError(error)
        except queue.Empty:
            pass
        raise WriterError(f"the Chroma writer process died (exit code {self._process.exitcode})")

    def close(self) -> None:
        """Stop the child once it has written what it was sent (or at once, after an error)."""
        if self._process.is_alive():
            try:
                self._jobs.put(None, timeout=POLL_S)
            except queue.Full:
                self._process.terminate()
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> ChromaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(index_dir: str, name: str, jobs: Any, acks: Any, parent: int) -> None:
    """The child: apply jobs in order, one acknowledgement (None, or the error) each."""
    import chromadb

    try:
        client = chromadb.PersistentClient(
            path=index_dir, settings=chromadb.Settings(anonymized_telemetry=False)
        )
        collection = client.get_collection(name, embedding_function=None)
    except Exception as exc:  # noqa: BLE001 - sent to the parent, which explains it
        acks.put(_line(exc))
        return
    while True:
        try:
            job = jobs.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # orphaned: the ingest was killed
                return
            continue
        if job is None:
            return
        kind, batch = job
        try:
            getattr(collection, kind)(**batch)
        except Exception as exc:  # noqa: BLE001 - sent to the parent, which explains it
            acks.put(_line(exc))
            return
        acks.put(None)


def _line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else repr(exc)
    return f"{type(exc).__name__}: {text}"
