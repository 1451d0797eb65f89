"""The index: chunks and vectors in Chroma, paper records and BM25 in a SQLite file beside them.

Ingest streams: papers come from a ``Scan`` in batches; each batch is chunked, its new chunks
embedded and stored in Chroma, its replaced chunks deleted there, then the batch's records, terms
and names are written to the records file (``rag.records``) in one transaction. Memory holds one
batch, whatever the corpus size. It is idempotent and crash-safe: a paper whose digest the records
hold is skipped without being chunked, a chunk Chroma already has (its id is a hash of paper,
position and text) is not embedded again, so an ingest killed half-way just resumes.

The collection's metadata records the embedding model (name, dimension, weights hash); opening it
with another model is refused, so vectors of two models are never mixed.

**One writer, consistent readers.** Writes happen only under the writer lock (``rag.locking``,
taken by ``Rag.ingest``). Each batch is written to Chroma first and to the records last, so what
a reader finds in the records has its vectors; a reader sees the records before or after each
batch (one transaction). The records' meta says an ingest is at work (``writing``) until it
finishes (``published``); a reader says so (``lexical_note``), and, being told of a publication
(or a folder a rebuild swapped in), reopens its Chroma client, whose vector index lives in memory.

**On a Chroma server** several machines write, each with its own records file: chunks there also
carry their text, and first chunks the paper's record, so that every client's records can mirror
the server (``_sync``: the chunk ids are compared, what is missing fetched, what is gone deleted)
when the server's publication token is not the one its records last mirrored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import Chunk, chunk_papers
from rag.corpus import Paper, Scan
from rag.embedding import Embedder
from rag.errors import IndexMissingError, ModelMismatchError, StoreError
from rag.locking import is_locked
from rag.records import PaperRecord, Records, StoredChunk
from rag.settings import Settings

__all__ = ["ChunkHit", "Index", "IngestStats", "PaperRecord", "make_client"]

# Below this much free space, a store error is reported as the full disk it almost surely is.
LOW_DISK_BYTES = 64 * 2**20
GET_BATCH = 2000  # ids per Chroma get/delete: bounded requests for big corpora
# HNSW's search breadth. Chroma widens it to n_results for a larger query and keeps it widened, so
# a question's hits would depend on the questions asked before it in the same process. Fixing it
# above any n_results we ask for (search_dense caps n) makes every search independent of history.
EF_SEARCH = 1024
# Bump when chunking changes: every stored paper's digest then differs, and the next ingest
# re-chunks them all (re-embedding only chunks whose text changed).
CHUNKING_VERSION = "1"
MAX_REMEMBERED_WARNINGS = 100  # warnings a no-op re-ingest repeats from the ingest it skips
CPU_INGEST_BATCH = 256  # papers per batch with a model on a CPU: ~20 s of embedding at ~21/s
# On a GPU: ~55k chunks per call, so that the embedder's pipeline (tokenizer processes feeding the
# GPU, ~2 s to fill) runs full; with no model (hash): ~14k chunks, storing overlapping the next.
GPU_INGEST_BATCH = 32768
MODEL_FREE_INGEST_BATCH = 8192
# The record fields a first chunk carries on a Chroma server, for other clients' records.
RECORD_FIELDS = ("title", "abstract", "url", "authors", "date", "categories")


@dataclass(frozen=True, slots=True)
class IngestStats:
    """What an ingest did."""

    papers: int
    chunks: int
    embedded: int
    skipped: int
    deleted: int
    seconds: float
    replaced: int = 0  # papers already indexed whose text changed (their old chunks deleted)
    warnings: tuple[str, ...] = ()  # what the input lost on the way: repeats, cut abstracts
    duplicates: int = 0
    truncated: int = 0
    unchanged: int = 0  # papers skipped whole: their digest was stored
    # Seconds per phase: scan (reading and checking the files), chunk, embed, vectors (Chroma),
    # records (SQLite). Storing overlaps the next batch's chunking and embedding.
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """A chunk found by a search, with the search's own score (higher is better)."""

    chunk_id: str
    paper_id: str
    score: float


