"""Ollama: the model store, and (next) the server."""
