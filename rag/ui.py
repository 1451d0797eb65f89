"""The browser chat: a Gradio app over one shared ``Rag``.

    app = build_app(rag, settings)      # the layout and its events; nothing served yet
    launch(app, settings, port=7860)    # serve it in the background (``rag chat`` does both)

The chat handler, ``Chat.respond``, is a plain generator: Gradio streams what it yields, and tests
drive it directly. A conversation (its turns for follow-ups, its messages and sources) lives in
per-session ``gr.State``, never in globals: the ``Rag`` is the only thing sessions share.

Rendering safety: messages are shown as HTML written by ``rag.ui_render`` (everything from the
corpus or a model escaped there), with the chatbot's Markdown off, so quoted abstract text cannot
turn into an image, a link or a script.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from rag.answer import OFFLINE
from rag.errors import InputError, RagError
from rag.feedback import KINDS, FeedbackFile, Judged
from rag.followup import Turn
from rag.pipeline import AskResult, Rag
from rag.settings import Settings
from rag.ui_render import (
    CSS,
    answer_html,
    index_html,
    notice_html,
    question_html,
    sources_html,
    sources_panel,
)

EXAMPLES = (
    "Which papers target Hopper GPUs?",
    "How can speculative decoding use both CPU and GPU?",
    "How does TokenWeave overlap communication?",
    "Which papers reduce the memory of the KV cache?",
)
TITLE = "Ask the papers"
PENDING = '<p class="rag-pending">Searching the papers…</p>'
SANS = ("ui-sans-serif", "system-ui", "Segoe UI", "Helvetica Neue", "Arial", "sans-serif")
MONO = ("ui-monospace", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace")
MAX_K = 20  # the slider's end; the API takes up to Rag.validate's limit
log = logging.getLogger(__name__)
OFFLINE_NOTE = (
    '<p class="rag-offline">Answers are written offline, by quoting the papers. Set OPENAI_API_KEY '
    "or OPENAI_BASE_URL to answer with an LLM.</p>"
)
MAX_UPLOAD = "1kb"  # Gradio always serves an upload route; the app has no use for it
Message = dict[str, str]


# After an answer: its sources panel back to its top (the new answer's sources are first there,
# and a citation clicked earlier had scrolled it down to an old one), the clicked citation's
# highlight off, and the chat scrolled to the start of the answer (a long list would otherwise
# show its end).
AFTER_ANSWER_JS = """() => {
  const panel = document.getElementById('rag-sources');
  if (panel) panel.scrollTop = 0;
  if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  let frames = 0;
  const top = () => {  // within the chat only: the page itself stays where it is
    const wrap = document.querySelector('#rag-chat .bubble-wrap');
    const answers = document.querySelectorAll('#rag-chat .bot-row');
    const last = answers[answers.length - 1];
    if (wrap && last) {
      // a little above the answer's top: its first line clears the chat's label
      wrap.scrollTop += last.getBoundingClientRect().top - wrap.getBoundingClientRect().top - 12;
    }
    // The chat scrolls itself to the bottom once it has rendered the last update, which may be
    // a few frames from now, more on a busy machine: hold the answer's start in view meanwhile
    // (120 frames, about 2 s).
    if (++frames < 120) requestAnimationFrame(top);
  };
  top();
}"""
# The judge buttons of the sources panel: one listener on the panel (its content is re-rendered).
JUDGE_JS = """element.addEventListener('click', (event) => {
  const button = event.target.closest('button.rag-judge');
  if (!button || button.disabled) return;
  button.disabled = true;
  trigger('judge', {turn: Number(button.dataset.turn), kind: button.dataset.kind,
                    paper: button.dataset.paper || ''});
});"""


@dataclass
class Conversation:
    """One browser session's chat: what follow-ups need, and what the page shows."""

    turns: list[Turn] = field(default_factory=list)  # answered exchanges, passed as ``history``
    messages: list[Message] = field(default_factory=list)  # the chatbot's value
    answers: dict[int, AskResult] = field(default_factory=dict)  # by turn: what can be judged
    judged: dict[int, dict[str, str]] = field(default_factory=dict)  # turn -> paper id -> kind
    sections: dict[int, str] = field(default_factory=dict)  # sources HTML of each answer
    asked: int = 0  # questions so far: numbers the anchors of each answer's sources

    def panel(self) -> str:
        """The sources panel: the newest answer's sources first."""
        return sources_panel([self.sections[t] for t in sorted(self.sections)])

    def render(self, turn: int) -> None:
        self.sections[turn] = sources_html(self.answers[turn], turn, self.judged.get(turn))


