"""autoctx: the largest safe context for local LLMs, predicted exactly from the GGUF header."""

__version__ = "0.1.0"
