"""Errors raised by the library.

Every error a user can cause is a ``RagError`` whose message is one readable line; the CLI prints it
and exits with its ``exit_code`` (2 for bad input, 1 when a service failed), the UI shows it in the
chat. Anything else is a bug and is allowed to surface.

    RagError
    ├── InputError          a question or option that cannot be used (empty, too long, bad k)
    ├── CorpusError         a corpus file or line that cannot be parsed (names the file and line)
    ├── IndexMissingError   asked a question before anything was ingested
    ├── ModelMismatchError  the index was built by another embedding model
    ├── EmbedderError       the embedding model cannot be found, loaded or verified
    ├── StoreError          the vector store (local directory or Chroma server) is unusable
    └── LLMError            the LLM endpoint failed (timeout, refused, 429/5xx, broken or empty reply)
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 2


class InputError(RagError):
    """A question or option that cannot be used."""


class CorpusError(RagError):
    """A corpus file or line that cannot be parsed."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class IndexMissingError(RagError):
    """No index exists yet at the configured location."""


class ModelMismatchError(RagError):
    """The collection was built with a different embedding model than the configured one."""


class EmbedderError(RagError):
    """The embedding model cannot be found, loaded or verified."""


class StoreError(RagError):
    """The vector store cannot be opened or written (a server down, a full disk, another writer)."""

    exit_code = 1


class LLMError(RagError):
    """The LLM endpoint failed after bounded retries; the message never contains the API key."""

    exit_code = 1
