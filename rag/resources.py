"""Package data read one way, through ``importlib.resources``, so a plain ``pip install .`` (a
wheel) works as well as an editable install: the bundled corpus, the glossary and the fitted
policy in ``rag/data``, and the prompts, which live in the top-level ``prompts/`` folder of the
source tree and are installed as the ``rag._prompts`` package (pyproject's ``package-dir``)."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def _path(package: str, *parts: str) -> Path:
    resource = files(package).joinpath(*parts)
    with as_file(resource) as path:  # a real path for regular installs; zips are not supported
        return Path(path)


def data_path(name: str) -> Path:
    """The path of ``rag/data/NAME`` (a file or a directory) in the installed package."""
    return _path("rag", "data", name)


def prompts_path() -> Path:
    """The folder of the shipped prompt files (system.md, answer.md, rewrite.md, support.md)."""
    return _path("rag._prompts")
