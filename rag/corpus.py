"""Load research-paper abstracts into ``Paper`` records.

Inputs: scraped "trending papers" listing pages (``.txt``: title line, abstract line, repeated, with
page chrome mixed in), JSON-lines papers and the arXiv metadata snapshot (``.jsonl``/``.json``/
``.ndjson``, schema detected per line).

An ingest reads its files twice, holding only a small entry per paper (``Scan``): the first pass
checks every line (a bad file fails before any index is touched), merges repeats and gives each
paper a digest of its content; the second yields the papers that need work, one at a time, so
memory does not grow with the files (a JSONL file is read line by line).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rag.errors import CorpusError

LISTING_SUFFIXES = frozenset({".txt"})
JSONL_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})
_SUFFIX_HINT = ".txt, .jsonl, .json, .ndjson"
# A real title in the bundled pages is at most ~180 characters and an abstract at least ~490, so a
# longer "title" means the title/abstract alternation has slipped.
MAX_TITLE_CHARS = 300
# The longest bundled abstract is 1,917 characters, arXiv's limit 1,920. Ten times that is not an
# abstract: cut, so one runaway record cannot become hundreds of chunks (a 1 MB one made 947).
MAX_ABSTRACT_CHARS = 20_000
SLUG_MAX_CHARS = 48

# Whole-line matches only: anything looser could swallow a real title.
_NOISE_LINES = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Get trending papers in your email inbox once a day!",
        "Subscribe",
        "byAK and the research community",
    }
)
_DATE_LINE = re.compile(
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?:[1-9]|[12]\d|3[01])"
)
# The page sometimes glues its "Subscribe" button onto the first title. Requiring a non-lowercase
# character next keeps a title such as "Subscribers and ..." intact.
_GLUED_SUBSCRIBE = re.compile(r"^Subscribe(?=[^\sa-z])")
_PROXY_HOST = "hf-proxy-cf.effarig.site"
_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_ARXIV_ID = re.compile(r"(?:\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?")
_AUTHOR_SEPARATORS = re.compile(r"\s*,\s*|\s+and\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: not text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON can spell them (\ud800), UTF-8 cannot


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper: its text plus whatever metadata the source provided."""

    id: str
    title: str
    abstract: str
    sources: tuple[str, ...] = ()
    url: str | None = None
    authors: tuple[str, ...] = ()
    date: str | None = None
    categories: tuple[str, ...] = ()


def normalise_text(text: str) -> str:
    """Return ``text`` NFKC-normalised, with whitespace runs collapsed and proxy links undone."""
    text = unicodedata.normalize("NFKC", text).replace(_PROXY_HOST, "huggingface.co")
    return _WHITESPACE.sub(" ", text).strip()


def normalise_title(title: str) -> str:
    """Return the dedupe key of a title: normalised, casefolded, without punctuation."""
    key = _PUNCTUATION.sub("", normalise_text(title).casefold())
    return _WHITESPACE.sub(" ", key).strip()


