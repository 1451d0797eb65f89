"""Judgements made in the chat, kept as a gold set that ``rag eval`` reads as it is.

A reader checking an answer's citations can say, in place: this citation is wrong; this paper,
retrieved but not cited, should be cited; this answer should have declined. Each judgement is
merged into one record per question (``RAG_FEEDBACK_FILE``, default ``INDEX_DIR/feedback.jsonl``),
and that record is a gold-set line (``rag.evaluation.load_dataset``):

- judging an answer accepts the citations left unflagged: its gold titles are the cited papers not
  marked wrong, plus those marked "should be cited";
- "should have declined" makes every cited paper non-gold; a question left with no gold title is
  an unanswerable one (all its citations were wrong and none was missing);
- a later judgement of the same title wins; every judgement is kept in ``judgements`` with who
  made it and when, and the non-gold titles in ``not_gold_titles`` (``rag eval`` ignores both).

The file is rewritten whole under an ``flock`` for each judgement, through a rename, so two chat
processes judging at once lose nothing and a crash leaves the previous file. ``rag feedback
export`` writes the gold keys alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rag.corpus import json_lines
from rag.errors import CorpusError, InputError
from rag.settings import Settings

Kind = Literal["wrong", "missing", "declined"]
KINDS: dict[str, str] = {  # the judgement: the words its button shows
    "wrong": "wrong citation",
    "missing": "should be cited",
    "declined": "should have declined",
}
GOLD_KEYS = ("id", "question", "type", "category", "gold_titles", "partial_titles")


@dataclass(frozen=True, slots=True)
class Judged:
    """What was judged: the question, as asked, and its answer's cited and retrieved titles."""

    question: str
    cited: tuple[str, ...]
    retrieved: tuple[str, ...]
    intent: str = "single"


def question_key(question: str) -> str:
    """Questions are merged when they differ only in case and spacing."""
    return " ".join(question.casefold().split())


def record_id(question: str) -> str:
    """A stable, readable id for a question's record."""
    words = re.findall(r"\w+", question_key(question))[:8]
    digest = hashlib.sha256(question_key(question).encode()).hexdigest()[:8]
    return f"feedback-{'-'.join(words)[:60]}-{digest}"


class FeedbackFile:
    """The judgements file: ``judge`` merges one in; ``records`` reads them back."""

    def __init__(self, path: Path, lock: Path | None = None) -> None:
        self.path = Path(path)
        self.lock = lock or self.path.with_name(f".{self.path.name}.lock")

    @classmethod
    def of(cls, settings: Settings) -> FeedbackFile:
        """The file ``settings`` name (``RAG_FEEDBACK_FILE`` or the index directory's)."""
        return cls(settings.feedback_path, settings.feedback_lock)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the file (a judgement being merged, a rebuild carrying it over)."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with self.lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def records(self) -> list[dict[str, Any]]:
        """The merged records, oldest question first (none when the file does not exist)."""
        if not self.path.exists():
            return []
        return [record for _, record in json_lines(self.path)]

    def judge(
        self, judged: Judged, kind: Kind, title: str | None, by: str, at: datetime | None = None
    ) -> dict[str, Any]:
        """Merge one judgement (``title``: the paper, none for "declined"); returns its record."""
        if kind not in KINDS:
            raise InputError(f"no judgement {kind!r}: one of {', '.join(KINDS)}")
        if kind == "wrong" and title not in judged.cited:
            raise InputError(f"{title!r} is not cited by this answer")
        if kind == "missing" and (title not in judged.retrieved or title in judged.cited):
            raise InputError(f"{title!r} is not a retrieved, uncited paper of this answer")
        when = (at or datetime.now(UTC)).isoformat(timespec="seconds")
        with self.locked():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                records = self.records()
            except CorpusError as exc:  # never overwrite a file we cannot read
                raise InputError(f"cannot record the judgement: {exc}") from None
            key = question_key(judged.question)
            record = next((r for r in records if question_key(r["question"]) == key), None)
            if record is None:
                record = {"id": record_id(judged.question), "question": judged.question}
                records.append(record)
            _merge(record, judged, kind, title, by, when)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            os.replace(tmp, self.path)
        return record

    def export(self, out: Path) -> int:
        """Write the gold keys of every record to ``out``; returns how many."""
        records = self.records()
        if not records:
            raise InputError(f"no judgements in {self.path} yet: judge answers in `rag chat`")
        lines = [
            json.dumps({k: r[k] for k in GOLD_KEYS if k in r}, ensure_ascii=False) for r in records
        ]
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return len(records)


def _merge(
    record: dict[str, Any], judged: Judged, kind: Kind, title: str | None, by: str, when: str
) -> None:
    """Fold one judgement into a question's record, then derive its gold keys."""
    verdicts: dict[str, str] = dict(record.get("verdicts", {}))
    for cited in judged.cited:  # judging an answer accepts what it does not flag
        verdicts.setdefault(cited, "gold")
    if kind == "declined":
        verdicts.update(dict.fromkeys(judged.cited, "not_gold"))
        verdicts = {t: v for t, v in verdicts.items() if v == "not_gold"}
    else:
        assert title is not None
        verdicts[title] = "not_gold" if kind == "wrong" else "gold"
    gold = [t for t, v in verdicts.items() if v == "gold"]
    record["verdicts"] = verdicts
    record["gold_titles"] = gold
    record["not_gold_titles"] = [t for t, v in verdicts.items() if v == "not_gold"]
    record["partial_titles"] = []
    record["type"] = _type(gold, judged.intent)
    record["category"] = {"unanswerable": "near-miss"}.get(record["type"], record["type"])
    record.setdefault("judgements", []).append(
        {"judgement": kind, "title": title, "by": by, "at": when}
    )


def _type(gold: Sequence[str], intent: str) -> str:
    if not gold:
        return "unanswerable"
    if len(gold) == 1:
        return "single"
    return "comparison" if intent == "comparison" else "list"
