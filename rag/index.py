"""The index: chunks and vectors in Chroma, and a BM25 index of the same chunks beside it.

Ingest is idempotent and crash-safe because chunk ids are a hash of (paper, position, text): a
re-run asks Chroma which ids it already has and embeds only the rest, so an ingest killed half-way
just resumes. Chunks of a re-ingested paper whose ids are no longer produced (its abstract changed)
are deleted after the new ones are stored.

The collection's metadata records the embedding model (name, dimension, weights hash); opening it
with another model is refused, so vectors of two models are never mixed.

**One writer, consistent readers.** Writes happen only under the writer lock (``rag.locking``,
taken by ``Rag.ingest``). The collection's metadata holds two tokens: ``generation``, changed
before any write, and ``published``, set to it by the writer after its last write, once it has
built and saved the BM25 index of that state (``publish``). A reader never builds or saves the
lexical index from a collection being written: it uses the last published one, and says so
(``lexical_note``) when the collection has moved on since (an ingest running, or one that was
killed: the next ingest repairs it). A long-running reader (``rag chat``) follows a newer
publication on its next question (``refresh``): Chroma's local client keeps its vector index in
memory, so it is reopened, and a read that fails mid-write is retried once on a reopened client.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag.chunking import Chunk, chunk_papers
from rag.corpus import Paper
from rag.embedding import Embedder
from rag.errors import IndexMissingError, ModelMismatchError, StoreError
from rag.lexical import Bm25
from rag.locking import is_locked
from rag.settings import Settings

# Below this much free space, a store error is reported as the full disk it almost surely is.
LOW_DISK_BYTES = 64 * 2**20
GET_BATCH = 2000  # ids per Chroma get/delete: bounded requests for big corpora
# HNSW's search breadth. Chroma widens it to n_results for a larger query and keeps it widened, so
# a question's hits would depend on the questions asked before it in the same process. Fixing it
# above any n_results we ask for (search_dense caps n) makes every search independent of history.
EF_SEARCH = 1024


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


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """A chunk found by a search, with the search's own score (higher is better)."""

    chunk_id: str
    paper_id: str
    score: float