def paper_id(title: str) -> str:
    """Return a stable id for ``title``: a readable slug plus 8 hex digits of its key's sha256.

    Raises ``ValueError`` when the title has no letters or digits (it would have no usable key).
    """
    key = normalise_title(title)
    if not key:
        raise ValueError(f"title {title!r} has no letters or digits")
    # Decompose so accented letters keep their base letter in the ASCII slug.
    ascii_key = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_key).strip("-")
    if len(slug) > SLUG_MAX_CHARS:
        cut = slug[: SLUG_MAX_CHARS + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut[:SLUG_MAX_CHARS]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"{slug or 'paper'}-{digest}"


def parse_listing(text: str, source: str) -> list[Paper]:
    """Parse a listing page into papers, in order and with repeats; errors name ``source``."""
    papers: list[Paper] = []
    pending: tuple[int, str, str] | None = None  # (line, id, title) waiting for its abstract
    # split("\n") rather than splitlines(): the latter also breaks on \x0c, \u2028, ... and would
    # make our line numbers disagree with the user's editor.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line in _NOISE_LINES or _DATE_LINE.fullmatch(line):
            continue
        if pending is None:
            line = normalise_text(_GLUED_SUBSCRIBE.sub("", line, count=1))
            if len(line) > MAX_TITLE_CHARS:
                reason = f"expected a title, found a {len(line)}-character line (missing title?)"
                raise CorpusError(source, number, reason)
            pending = (number, _title_id(line, source, number), line)
        else:
            _, id_, title = pending
            papers.append(Paper(id_, title, normalise_text(line), sources=(source,)))
            pending = None
    if pending is not None:
        raise CorpusError(source, pending[0], "title has no abstract after it (end of file)")
    return papers


def load_jsonl(path: Path) -> list[Paper]:
    """Load a JSON-lines file of papers (either schema, detected per line); errors name the line."""
    papers = list(_papers_in(Path(path), str(path)))
    if not papers:
        raise CorpusError(str(path), None, "no papers found")
    return papers


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file, read line by line; any line
    that is not a JSON object of valid text raises ``CorpusError`` naming the file and line."""
    where = str(path)
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
            raise CorpusError(where, number, reason) from None
        except RecursionError:
            raise CorpusError(where, number, "JSON nested too deeply") from None
        if not isinstance(record, dict):
            reason = f"expected a JSON object, got {type(record).__name__}"
            raise CorpusError(where, number, reason)
        # Decoded UTF-8 holds no surrogates: only a "\ud800"-style escape can make one, so the
        # record is re-read for them only when its line has such an escape.
        if _SURROGATE_ESCAPE.search(line) and (
            bad := _SURROGATE.search(json.dumps(record, ensure_ascii=False))
        ):
            reason = f"not valid Unicode text (a lone surrogate, \\u{ord(bad.group()):04x})"
            raise CorpusError(where, number, reason)
        yield number, record


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a UTF-8 file, one at a time (a BOM at its start dropped).
    Lines end at "\\n" only, as ``str.split("\\n")`` would split them."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise CorpusError(str(path), None, "no such file or directory") from None
    except OSError as exc:
        raise CorpusError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start]
                raise CorpusError(
                    str(path), number, f"not valid UTF-8 text (byte 0x{bad:02x})"
                ) from None
            yield number, (text.removeprefix("\ufeff") if number == 1 else text).removesuffix("\n")


def _paper_from_record(record: dict[str, Any], label: str, where: str, number: int) -> Paper:
    def fail(reason: str) -> CorpusError:
        return CorpusError(where, number, reason)

    def optional_str(key: str) -> str | None:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(f"'{key}' must be a string, got {type(value).__name__}")
        return None if value is None else normalise_text(value) or None

    def names(key: str, split: re.Pattern[str]) -> tuple[str, ...]:
        value = record.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            # Normalise first: arXiv author strings wrap across lines before an "and".
            items = split.split(normalise_text(value))
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [normalise_text(item) for item in value]
        else:
            raise fail(f"'{key}' must be a list of strings or a string")
        return tuple(item for item in items if item)

    def required(key: str) -> str:
        if (value := optional_str(key)) is None:
            raise fail(f"missing or empty '{key}'")
        return value

    title, abstract = required("title"), required("abstract")
    raw_id = record.get("id")
    # bool is an int subclass, but `"id": true` is certainly a mistake.
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        raise fail(f"'id' must be a string or an integer, got {type(raw_id).__name__}")
    given_id = "" if raw_id is None else str(raw_id).strip()
    if raw_id is not None and not given_id:
        raise fail("'id' is empty")

    is_arxiv = (
        "update_date" in record
        or "authors_parsed" in record
        or (isinstance(record.get("categories"), str) and "id" in record)
    )
    url, date = optional_str("url"), optional_str("date")
    if is_arxiv:
        # Explicit url/date win. The detection rule also matches plain records with an id and string
        # categories, so only an id shaped like an arXiv id gets an arXiv link.
        if url is None and _ARXIV_ID.fullmatch(given_id):
            url = f"https://arxiv.org/abs/{given_id}"
        date = date or optional_str("update_date")
    authors, categories = names("authors", _AUTHOR_SEPARATORS), names("categories", _WHITESPACE)
    paper_key = given_id or _title_id(title, where, number)
    return Paper(paper_key, title, abstract, (label,), url, authors, date, categories)


@dataclass(frozen=True, slots=True)
class Corpus:
    """Papers parsed from the inputs, and what was dropped or cut on the way (one line each)."""

    papers: list[Paper]
    duplicates: list[str]  # a paper given twice: in one file, or again with another abstract
    truncated: list[str]  # an abstract over MAX_ABSTRACT_CHARS, cut


def load_paths(paths: Sequence[Path | str]) -> list[Paper]:
    """Load files and directories, merging repeats by paper id (first abstract wins, sources join)."""
    return load_corpus(paths).papers


def load_corpus(paths: Sequence[Path | str]) -> Corpus:
    """``load_paths``, saying what was dropped (``Scan``), all in memory."""
    scan = Scan.of_paths(paths)
    return Corpus(list(scan.papers()), scan.duplicates, scan.truncated)


def digest(paper: Paper) -> str:
    """A digest of what a paper's chunks and record are made of (not where it was found)."""
    fields = [paper.title, paper.abstract, paper.url, list(paper.authors), paper.date]
    fields.append(list(paper.categories))
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]


