"""One writer per index, and folders replaced in one step, so readers never see half a write.

**The writer lock.** An exclusive lock that a second ``rag ingest`` reports instead of racing.

Two processes writing one Chroma folder corrupt it (it has no lock of its own: vectors become
unreadable), and a question answered while an ingest writes must not see half of it. So every
write to an index happens under ``writer_lock``: an ``flock`` on ``INDEX_DIR/writer.lock``, which
the kernel releases when the holder exits, however it exits (kill -9 included). The file also
says who holds it, so the refused writer can name them.

The guarantee is per machine: two machines writing one Chroma server each take their own lock.
Run the ingests for a shared server from one place.

**Folder swaps.** The lexical index and a rebuilt index are written beside the live folder and
swapped in with ``exchange``: one ``renameat2(RENAME_EXCHANGE)`` on Linux, so a reader finds the
old folder or the new one, never none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rag.errors import StoreError

LOCK_NAME = "writer.lock"


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, in words."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"`{info['command']}` (pid {info['pid']} on {info['host']}, since {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index's writer lock for the block, or raise ``StoreError`` naming its holder."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        handle = (index_dir / LOCK_NAME).open("a+", encoding="utf-8")
    except OSError as exc:
        raise StoreError(
            f"cannot write to the index at {index_dir}: {exc.strerror} (check its permissions "
            "and free space)"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"the index at {index_dir} is being written by {holder(index_dir / LOCK_NAME)}: "
                "wait for it to finish, then run this again"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": " ".join(["rag", *sys.argv[1:3]]) if sys.argv else "rag",
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(index_dir: Path) -> bool:
    """Whether a writer holds the index's lock right now (for ``rag doctor``)."""
    path = index_dir / LOCK_NAME
    if not path.exists():
        return False
    try:
        with path.open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(first: Path, second: Path) -> None:
    """Swap two folders' names: atomically where the kernel can, else by three renames."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    swap = getattr(libc, "renameat2", None) if libc is not None else None
    if swap is not None:
        done = swap(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
        if done == 0:
            return
    parked = second.with_name(second.name + ".swap")
    os.rename(second, parked)
    os.rename(first, second)
    os.rename(parked, first)
