"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI chat-completions protocol.

Tests script its behaviour per request (a reply, an HTTP error, a hang, a stream that breaks, an
empty reply) and read back every request it received. With nothing scripted it answers like a
well-behaved model: it names the first sources it was given, each with its [n] marker.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOURCE = re.compile(r'<source id="(\d+)">\ntitle: (.*)\n')


@dataclass
class Reply:
    """A normal answer (streamed in word pieces when the request asks for a stream); ``finish``
    is its finish_reason ("length": cut at the token limit)."""

    text: str | Callable[[dict[str, Any]], str]
    finish: str = "stop"


@dataclass
class Pings:
    """Keep the stream open with SSE keep-alive comments for ``seconds`` (as llama.cpp does while
    it reads a long prompt), then answer ``text``."""

    seconds: float
    text: str = "Late answer [1]."
    every: float = 0.1
    before: str = ""  # text sent before the pings (an answer that stalls half-way)


@dataclass
class Status:
    """An HTTP error response."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


@dataclass
class Hang:
    """Accept the request and never answer (until the server shuts down)."""


@dataclass
class Break:
    """Stream ``text`` and then drop the connection without finishing the response."""

    text: str = ""


@dataclass
class Empty:
    """A complete reply whose content is empty."""


Behaviour = Reply | Status | Hang | Break | Empty | Pings


@dataclass
class Request:
    """What the server received."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival

    @property
    def user_message(self) -> str:
        """The last user message of a chat request."""
        return next(m["content"] for m in reversed(self.body["messages"]) if m["role"] == "user")


def cite_sources(body: dict[str, Any], limit: int = 2) -> str:
    """The default reply: one cited line for each of the first ``limit`` sources."""
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    found = SOURCE.findall(user)[:limit]
    if not found:
        return "The answer was not found in this collection."
    return " ".join(f"{title} is relevant [{n}]." for n, title in found)


class FakeOpenAI:
    """The server. ``enqueue`` behaviours; ``requests`` records what arrived; ``close`` stops it."""

    def __init__(self, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.models = models
        self.script: list[Behaviour] = []
        self.requests: list[Request] = []
        self.default: Behaviour = Reply(cite_sources)
        self.props: dict[str, Any] | None = None  # GET /props (llama.cpp), when set
        # Like llama.cpp on a context overflow: streams close empty, others get a 400 saying so.
        self.overflow: str | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # Dropped and hung connections are the point of some scripts: no tracebacks for them.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL to give the openai client."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Handle the next requests with ``behaviours``, in order."""
        with self._lock:
            self.script.extend(behaviours)

    def chat_requests(self) -> list[Request]:
        """The chat-completion requests received so far."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def reset(self) -> None:
        """Forget requests and the script."""
        with self._lock:
            self.script.clear()
            self.requests.clear()

    def close(self) -> None:
        """Release hanging requests and stop serving."""
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def _next(self) -> Behaviour:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: dict[str, Any]) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append(Request(self.path, headers, body, time.monotonic()))

            def do_GET(self) -> None:
                self._record({})
                if self.path.endswith("/models"):
                    data = [{"id": m, "object": "model", "owned_by": "test"} for m in fake.models]
                    self._json(200, {"object": "list", "data": data})
                elif self.path == "/props" and fake.props is not None:
                    self._json(200, fake.props)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                self._record(body)
                if not self.path.endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                if fake.overflow is not None:
                    if body.get("stream"):
                        self._start_stream()
                        self._chunk(b"")
                    else:
                        error = {"message": fake.overflow, "type": "exceed_context_size_error"}
                        self._json(400, {"error": error})
                    return
                behaviour = fake._next()
                if isinstance(behaviour, Status):
                    error = {"message": behaviour.message, "type": "error", "code": None}
                    self._json(behaviour.code, {"error": error}, behaviour.headers)
                elif isinstance(behaviour, Hang):
                    fake._release.wait(60)
                    self.close_connection = True
                elif isinstance(behaviour, Empty):
                    self._answer(body, "")
                elif isinstance(behaviour, Break):
                    self._start_stream()
                    for piece in _pieces(behaviour.text):
                        self._chunk(_sse(body, piece))
                    self.wfile.flush()
                    # Drop the connection mid-response: no final chunk, no [DONE].
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                elif isinstance(behaviour, Pings):
                    self._start_stream()
                    until = time.monotonic() + behaviour.seconds
                    try:
                        for piece in _pieces(behaviour.before):
                            self._chunk(_sse(body, piece))
                        while time.monotonic() < until and not fake._release.is_set():
                            self._chunk(b": ping\n\n")
                            time.sleep(behaviour.every)
                        self._finish_stream(body, behaviour.text, "stop")
                    except OSError:  # the client gave up and closed: as it should
                        self.close_connection = True
                else:
                    text = (
                        behaviour.text if isinstance(behaviour.text, str) else behaviour.text(body)
                    )
                    self._answer(body, text, behaviour.finish)

            def _answer(self, body: dict[str, Any], text: str, finish: str = "stop") -> None:
                if not body.get("stream"):
                    message = {"role": "assistant", "content": text}
                    choice = {"index": 0, "message": message, "finish_reason": finish}
                    self._json(200, _completion(body, "chat.completion", choice))
                    return
                self._start_stream()
                self._finish_stream(body, text, finish)

            def _finish_stream(self, body: dict[str, Any], text: str, finish: str) -> None:
                for piece in _pieces(text):
                    self._chunk(_sse(body, piece))
                self._chunk(_sse(body, None, finish=finish))
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _start_stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


def _completion(body: dict[str, Any], kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", "fake-model"),
        "choices": [choice],
    }


def _sse(body: dict[str, Any], piece: str | None, finish: str | None = None) -> bytes:
    delta = {"content": piece} if piece is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return f"data: {json.dumps(_completion(body, 'chat.completion.chunk', choice))}\n\n".encode()
