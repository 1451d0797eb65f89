"""``rag ingest --rebuild``: build the new index beside the live one, then swap it in.

Deleting first (as before) left nothing to answer with if the rebuild then failed or was killed.
Now the new index is built completely in a sibling (a folder ``INDEX_DIR.rebuilding``, or a
collection ``NAME-rebuild`` on a Chroma server) while the live one keeps answering, and only a
complete one replaces it:

- locally, by one atomic exchange of the two folders (``renameat2(RENAME_EXCHANGE)`` on Linux;
  elsewhere three renames, with a moment where the folder is missing), then the old one is
  deleted; readers notice the new folder on their next question (``Index.refresh``);
- on a Chroma server, by deleting the old collection and renaming the new one (two steps: a
  question asked between them is told there is no index).

A killed rebuild leaves only the sibling, which the next rebuild clears first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import StoreError
from rag.feedback import FeedbackFile
from rag.index import Index, IngestStats
from rag.locking import exchange

if TYPE_CHECKING:
    from rag.corpus import Scan
    from rag.pipeline import Rag


def rebuild(rag: Rag, papers: Scan, progress: Callable[[int, int], None] | None) -> IngestStats:
    """Index ``papers`` afresh beside ``rag``'s index and put the result in its place."""
    if rag.settings.chroma_url:
        return _rebuild_collection(rag, papers, progress)
    live = rag.settings.index_dir
    staging = live.with_name(f"{live.name}.rebuilding")
    shutil.rmtree(staging, ignore_errors=True)  # what a killed rebuild left
    staged = Index(rag.settings.model_copy(update={"index_dir": staging}), rag.embedder)
    stats = staged.ingest(papers, progress)
    staged.close()  # everything on disk before the folder changes places
    rag.index.close()
    feedback = FeedbackFile.of(rag.settings)
    try:
        # The chat's judgements live in the index folder by default: they move into the new one
        # while no judgement can be written.
        with feedback.locked():
            kept = (
                staging / feedback.path.relative_to(live)
                if feedback.path.is_relative_to(live)
                else None
            )
            if kept is not None and feedback.path.exists():
                shutil.copy2(feedback.path, kept)
            if live.exists():
                exchange(staging, live)
                shutil.rmtree(staging, ignore_errors=True)  # the old index, now beside
            else:
                os.rename(staging, live)
    except OSError as exc:
        raise StoreError(
            f"the rebuilt index is complete in {staging} but could not replace {live}: "
            f"{exc.strerror}; the old index is unchanged"
        ) from None
    return stats


def _rebuild_collection(
    rag: Rag, papers: Scan, progress: Callable[[int, int], None] | None
) -> IngestStats:
    name = rag.settings.collection
    temporary = f"{name}-rebuild"
    settings = rag.settings.model_copy(update={"collection": temporary})
    staged = Index(settings, rag.embedder)
    staged.drop()  # what a killed rebuild left
    stats = staged.ingest(papers, progress)
    client = staged.client
    try:
        client.delete_collection(name)
    except Exception:  # noqa: BLE001 - no live collection yet is fine
        pass
    client.get_collection(temporary, embedding_function=None).modify(name=name)
    staged.close()  # the staged records, checkpointed, take the live ones' place
    rag.index.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{rag.settings.records_path}{suffix}").unlink(missing_ok=True)
    os.replace(settings.records_path, rag.settings.records_path)
    return stats
