"""Answers from any OpenAI-compatible chat endpoint: OpenAI, Ollama, vLLM, llama.cpp, LM Studio.

One class, a base URL and a model name cover them all. Failures are bounded and explained:
the openai SDK retries a request (timeouts, refused connections, 429 honouring Retry-After,
5xx) ``llm_retries`` times; this module also retries a stream that broke before showing anything
and an empty reply. What still fails becomes one ``LLMError`` line naming the endpoint, never the
key. A custom base URL gets ``RAG_LLM_API_KEY`` or a placeholder, never the user's OpenAI key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rag import prompts
from rag.chat import NOT_FOUND
from rag.errors import InputError, LLMError
from rag.followup import Turn, render_history
from rag.settings import DEFAULT_OPENAI_MODEL, OPENAI_API_URL, Settings

if TYPE_CHECKING:
    from rag.question import Analysis
    from rag.retrieval import Retrieved

# Local servers (Ollama, llama.cpp, vLLM without --api-key) ignore the key but the SDK wants one.
PLACEHOLDER_KEY = "no-key-needed"
_REWRITE_PREFIX = re.compile(r"^\s*(?:standalone question\s*:\s*)?[\"'“]?(.*?)[\"'”]?\s*$", re.I)


def is_openai(url: str | None) -> bool:
    """Whether ``url`` is OpenAI's own API (the only place an OpenAI key may be sent)."""
    return url is None or urlsplit(url).hostname == "api.openai.com"


def api_key(settings: Settings) -> str:
    """The key for the configured endpoint: OPENAI_API_KEY only for OpenAI itself."""
    own = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
    if not is_openai(settings.openai_base_url):
        return own or PLACEHOLDER_KEY
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return openai_key or own or PLACEHOLDER_KEY