class Chat:
    """The event handlers of the app, over one shared ``Rag``."""

    def __init__(
        self, rag: Rag, default_model: str | None = None, offered: Sequence[str] | None = None
    ) -> None:
        self.rag = rag
        # The model choice that stands for the default chat model (the one the Rag was given or
        # configured with): asked for by name, Rag.model() would make a new one of that name.
        self.default_model = default_model
        # Only the models the page offers may be asked for: any other name would be sent to the
        # endpoint (with OpenAI, on the owner's key) and cached, one client per name, forever.
        self._offered = tuple(offered) if offered is not None else None

    @property
    def offered(self) -> tuple[str, ...]:
        """The model names this app answers with (what its model choice shows)."""
        if self._offered is None:
            self._offered = tuple(model_choices(self.rag)[0])
        return self._offered

    def _model(self, choice: str | None) -> str | None:
        if choice is not None and choice not in self.offered:
            raise InputError(
                f"no model {choice!r} here: choose one of {', '.join(map(repr, self.offered))}"
            )
        return None if choice == self.default_model else choice

    def respond(
        self, question: str, k: float, model: str | None, conversation: Conversation | None
    ) -> Iterator[tuple[list[Message], str, Conversation]]:
        """Stream an answer into the chat: yields (messages, sources HTML, conversation).

        The first yield shows the question; each streamed piece updates the answer; the last
        yield has the checked answer and its sources. A ``RagError`` (empty question, LLM down)
        ends the answer with a one-line notice, and the conversation goes on without that turn.
        """
        conv = conversation or Conversation()
        conv.asked += 1
        turn = conv.asked
        if question.strip():
            conv.messages.append({"role": "user", "content": question_html(question)})
        conv.messages.append({"role": "assistant", "content": PENDING})
        panel = conv.panel()
        yield list(conv.messages), panel, conv

        shown = ""
        result: AskResult | None = None
        try:
            stream = self.rag.stream(
                question, whole(k), history=conv.turns, model=self._model(model)
            )
            for item in stream:
                if isinstance(item, AskResult):
                    result = item
                else:
                    shown += item
                    html = answer_html(shown, turn)
                    if html != conv.messages[-1]["content"]:  # e.g. not for a bare line break
                        conv.messages[-1] = {"role": "assistant", "content": html}
                        yield list(conv.messages), panel, conv
        except Exception as exc:  # noqa: BLE001 - every failure is a message in the chat
            # What was streamed stays (an LLM can break off mid-answer), followed by why it ended.
            partial = answer_html(shown, turn) if shown else ""
            said = notice_html(explain(exc))
            conv.messages[-1] = {"role": "assistant", "content": partial + said}
            yield list(conv.messages), panel, conv
            return
        assert result is not None  # Rag.stream always ends with the result
        notes = "".join(notice_html(note) for note in result.notes())
        titles = [r.paper.title for r in result.retrieved]
        conv.messages[-1] = {
            "role": "assistant",
            "content": answer_html(result.answer, turn, titles) + notes,
        }
        conv.turns.append(result.turn())
        conv.answers[turn] = result
        conv.render(turn)
        yield list(conv.messages), conv.panel(), conv

    def respond_api(
        self, question: str, k: float, model: str | None, turns: list[Turn] | None
    ) -> Iterator[tuple[dict[str, Any], list[Turn]]]:
        """``/chat`` for API clients: the answer as text, streamed, then its structured sources.

        Each update is {"answer": text so far, "done": false}; the last is the ``/ask`` object
        (citations, retrieved, ...) with "done": true. Follow-ups see the client's earlier turns.
        """
        history = list(turns or [])
        shown = ""
        try:
            stream = self.rag.stream(question, whole(k), history=history, model=self._model(model))
            for item in stream:
                if isinstance(item, AskResult):
                    history.append(item.turn())
                    yield {**item.to_dict(), "notes": item.notes(), "done": True}, history
                else:
                    shown += item
                    yield {"answer": shown, "done": False}, history
        except Exception as exc:  # noqa: BLE001 - one message for every failure, as /ask
            raise gr.Error(explain(exc), print_exception=False) from None

    def judge(
        self, conversation: Conversation | None, request: gr.Request, event: gr.EventData
    ) -> tuple[str, Conversation]:
        """Record a judgement clicked in the sources panel; the panel then shows it recorded."""
        conv = conversation or Conversation()
        data = event._data if isinstance(event._data, dict) else {}
        turn, kind = data.get("turn"), str(data.get("kind", ""))
        result = conv.answers.get(turn) if isinstance(turn, int) else None
        if result is None or kind not in KINDS:
            return conv.panel(), conv  # a stale page or a forged event: nothing to record
        papers = {r.paper.id: r.paper.title for r in result.retrieved}
        paper = str(data.get("paper", ""))
        title = None if kind == "declined" else papers.get(paper)
        judged = Judged(
            result.standalone or result.question,
            tuple(c.title for c in result.citations),
            tuple(papers.values()),
            result.intent,
        )
        try:
            FeedbackFile.of(self.rag.settings).judge(
                judged, kind, title, by=getattr(request, "username", None) or "anonymous"
            )  # type: ignore[arg-type]
        except (RagError, OSError) as exc:
            conv.render(turn)
            said = notice_html(f"the judgement was not recorded: {exc}")
            conv.sections[turn] = said + conv.sections[turn]
            return conv.panel(), conv
        conv.judged.setdefault(turn, {})[paper or "answer"] = kind
        conv.render(turn)
        return conv.panel(), conv

    def new_chat(self) -> tuple[list[Message], str, Conversation]:
        """An empty conversation: no messages, no sources, no history."""
        return [], sources_panel([]), Conversation()

    def ask(self, question: str, k: int | None = None, model: str | None = None) -> dict[str, Any]:
        """Answer a question; returns the same object as `rag ask --json`.

        Parameters:
            question: the question, e.g. "Which papers target Hopper GPUs?"
            k: distinct papers to retrieve (default RAG_TOP_K)
            model: "offline", or a model of the configured LLM endpoint (default: the configured one)
        Returns:
            question, answer, abstained, citations, retrieved, model, timings_ms, invalid_citations,
            uncited_sentences: as `rag ask --json` prints them
        """
        try:
            return self.rag.ask(question, whole(k), model=self._model(model)).to_dict()
        except Exception as exc:  # noqa: BLE001 - a message for every failure, never a bare "Error"
            raise gr.Error(explain(exc), print_exception=False) from None

    def index_line(self) -> str:
        """The index's size and embedding model, or why they cannot be read."""
        try:
            return index_html(self.rag.index.stats())
        except RagError as exc:
            return notice_html(str(exc))


