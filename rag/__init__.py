"""Ask questions about a collection of research-paper abstracts and get cited answers.

    from rag import Rag, Settings
    rag = Rag(Settings())
    rag.ingest()                       # the bundled corpus, or rag.ingest(["papers.jsonl"])
    result = rag.ask("which papers target Hopper GPUs?")
    print(result.answer, [c.title for c in result.citations])

Importing this package is cheap: torch, sentence-transformers and chromadb load on first use.
"""

from rag.answer import ExtractiveAnswerer
from rag.chat import NOT_FOUND, ChatModel, ScriptedChatModel
from rag.citations import Citation
from rag.corpus import Paper, load_paths
from rag.embedding import Embedder, HashEmbedder
from rag.errors import (
    CorpusError,
    EmbedderError,
    IndexMissingError,
    InputError,
    LLMError,
    ModelMismatchError,
    RagError,
    StoreError,
)
from rag.followup import Turn
from rag.pipeline import AskResult, Rag
from rag.policy import Policy
from rag.question import Analysis
from rag.settings import Settings

__all__ = [
    "NOT_FOUND",
    "Analysis",
    "AskResult",
    "ChatModel",
    "Citation",
    "CorpusError",
    "Embedder",
    "EmbedderError",
    "ExtractiveAnswerer",
    "HashEmbedder",
    "IndexMissingError",
    "InputError",
    "LLMError",
    "ModelMismatchError",
    "Paper",
    "Policy",
    "Rag",
    "RagError",
    "ScriptedChatModel",
    "Settings",
    "StoreError",
    "Turn",
    "load_paths",
]
