"""Tests for rag.corpus: listing pages, JSON-lines, arXiv snapshot, errors and merging."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from rag.corpus import (
    Paper,
    bundled_corpus_dir,
    load_bundled,
    load_jsonl,
    load_paths,
    normalise_text,
    normalise_title,
    paper_id,
    parse_listing,
)
from rag.errors import CorpusError

ABSTRACT_A = "We study alpha. " * 10
ABSTRACT_B = "We study beta. " * 10
ID_PATTERN = re.compile(r"[a-z0-9-]{1,48}-[0-9a-f]{8}")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def raises_at(exc: pytest.ExceptionInfo[CorpusError], path: Path | str, line: int | None) -> str:
    """Assert the error names the file and line; return its message for further checks."""
    message = str(exc.value)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(where), message
    assert exc.value.line == line
    return message


# --- normalisation and ids -------------------------------------------------------------------


def test_normalise_text_nfkc_whitespace_and_proxy_link() -> None:
    text = "  \ufb01ne\u00a0tuning\n\tat  https://hf-proxy-cf.effarig.site/org/model  "
    assert normalise_text(text) == "fine tuning at https://huggingface.co/org/model"


def test_normalise_title_drops_case_and_punctuation() -> None:
    assert normalise_title("  PLeaS -- Merging:  Models,\nwith (Least) Squares! ") == (
        "pleas merging models with least squares"
    )


def test_paper_id_is_stable_known_value() -> None:
    title = "Fast and Simplex: 2-Simplicial Attention in Triton"
    digest = hashlib.sha256(b"fast and simplex 2simplicial attention in triton").hexdigest()
    assert paper_id(title) == f"fast-and-simplex-2simplicial-attention-in-triton-{digest[:8]}"


def test_paper_id_ignores_case_whitespace_and_punctuation() -> None:
    base = paper_id("Mind the Memory Gap: Unveiling GPU Bottlenecks")
    assert paper_id("mind the memory gap unveiling gpu bottlenecks") == base
    assert paper_id("  MIND the\tMemory   Gap -- Unveiling GPU Bottlenecks. ") == base
    assert paper_id("Mind the Memory Gap: Unveiling CPU Bottlenecks") != base


def test_paper_id_shape_truncation_and_unicode() -> None:
    long_id = paper_id("A Very Long Title About Extraordinarily Comprehensive Benchmarks Of Models")
    slug = long_id.rsplit("-", 1)[0]
    assert ID_PATTERN.fullmatch(long_id)
    assert slug == "a-very-long-title-about-extraordinarily"  # cut at a word boundary
    assert paper_id("Über Modèles").startswith("uber-modeles-")
    assert ID_PATTERN.fullmatch(paper_id("日本語のタイトル"))
    with pytest.raises(ValueError):
        paper_id("?!  --")


# --- listing pages ---------------------------------------------------------------------------


def test_listing_with_blank_lines_drops_noise() -> None:
    text = (
        "new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n"
        "byAK and the research community\n\nMay 8\n\nAlpha Paper\n\n"
        f"{ABSTRACT_A}\n\nJun 16\n\nBeta Paper\n\n{ABSTRACT_B}\n"
    )
    papers = parse_listing(text, "page.txt")
    assert [(p.title, p.abstract) for p in papers] == [
        ("Alpha Paper", ABSTRACT_A.strip()),
        ("Beta Paper", ABSTRACT_B.strip()),
    ]
    assert papers[0] == Paper(
        paper_id("Alpha Paper"), "Alpha Paper", ABSTRACT_A.strip(), ("page.txt",)
    )


def test_listing_without_blank_lines_and_glued_subscribe() -> None:
    text = (
        "Get trending papers in your email inbox once a day!\n"
        "Get trending papers in your email inbox!\n"
        f"SubscribeMind the Gap\n{ABSTRACT_A}\nBeta Paper\n{ABSTRACT_B}\nMind the Gap\n{ABSTRACT_A}"
    )
    papers = parse_listing(text, "page.txt")
    assert [p.title for p in papers] == ["Mind the Gap", "Beta Paper", "Mind the Gap"]
    assert papers[0].id == papers[2].id  # repeats are kept by parse_listing


def test_listing_noise_matching_does_not_eat_real_titles() -> None:
    titles = ["Subscribers Churn Less", "May 8 Models Suffice", "New Results", "Subscribe to Me"]
    text = "".join(f"{t}\n{ABSTRACT_A}\n" for t in titles)
    assert [p.title for p in parse_listing(text, "page.txt")] == titles


def test_listing_abstract_in_title_position_names_line() -> None:
    text = f"new\n\nAlpha Paper\n\n{ABSTRACT_A}\n\n{ABSTRACT_B * 3}\n\nBeta Paper\n"
    with pytest.raises(CorpusError) as exc:
        parse_listing(text, "page.txt")
    assert "title" in raises_at(exc, "page.txt", 7)


def test_listing_title_without_abstract_at_end_names_line() -> None:
    text = f"Alpha Paper\n{ABSTRACT_A}\nBeta Paper\n\nMay 8\n"
    with pytest.raises(CorpusError) as exc:
        parse_listing(text, "page.txt")
    assert "no abstract" in raises_at(exc, "page.txt", 3)


def test_listing_title_without_letters_names_line() -> None:
    with pytest.raises(CorpusError) as exc:
        parse_listing(f"Alpha\n{ABSTRACT_A}\n---\n{ABSTRACT_B}\n", "page.txt")
    raises_at(exc, "page.txt", 3)


# --- the bundled corpus ----------------------------------------------------------------------


def test_bundled_corpus_counts() -> None:
    files = sorted(bundled_corpus_dir().glob("*.txt"))
    assert len(files) == 5
    entries = [p for f in files for p in parse_listing(f.read_text(encoding="utf-8"), f.name)]
    assert len(entries) == 689
    papers = load_bundled()
    assert len(papers) == 554
    assert len({p.id for p in papers}) == 554
    assert len({normalise_title(p.title) for p in papers}) == 554


def test_bundled_corpus_is_clean_and_labelled_by_file_name() -> None:
    papers = load_bundled()
    names = {f.name for f in bundled_corpus_dir().glob("*.txt")}
    noise = {"new", "Subscribe", "byAK and the research community"}
    for paper in papers:
        assert paper.title not in noise and not paper.title.startswith("Subscribe")
        assert not paper.title.startswith("Get trending papers")
        assert len(paper.abstract) > len(paper.title)
        assert "hf-proxy-cf.effarig.site" not in paper.abstract
        assert set(paper.sources) <= names and len(set(paper.sources)) == len(paper.sources)
    titles = [p.title for p in papers]
    assert "Mind the Memory Gap: Unveiling GPU Bottlenecks in Large-Batch LLM Inference" in titles
    assert (
        papers[0].title
        == "Coreset Sampling from Open-Set for Fine-Grained Self-Supervised Learning"
    )
    assert sum(len(p.sources) for p in papers) == 689  # no file repeats a paper within itself


def test_bundled_rewritten_link_dedupes_to_one_paper() -> None:
    corpus = bundled_corpus_dir()
    raw = {f.name: f.read_text(encoding="utf-8") for f in corpus.glob("*.txt")}
    first, second = "000_083ad19731b47f50.txt", "004_11bd5de3d16df165.txt"
    assert "hf-proxy-cf.effarig.site/stabilityai" in raw[first]
    assert "hf-proxy-cf.effarig.site" not in raw[second]
    entries = [
        p
        for name in (first, second)
        for p in parse_listing(raw[name], name)
        if p.title == "Stable Code Technical Report"
    ]
    assert len(entries) == 2 and entries[0].abstract == entries[1].abstract
    assert "https://huggingface.co/stabilityai/stable-code-3b" in entries[0].abstract
    merged = [p for p in load_bundled() if p.title == "Stable Code Technical Report"]
    assert len(merged) == 1
    assert merged[0].sources == (first, second)


# --- JSON-lines and arXiv --------------------------------------------------------------------


def test_jsonl_all_fields_both_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "papers.jsonl",
        json.dumps(
            {
                "id": "p-1",
                "title": " Alpha\nPaper ",
                "abstract": ABSTRACT_A,
                "url": "https://example.org/a",
                "authors": ["Ada Lovelace", " Alan  Turing "],
                "date": "2024-01-02",
                "categories": ["cs.LG", "cs.AI"],
            }
        )
        + "\n\n   \n"
        + json.dumps(
            {
                "id": 42,
                "title": "Beta",
                "abstract": ABSTRACT_B,
                "authors": "Ada Lovelace, Alan Turing and Grace Hopper",
                "categories": "cs.CL  stat.ML",
            }
        )
        + "\n"
        + json.dumps({"title": "Gamma", "abstract": "Text.", "url": None})
        + "\n",
    )
    alpha, beta, gamma = load_jsonl(path)
    assert alpha == Paper(
        id="p-1",
        title="Alpha Paper",
        abstract=ABSTRACT_A.strip(),
        sources=(str(path),),
        url="https://example.org/a",
        authors=("Ada Lovelace", "Alan Turing"),
        date="2024-01-02",
        categories=("cs.LG", "cs.AI"),
    )
    assert beta.id == "42" and beta.url is None and beta.date is None
    assert beta.authors == ("Ada Lovelace", "Alan Turing", "Grace Hopper")
    assert beta.categories == ("cs.CL", "stat.ML")
    assert gamma == Paper(paper_id("Gamma"), "Gamma", "Text.", (str(path),))


def test_arxiv_snapshot_lines(tmp_path: Path) -> None:
    common = {
        "submitter": "Someone",
        "comments": "12 pages",
        "journal-ref": None,
        "doi": None,
        "report-no": None,
        "license": None,
        "versions": [{"version": "v1", "created": "Wed, 21 Feb 2024 04:30:18 GMT"}],
    }
    records = [
        {
            **common,
            "id": "2402.13499",
            "authors": "Jane Q. Doe, Wei Zhang and\n  Ana Lima",
            "title": "Scaling Laws for\n  Tiny  Models",
            "categories": "cs.LG cs.AI",
            "abstract": "  We study scaling.\nIt works  well.\n",
            "update_date": "2024-02-22",
            "authors_parsed": [["Doe", "Jane Q.", ""], ["Zhang", "Wei", ""], ["Lima", "Ana", ""]],
        },
        {
            **common,
            "id": "hep-th/9901001",
            "authors": "A. Einstein",
            "title": "Old Style Identifiers",
            "categories": "hep-th",
            "abstract": "An old paper.",
            "update_date": "2008-02-03",
        },
    ]
    path = write_jsonl(tmp_path / "arxiv-metadata-oai-snapshot.json", *records)
    first, second = load_jsonl(path)
    assert first == Paper(
        id="2402.13499",
        title="Scaling Laws for Tiny Models",
        abstract="We study scaling. It works well.",
        sources=(str(path),),
        url="https://arxiv.org/abs/2402.13499",
        authors=("Jane Q. Doe", "Wei Zhang", "Ana Lima"),
        date="2024-02-22",
        categories=("cs.LG", "cs.AI"),
    )
    assert second.id == "hep-th/9901001"
    assert second.url == "https://arxiv.org/abs/hep-th/9901001"
    assert second.authors == ("A. Einstein",) and second.categories == ("hep-th",)


# --- errors ----------------------------------------------------------------------------------


GOOD = {"title": "Alpha", "abstract": "Text."}


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"title": "x", "abstract": ', "invalid JSON"),
        ('["title", "abstract"]', "expected a JSON object, got list"),
        ('{"abstract": "Text."}', "missing or empty 'title'"),
        ('{"title": "Beta", "abstract": "  \\n "}', "missing or empty 'abstract'"),
        ('{"title": 7, "abstract": "Text."}', "'title' must be a string, got int"),
        ('{"title": "Beta", "abstract": ["Text."]}', "'abstract' must be a string, got list"),
        ('{"title": "Beta", "abstract": "T", "url": 5}', "'url' must be a string"),
        ('{"title": "Beta", "abstract": "T", "date": 2024}', "'date' must be a string"),
        ('{"title": "Beta", "abstract": "T", "authors": [1]}', "'authors' must be a list"),
        ('{"title": "Beta", "abstract": "T", "categories": 3}', "'categories' must be a list"),
        ('{"title": "Beta", "abstract": "T", "id": 1.5}', "'id' must be a string or an integer"),
        ('{"title": "Beta", "abstract": "T", "id": true}', "'id' must be a string or an integer"),
        ('{"title": "Beta", "abstract": "T", "id": " "}', "'id' is empty"),
        ('{"title": "...", "abstract": "T"}', "no letters or digits"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = write(tmp_path / "papers.jsonl", json.dumps(GOOD) + "\n\n" + bad_line + "\n")
    for load in (load_jsonl, lambda p: load_paths([p])):
        with pytest.raises(CorpusError) as exc:
            load(path)
        assert reason in raises_at(exc, path, 3)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError) as exc:
        load_paths([missing])
    assert "no such file or directory" in raises_at(exc, missing, None)
    with pytest.raises(CorpusError) as exc:
        load_jsonl(missing)
    assert "no such file or directory" in raises_at(exc, missing, None)


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = write(tmp_path / "papers.csv", "title,abstract\n")
    with pytest.raises(CorpusError) as exc:
        load_paths([path])
    assert "unsupported file type '.csv'" in raises_at(exc, path, None)


@pytest.mark.parametrize(
    ("name", "text"), [("empty.jsonl", "\n  \n"), ("empty.txt", "new\n\nSubscribe\n\nMay 8\n")]
)
def test_file_without_papers(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(CorpusError) as exc:
        load_paths([path])
    assert "no papers found" in raises_at(exc, path, None)


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_non_utf8_file_names_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'{"title": "A", "abstract": "B"}\n\n{"title": "Caf\xe9", "abstract": "B"}\n')
    with pytest.raises(CorpusError) as exc:
        load_paths([path])
    assert "UTF-8" in raises_at(exc, path, 3)


def test_listing_error_through_load_paths_names_path(tmp_path: Path) -> None:
    path = write(tmp_path / "page.txt", f"Alpha\n{ABSTRACT_A}\nBeta\n")
    with pytest.raises(CorpusError) as exc:
        load_paths([path])
    raises_at(exc, path, 3)


def test_directory_without_corpus_files(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "# nothing here\n")
    with pytest.raises(CorpusError) as exc:
        load_paths([tmp_path])
    assert "no corpus files" in raises_at(exc, tmp_path, None)


# --- load_paths: mixed inputs, merging -------------------------------------------------------


def test_load_paths_directory_with_mixed_files_merges(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    listing = write(
        corpus / "a_page.txt", f"SubscribeAlpha Paper\n{ABSTRACT_A}\nShared Paper\n{ABSTRACT_B}\n"
    )
    jsonl = write_jsonl(
        corpus / "b_papers.jsonl",
        {"title": "shared   paper.", "abstract": "A different abstract.", "authors": "X and Y"},
        {"title": "Gamma", "abstract": "Gamma text."},
        {"title": "Alpha Paper", "abstract": ABSTRACT_A},
    )
    write(corpus / "notes.md", "ignored\n")
    (corpus / "nested").mkdir()
    write(corpus / "nested" / "deeper.txt", "not\nread\n")  # non-recursive

    papers = load_paths([corpus, str(listing)])  # the repeat of a_page.txt adds nothing
    assert [p.title for p in papers] == ["Alpha Paper", "Shared Paper", "Gamma"]
    alpha, shared, gamma = papers
    assert alpha.sources == (str(listing), str(jsonl))
    assert shared.abstract == ABSTRACT_B.strip()  # first one wins, no failure
    assert shared.sources == (str(listing), str(jsonl)) and shared.authors == ()
    assert gamma.sources == (str(jsonl),)


def test_load_paths_fails_before_returning_anything(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    bad = write(tmp_path / "bad.ndjson", json.dumps(GOOD) + "\n{oops}\n")
    with pytest.raises(CorpusError) as exc:
        load_paths([good, bad])
    raises_at(exc, bad, 2)


def test_load_paths_keeps_ids_given_in_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        {"id": 1, "title": "Same", "abstract": "One."},
        {"id": "1", "title": "Other", "abstract": "Two."},
        {"id": 2, "title": "Same", "abstract": "Three."},
    )
    papers = load_paths([path])
    assert [(p.id, p.abstract) for p in papers] == [("1", "One."), ("2", "Three.")]
    assert papers[0].sources == (str(path),)