def whole(k: Any) -> Any:
    """The slider's ``8.0`` as 8; anything else as given, for ``Rag.validate`` to judge."""
    return int(k) if isinstance(k, float) and k.is_integer() else k


def explain(exc: Exception) -> str:
    """The one line a user is shown for ``exc``: a ``RagError`` says what to do; anything else is
    a bug, logged in full on the server's console and summarised without its internals."""
    if isinstance(exc, RagError):
        return str(exc)
    log.error("answering failed", exc_info=exc)
    return (
        f"something went wrong answering this ({type(exc).__name__}); the details are on the "
        "server's console. Ask again, or start a new chat."
    )


def model_choices(rag: Rag) -> tuple[list[str], str]:
    """Models to offer, default first, and a notice when the configured LLM cannot be reached."""
    try:
        return rag.model_choices(), ""
    except RagError as exc:  # the endpoint must name its model and is down: answer offline
        return [OFFLINE], f"the configured LLM is unavailable, answering offline: {exc}"


def build_app(rag: Rag, settings: Settings) -> gr.Blocks:
    """The chat app over ``rag``: chat, sources panel, controls, and the ``/ask`` API endpoint."""
    # Load the index, the BM25 index and the query encoder now: the first users should not wait
    # for them, nor race each other to load them.
    rag.ask(EXAMPLES[0], model=OFFLINE)
    choices, unavailable = model_choices(rag)
    chat = Chat(rag, default_model=None if unavailable else choices[0], offered=choices)
    # One limit for everything that generates an answer: the chat and /ask share a concurrency
    # group. Offline answers are CPU-bound and short: on 2 cores the throughput is the same with 1
    # to 16 at once (bench/load_ui.py). LLM answers mostly wait on the network for seconds, so
    # several at once (RAG_UI_CONCURRENCY, 8) keep one user's long answer from holding up the
    # others. The bounded queue (RAG_UI_QUEUE_SIZE) refuses work beyond that rather than letting
    # waits grow without end.
    answering: dict[str, Any] = {
        "concurrency_id": "answer",
        "concurrency_limit": settings.ui_concurrency,
    }

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        conversation = gr.State(Conversation())
        gr.Markdown(f"## {TITLE}\nAnswers cite the papers they come from as [1], [2]: click one.")
        index_line = gr.HTML(js_on_load=None)
        app.load(chat.index_line, outputs=index_line, queue=False, api_visibility="private")
        if unavailable:
            gr.HTML(notice_html(unavailable), js_on_load=None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row(equal_height=True):
                    k = gr.Slider(
                        1,
                        max(MAX_K, settings.top_k),
                        value=settings.top_k,
                        step=1,
                        label="Papers retrieved (top-k)",
                        elem_id="rag-k",
                        scale=2,
                    )
                    # One choice is no choice: then the page says how answers are written.
                    model = gr.Radio(
                        choices,
                        value=choices[0],
                        label="Answer with",
                        scale=2,
                        visible=len(choices) > 1,
                    )
                    new_chat = gr.Button("New chat", elem_id="rag-new-chat", scale=1)
                if len(choices) == 1 and not unavailable:
                    gr.HTML(OFFLINE_NOTE, js_on_load=None)
                chatbot = gr.Chatbot(
                    elem_id="rag-chat",
                    label="Chat",
                    height=480,
                    render_markdown=False,  # messages are HTML from rag.ui_render, escaped there
                    sanitize_html=True,
                    latex_delimiters=[],
                    feedback_options=None,
                    buttons=[],  # its copy buttons would copy the HTML, not the text
                    placeholder="Ask about the papers in this collection.",
                )
                question = gr.Textbox(
                    elem_id="rag-question",
                    label="Question",
                    show_label=False,
                    placeholder="Ask a question, e.g. " + EXAMPLES[0],
                    submit_btn="Ask",
                    autofocus=True,
                )
                examples = gr.Examples([[q] for q in EXAMPLES], inputs=[question], label="Examples")
            with gr.Column(scale=2):
                sources = gr.HTML(
                    sources_panel([]),
                    elem_id="rag-sources",
                    label="Sources",
                    js_on_load=JUDGE_JS,
                )
        with gr.Row(visible=False):  # /chat for API clients: text and structured sources
            api_question = gr.Textbox(label="question")
            api_k = gr.Number(settings.top_k, label="k")
            api_model = gr.Textbox(choices[0], label="model")
            api_answer = gr.JSON(label="answer")
            api_turns = gr.State([])
            api_ask = gr.Button()

        ask = {
            "fn": chat.respond,
            "inputs": [question, k, model, conversation],
            "outputs": [chatbot, sources, conversation],
            **answering,
        }
        asked = question.submit(**ask, api_visibility="private")
        asked.then(None, js=AFTER_ANSWER_JS, queue=False, api_visibility="private")
        # The box empties at once; the handler already has the question (inputs are read when the
        # event fires), and its own outputs never touch the box, so typing the next one is safe.
        question.submit(lambda: "", outputs=question, queue=False, api_visibility="private")
        example_asked = examples.load_input_event.then(**ask, api_visibility="private")
        example_asked.then(None, js=AFTER_ANSWER_JS, queue=False, api_visibility="private")
        examples.load_input_event.then(
            lambda: "", outputs=question, queue=False, api_visibility="private"
        )
        # A new chat also stops an answer still streaming, which would otherwise bring the old
        # conversation back when it ends.
        reset = {
            "outputs": [chatbot, sources, conversation],
            "queue": False,
            "cancels": [asked, example_asked],
        }
        new_chat.click(chat.new_chat, **reset, api_visibility="private")
        chatbot.clear(chat.new_chat, **reset, api_visibility="private")
        sources.judge(  # type: ignore[attr-defined]  # the event JUDGE_JS triggers
            chat.judge,
            inputs=[conversation],
            outputs=[sources, conversation],
            queue=False,
            api_visibility="private",
        )
        api_ask.click(
            chat.respond_api,
            inputs=[api_question, api_k, api_model, api_turns],
            outputs=[api_answer, api_turns],
            api_name="chat",
            **answering,
        )
        gr.api(chat.ask, api_name="ask", **answering)

    # api_open=False: every generating call goes through the queue, so the limits above hold
    # for scripts too.
    app.queue(
        default_concurrency_limit=settings.ui_concurrency,
        max_size=settings.ui_queue_size,
        api_open=False,
    )
    return app


def check_address(host: str, port: int) -> None:
    """Fail with an ``InputError`` now if http://HOST:PORT cannot be served (bad host, port taken).

    Gradio would find out only after the index and the app are built, and say it less clearly.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise InputError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc} (pick another --port or --host)"
        ) from None


def launch(
    app: gr.Blocks,
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
) -> tuple[str, str | None]:
    """Start serving ``app`` on http://HOST:PORT in the background; returns (local URL, public URL).

    ``share`` also asks Gradio for a public *.gradio.live link (None if it cannot make one). With
    ``RAG_UI_AUTH`` set, every page and API call needs that login. Gradio's monitoring dashboard
    (/monitoring) is served only behind it: without a login it is switched off, since Gradio would
    otherwise show its traffic summary to anyone. ``app.block_thread()`` waits until Ctrl-C.
    """
    login = settings.ui_login
    _, local_url, share_url = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=login,
        auth_message="Log in with the user and password of RAG_UI_AUTH." if login else None,
        enable_monitoring=login is not None,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,  # RagErrors are shown in the chat; anything else is a bug, not for users
        ssr_mode=False,
        mcp_server=False,
        run_history=False,
        max_file_size=MAX_UPLOAD,  # the app takes no files: Gradio's upload route is not a file host
        footer_links=["api", "settings"],
        # System fonts: nothing to fetch, and the same look offline.
        theme=gr.themes.Default(font=SANS, font_mono=MONO),
        css=CSS,
    )
    return local_url, share_url
