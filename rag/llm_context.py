"""How many tokens the configured model's context window holds, from the settings or the server.

Each kind of server says it its own way; every probe is one quick GET or POST that may fail
without harm (the next is tried, and finally an assumed default):

- ``RAG_LLM_CONTEXT``: the user knows best (and Ollama's window is per request: ``num_ctx``);
- llama.cpp's ``llama-server``: ``GET /props`` -> ``default_generation_settings.n_ctx`` (the size
  of one slot: ``-c`` divided by ``-np``);
- vLLM: ``GET /v1/models`` -> ``data[].max_model_len``;
- Ollama: ``POST /api/show`` -> the model's ``num_ctx`` parameter; without one, Ollama runs the
  model with its own default ``num_ctx`` (2,048 in older releases), whatever the model was trained
  for, so 2,048 is taken (set ``PARAMETER num_ctx`` in a Modelfile, or ``RAG_LLM_CONTEXT``);
- OpenAI: the smallest window of its current chat models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rag.budget import CHARS_PER_TOKEN, MEASURED_SHARE

OPENAI_CONTEXT = 128_000
OLLAMA_DEFAULT_CONTEXT = 2048
ASSUMED_CONTEXT = 4096  # no server said: small enough for most local servers' defaults
PROBE_TIMEOUT = 3.0  # seconds per probe: a server that does not know the route answers at once
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Window:
    """A context window, in tokens, where the number came from, and how many characters make a
    token in the model's tokenizer (measured where the server can tokenize, else assumed)."""

    tokens: int
    source: str  # "RAG_LLM_CONTEXT", "llama.cpp /props", "vLLM /v1/models", ..., "assumed"
    chars_per_token: float = CHARS_PER_TOKEN


def _root(base_url: str) -> str:
    """The server's root URL: the base URL without its trailing ``/v1``."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path[: -len("/v1")] if parts.path.endswith("/v1") else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _positive(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def discover(
    http: Any,
    base_url: str,
    model: str,
    headers: dict[str, str],
    is_openai: bool,
    configured: int | None = None,
    sample: str = "",
) -> Window:
    """The context window of ``model`` at ``base_url`` (``configured`` wins), asking the server
    with ``http`` (an ``httpx.Client``), an assumed default when nothing answers; and the
    characters per token of its tokenizer, measured on ``sample`` where the server tokenizes."""
    if is_openai:
        return Window(configured or OPENAI_CONTEXT, "RAG_LLM_CONTEXT" if configured else "OpenAI")
    root = _root(base_url)
    window = _window(http, base_url, root, model, headers, configured)
    ratio = _chars_per_token(http, root, model, headers, sample)
    return Window(window.tokens, window.source, ratio or CHARS_PER_TOKEN)


def _get_json(http: Any, method: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
    try:
        response = http.request(method, url, headers=headers, timeout=PROBE_TIMEOUT, **kwargs)
        return response.json() if response.status_code == 200 else None
    except Exception:  # noqa: BLE001 - any failure just means "this server does not say"
        return None


def _chars_per_token(
    http: Any, root: str, model: str, headers: dict[str, str], sample: str
) -> float | None:
    """``sample``'s characters per token by the server's tokenizer, at MEASURED_SHARE."""
    if not sample:
        return None
    for body in ({"content": sample}, {"model": model, "prompt": sample}):  # llama.cpp, vLLM
        found = _get_json(http, "POST", f"{root}/tokenize", headers, json=body)
        if isinstance(found, dict):
            count = _positive(found.get("count")) or _positive(len(found.get("tokens") or []))
            if count:
                return max(1.0, MEASURED_SHARE * len(sample) / count)
    return None


def _window(
    http: Any, base_url: str, root: str, model: str, headers: dict[str, str], configured: int | None
) -> Window:
    if configured:
        return Window(configured, "RAG_LLM_CONTEXT")

    def get_json(method: str, url: str, **kwargs: Any) -> Any:
        return _get_json(http, method, url, headers, **kwargs)

    props = get_json("GET", f"{root}/props")
    if isinstance(props, dict):
        settings = props.get("default_generation_settings") or {}
        tokens = _positive(settings.get("n_ctx")) or _positive(props.get("n_ctx"))
        if tokens:
            return Window(tokens, "llama.cpp /props")
    models = get_json("GET", f"{base_url.rstrip('/')}/models")
    if isinstance(models, dict):
        for entry in models.get("data") or []:
            if isinstance(entry, dict) and entry.get("id") == model:
                tokens = _positive(entry.get("max_model_len"))
                if tokens:
                    return Window(tokens, "vLLM /v1/models")
    shown = get_json("POST", f"{root}/api/show", json={"model": model})
    if isinstance(shown, dict):
        found = _NUM_CTX.search(str(shown.get("parameters") or ""))
        if found:
            return Window(int(found.group(1)), "Ollama num_ctx")
        if "model_info" in shown or "modelfile" in shown:
            return Window(OLLAMA_DEFAULT_CONTEXT, "Ollama default num_ctx")
    return Window(ASSUMED_CONTEXT, "assumed")