def endpoint(settings: Settings) -> str:
    """The base URL as it may be shown: without any user:password part."""
    parts = urlsplit(settings.openai_base_url or OPENAI_API_URL)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self, settings: Settings, model: str | None = None, http_client: Any | None = None
    ) -> None:
        if not settings.llm_configured:
            raise InputError(
                "no LLM is configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (Ollama, "
                "vLLM, llama.cpp, ...), or use the offline answerer (--model offline)"
            )
        self.settings = settings
        self.endpoint = endpoint(settings)
        self._model = model or settings.llm_model
        self._http_client = http_client
        # Anything secret that must never appear in a message we raise.
        self._secrets = [s for s in (api_key(settings), *_secret_values(settings)) if len(s) > 3]
        self._secrets = [s for s in self._secrets if s != PLACEHOLDER_KEY]

    @cached_property
    def client(self) -> Any:
        """The openai client (imported on first use: ``import openai`` costs ~1 s)."""
        import openai

        return openai.OpenAI(
            api_key=api_key(self.settings),
            base_url=self.settings.openai_base_url or OPENAI_API_URL,
            timeout=self.settings.llm_timeout,
            max_retries=self.settings.llm_retries,
            http_client=self._http_client,
        )

    @cached_property
    def name(self) -> str:  # type: ignore[override]
        """The model's name: configured, OpenAI's default, or the first one the server lists."""
        if self._model:
            return self._model
        if is_openai(self.settings.openai_base_url):
            return DEFAULT_OPENAI_MODEL
        models = self.models()
        if not models:
            raise LLMError(f"the LLM at {self.endpoint} lists no models: set RAG_LLM_MODEL")
        return str(models[0])

    def models(self) -> list[str]:
        """The model names the endpoint lists (``GET /models``)."""
        try:
            return [str(m.id) for m in self.client.models.list()]
        except Exception as exc:  # noqa: BLE001 - every failure is explained by _explain
            raise self._explain(exc) from None

    # -- the ChatModel protocol -------------------------------------------------------------------

    def stream(self, query: Analysis, sources: Sequence[Retrieved]) -> Iterator[str]:
        """Stream the model's answer to ``query`` from the numbered ``sources``."""
        yield from self._stream(self.messages(query, sources))

    def messages(self, query: Analysis, sources: Sequence[Retrieved]) -> list[dict[str, str]]:
        """The chat messages an answer is asked with: the rules, then the sources and question."""
        directory = self.settings.prompts_dir
        user = prompts.fill(
            prompts.load(directory, "answer"),
            sources=prompts.render_sources(sources),
            question=prompts.defuse(query.text),
            not_found=NOT_FOUND,
        )
        system = prompts.fill(prompts.load(directory, "system"), not_found=NOT_FOUND)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Ask the model for the standalone form of a follow-up (``prompts/rewrite.md``)."""
        if not history:
            return question
        prompt = prompts.fill(
            prompts.load(self.settings.prompts_dir, "rewrite"),
            history=prompts.defuse(render_history(history)),
            question=prompts.defuse(question),
        )
        reply = self.complete([{"role": "user", "content": prompt}])
        line = next((ln for ln in reply.splitlines() if ln.strip()), "")
        match = _REWRITE_PREFIX.match(line)
        return (match.group(1) if match else line).strip() or question

    def judge_support(self, claim: str, evidence: str) -> bool:
        """Whether ``evidence`` supports ``claim``, as the model judges it (``prompts/support.md``)."""
        prompt = prompts.fill(
            prompts.load(self.settings.prompts_dir, "support"),
            evidence=prompts.defuse(evidence),
            claim=prompts.defuse(claim),
        )
        reply = self.complete([{"role": "user", "content": prompt}])
        return reply.strip().lower().lstrip("*\"' ").startswith("yes")

    # -- requests -----------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        # OpenAI's newer models take only max_completion_tokens; other servers know max_tokens.
        limit = (
            "max_completion_tokens" if is_openai(self.settings.openai_base_url) else "max_tokens"
        )
        return {
            "model": self.name,
            "temperature": self.settings.llm_temperature,
            limit: self.settings.llm_max_tokens,
        }

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One non-streamed reply (retried when empty)."""
        for _ in range(self.settings.llm_retries + 1):
            try:
                response = self.client.chat.completions.create(messages=messages, **self._options())
            except Exception as exc:  # noqa: BLE001 - every failure is explained by _explain
                raise self._explain(exc) from None
            choices = response.choices or []
            text = (choices[0].message.content or "") if choices else ""
            if text.strip():
                return text
        raise self._empty()

    def _stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        for _ in range(self.settings.llm_retries + 1):
            shown, finished = 0, False
            try:
                response = self.client.chat.completions.create(
                    messages=messages, stream=True, **self._options()
                )
            except Exception as exc:  # noqa: BLE001 - the SDK already retried what it could
                raise self._explain(exc) from None
            try:
                for chunk in response:
                    choice = chunk.choices[0] if chunk.choices else None
                    if choice is None:
                        continue
                    finished = finished or choice.finish_reason is not None
                    if choice.delta and choice.delta.content:
                        shown += len(choice.delta.content)
                        yield choice.delta.content
                # A stream that stops without a finish_reason was cut, however cleanly it closed.
                failure: Exception | None = (
                    None if finished else ConnectionError("no finish_reason")
                )
            except Exception as exc:  # noqa: BLE001 - a stream can die in many ways
                failure = exc
            finally:
                response.close()
            if failure is not None and shown:  # part of an answer was shown: it can't be retried
                raise LLMError(
                    f"the answer from the LLM at {self.endpoint} broke off after {shown} "
                    f"characters ({self._reason(failure)}); ask again"
                )
            if failure is None and shown:
                return
            # Nothing shown yet (an empty reply, or a stream that died at once): a clean retry.
        raise self._empty()

    # -- errors -------------------------------------------------------------------------------------

    def _empty(self) -> LLMError:
        tries = self.settings.llm_retries + 1
        return LLMError(
            f"the LLM at {self.endpoint} returned no answer ({tries} tries: empty replies or "
            "streams that broke before any text)"
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def _reason(self, exc: Exception) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")[:200]

    def _explain(self, exc: Exception) -> LLMError:
        """One line for an SDK error, after the SDK's own retries."""
        import openai

        where, tries = self.endpoint, self.settings.llm_retries + 1
        if isinstance(exc, openai.APITimeoutError):
            message = (
                f"the LLM at {where} did not answer within {self.settings.llm_timeout:g} s "
                f"({tries} tries); raise RAG_LLM_TIMEOUT or check the server"
            )
        elif isinstance(exc, openai.APIConnectionError):
            message = (
                f"cannot connect to the LLM at {where} ({tries} tries): is the server running?"
            )
        elif isinstance(exc, openai.RateLimitError):
            message = (
                f"the LLM at {where} is rate-limiting requests (HTTP 429, {tries} tries, "
                "Retry-After honoured); try again later"
            )
        elif isinstance(exc, openai.AuthenticationError):
            variable = (
                "OPENAI_API_KEY" if is_openai(self.settings.openai_base_url) else "RAG_LLM_API_KEY"
            )
            message = f"the LLM at {where} rejected the API key (HTTP 401): check {variable}"
        elif isinstance(exc, openai.NotFoundError):
            message = (
                f"the LLM at {where} has no model {self._model or 'by that name'!r} or no "
                "chat-completions endpoint (HTTP 404): check RAG_LLM_MODEL and OPENAI_BASE_URL"
            )
        elif isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            message = f"the LLM at {where} failed with HTTP {exc.status_code} ({tries} tries)"
        elif isinstance(exc, openai.APIStatusError):
            detail = self._scrub(str(getattr(exc, "message", "") or exc))[:200]
            message = f"the LLM at {where} refused the request (HTTP {exc.status_code}): {detail}"
        else:
            message = f"the LLM at {where} failed: {self._reason(exc)}"
        return LLMError(self._scrub(message))


def _secret_values(settings: Settings) -> list[str]:
    values = [k.get_secret_value() for k in (settings.openai_api_key, settings.llm_api_key) if k]
    url = urlsplit(settings.openai_base_url or "")
    return values + [v for v in (url.username, url.password) if v]
