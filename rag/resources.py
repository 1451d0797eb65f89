"""Package data (the bundled corpus, the glossary, the fitted policy) read one way, through
``importlib.resources``, so a plain ``pip install .`` works as well as an editable install."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def data_path(name: str) -> Path:
    """The path of ``rag/data/NAME`` (a file or a directory) in the installed package."""
    resource = files("rag") / "data" / name
    with as_file(resource) as path:  # a real path for regular installs; zips are not supported
        return Path(path)