@dataclass(frozen=True, slots=True)
class PaperRecord:
    """A stored paper, as the answerer and the UI see it."""

    id: str
    title: str
    abstract: str
    url: str | None = None
    authors: str | None = None  # as ingested ("A, B and C"); the bundled corpus has none
    date: str | None = None


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    """One collection of paper chunks, its model record and its BM25 twin."""

    def __init__(self, settings: Settings, embedder: Embedder, client: Any | None = None) -> None:
        self.settings = settings
        self.embedder = embedder
        self._client = client
        self._own_client = client is None  # ours to reopen when another process has written
        self._collection: Any | None = None
        self._bm25: Bm25 | None = None
        self._seen: str | None = None  # the publication this reader's caches are of
        self._opened: int | None = None  # the identity of the folder the caches come from
        self._stamp: tuple[int, int] | None = None  # and of the lexical folder they were read from
        self.lexical_note: str | None = None  # why the lexical index lags, if it does

    @property
    def client(self) -> Any:
        """The Chroma client, created on first use (so a missing index creates no directory)."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

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
        local = not self.settings.chroma_url
        if local and not create and not (self.settings.index_dir / "chroma.sqlite3").exists():
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
        """Delete the collection and its BM25 index (``rag ingest --rebuild``)."""
        try:
            self.client.delete_collection(self.settings.collection)
        except Exception:  # noqa: BLE001 - nothing to drop is fine
            pass
        shutil.rmtree(self.settings.bm25_dir, ignore_errors=True)
        self._collection = None
        self._bm25 = None

    def _set_metadata(self, **values: str) -> None:
        col = self.collection()
        fresh = self.client.get_collection(self.settings.collection, embedding_function=None)
        col.modify(metadata={**(fresh.metadata or {}), **values})

    def _new_generation(self) -> None:
        self._set_metadata(generation=uuid.uuid4().hex)

    def state(self) -> tuple[str, str]:
        """The collection's (generation, published) tokens, re-read (a writer may have moved
        them). An index from before publication existed counts its lexical index as published."""
        self.collection()  # raises the helpful errors if there is no (matching) collection
        try:
            col = self.client.get_collection(self.settings.collection, embedding_function=None)
        except Exception as exc:
            raise StoreError(f"cannot read collection {self.settings.collection!r}: {exc}") from exc
        meta = col.metadata or {}
        generation = str(meta.get("generation", ""))
        published = meta.get("published")
        if published is None and Bm25.saved_generation(self.settings.bm25_dir) == generation:
            published = generation
        return generation, str(published or "")

    def generation(self) -> str:
        """The collection's current generation token."""
        return self.state()[0]

    def publish(self) -> None:
        """(Writer, after its last write.) Build and save the lexical index of the collection as
        it now is, then mark that state published, in that order: readers follow ``published``.

        The state gets a token of its own first, and is marked published only if no other writer
        has moved the generation since: on a Chroma server, writers on other machines hold
        other locks, and a state one of them is still writing must not be called complete (that
        writer publishes it when it finishes)."""
        mine = uuid.uuid4().hex
        self._set_metadata(generation=mine)
        ids, docs, papers, records = self._all_chunks()
        bm25 = Bm25.build(ids, docs, papers, mine, records)
        bm25.save(self.settings.bm25_dir)
        generation, _ = self.state()
        if generation == mine:
            self._set_metadata(published=mine)
        self._bm25, self._seen, self.lexical_note = bm25, mine, None
        self._opened, self._stamp = self._folder(), self._lexical_stamp()

    def refresh(self) -> None:
        """(Reader, before each question.) Follow a newer publication, or a folder a rebuild
        swapped in: reopen the local Chroma client, whose vector index lives in memory, and drop
        the cached lexical index."""
        if self._seen is None:
            return
        if not self.settings.chroma_url:
            # Locally every publication swaps the lexical folder in, and a rebuild the index
            # folder: two stat calls tell, where asking Chroma for the metadata cost ~10 ms.
            if (self._folder(), self._lexical_stamp()) != (self._opened, self._stamp):
                self._reopen()
            return
        try:
            _, published = self.state()
        except StoreError:
            self._reopen()
            return
        if published != self._seen:
            self._reopen()

    def _lexical_stamp(self) -> tuple[int, int] | None:
        """The identity of the published lexical folder (each publication swaps in a new one)."""
        try:
            info = self.settings.bm25_dir.stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns

    def _folder(self) -> int | None:
        """The identity of the local index folder (a rebuild swaps in another), None for a server."""
        if self.settings.chroma_url:
            return None
        try:
            return self.settings.index_dir.stat().st_ino
        except OSError:
            return None

    def close(self) -> None:
        """Let go of the store (a local client flushes what it holds), so the folder can move."""
        self._reopen()

    def _reopen(self) -> None:
        if self._own_client and not self.settings.chroma_url:
            from chromadb.api.shared_system_client import SharedSystemClient

            SharedSystemClient.clear_system_cache()  # Chroma keeps one client per folder
            self._client = None
        self._collection, self._bm25, self._seen = None, None, None

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

    def _existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(ids, GET_BATCH):
            found.update(self.collection().get(ids=list(batch), include=[])["ids"])
        return found

    def _ids_of_papers(self, paper_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(paper_ids, GET_BATCH):
            where = {"paper_id": {"$in": list(batch)}}
            found.update(self.collection().get(where=where, include=[])["ids"])
        return found

    def ingest(
        self, papers: Sequence[Paper], progress: Callable[[int, int], None] | None = None
    ) -> IngestStats:
        """Store ``papers``: embed only new chunks, drop replaced ones; ``progress(done, total)``."""
        started = time.perf_counter()
        col = self.collection(create=True)
        chunks = chunk_papers(papers, self.embedder, overlap=self.settings.chunk_overlap)
        by_paper = {p.id: p for p in papers}
        present = self._existing_ids([c.id for c in chunks])
        # Longest first: batches of similar length waste little on padding (~30% of the embedding
        # time when batches are taken in corpus order), and the slowest batches show up first.
        todo = sorted((c for c in chunks if c.id not in present), key=lambda c: -len(c.text))
        wanted = {c.id for c in chunks}
        stale = sorted(self._ids_of_papers(list(by_paper)) - wanted)
        try:
            self._write(col, todo, stale, by_paper, progress)
            generation, published = self.state()
            if todo or stale or published != generation or not self.settings.bm25_dir.exists():
                self.publish()
        except (IndexMissingError, ModelMismatchError, StoreError):
            raise
        except Exception as exc:  # noqa: BLE001 - a full disk, a store error: one line, what to do
            raise self._failure("store the papers", exc, resumable=True) from None
        return IngestStats(
            papers=len(papers),
            chunks=len(chunks),
            embedded=len(todo),
            skipped=len(chunks) - len(todo),
            deleted=len(stale),
            replaced=len({chunk.split("#", 1)[0] for chunk in stale}),
            seconds=round(time.perf_counter() - started, 3),
        )

    def _write(
        self,
        col: Any,
        todo: Sequence[Chunk],
        stale: Sequence[str],
        by_paper: dict[str, Paper],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        if todo or stale:
            self._new_generation()  # before writing: from here on, readers keep the published one
        if todo:
            runtime = getattr(self.embedder, "runtime", None)  # what embeds (and loads torch)
            self._set_metadata(embed_runtime=runtime.name if runtime else self.embedder.family)
        done = 0
        # Store each embedded batch at once: a kill -9 loses at most one batch of work.
        for group in _batches(todo, self.settings.embed_batch_size):
            vectors = self.embedder.embed_documents([c.text for c in group])
            for batch in _batches(range(len(group)), self.client.get_max_batch_size()):
                part = [group[i] for i in batch]
                col.upsert(
                    ids=[c.id for c in part],
                    embeddings=vectors[list(batch)],
                    documents=[c.text for c in part],
                    metadatas=[_metadata(c, by_paper[c.paper_id]) for c in part],
                )
            done += len(group)
            if progress is not None:
                progress(done, len(todo))
        for batch in _batches(stale, GET_BATCH):
            col.delete(ids=list(batch))

    def _disk_full(self) -> bool:
        if self.settings.chroma_url:
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

    def _all_chunks(
        self,
    ) -> tuple[list[str], list[str], list[str], list[tuple[str, str, str]]]:
        """Every chunk's id, text and paper, and every paper's (id, title, abstract)."""
        col = self.collection()
        ids: list[str] = []
        docs: list[str] = []
        papers: list[str] = []
        records: list[tuple[str, str, str]] = []
        total = col.count()
        for offset in range(0, total, GET_BATCH):
            got = col.get(include=["documents", "metadatas"], limit=GET_BATCH, offset=offset)
            ids += got["ids"]
            docs += got["documents"]
            papers += [m["paper_id"] for m in got["metadatas"]]
            records += [
                (m["paper_id"], m["title"], m.get("abstract", ""))
                for m in got["metadatas"]
                if m["position"] == 0
            ]
        return ids, docs, papers, records

    def bm25(self) -> Bm25:
        """The published lexical index (a reader never builds one from a collection in the middle
        of being written); ``lexical_note`` says when it lags behind the collection."""
        if self._bm25 is not None:
            return self._bm25
        stamp = self._lexical_stamp()  # before reading: a publication meanwhile shows as a change
        generation, published = self.state()
        bm25 = Bm25.load(self.settings.bm25_dir)
        self.lexical_note = None
        if bm25 is None:
            # None saved (a deleted folder; a first ingest killed before it published): what the
            # collection holds, in memory only, unless a writer is at work on it.
            writing = is_locked(self.settings.index_dir) or generation != published
            if writing:
                bm25 = Bm25.build([], [], [], "", [])
                self.lexical_note = (
                    "no lexical index is published yet: keyword search is off until the ingest "
                    "in progress, or a new `rag ingest`, publishes one"
                )
            else:
                ids, docs, papers, records = self._all_chunks()
                bm25 = Bm25.build(ids, docs, papers, generation, records)
                self.lexical_note = (
                    "the lexical index was missing: rebuilt in memory; run `rag ingest` to save it"
                )
        elif bm25.generation != generation and generation == published:
            # A complete state this folder's saved index is older than: another machine's
            # writer published it on the shared server. Safe to build from, for this process.
            ids, docs, papers, records = self._all_chunks()
            bm25 = Bm25.build(ids, docs, papers, generation, records)
            self.lexical_note = (
                "the lexical index here is older than the collection another client published: "
                "rebuilt in memory; run `rag ingest` here to save it"
            )
        elif bm25.generation != generation:
            running = is_locked(self.settings.index_dir)
            self.lexical_note = "the lexical index is of the collection as last published: " + (
                "an ingest is writing it now"
                if running
                else "an ingest was interrupted since; run `rag ingest` to bring it up to date"
            )
        self._bm25, self._seen, self._opened = bm25, published, self._folder()
        self._stamp = stamp
        return bm25

    def search_dense(self, vector: np.ndarray, n: int) -> list[ChunkHit]:
        """The ``n`` chunks nearest to ``vector`` (score = cosine similarity)."""

        def query(col: Any) -> Any:
            count = min(n, col.count(), EF_SEARCH)
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
        got = self._read(
            "read the papers' vectors",
            lambda col: col.get(
                where={"paper_id": {"$in": list(paper_ids)}}, include=["metadatas", "embeddings"]
            ),
        )
        records: dict[str, PaperRecord] = {}
        similarity: dict[str, float] = {}
        sims = np.asarray(got["embeddings"], dtype=np.float32) @ vector.astype(np.float32)
        for meta, sim in zip(got["metadatas"], sims, strict=True):
            pid = meta["paper_id"]
            similarity[pid] = max(similarity.get(pid, -1.0), float(sim))
            if meta["position"] == 0:
                records[pid] = PaperRecord(
                    pid,
                    meta["title"],
                    meta["abstract"],
                    meta.get("url"),
                    meta.get("authors"),
                    meta.get("date"),
                )
        return records, similarity

    def titles(self) -> set[str]:
        """The title of every stored paper (read from the first chunk of each)."""
        col, found = self.collection(), set()
        for offset in range(0, col.count(), GET_BATCH):
            got = col.get(
                where={"position": 0}, include=["metadatas"], limit=GET_BATCH, offset=offset
            )
            found.update(m["title"] for m in got["metadatas"])
        return found

    def stats(self) -> dict[str, Any]:
        """Counts and the model record, for ``rag doctor`` and the UI."""
        col = self.collection()
        meta = col.metadata or {}
        lexical = self.bm25()
        return {
            "collection": self.settings.collection,
            "chunks": int(col.count()),
            "papers": len(set(lexical.paper_ids)),
            "lexical_chunks": len(lexical.chunk_ids),
            "lexical_note": self.lexical_note,
            "lexical_current": lexical.generation == self.generation(),
            "writing": is_locked(self.settings.index_dir),
            "embed_model": meta.get("embed_model"),
            "embed_dim": meta.get("embed_dim"),
            "embed_fingerprint": meta.get("embed_fingerprint"),
            "embed_runtime": meta.get("embed_runtime"),
        }


def _metadata(chunk: Chunk, paper: Paper) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "paper_id": chunk.paper_id,
        "title": paper.title,
        "position": chunk.position,
        "sources": json.dumps(list(paper.sources)),
    }
    if chunk.position == 0:
        meta["abstract"] = paper.abstract  # the answerer quotes whole abstracts, not chunks
    for key in ("url", "date"):
        if getattr(paper, key):
            meta[key] = getattr(paper, key)
    if paper.authors:
        meta["authors"] = ", ".join(paper.authors)
    if paper.categories:
        meta["categories"] = " ".join(paper.categories)
    return meta


def _free_bytes(path: Any) -> int | None:
    """Free space on the disk holding ``path`` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None
