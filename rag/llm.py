"""Answers from any OpenAI-compatible chat endpoint: OpenAI, Ollama, vLLM, llama.cpp, LM Studio.

One class, a base URL and a model name cover them all. What real servers add to the protocol:

- a context window: learnt from the settings or the server (``rag.llm_context``), and the sources
  fitted into it (``rag.budget``), so no request overflows it;
- a stream that ends with nothing (llama.cpp answers a context overflow with an empty 200
  stream): one non-streamed probe names the cause before anything is retried;
- keep-alive comments while a long prompt is read: wall-clock deadlines on the first text
  (``RAG_LLM_TIMEOUT``) and the whole answer (``RAG_LLM_ANSWER_TIMEOUT``);
- ``finish_reason: "length"``: reported (``Note("truncated")``), not passed off as an answer;
- ``<think>`` blocks of reasoning models, and instructions a model repeats: kept out
  (``rag.llm_text``);
- chat templates that drop the system turn: ``RAG_LLM_SYSTEM_ROLE=false`` folds the rules into
  the user turn.

Failures are bounded and explained: the openai SDK retries a request (timeouts, refused
connections, 429 honouring Retry-After, 5xx) ``llm_retries`` times; this module also retries an
empty reply. What still fails becomes one ``LLMError`` line naming the endpoint, never the key. A
custom base URL gets ``RAG_LLM_API_KEY`` or a placeholder, never the user's OpenAI key.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rag import budget as budget_
from rag import prompts
from rag.budget import Fitted
from rag.chat import NOT_FOUND, Note
from rag.errors import InputError, LLMError
from rag.followup import Turn, render_history
from rag.llm_context import Window, discover
from rag.llm_text import ECHO_MIN_CHARS, Thinking, echoed, without
from rag.policy import Policy
from rag.settings import DEFAULT_OPENAI_MODEL, OPENAI_API_URL, Settings

if TYPE_CHECKING:
    from rag.question import Analysis
    from rag.retrieval import Retrieved

# Local servers (Ollama, llama.cpp, vLLM without --api-key) ignore the key but the SDK wants one.
PLACEHOLDER_KEY = "no-key-needed"
MIN_ANSWER_TOKENS = 256  # an answer needs at least this room, whatever the window
REWRITE_TOKENS = 96  # a standalone question is one line
JUDGE_TOKENS = 4  # "yes" or "no"
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
        self,
        settings: Settings,
        model: str | None = None,
        http_client: Any | None = None,
        policy: Policy | None = None,
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
        self.policy = policy or Policy()  # for cutting sources to their best sentences
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

    @cached_property
    def window(self) -> Window:
        """The model's context window (``RAG_LLM_CONTEXT``, else what the server reports) and
        its tokenizer's characters per token."""
        import httpx

        http = self._http_client or httpx.Client()
        headers = {"Authorization": f"Bearer {api_key(self.settings)}"}
        base = self.settings.openai_base_url or OPENAI_API_URL
        system, _ = self.instructions()
        return discover(
            http,
            base,
            self.name,
            headers,
            is_openai(self.settings.openai_base_url),
            self.settings.llm_context,
            system,
        )

    def instructions(self) -> tuple[str, str]:
        """The system prompt and the answer template, filled but for the sources and question."""
        directory = self.settings.prompts_dir
        system = prompts.fill(prompts.load(directory, "system"), not_found=NOT_FOUND)
        return system, prompts.load(directory, "answer")

    def messages(
        self, query: Analysis, sources: Sequence[Retrieved]
    ) -> tuple[list[dict[str, str]], Fitted, int]:
        """The chat messages of an answer (the rules, then as many sources as fit and the
        question), how the sources were fitted, and the answer's token allowance."""
        system, template = self.instructions()
        window, ratio = self.window.tokens, self.window.chars_per_token
        # The answer gets its RAG_LLM_MAX_TOKENS, or a quarter of a small window: a 2,048-token
        # window must still show the best sources.
        answer = min(self.settings.llm_max_tokens, max(MIN_ANSWER_TOKENS, window // 4))
        system_tokens = budget_.estimate_tokens(system, ratio)
        budget = window - answer - 2 * budget_.TEMPLATE_TOKENS - system_tokens

        def user(shown: Sequence[Retrieved]) -> str:
            return prompts.fill(
                template,
                sources=prompts.render_sources(shown),
                question=prompts.defuse(query.text),
                not_found=NOT_FOUND,
            )

        fitted = budget_.fit(query, sources, budget, user, self.policy, ratio)
        if budget_.estimate_tokens(user(fitted.sources), ratio) > budget:
            raise LLMError(
                f"the LLM at {self.endpoint} has a context window of {window} tokens "
                f"({self.window.source}): too small for the question and a {answer}-token answer; "
                "start the server with a larger context, or set RAG_LLM_CONTEXT"
            )
        tokens = fitted.tokens + system_tokens + 2 * budget_.TEMPLATE_TOKENS
        answer = min(self.settings.llm_max_tokens, max(MIN_ANSWER_TOKENS, window - tokens))
        content = user(fitted.sources)
        if self.settings.llm_system_role:
            out = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        else:  # templates that drop the system turn (see README): the rules open the user turn
            out = [{"role": "user", "content": f"{system}\n\n{content}"}]
        return out, replace(fitted, tokens=tokens), answer

    def stream(self, query: Analysis, sources: Sequence[Retrieved]) -> Iterator[str | Note]:
        """Stream the model's answer to ``query`` from the numbered ``sources``: first a note of
        how many sources it was shown (and how they were fitted), then its text, then notes of
        a truncation or of instructions it repeated."""
        messages, fitted, answer_tokens = self.messages(query, sources)
        yield Note("shown", len(fitted.sources), fitted)
        hidden, parts = Thinking(), []
        finish = None
        for piece in self._stream(messages, answer_tokens):
            if isinstance(piece, Note):
                finish = piece
                continue
            if text := hidden.feed(piece):
                parts.append(text)
                yield text
        if text := hidden.flush():
            parts.append(text)
            yield text
        if finish is not None:
            yield finish
        written = "".join(parts)
        repeated = echoed(written, self.instructions(), (NOT_FOUND,))
        if repeated:
            if (
                len(re.sub(r"\W", "", without(written, repeated))) < ECHO_MIN_CHARS
            ):  # no answer left
                raise LLMError(
                    f"the LLM at {self.endpoint} repeated its instructions instead of answering "
                    "(a base model without a chat template does that: use an instruct model)"
                )
            yield Note("echo", len(repeated), tuple(repeated))

    def rewrite(self, question: str, history: Sequence[Turn]) -> str:
        """Ask the model for the standalone form of a follow-up (``prompts/rewrite.md``)."""
        if not history:
            return question
        prompt = prompts.fill(
            prompts.load(self.settings.prompts_dir, "rewrite"),
            history=prompts.defuse(render_history(history)),
            question=prompts.defuse(question),
        )
        reply = self.complete([{"role": "user", "content": prompt}], REWRITE_TOKENS, ["\n"])
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
        reply = self.complete([{"role": "user", "content": prompt}], JUDGE_TOKENS, ["\n"])
        return reply.strip().lower().lstrip("*\"' ").startswith("yes")

    # -- requests -----------------------------------------------------------------------------------

    def _options(self, max_tokens: int, stop: Sequence[str] = ()) -> dict[str, Any]:
        # OpenAI's newer models take only max_completion_tokens; other servers know max_tokens.
        limit = (
            "max_completion_tokens" if is_openai(self.settings.openai_base_url) else "max_tokens"
        )
        options: dict[str, Any] = {
            "model": self.name,
            "temperature": self.settings.llm_temperature,
            limit: max_tokens,
        }
        if stop:
            options["stop"] = list(stop)
        return options

    def complete(
        self, messages: list[dict[str, str]], max_tokens: int, stop: Sequence[str] = ()
    ) -> str:
        """One short non-streamed reply (retried when empty)."""
        for _ in range(self.settings.llm_retries + 1):
            try:
                response = self.client.chat.completions.create(
                    messages=messages, **self._options(max_tokens, stop)
                )
            except Exception as exc:  # noqa: BLE001 - every failure is explained by _explain
                raise self._explain(exc) from None
            choices = response.choices or []
            text = (choices[0].message.content or "") if choices else ""
            if text.strip():
                return text
        raise self._empty()

    def _stream(self, messages: list[dict[str, str]], max_tokens: int) -> Iterator[str | Note]:
        """The answer's text as it streams, then a note if it was cut at ``max_tokens``.

        Deadlines are wall-clock: RAG_LLM_TIMEOUT for the first text, RAG_LLM_ANSWER_TIMEOUT for
        the whole answer. The stream is read on a worker thread, because a server reading a long
        prompt sends keep-alive comments that no read timeout ever sees as silence.
        """
        for _ in range(self.settings.llm_retries + 1):
            started = time.monotonic()
            try:
                response = self.client.chat.completions.create(
                    messages=messages, stream=True, **self._options(max_tokens)
                )
            except Exception as exc:  # noqa: BLE001 - the SDK already retried what it could
                raise self._explain(exc) from None
            events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
            threading.Thread(target=_read, args=(response, events), daemon=True).start()
            shown, finish, failure = 0, None, None
            try:
                while True:
                    limit = self.settings.llm_answer_timeout if shown else self.settings.llm_timeout
                    left = started + min(limit, self.settings.llm_answer_timeout) - time.monotonic()
                    try:
                        kind, value, reason = events.get(timeout=max(0.0, left))
                    except queue.Empty:
                        raise self._late(shown) from None
                    if kind == "piece":
                        finish = finish or reason
                        if value:
                            shown += len(value)
                            yield value
                    elif kind == "end":
                        break
                    else:
                        failure = value
                        break
            finally:
                response.close()
            if failure is None and finish is None:
                # A stream that stops without a finish_reason was cut, however cleanly it closed.
                failure = ConnectionError("no finish_reason")
            if failure is not None and shown:  # part of an answer was shown: it can't be retried
                raise LLMError(
                    f"the answer from the LLM at {self.endpoint} broke off after {shown} "
                    f"characters ({self._reason(failure)}); ask again"
                )
            if failure is None and shown:
                if finish == "length":
                    yield Note("truncated", max_tokens)
                return
            if failure is not None:
                # Nothing at all came: ask once without streaming, which names the cause of a
                # refused request (llama.cpp streams an empty 200 on a context overflow).
                self._probe(messages)
            # An empty reply, or a stream that died at once although the request is fine: retry.
        raise self._empty()

    def _probe(self, messages: list[dict[str, str]]) -> None:
        """Raise the server's own error for ``messages``, if it has one (one token asked)."""
        try:
            self.client.with_options(max_retries=0).chat.completions.create(
                messages=messages, **self._options(1)
            )
        except Exception as exc:  # noqa: BLE001 - every failure is explained by _explain
            raise self._explain(exc) from None

    def _late(self, shown: int) -> LLMError:
        if shown:
            return LLMError(
                f"the answer from the LLM at {self.endpoint} did not finish within "
                f"{self.settings.llm_answer_timeout:g} s and was cut off after {shown} characters; "
                "raise RAG_LLM_ANSWER_TIMEOUT or lower RAG_LLM_MAX_TOKENS"
            )
        return LLMError(
            f"the LLM at {self.endpoint} did not start answering within "
            f"{self.settings.llm_timeout:g} s; raise RAG_LLM_TIMEOUT, ask with a smaller -k, or "
            "check the server"
        )

    # -- errors -------------------------------------------------------------------------------------

    def _empty(self) -> LLMError:
        tries = self._tries()
        return LLMError(
            f"the LLM at {self.endpoint} returned no answer ({tries}: empty replies or "
            "streams that broke before any text)"
        )

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def _tries(self) -> str:
        tries = self.settings.llm_retries + 1
        return "1 try" if tries == 1 else f"{tries} tries"

    def _reason(self, exc: Exception) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")[:200]

    def _explain(self, exc: Exception) -> LLMError:
        """One line for an SDK error, after the SDK's own retries (an ``LLMError`` is one already)."""
        import openai

        if isinstance(exc, LLMError):
            return exc
        where, tries = self.endpoint, self._tries()
        if isinstance(exc, openai.APITimeoutError):
            message = (
                f"the LLM at {where} did not answer within {self.settings.llm_timeout:g} s "
                f"({tries}); raise RAG_LLM_TIMEOUT or check the server"
            )
        elif isinstance(exc, openai.APIConnectionError):
            message = f"cannot connect to the LLM at {where} ({tries}): is the server running?"
        elif isinstance(exc, openai.RateLimitError):
            message = (
                f"the LLM at {where} is rate-limiting requests (HTTP 429, {tries}, "
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
            message = f"the LLM at {where} failed with HTTP {exc.status_code} ({tries})"
        elif isinstance(exc, openai.APIStatusError):
            detail = self._scrub(_server_message(exc))[:200]
            message = f"the LLM at {where} refused the request (HTTP {exc.status_code}): {detail}"
            if "context" in detail.lower():
                message += " (RAG_LLM_CONTEXT is set larger than the server's window?)"
        else:
            message = f"the LLM at {where} failed: {self._reason(exc)}"
        return LLMError(self._scrub(message))


def _server_message(exc: Any) -> str:
    """The server's own words in an error response (its JSON ``error.message``, if any)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", "") or exc)


def _read(response: Any, events: queue.Queue[tuple[str, Any, Any]]) -> None:
    """Put each chunk of a stream on ``events`` (worker thread of ``OpenAIChatModel._stream``)."""
    try:
        for chunk in response:
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None:
                text = (choice.delta.content if choice.delta else None) or ""
                events.put(("piece", text, choice.finish_reason))
        events.put(("end", None, None))
    except Exception as exc:  # noqa: BLE001 - handed to the reading side, which explains it
        events.put(("error", exc, None))


def _secret_values(settings: Settings) -> list[str]:
    values = [k.get_secret_value() for k in (settings.openai_api_key, settings.llm_api_key) if k]
    url = urlsplit(settings.openai_base_url or "")
    return values + [v for v in (url.username, url.password) if v]