@dataclass(slots=True)
class Entry:
    """What a scan keeps of one paper (~200 bytes): enough to skip it, merge its repeats and
    find its first occurrence again."""

    digest: str
    gist: int  # of the first abstract: a repeat with another one is reported
    sources: tuple[str, ...]
    first: int  # the ordinal of its first occurrence among all the records read


class Scan:
    """The papers of some inputs, read in two passes (see the module's docstring).

    ``entries`` (paper id -> ``Entry``), ``duplicates`` and ``truncated`` are filled by the first
    pass, in the constructor; ``papers`` is the second. ``Scan.of_papers`` wraps papers already in
    memory in the same interface."""

    def __init__(self, read: Callable[[bool], Iterator[tuple[str, Paper]]]) -> None:
        self._read = read  # (label, paper) of every record, in order; True: say what was cut
        self.entries: dict[str, Entry] = {}
        self.duplicates: list[str] = []
        self.truncated: list[str] = []
        labels: dict[str, tuple[str, ...]] = {}  # one tuple per label, shared by its papers
        for ordinal, (label, paper) in enumerate(read(True)):
            first = self.entries.get(paper.id)
            if first is None:
                sources = labels.setdefault(label, (label,))
                self.entries[paper.id] = Entry(digest(paper), _gist_key(paper), sources, ordinal)
                continue
            if label in first.sources or first.gist != _gist_key(paper):
                where = (
                    "earlier in the file" if label in first.sources else f"in {first.sources[0]}"
                )
                self.duplicates.append(
                    f"{label}: {paper.title!r} is given again ({where}): the first is kept"
                )
            if label not in first.sources:
                first.sources = (*first.sources, label)

    @classmethod
    def of_paths(cls, paths: Sequence[Path | str]) -> Scan:
        """Scan files and directories (listing pages, JSONL): raises ``CorpusError`` on the first
        bad file or line, having read nothing else into memory."""
        return cls.of_files(input_files(paths))

    @classmethod
    def of_files(cls, files: Sequence[Path]) -> Scan:
        """``of_paths`` for the files ``input_files`` found."""
        bundled = bundled_corpus_dir().resolve()
        truncated: list[str] = []

        def read(report: bool) -> Iterator[tuple[str, Paper]]:
            for file in files:
                # Bundled files are labelled by name so sources do not leak the install location.
                label = file.name if file.resolve().parent == bundled else str(file)
                found = False
                for paper in _papers_in(file, label):
                    found = True
                    if len(paper.abstract) > MAX_ABSTRACT_CHARS:
                        paper = replace(paper, abstract=_cut(paper.abstract))
                        if report:
                            truncated.append(
                                f"{label}: the abstract of {paper.title!r} is over "
                                f"{MAX_ABSTRACT_CHARS:,} characters: cut there"
                            )
                    yield label, paper
                if not found:
                    raise CorpusError(str(file), None, "no papers found")

        scan = cls(read)
        scan.truncated = truncated
        return scan

    @classmethod
    def of_papers(cls, papers: Sequence[Paper]) -> Scan:
        """Papers already parsed (first of an id wins; its sources are as given)."""

        def read(report: bool) -> Iterator[tuple[str, Paper]]:
            for paper in papers:
                yield (paper.sources[0] if paper.sources else ""), paper

        scan = cls(read)
        for paper in reversed(papers):  # the first of an id keeps the sources it was given
            scan.entries[paper.id].sources = paper.sources
        return scan

    def papers(self, wanted: Callable[[str], bool] | None = None) -> Iterator[Paper]:
        """The second pass: each paper once (its first occurrence, with every source it was found
        in), those ``wanted(id)`` accepts, in input order."""
        for ordinal, (_, paper) in enumerate(self._read(False)):
            entry = self.entries[paper.id]
            if entry.first != ordinal or (wanted is not None and not wanted(paper.id)):
                continue
            yield replace(paper, sources=entry.sources)


