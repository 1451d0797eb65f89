"""The paper records: one SQLite file beside the vectors, written as the vectors are.

It holds what Chroma need not: each paper once (its record, its names' words, the digest an
ingest compares to skip it unchanged), and each chunk's terms under an FTS5 index that scores
BM25. Every write is one transaction that adds, replaces or deletes just the papers and chunks it
names, so adding 10 papers to a million costs what 10 papers cost, and a reader (WAL mode) sees
the file before a batch or after it, never half of one.

Meta keys: ``version`` (bumped by every write: readers drop their caches), ``writing`` (set by a
writer before its first write, cleared when it finishes: set without a writer means an ingest was
interrupted), ``published`` (a token the writer sets when it finishes) and ``synced`` (on a Chroma
server, the server's publication this file mirrors: ``rag.index``).

FTS5's BM25 is Okapi BM25 with k1 = 1.2, b = 0.75 and idf = ln((N - n + 0.5) / (n + 0.5)) (floored
near 0 for terms in over half the chunks, which are left out of a query for that reason). The
question analysis's own idf (``idf``) keeps the Lucene form, ln(1 + (N - n + 0.5) / (n + 0.5)),
from the same document frequencies.
"""

from __future__ import annotations

import atexit
import json
import math
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rag.lexical import terms
from rag.names import TOKEN, Catalog, Name, Word, assemble, candidates, paper_words

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 60.0  # a reader waits this long for a writer's checkpoint; a writer for a reader
PARAMS = 900  # values per IN (...) list: well under SQLite's limit, and quick to plan
# ``Records.search``: a query whose terms have at most EXACT_POSTINGS postings in all (every
# question on the bundled corpus: ~25 ms at the limit) is ranked on all its terms; above it, terms
# in more than COMMON_FRACTION of the chunks are left out of it.
EXACT_POSTINGS = 20_000
COMMON_FRACTION = 0.05
# A write's analysis (each paper's names and plain words, each chunk's terms) is pure Python and
# most of its time (profiled: ~80%; SQLite itself ~15%). From PARALLEL_MIN papers on, it is spread
# over ANALYSIS_WORKERS processes (spawned on first need, kept for the next batch); not on a
# machine of under 4 cores, where the ingest's own process already has one core to itself.
PARALLEL_MIN = 2_048
ANALYSIS_WORKERS = min(15, (os.cpu_count() or 1) - 1) if (os.cpu_count() or 1) >= 4 else 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS papers(
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, digest TEXT NOT NULL,
    title TEXT NOT NULL, abstract TEXT NOT NULL, url TEXT, authors TEXT, date TEXT,
    categories TEXT, sources TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
    rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, paper INTEGER NOT NULL,
    position INTEGER NOT NULL, terms TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_paper ON chunks(paper);
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_index USING fts5(
    terms, content='chunks', content_rowid='rowid',
    tokenize="unicode61 remove_diacritics 0 tokenchars '_'");
CREATE VIRTUAL TABLE IF NOT EXISTS chunk_vocab USING fts5vocab(chunk_index, row);
CREATE TABLE IF NOT EXISTS names(
    paper INTEGER NOT NULL, lower TEXT NOT NULL, text TEXT NOT NULL, kind INTEGER NOT NULL,
    repeats INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS names_lower ON names(lower);
CREATE INDEX IF NOT EXISTS names_paper ON names(paper);
CREATE VIRTUAL TABLE IF NOT EXISTS plain_index USING fts5(
    words, content='', detail=none,
    tokenize="unicode61 remove_diacritics 0 tokenchars '-.^+'");
"""


@dataclass(frozen=True, slots=True)
class PaperRecord:
    """A stored paper, as the answerer and the UI see it."""

    id: str
    title: str
    abstract: str
    url: str | None = None
    authors: str | None = None  # as ingested ("A, B and C"); the bundled corpus has none
    date: str | None = None
    categories: str | None = None
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as the records keep it: its id, paper, place, and text (terms are derived)."""

    id: str
    paper_id: str
    position: int
    text: str


def _in(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _batches(values: Sequence[object], size: int = PARAMS) -> Iterator[Sequence[object]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


class Records:
    """The records file of one collection. Connections are per thread (the chat answers in
    several); the writer holds ``rag.locking``'s lock, so one process writes at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._cache_version: str | None = None
        self._df: dict[str, int] = {}
        self._size: int | None = None
        self.last_exact = True  # whether the last search's ranking is provably FTS5's own

    # -- connections ----------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the file is there (a reader never creates it)."""
        return self.path.exists()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        inode = self._inode()
        if conn is not None and getattr(self._local, "inode", None) == inode:
            return conn
        if conn is not None:
            conn.close()  # a rebuild swapped another file in
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last commit
        if conn.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() is None:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        self._local.conn, self._local.inode = conn, self._inode()
        return conn

    def _inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except OSError:
            return None

    def close(self) -> None:
        """Close this thread's connection (the last one out checkpoints the WAL into the file)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def _transaction(self, bump: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if bump:
            conn.execute(
                "INSERT INTO meta VALUES ('version', '1') ON CONFLICT(key) DO UPDATE "
                "SET value = CAST(value AS INTEGER) + 1"
            )
        conn.execute("COMMIT")

    # -- meta -----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """One meta value (None when unset)."""
        row = self._connect().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, bump: bool = True, **values: str | None) -> None:
        """Set (or, with None, clear) meta values, in one transaction; ``bump=False`` for
        bookkeeping that changes nothing a reader sees (``version`` is left as it is)."""
        with self._transaction(bump) as conn:
            for key, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def version(self) -> str:
        """Changes with every write (readers compare it to drop cached statistics)."""
        return self.meta("version") or "0"

    # -- writing --------------------------------------------------------------------------------

    def write(
        self,
        papers: Sequence[tuple[PaperRecord, str]],
        chunks: Sequence[StoredChunk],
        stale: Sequence[str] = (),
    ) -> None:
        """In one transaction: store each (record, digest), replacing a paper of the same id;
        delete the ``stale`` chunk ids; add the ``chunks`` not stored yet."""
        words, chunk_terms = analyse([r for r, _ in papers], [c.text for c in chunks])
        with self._transaction() as conn:
            self._delete_chunks(conn, stale)
            rowids = {}
            for (record, digest), analysed in zip(papers, words, strict=True):
                rowids[record.id] = self._put_paper(conn, record, digest, analysed)
            have = self.known_chunks([c.id for c in chunks])  # this transaction's connection
            rows = [
                (
                    chunk.id,
                    rowids.get(chunk.paper_id) or self._rowid(conn, chunk.paper_id),
                    chunk.position,
                    line,
                )
                for chunk, line in zip(chunks, chunk_terms, strict=True)
                if chunk.id not in have
            ]
            conn.executemany(
                "INSERT INTO chunks(id, paper, position, terms) VALUES (?, ?, ?, ?)", rows
            )
            # The rows just added are the ones with those ids: index them from the table.
            for batch in _batches([r[0] for r in rows]):
                conn.execute(
                    "INSERT INTO chunk_index(rowid, terms) SELECT rowid, terms FROM chunks "
                    f"WHERE id IN ({_in(batch)})",
                    batch,
                )
        self._cache_version = None

    def add_sources(self, sources: dict[str, tuple[str, ...]]) -> None:
        """Set the sources of stored papers (a paper seen again in another file)."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE papers SET sources = ? WHERE id = ?",
                [(json.dumps(list(s)), pid) for pid, s in sources.items()],
            )

    def delete_papers(self, paper_ids: Sequence[str]) -> None:
        """Delete papers and all their chunks."""
        with self._transaction() as conn:
            for pid in paper_ids:
                rowid = self._rowid(conn, pid)
                if rowid is None:
                    continue
                ids = [
                    r[0] for r in conn.execute("SELECT id FROM chunks WHERE paper = ?", (rowid,))
                ]
                self._delete_chunks(conn, ids)
                self._forget_paper(conn, rowid)
                conn.execute("DELETE FROM papers WHERE rowid = ?", (rowid,))
        self._cache_version = None

    def delete_chunks(self, chunk_ids: Sequence[str]) -> None:
        """Delete chunks by id (their papers stay)."""
        with self._transaction() as conn:
            self._delete_chunks(conn, chunk_ids)
        self._cache_version = None

    @staticmethod
    def _rowid(conn: sqlite3.Connection, paper_id: str) -> int | None:
        row = conn.execute("SELECT rowid FROM papers WHERE id = ?", (paper_id,)).fetchone()
        return None if row is None else int(row[0])

    def _put_paper(
        self,
        conn: sqlite3.Connection,
        record: PaperRecord,
        digest: str,
        analysed: tuple[list[Word], set[str]],
    ) -> int:
        values = (
            digest,
            record.title,
            record.abstract,
            record.url,
            record.authors,
            record.date,
            record.categories,
            json.dumps(list(record.sources)),
        )
        rowid = self._rowid(conn, record.id)
        if rowid is None:
            cur = conn.execute(
                "INSERT INTO papers(digest, title, abstract, url, authors, date, categories, "
                "sources, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, record.id),
            )
            rowid = int(cur.lastrowid or 0)
        else:
            self._forget_paper(conn, rowid)
            conn.execute(
                "UPDATE papers SET digest = ?, title = ?, abstract = ?, url = ?, authors = ?, "
                "date = ?, categories = ?, sources = ? WHERE rowid = ?",
                (*values, rowid),
            )
        words, plain = analysed
        conn.executemany(
            "INSERT INTO names VALUES (?, ?, ?, ?, ?)",
            [(rowid, w.text.lower(), w.text, w.kind, w.repeats) for w in words],
        )
        conn.execute(
            "INSERT INTO plain_index(rowid, words) VALUES (?, ?)", (rowid, " ".join(sorted(plain)))
        )
        return rowid

    @staticmethod
    def _forget_paper(conn: sqlite3.Connection, rowid: int) -> None:
        """Take a paper's names and plain words out of their indexes (before it changes)."""
        row = conn.execute(
            "SELECT title, abstract FROM papers WHERE rowid = ?", (rowid,)
        ).fetchone()
        conn.execute("DELETE FROM names WHERE paper = ?", (rowid,))
        # A contentless index forgets a row given the very words it was given.
        _, plain = paper_words(row[0], row[1])
        conn.execute(
            "INSERT INTO plain_index(plain_index, rowid, words) VALUES ('delete', ?, ?)",
            (rowid, " ".join(sorted(plain))),
        )

    @staticmethod
    def _delete_chunks(conn: sqlite3.Connection, chunk_ids: Sequence[str]) -> None:
        for batch in _batches(list(chunk_ids)):
            rows = conn.execute(
                f"SELECT rowid, terms FROM chunks WHERE id IN ({_in(batch)})", batch
            ).fetchall()
            conn.executemany(
                "INSERT INTO chunk_index(chunk_index, rowid, terms) VALUES ('delete', ?, ?)", rows
            )
            conn.executemany("DELETE FROM chunks WHERE rowid = ?", [(r[0],) for r in rows])

    # -- reading --------------------------------------------------------------------------------

    def digests(self, paper_ids: Sequence[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
        """(digest, sources) of those of ``paper_ids`` stored."""
        conn, found = self._connect(), {}
        for batch in _batches(list(paper_ids)):
            for pid, digest, sources in conn.execute(
                f"SELECT id, digest, sources FROM papers WHERE id IN ({_in(batch)})", batch
            ):
                found[pid] = (digest, tuple(json.loads(sources)))
        return found

    def chunk_ids_of(self, paper_ids: Sequence[str]) -> set[str]:
        """Ids of the stored chunks of these papers."""
        return set(self.chunks_of(paper_ids))

    def known_chunks(self, chunk_ids: Sequence[str]) -> set[str]:
        """Which of these chunks are stored."""
        conn, found = self._connect(), set()
        for batch in _batches(list(chunk_ids)):
            rows = conn.execute(f"SELECT id FROM chunks WHERE id IN ({_in(batch)})", batch)
            found.update(row[0] for row in rows)
        return found

    def chunks_of(self, paper_ids: Sequence[str]) -> dict[str, str]:
        """Chunk id -> paper id, for the stored chunks of these papers."""
        conn, found = self._connect(), {}
        for batch in _batches(list(paper_ids)):
            found.update(
                conn.execute(
                    "SELECT c.id, p.id FROM chunks c JOIN papers p ON p.rowid = c.paper "
                    f"WHERE p.id IN ({_in(batch)})",
                    batch,
                ).fetchall()
            )
        return found

    def count_chunks(self, paper_ids: Sequence[str]) -> int:
        """How many chunks the records hold of these papers."""
        conn, total = self._connect(), 0
        for batch in _batches(list(paper_ids)):
            total += conn.execute(
                "SELECT count(*) FROM chunks c JOIN papers p ON p.rowid = c.paper "
                f"WHERE p.id IN ({_in(batch)})",
                batch,
            ).fetchone()[0]
        return int(total)

    def chunk_ids(self) -> set[str]:
        """Every stored chunk id (a server mirror's comparison; tests)."""
        return {r[0] for r in self._connect().execute("SELECT id FROM chunks")}

    def paper_ids(self) -> set[str]:
        """Every stored paper id."""
        return {r[0] for r in self._connect().execute("SELECT id FROM papers")}

    def papers(self, paper_ids: Sequence[str]) -> dict[str, PaperRecord]:
        """The records of those of ``paper_ids`` stored."""
        conn, found = self._connect(), {}
        for batch in _batches(list(paper_ids)):
            for row in conn.execute(
                "SELECT id, title, abstract, url, authors, date, categories, sources FROM papers "
                f"WHERE id IN ({_in(batch)})",
                batch,
            ):
                found[row[0]] = PaperRecord(*row[:7], tuple(json.loads(row[7])))
        return found

    def titles(self) -> set[str]:
        """Every stored paper's title."""
        return {r[0] for r in self._connect().execute("SELECT title FROM papers")}

    def count_papers(self) -> int:
        """Papers stored."""
        return int(self._connect().execute("SELECT count(*) FROM papers").fetchone()[0])

    # -- lexical statistics and search ----------------------------------------------------------

    def _fresh(self) -> None:
        version = self.version()
        if version != self._cache_version:
            self._df, self._size, self._cache_version = {}, None, version

    @property
    def size(self) -> int:
        """Number of chunks indexed."""
        self._fresh()
        if self._size is None:
            self._size = int(self._connect().execute("SELECT count(*) FROM chunks").fetchone()[0])
        return self._size

    def df(self, term: str) -> int:
        """How many chunks hold ``term`` (a term of ``rag.lexical.terms``)."""
        self._fresh()
        if term not in self._df:
            row = (
                self._connect()
                .execute("SELECT doc FROM chunk_vocab WHERE term = ?", (term,))
                .fetchone()
            )
            self._df[term] = int(row[0]) if row else 0
        return self._df[term]

    def idf(self, term: str) -> float:
        """BM25's (Lucene) inverse document frequency of a term (0 for an unknown term)."""
        df = self.df(term)
        if df == 0:
            return 0.0
        return math.log((self.size - df + 0.5) / (df + 0.5) + 1.0)

    @property
    def max_idf(self) -> float:
        """The IDF of a term found in a single chunk: the rarest a known term can be."""
        return math.log((self.size - 0.5) / 1.5 + 1.0) if self.size else 1.0

    def search(self, query: str, n: int) -> list[tuple[str, str, float]]:
        """Up to ``n`` (chunk id, paper id, BM25 score) whose chunks hold a query term, best first,
        ranked by FTS5's ``bm25()``.

        FTS5 scores every chunk that holds any query term (~1.2 us per posting): a common word
        ("which", "paper") makes an OR query cost 0.1 s at 100k chunks and ~2 s at 1.7M, while it
        adds little to a score (idf under ln 19 at 5% of the chunks, against ~12 for a rare
        term). So a query whose terms have over ``EXACT_POSTINGS`` postings leaves out the terms
        in more than ``COMMON_FRACTION`` of the chunks (keeping at least its rarest), as search
        engines treat such words as stop words. ``last_exact`` says whether it did: on the
        bundled corpus every question stays under the limit."""
        wanted = sorted((t for t in dict.fromkeys(terms(query)) if self.df(t)), key=self.df)
        self.last_exact = True
        if not wanted or n <= 0:
            return []
        if sum(map(self.df, wanted)) > EXACT_POSTINGS:
            rare = [t for t in wanted if self.df(t) <= COMMON_FRACTION * self.size]
            self.last_exact = len(rare) == len(wanted)
            wanted = rare or wanted[:1]
        rows = self._ranked(wanted, n)
        return [(cid, pid, -rank) for cid, pid, rank in rows if rank < 0]

    def _ranked(self, query_terms: Sequence[str], limit: int) -> list[tuple[str, str, float]]:
        """(chunk id, paper id, FTS5 rank) of the ``limit`` best chunks for these terms."""
        return (
            self._connect()
            .execute(
                "WITH hits AS (SELECT rowid, rank FROM chunk_index WHERE chunk_index MATCH ? "
                "ORDER BY rank LIMIT ?) "
                "SELECT c.id, p.id, hits.rank FROM hits JOIN chunks c ON c.rowid = hits.rowid "
                "JOIN papers p ON p.rowid = c.paper ORDER BY hits.rank, c.id",
                (" OR ".join(_quoted(t) for t in query_terms), limit),
            )
            .fetchall()
        )

    # -- names ----------------------------------------------------------------------------------

    @property
    def names(self) -> NameLookup:
        """The catalog of names, looked up per question (``rag.names``)."""
        return NameLookup(self)

    def name_rows(self, lowers: Iterable[str]) -> list[tuple[str, Word]]:
        """Every (paper id, word) whose word is spelt as one of ``lowers`` in lower case."""
        conn, rows = self._connect(), []
        wanted = list(lowers)
        for batch in _batches(wanted):
            rows += conn.execute(
                "SELECT p.id, n.text, n.kind, n.repeats, n.paper FROM names n "
                f"JOIN papers p ON p.rowid = n.paper WHERE n.lower IN ({_in(batch)})",
                batch,
            ).fetchall()
        rows.sort(key=lambda r: (r[4], r[2]))  # paper order, head before title before abstract
        return [(pid, Word(text, kind, repeats)) for pid, text, kind, repeats, _ in rows]

    def ordinary(self, word: str) -> bool:
        """Whether some abstract writes ``word`` in plain lower case."""
        if not TOKEN.fullmatch(word):
            return False  # the index holds single words as ``rag.names`` splits them
        row = (
            self._connect()
            .execute(
                "SELECT 1 FROM plain_index WHERE plain_index MATCH ? LIMIT 1", (_quoted(word),)
            )
            .fetchone()
        )
        return row is not None


class NameLookup:
    """``rag.names.Catalog.find`` over the stored rows of just the names a question may name."""

    def __init__(self, records: Records) -> None:
        self.records = records

    def find(self, question: str) -> list:  # type: ignore[type-arg]
        """The names ``question`` mentions (``rag.names.Catalog.find``)."""
        rows = self.records.name_rows(candidates(question))
        names: list[Name] = assemble(rows, self.records.ordinary) if rows else []
        return Catalog(names).find(question)


# -- analysis (what a write derives from the text) --------------------------------------------

Analysed = tuple[list[tuple[list[Word], set[str]]], list[str]]
_pool: ProcessPoolExecutor | None = None


def analyse(papers: Sequence[PaperRecord], texts: Sequence[str]) -> Analysed:
    """Each paper's ``paper_words`` and each chunk text's terms (as the line FTS5 indexes): in
    processes for a large batch where there are cores for them, else here."""
    global _pool
    if ANALYSIS_WORKERS and len(papers) >= PARALLEL_MIN:
        if _pool is None:
            # Spawned: the ingest's process holds torch's and Chroma's threads, unsafe to fork.
            context = multiprocessing.get_context("spawn")
            _pool = ProcessPoolExecutor(ANALYSIS_WORKERS, mp_context=context)
            atexit.register(_pool.shutdown, cancel_futures=True)
        parts = ANALYSIS_WORKERS * 2  # uneven parts even out
        pairs = [(r.title, r.abstract) for r in papers]
        p_size, t_size = -(-len(pairs) // parts), -(-len(texts) // parts)
        jobs = [
            (pairs[i * p_size : (i + 1) * p_size], list(texts[i * t_size : (i + 1) * t_size]))
            for i in range(parts)
        ]
        try:
            done = list(_pool.map(_analyse_part, *zip(*jobs, strict=True)))
        except BrokenProcessPool:  # a worker died (out of memory?): this batch here, next anew
            _pool = None
        else:
            return (
                [w for part in done for w in part[0]],
                [t for part in done for t in part[1]],
            )
    return _analyse_part([(r.title, r.abstract) for r in papers], list(texts))


def _analyse_part(pairs: list[tuple[str, str]], texts: list[str]) -> Analysed:
    return [paper_words(t, a) for t, a in pairs], [" ".join(terms(t)) for t in texts]
