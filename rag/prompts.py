"""The LLM's prompts: plain files in ``prompts/`` (shipped in the package), filled in here.

Everything a model reads that came from the corpus or the conversation is wrapped as data
(``<source id="n">``, ``<conversation>``). Tag-like text inside it is defused first, so an abstract
cannot close its own block and continue as if it were the user or the rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import InputError
from rag.resources import prompts_path

if TYPE_CHECKING:
    from rag.retrieval import Retrieved

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Opening or closing tags of the blocks we use, in any case and spacing: "</ SOURCE>", "<sources".
_OUR_TAGS = re.compile(r"<\s*(/?)\s*(sources?|conversation)\b", re.IGNORECASE)


def load(prompts_dir: Path | None, name: str) -> str:
    """The text of ``prompts_dir/name.md`` (None: the shipped prompts), or an ``InputError``
    naming the file that cannot be read."""
    path = (prompts_dir or prompts_path()) / f"{name}.md"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(
            f"cannot read the prompt {path}: {exc.strerror} (RAG_PROMPTS_DIR)"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"the prompt {path} is not UTF-8 text (RAG_PROMPTS_DIR)") from None


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders in one pass (values may contain braces: never re-read)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def defuse(text: str) -> str:
    """Make tag-like text that could end a data block harmless ("</source>" loses its "<")."""
    return _OUR_TAGS.sub(lambda m: f"‹{m.group(1)}{m.group(2)}", text)


def render_sources(sources: Sequence[Retrieved]) -> str:
    """Numbered source blocks, in the order given (the model cites these numbers). Marker-shaped
    text of a source is made inert first, so a model that copies it forges no citation."""
    return "\n".join(
        f'<source id="{n}">\ntitle: {_data(s.paper.title)}\nabstract: {_data(s.paper.abstract)}\n'
        "</source>"
        for n, s in enumerate(sources, start=1)
    )


def _data(text: str) -> str:
    from rag.citations import defuse_markers

    return defuse(defuse_markers(text))