@dataclass(frozen=True, slots=True)
class VectorWrite:
    """Where an ingest sends its Chroma writes: ``send(kind, batch)``; ``mark()`` counts those
    sent; ``wait(mark)`` returns once the first ``mark`` are written."""

    send: Callable[[str, dict[str, Any]], None]
    wait: Callable[[int], None]
    mark: Callable[[], int] = lambda: 0


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _groups(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while group := list(islice(iterator, size)):
        yield group


def make_client(settings: Settings) -> Any:
    """A Chroma client: HTTP when ``chroma_url`` is set, else persistent under ``index_dir``."""
    import chromadb

    chroma_settings = chromadb.Settings(anonymized_telemetry=False)
    try:
        if settings.chroma_url:
            from urllib.parse import urlparse

            url = urlparse(settings.chroma_url)
            return chromadb.HttpClient(
                host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
        return chromadb.PersistentClient(path=str(settings.index_dir), settings=chroma_settings)
    except Exception as exc:
        where = settings.chroma_url or settings.index_dir
        raise StoreError(f"cannot open the Chroma store at {where}: {exc}") from exc


class Index:
    """One collection of paper chunks, its model record and its paper records."""

    def __init__(self, settings: Settings, embedder: Embedder, client: Any | None = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self._client = client
        self._own_client = client is None  # ours to reopen when another process has written
        self._collection: Any | None = None
        self.records = Records(settings.records_path)
        self._seen: tuple[int | None, str | None] | None = None  # (folder, publication) read
        self._count: int | None = None  # chunks in the collection as this reader opened it
        # The store's largest batch: read as an ingest starts, before a child process writes.
        self._max_batch = GET_BATCH
        self.lexical_note: str | None = None  # why the records lag behind the collection, if so

    @property
    def client(self) -> Any:
        """The Chroma client, created on first use (so a missing index creates no directory)."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    @property
    def remote(self) -> bool:
        """Whether the chunks live on a Chroma server (records are then a local mirror)."""
        return bool(self.settings.chroma_url)

    # -- the collection -------------------------------------------------------------------------

    def _model_record(self) -> dict[str, Any]:
        return {
            "embed_model": self.embedder.name,
            "embed_dim": self.embedder.dim,
            "embed_fingerprint": self.embedder.fingerprint,
            "embed_family": self.embedder.family,
        }

    def _check_model(self, metadata: dict[str, Any]) -> None:
        built = (metadata.get("embed_fingerprint"), metadata.get("embed_dim"))
        if built != (self.embedder.fingerprint, self.embedder.dim):
            where = self.settings.chroma_url or self.settings.index_dir
            raise ModelMismatchError(
                f"the index at {where} (collection {self.settings.collection!r}) was built with "
                f"embedding model {metadata.get('embed_model')!r} (dim {metadata.get('embed_dim')}, "
                f"weights {str(metadata.get('embed_fingerprint'))[:12]}), but the configured model "
                f"is {self.embedder.name!r} (dim {self.embedder.dim}, weights "
                f"{self.embedder.fingerprint[:12]}); rebuild it with `rag ingest --rebuild`, or set "
                f"RAG_EMBED_MODEL={metadata.get('embed_model')}"
            )
        family = metadata.get("embed_family")
        if family is not None and family != self.embedder.family:
            where = self.settings.chroma_url or self.settings.index_dir
            raise ModelMismatchError(
                f"the index at {where} was embedded by runtime {metadata.get('embed_runtime')!r}, "
                f"whose vectors ({family!r}) do not agree with this embedder's "
                f"({self.embedder.family!r}); rebuild it with `rag ingest --rebuild`"
            )

    def collection(self, create: bool = False) -> Any:
        """The Chroma collection, checked against the embedder; created only when asked."""
        if self._collection is not None:
            return self._collection
        name = self.settings.collection
        if (
            not self.remote
            and not create
            and not (self.settings.index_dir / "chroma.sqlite3").exists()
        ):
            raise IndexMissingError(
                f"no index yet in {self.settings.index_dir}: run `rag ingest` first (it indexes "
                "the bundled corpus, or the files you name)"
            )
        try:
            existing = {c if isinstance(c, str) else c.name for c in self.client.list_collections()}
            if name not in existing:
                if not create:
                    raise IndexMissingError(
                        "no index yet: run `rag ingest` first (it indexes the bundled corpus, or "
                        "the files you name)"
                    )
                col = self.client.create_collection(
                    name,
                    metadata={**self._model_record(), "generation": uuid.uuid4().hex},
                    configuration={"hnsw": {"space": "cosine", "ef_search": EF_SEARCH}},
                    embedding_function=None,
                )
            else:
                col = self.client.get_collection(name, embedding_function=None)
                hnsw = (col.configuration or {}).get("hnsw") or {}
                if create and hnsw.get("ef_search", EF_SEARCH) < EF_SEARCH:
                    # An index built before EF_SEARCH existed: widen it once, when writing anyway.
                    col.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})
        except (IndexMissingError, ModelMismatchError):
            raise
        except StoreError as exc:
            if self._disk_full():  # say so: "database or disk is full" is not what to do
                raise self._failure(f"open collection {name!r}", exc) from None
            raise
        except Exception as exc:  # noqa: BLE001 - one line, with what to do
            raise self._failure(f"open collection {name!r}", exc) from None
        self._check_model(col.metadata or {})
        self._collection = col
        return col

    def drop(self) -> None:
        """Delete the collection and its records (``rag ingest --rebuild``)."""
        try:
            self.client.delete_collection(self.settings.collection)
        except Exception:  # noqa: BLE001 - nothing to drop is fine
            pass
        self.records.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.settings.records_path}{suffix}").unlink(missing_ok=True)
        self._collection = None

    def _set_metadata(self, **values: str) -> None:
        col = self.collection()
        fresh = self.client.get_collection(self.settings.collection, embedding_function=None)
        col.modify(metadata={**(fresh.metadata or {}), **values})

    def _server_publication(self) -> str:
        """The publication token on the server (each writer sets a new one when it finishes)."""
        try:
            col = self.client.get_collection(self.settings.collection, embedding_function=None)
        except Exception as exc:  # noqa: BLE001 - one line, what to do
            raise self._failure("read the collection", exc) from None
        return str((col.metadata or {}).get("published", ""))

    def generation(self) -> str:
        """A token that changes with every write to the records (and not otherwise)."""
        self.collection()  # raises the helpful errors if there is no (matching) collection
        return self.records.version()

    def refresh(self) -> None:
        """(Reader, before each question.) Follow a newer publication, or a folder a rebuild
        swapped in: reopen the local Chroma client, whose vector index lives in memory."""
        if self._seen is not None and self._publication() != self._seen:
            self._reopen()

    def _publication(self) -> tuple[int | None, str | None]:
        if self.remote:
            try:
                return None, self._server_publication()
            except StoreError:
                return None, None
        folder = self._folder()
        published = self.records.meta("published") if self.records.exists() else None
        return folder, published

    def _folder(self) -> int | None:
        """The identity of the local index folder (a rebuild swaps in another), None for a server."""
        if self.remote:
            return None
        try:
            return self.settings.index_dir.stat().st_ino
        except OSError:
            return None

    def close(self) -> None:
        """Let go of the store (a local client flushes what it holds), so the folder can move."""
        self._reopen()
        self.records.close()

    def _reopen(self) -> None:
        if self._own_client and not self.remote:
            from chromadb.api.shared_system_client import SharedSystemClient

            SharedSystemClient.clear_system_cache()  # Chroma keeps one client per folder
            self._client = None
        self._collection, self._seen, self._count = None, None, None

    def _read(self, what: str, read: Callable[[Any], Any]) -> Any:
        """``read(collection)``, retried once on a reopened client: a local client's vector index
        can be out of step with a folder another process has just written."""
        try:
            return read(self.collection())
        except (IndexMissingError, ModelMismatchError, StoreError):
            raise
        except Exception:  # noqa: BLE001 - Chroma raises bare InternalErrors here
            self._reopen()
        try:
            return read(self.collection())
        except (IndexMissingError, ModelMismatchError, StoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - explained in one line, with what to do
            raise self._failure(what, exc) from None

    # -- ingest ---------------------------------------------------------------------------------

    def _chunking_key(self) -> str:
        """What chunks depend on besides the paper: the model's tokenizer and window, the overlap."""
        e = self.embedder
        parts = (CHUNKING_VERSION, e.name, e.fingerprint, e.max_tokens, self.settings.chunk_overlap)
        return "|".join(map(str, parts))

    def _digest(self, content: str) -> str:
        return hashlib.sha256(f"{self._chunking_key()}|{content}".encode()).hexdigest()[:32]

    def _present(self, col: Any, ids: Sequence[str], from_store: bool) -> set[str]:
        """Which of these chunks are stored already: the records say (they list a chunk only
        once its vector is written), or, ``from_store``, Chroma (an interrupted ingest can have
        written vectors whose records it never wrote)."""
        if not from_store:
            return self.records.known_chunks(ids)
        found: set[str] = set()
        for batch in _batches(ids, GET_BATCH):
            found.update(col.get(ids=list(batch), include=[])["ids"])
        return found

    def ingest(
        self,
        papers: Sequence[Paper] | Scan,
        progress: Callable[[int, int], None] | None = None,
    ) -> IngestStats:
        """Store the papers: embed only new chunks, drop replaced ones, skip unchanged papers;
        ``progress(papers done, papers to do)`` after each stored batch."""
        started = time.perf_counter()
        self._phases: dict[str, float] = {}
        scan = papers if isinstance(papers, Scan) else Scan.of_papers(papers)
        col = self.collection(create=True)
        try:
            if self.remote:
                self._sync(col)
            keys = {pid: self._digest(e.digest) for pid, e in scan.entries.items()}
            stored = self.records.digests(list(keys))
            todo = {pid for pid, key in keys.items() if stored.get(pid, ("",))[0] != key}
            moved = {
                pid: scan.entries[pid].sources
                for pid, (_, sources) in stored.items()
                if pid not in todo and sources != scan.entries[pid].sources
            }
            totals = [0, 0, 0, 0]  # chunks, embedded, deleted, replaced
            writing = self.records.meta("writing")
            if todo or moved or writing is not None:
                self._begin()
                groups = _groups(scan.papers(todo.__contains__), self._group_size())
                # Presence is read from Chroma, not the records, where they may disagree: after
                # an interrupted ingest, on a server (other clients write), or when the counts
                # differ (a collection deleted or replaced under the records).
                from_store = (
                    writing is not None
                    or self.remote
                    or int(col.count()) != (self.records.size if self.records.exists() else 0)
                )
                self._max_batch = int(self.client.get_max_batch_size())
                with self._vector_writer(col, len(todo), from_store) as write:
                    finished = 0
                    batches = self._store_groups(col, groups, keys, stored, write, from_store)
                    for done, group_size in batches:
                        totals = [a + b for a, b in zip(totals, done, strict=True)]
                        finished += group_size
                        if progress is not None:
                            progress(finished, len(todo))
                if moved:
                    self.records.add_sources(moved)
                self._finish(col)
            unchanged = [pid for pid in keys if pid not in todo]
            kept = self.records.count_chunks(unchanged)
        except (IndexMissingError, ModelMismatchError, StoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - a full disk, a store error: one line, what to do
            raise self._failure("store the papers", exc, resumable=True) from None
        chunks, embedded, deleted, replaced = totals
        return IngestStats(
            papers=len(keys),
            chunks=chunks + kept,
            embedded=embedded,
            skipped=chunks + kept - embedded,
            deleted=deleted,
            replaced=replaced,
            seconds=round(time.perf_counter() - started, 3),
            unchanged=len(unchanged),
            phases={k: round(v, 3) for k, v in self._phases.items()},
        )

    @contextmanager
    def _clock(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self._phases[phase] = self._phases.get(phase, 0.0) + elapsed

    def _group_size(self) -> int:
        """Papers per batch (``RAG_INGEST_BATCH``): by default small enough on a CPU for a batch
        to take seconds, large on a GPU, whose embedder sorts and packs a batch by length."""
        if self.settings.ingest_batch:
            return self.settings.ingest_batch
        runtime = getattr(self.embedder, "runtime", None)
        if runtime is None:
            return MODEL_FREE_INGEST_BATCH
        return CPU_INGEST_BATCH if runtime.device == "cpu" else GPU_INGEST_BATCH

    def unchanged(self, inputs: str) -> IngestStats | None:
        """What the last ingest of these very inputs (``rag.corpus.files_fingerprint``) did, if
        nothing has been written since and the chunking is the same: a re-ingest is then a no-op
        without reading a file. None otherwise (on a server, other machines write: always None)."""
        if self.remote or not self.records.exists():
            return None
        self.collection()  # the helpful errors: no index, another model
        remembered = self.records.meta("inputs")
        if remembered is None or self.records.meta("writing") is not None:
            return None
        key, version, counts = json.loads(remembered)
        if key != f"{self._chunking_key()}|{inputs}" or version != self.records.version():
            return None
        papers, chunks, warnings, duplicates, truncated = counts
        return IngestStats(
            papers=papers,
            chunks=chunks,
            embedded=0,
            skipped=chunks,
            deleted=0,
            seconds=0.0,
            warnings=tuple(warnings),
            duplicates=duplicates,
            truncated=truncated,
            unchanged=papers,
        )

    def remember(self, inputs: str, stats: IngestStats) -> None:
        """(After an ingest of ``inputs``.) Let an ingest of the same unchanged inputs skip them."""
        if self.remote:
            return
        warnings = list(stats.warnings[:MAX_REMEMBERED_WARNINGS])
        counts = [stats.papers, stats.chunks, warnings, stats.duplicates, stats.truncated]
        key = f"{self._chunking_key()}|{inputs}"
        self.records.set_meta(bump=False, inputs=json.dumps([key, self.records.version(), counts]))

    def _begin(self) -> None:
        """Mark the index as being written (readers say so), and which runtime embeds it."""
        self.records.set_meta(writing=uuid.uuid4().hex)
        runtime = getattr(self.embedder, "runtime", None)  # what embeds (and loads torch)
        self._set_metadata(embed_runtime=runtime.name if runtime else self.embedder.family)

    def _finish(self, col: Any) -> None:
        """Publish: a new token for readers to follow, on the server too, and this writer done."""
        token = uuid.uuid4().hex
        if self.remote:
            self._set_metadata(published=token)
            self._sync(col)  # other writers' work, published meanwhile, into these records
        self.records.set_meta(
            writing=None, published=token, **({"synced": token} if self.remote else {})
        )
        self._seen, self._count = self._publication(), None
        self.lexical_note = None

    @contextmanager
    def _vector_writer(self, col: Any, papers: int, from_store: bool) -> Iterator[VectorWrite]:
        """How batches of vectors are written: by a child process (``rag.writer``) when the
        ingest has more than one batch to write into a local index, so that Chroma's writes
        overlap the chunking, embedding and records; else here, at once. While the child writes,
        this process leaves the collection alone: a local Chroma client that reads a folder
        another process is writing can go on answering from a stale vector index (seen here:
        one question in ~40 missed a paper the child had just replaced). So the child is not
        used to resume an interrupted ingest, whose presence checks must read Chroma."""
        if self.remote or from_store or papers <= self._group_size():
            yield VectorWrite(lambda kind, batch: getattr(col, kind)(**batch), lambda _: None)
            return
        from rag.writer import ChromaWriter, WriterError

        child = ChromaWriter(self.settings.index_dir, self.settings.collection)
        try:
            yield VectorWrite(child.send, child.wait, lambda: child.sent)
        except WriterError as exc:
            raise self._failure("store the papers", exc, resumable=True) from None
        finally:
            child.close()
            self._reopen()  # and this process's view of the collection is behind: reopened

    def _store_groups(
        self,
        col: Any,
        groups: Iterable[list[Paper]],
        keys: dict[str, str],
        stored: dict[str, tuple[str, tuple[str, ...]]],
        write: VectorWrite,
        from_store: bool,
    ) -> Iterator[tuple[tuple[int, int, int, int], int]]:
        """Prepare each batch, send its vectors, and write the previous batch's records once its
        vectors are written; yield (counts, papers) as each batch is complete."""
        previous: tuple[int, Callable[[], None], tuple[int, int, int, int], int] | None = None
        for group in groups:
            counts, jobs, records = self._prepare_group(col, group, keys, stored, from_store)
            for kind, batch in jobs:
                write.send(kind, batch)
            if previous is not None:
                yield self._complete(write, *previous)
            previous = (write.mark(), records, counts, len(group))
        if previous is not None:
            yield self._complete(write, *previous)

    def _complete(
        self,
        write: VectorWrite,
        mark: int,
        records: Callable[[], None],
        counts: tuple[int, int, int, int],
        size: int,
    ) -> tuple[tuple[int, int, int, int], int]:
        with self._clock("vectors"):
            write.wait(mark)
        with self._clock("records"):
            records()
        return counts, size

    def _prepare_group(
        self,
        col: Any,
        group: list[Paper],
        keys: dict[str, str],
        stored: dict[str, tuple[str, tuple[str, ...]]],
        from_store: bool,
    ) -> tuple[tuple[int, int, int, int], list[tuple[str, dict[str, Any]]], Callable[[], None]]:
        """Chunk and embed one batch of papers: its counts, the Chroma writes that store it
        (new vectors, then deletions), and what writes its records (after those)."""
        clock = self._clock
        with clock("chunk"):
            chunks = chunk_papers(group, self.embedder, overlap=self.settings.chunk_overlap)
        with clock("vectors"):
            present = self._present(col, [c.id for c in chunks], from_store)
        todo = [c for c in chunks if c.id not in present]
        wanted = {c.id for c in chunks}
        old = [p.id for p in group if p.id in stored]
        stale = sorted(self.records.chunk_ids_of(old) - wanted) if old else []
        by_paper = {p.id: p for p in group}
        with clock("embed"):
            vectors = self.embedder.embed_documents([c.text for c in todo]) if todo else None
        jobs = list(self._upserts(todo, vectors, by_paper, keys)) if vectors is not None else []
        jobs += [("delete", {"ids": list(batch)}) for batch in _batches(stale, GET_BATCH)]

        def records() -> None:
            self.records.write(
                [(_record(p), keys[p.id]) for p in group],
                [StoredChunk(c.id, c.paper_id, c.position, c.text) for c in chunks],
                stale,
            )

        replaced = len({cid.split("#", 1)[0] for cid in stale})
        return (len(chunks), len(todo), len(stale), replaced), jobs, records

    def _upserts(
        self,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        by_paper: dict[str, Paper],
        keys: dict[str, str],
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The upserts that store these chunks, in the largest batches the store takes: locally
        ids, vectors and the chunk's paper; on a server also the text, and the record on a first
        chunk (for other clients)."""
        for batch in _batches(range(len(chunks)), self._max_batch):
            part = [chunks[i] for i in batch]
            yield (
                "upsert",
                {
                    "ids": [c.id for c in part],
                    "embeddings": vectors[list(batch)],
                    "metadatas": [
                        self._metadata(c, by_paper[c.paper_id], keys[c.paper_id]) for c in part
                    ],
                    **({"documents": [c.text for c in part]} if self.remote else {}),
                },
            )

    def _metadata(self, chunk: Chunk, paper: Paper, key: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"paper_id": chunk.paper_id, "position": chunk.position}
        if self.remote and chunk.position == 0:
            record = _record(paper)
            meta |= {k: getattr(record, k) for k in RECORD_FIELDS if getattr(record, k)}
            meta["sources"] = json.dumps(list(paper.sources))
            meta["digest"] = key
        return meta

    def _sync(self, col: Any) -> None:
        """(Server.) Make the records mirror the server's chunks: fetch what other clients wrote,
        delete what they deleted. Compares ids only, so it costs reading the server's ids."""
        remote: set[str] = set()
        total = col.count()
        for offset in range(0, total, GET_BATCH):
            remote.update(col.get(include=[], limit=GET_BATCH, offset=offset)["ids"])
        local = self.records.chunk_ids()
        gone = sorted(local - remote)
        if gone:
            self.records.delete_chunks(gone)
        missing = sorted(remote - local)
        for batch in _batches(missing, GET_BATCH):
            got = col.get(ids=list(batch), include=["documents", "metadatas"])
            papers: dict[str, tuple[PaperRecord, str]] = {}
            chunks = []
            for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                chunks.append(StoredChunk(cid, meta["paper_id"], int(meta["position"]), doc or ""))
                if meta.get("position") == 0 and "title" in meta:
                    papers[meta["paper_id"]] = (
                        PaperRecord(
                            meta["paper_id"],
                            *(meta.get(k) for k in RECORD_FIELDS),  # type: ignore[arg-type]
                            tuple(json.loads(meta.get("sources", "[]"))),
                        ),
                        str(meta.get("digest", "")),
                    )
            known = self.records.paper_ids()
            chunks = [c for c in chunks if c.paper_id in papers or c.paper_id in known]
            self.records.write(list(papers.values()), chunks)

    def _disk_full(self) -> bool:
        if self.remote:
            return False
        free = _free_bytes(self.settings.index_dir)
        return free is not None and free < LOW_DISK_BYTES

    def _failure(self, what: str, exc: Exception, resumable: bool = False) -> StoreError:
        """``exc`` from the store as one line: where, why, and what to do (a full disk named)."""
        where = self.settings.chroma_url or self.settings.index_dir
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else exc!r}"
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        resume = "run `rag ingest` again: it resumes, and what is already stored is kept"
        if self._disk_full():
            free = _free_bytes(self.settings.index_dir) or 0
            then = resume if resumable else "ask again"
            return StoreError(
                f"cannot {what} in the index at {where}: its disk is full ({free // 2**20} MB "
                f"free; {reason}); free some space, then {then}"
            )
        then = resume if resumable else "if an ingest is running, ask again when it has finished"
        return StoreError(f"cannot {what} in the index at {where} ({reason}); {then}")

    # -- reading --------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of chunks stored."""
        return int(self.collection().count())

    def lexicon(self) -> Records:
        """The records, ready to read (BM25, idf, names, papers); ``lexical_note`` says when they
        lag behind the collection. On a server they are first brought up to its publication."""
        col = self.collection()
        if self.remote:
            published = self._server_publication()
            synced = self.records.meta("synced") if self.records.exists() else None
            # This machine's writer brings its records up to date itself, when it finishes.
            if synced != published and not is_locked(self.settings.index_dir):
                self._sync(col)
                self.records.set_meta(synced=published)
        elif not self.records.exists():
            raise IndexMissingError(
                f"the index in {self.settings.index_dir} has no paper records (it was built by an "
                "older version of rag, or its records file was deleted): run `rag ingest` with "
                "the same files to add them (nothing is embedded again)"
            )
        if self._seen is None:
            self._seen = self._publication()
        self.lexical_note = None
        if self.records.meta("writing") is not None:
            if is_locked(self.settings.index_dir):
                self.lexical_note = (
                    "an ingest is writing the index now: answers cover the papers stored so far"
                )
            else:
                self.lexical_note = (
                    "an ingest was interrupted: answers cover the papers it stored; run "
                    "`rag ingest` again to finish it"
                )
        return self.records

    def search_dense(self, vector: np.ndarray, n: int) -> list[ChunkHit]:
        """The ``n`` chunks nearest to ``vector`` (score = cosine similarity)."""

        def query(col: Any) -> Any:
            if self._count is None:  # ~10 ms at 100k chunks: once per opened collection
                self._count = int(col.count())
            count = min(n, self._count, EF_SEARCH)
            if count == 0:
                return {"ids": [[]], "metadatas": [[]], "distances": [[]]}
            return col.query(
                query_embeddings=[vector], n_results=count, include=["metadatas", "distances"]
            )

        res = self._read("search", query)
        return [
            ChunkHit(cid, meta["paper_id"], 1.0 - float(dist))
            for cid, meta, dist in zip(
                res["ids"][0], res["metadatas"][0], res["distances"][0], strict=True
            )
        ]

    def papers_with_similarity(
        self, paper_ids: Sequence[str], vector: np.ndarray
    ) -> tuple[dict[str, PaperRecord], dict[str, float]]:
        """Records of the given papers, and each one's best chunk cosine similarity to ``vector``.

        The similarity is computed from the stored vectors of all the paper's chunks, so a paper
        found only by BM25 still gets a dense score the answerer can weigh.
        """
        if not paper_ids:
            return {}, {}
        records = self.lexicon()
        # By id, which the records know: Chroma answers that in ~3 ms where a metadata filter on
        # the paper takes 30-100 ms at 100k papers.
        chunks = records.chunks_of(list(paper_ids))
        got = self._read(
            "read the papers' vectors",
            lambda col: col.get(ids=sorted(chunks), include=["embeddings"]),
        )
        similarity: dict[str, float] = {}
        if got["ids"]:
            sims = np.asarray(got["embeddings"], dtype=np.float32) @ vector.astype(np.float32)
            for cid, sim in zip(got["ids"], sims, strict=True):
                pid = chunks[cid]
                similarity[pid] = max(similarity.get(pid, -1.0), float(sim))
        return records.papers(list(paper_ids)), similarity

    def titles(self) -> set[str]:
        """The title of every stored paper."""
        return self.lexicon().titles()

    def stats(self) -> dict[str, Any]:
        """Counts and the model record, for ``rag doctor`` and the UI."""
        col = self.collection()
        meta = col.metadata or {}
        records = self.lexicon()
        return {
            "collection": self.settings.collection,
            "chunks": int(col.count()),
            "papers": records.count_papers(),
            "lexical_chunks": records.size,
            "lexical_note": self.lexical_note,
            "lexical_current": self.lexical_note is None,
            "writing": is_locked(self.settings.index_dir),
            "embed_model": meta.get("embed_model"),
            "embed_dim": meta.get("embed_dim"),
            "embed_fingerprint": meta.get("embed_fingerprint"),
            "embed_runtime": meta.get("embed_runtime"),
        }


def _record(paper: Paper) -> PaperRecord:
    return PaperRecord(
        paper.id,
        paper.title,
        paper.abstract,
        paper.url,
        ", ".join(paper.authors) or None,
        paper.date,
        " ".join(paper.categories) or None,
        paper.sources,
    )


def _free_bytes(path: Any) -> int | None:
    """Free space on the disk holding ``path`` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None