def _papers_in(file: Path, label: str) -> Iterator[Paper]:
    if file.suffix.lower() in LISTING_SUFFIXES:
        yield from parse_listing(_read_text(file), label)
    else:
        for number, record in json_lines(file):
            yield _paper_from_record(record, label, str(file), number)


def _gist_key(paper: Paper) -> int:
    return int.from_bytes(hashlib.blake2b(_gist(paper.abstract).encode(), digest_size=8).digest())


def _gist(text: str) -> str:
    """Text without case, spacing or punctuation: two pages that print one abstract with
    "algorithm -- using" and "algorithm--using" give the same paper, not a conflicting one."""
    return _PUNCTUATION.sub("", _WHITESPACE.sub("", text.casefold()))


def _cut(abstract: str) -> str:
    """``abstract`` cut to MAX_ABSTRACT_CHARS, at the last sentence end before it if there is one."""
    head = abstract[:MAX_ABSTRACT_CHARS]
    end = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    return head[: end + 1] if end > MAX_ABSTRACT_CHARS // 2 else head


def bundled_corpus_dir() -> Path:
    """Return the directory holding the corpus shipped with the package."""
    from rag.resources import data_path

    return data_path("corpus")


def load_bundled() -> list[Paper]:
    """Load the bundled corpus, deduplicated."""
    return load_paths([bundled_corpus_dir()])


def files_fingerprint(files: Sequence[Path]) -> str:
    """What identifies these files' contents without reading them: path, size and modification
    time (as make and rsync judge a file unchanged)."""
    stats = []
    for file in files:
        info = file.stat()
        stats.append((str(file.resolve()), info.st_size, info.st_mtime_ns))
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def input_files(paths: Sequence[Path | str]) -> list[Path]:
    """The corpus files that ``paths`` name (directories listed, sorted); ``CorpusError`` for a
    path that is missing or of another type."""
    supported = LISTING_SUFFIXES | JSONL_SUFFIXES
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in supported
            )
            if not found:
                raise CorpusError(str(path), None, f"no corpus files ({_SUFFIX_HINT}) in directory")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in supported:
                reason = f"unsupported file type '{path.suffix}' (expected {_SUFFIX_HINT})"
                raise CorpusError(str(path), None, reason)
            files.append(path)
        else:
            raise CorpusError(str(path), None, "no such file or directory")
    return files


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(str(path), None, "no such file or directory") from None
    except OSError as exc:
        raise CorpusError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, bad = data.count(b"\n", 0, exc.start) + 1, data[exc.start]
        raise CorpusError(str(path), line, f"not valid UTF-8 text (byte 0x{bad:02x})") from None
    return text.removeprefix("\ufeff")


def _title_id(title: str, where: str, line: int) -> str:
    try:
        return paper_id(title)
    except ValueError as exc:
        raise CorpusError(where, line, str(exc)) from None
