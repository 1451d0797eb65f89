"""The prompt files (*.md), installed with the package as ``rag._prompts``."""
