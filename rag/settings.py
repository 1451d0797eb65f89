"""One settings object, read from ``RAG_*`` environment variables and an optional ``.env``.

Only the edges (CLI, UI) construct ``Settings()`` from the environment; library code takes a
``Settings`` argument, so tests build one explicitly and nothing reads ``os.environ`` behind their back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
OPENAI_API_URL = "https://api.openai.com/v1"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rag-papers"


class Settings(BaseSettings):
    """Everything configurable, with its environment variable (``RAG_`` + upper-case field name)."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # "RAG_GLOSSARY=" in a .env means "default", not the path ""
        populate_by_name=True,
    )

    index_dir: Path = Field(
        Path(".rag"),
        description="Directory of the local Chroma index and the BM25 index beside it.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Small caches, e.g. verified model-weight hashes ($XDG_CACHE_HOME/rag-papers).",
    )
    chroma_url: str | None = Field(
        None,
        description="URL of a Chroma server (e.g. http://127.0.0.1:8000); when set, chunks and "
        "vectors live there instead of in index_dir (the BM25 index stays in index_dir).",
    )
    collection: str = Field("papers", min_length=3, description="Chroma collection name.")
    embed_model: str = Field(
        DEFAULT_EMBED_MODEL,
        description="sentence-transformers model name or path; 'hash' selects the deterministic "
        "offline test embedder.",
    )
    embed_batch_size: int = Field(
        32,
        ge=1,
        le=65536,
        description="Chunks the model embeds at once on a CPU (on a GPU, batches are sized in "
        "tokens instead).",
    )
    ingest_batch: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Papers an ingest reads, embeds and stores at a time (memory holds one batch; "
        "a killed ingest redoes at most the last two). Default: 256 with a model on a CPU, 32768 "
        "on a GPU, 8192 with the hash embedder.",
    )
    embed_device: str | None = Field(
        None,
        description="torch device for ingest embedding (default: cuda when available, else cpu).",
    )
    embed_runtime: Literal["auto", "fp32", "bf16", "fp16", "openvino"] = Field(
        "auto",
        description="How documents are embedded: 'auto' (float16 on a GPU; on a CPU the fastest "
        "installed candidate the benchmark kept within 0.005 of float32 on eval/: OpenVINO or "
        "PyTorch, bfloat16 where native; else float32), or fp32, bf16, fp16 (PyTorch), openvino.",
    )
    chunk_overlap: int = Field(
        48, ge=0, le=128, description="Tokens of trailing context repeated at a chunk's start."
    )
    top_k: int = Field(8, ge=1, le=100, description="Distinct papers retrieved for a question.")
    list_k: int = Field(
        30,
        ge=1,
        le=200,
        description="Distinct papers shown to the answerer for a list question ('which papers...').",
    )
    glossary: Path | None = Field(
        None,
        description="Glossary file for query expansion ('family: member, ...' lines); default: "
        "the bundled one of GPU families and common acronyms.",
    )
    policy: Path | None = Field(
        None,
        description="Answering policy file (rules, fitted models and thresholds) written by "
        "`rag fit`; default: the one fitted on the bundled corpus, shipped in the package.",
    )
    max_question_chars: int = Field(
        2000, ge=10, description="Longest question accepted, in characters."
    )

    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="OpenAI API key (the SDK's own variable, OPENAI_API_KEY). Sent only to OpenAI, "
        "never to a custom OPENAI_BASE_URL.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="OpenAI-compatible endpoint (the SDK's own variable, OPENAI_BASE_URL), e.g. "
        "http://127.0.0.1:11434/v1 for Ollama or http://127.0.0.1:8000/v1 for vLLM.",
    )
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key for the server at OPENAI_BASE_URL, if it needs one (keyless local "
        "servers get a placeholder).",
    )
    llm_model: str | None = Field(
        None,
        description=f"Chat model name (default: {DEFAULT_OPENAI_MODEL} on OpenAI; on another "
        "server, the first model it lists). 'offline' forces the extractive answerer.",
    )
    llm_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds to wait for the LLM's first text (a long prompt on a CPU can take "
        "a minute: the server reads the whole prompt first).",
    )
    llm_answer_timeout: float = Field(
        300.0, gt=0, le=7200, description="Seconds the LLM may take for a whole answer."
    )
    llm_context: int | None = Field(
        None,
        ge=512,
        le=10_000_000,
        description="The model's context window in tokens; default: what the server reports "
        "(llama.cpp, vLLM, Ollama), else 4096. The sources sent are fitted into it.",
    )
    llm_system_role: bool = Field(
        True,
        description="Send the rules as a system message; false puts them at the start of the "
        "user message, for chat templates that drop the system turn.",
    )
    llm_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries after a timeout, 429, 5xx, dropped connection or empty reply.",
    )
    llm_temperature: float = Field(0.0, ge=0, le=2, description="LLM sampling temperature.")
    llm_max_tokens: int = Field(1024, ge=16, le=32768, description="Longest LLM answer, in tokens.")
    ui_auth: SecretStr | None = Field(
        None,
        description="Login for the browser chat as 'user:password' (the password may contain ':'); "
        "unset: no login. Also guards Gradio's /monitoring dashboard, which is off without it.",
    )
    ui_concurrency: int = Field(
        8,
        ge=1,
        le=256,
        description="Answers the browser chat and its /ask API generate at once; more requests wait "
        "in the queue.",
    )
    ui_queue_size: int = Field(
        64,
        ge=1,
        le=10000,
        description="Requests the browser chat keeps waiting for a free slot; beyond it, new ones are "
        "refused with 'queue full'.",
    )
    feedback_file: Path | None = Field(
        None,
        description="Where the chat's citation judgements are kept, a gold set `rag eval` reads "
        "(default: feedback.jsonl in the index directory; a rebuild carries it over).",
    )
    prompts_dir: Path | None = Field(
        None,
        description="Directory of the prompt files (system.md, answer.md, rewrite.md, support.md); "
        "default: the ones shipped with the package (prompts/ in the source tree).",
    )

    @field_validator("ui_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never repeats the value: it is a password.
        if value is not None:
            user, _, password = value.get_secret_value().partition(":")
            if not user.strip() or not password:
                raise ValueError("must be 'user:password', both non-empty")
        return value

    @property
    def ui_login(self) -> tuple[str, str] | None:
        """The browser chat's (user, password), or None when it needs no login."""
        if self.ui_auth is None:
            return None
        user, _, password = self.ui_auth.get_secret_value().partition(":")
        return user.strip(), password

    @property
    def llm_configured(self) -> bool:
        """Whether an LLM endpoint is configured (an OpenAI key or a base URL)."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def feedback_path(self) -> Path:
        """The judgements file (``RAG_FEEDBACK_FILE``, else inside the index directory)."""
        return self.feedback_file or self.index_dir / "feedback.jsonl"

    @property
    def feedback_lock(self) -> Path:
        """The judgements' lock: beside the index directory for the default file, since a rebuild
        swaps that directory whole and a lock inside it would be two locks for a moment."""
        if self.feedback_file is not None:
            return self.feedback_file.with_name(f".{self.feedback_file.name}.lock")
        return self.index_dir.with_name(f".{self.index_dir.name}.feedback.lock")

    @property
    def records_path(self) -> Path:
        """The collection's paper records and BM25 index (``rag.records``), in the index folder
        (on a Chroma server: this machine's mirror of them)."""
        return self.index_dir / f"records-{self.collection}.sqlite3"
