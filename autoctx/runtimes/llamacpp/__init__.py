"""llama.cpp: argument parsing, log parsing, launching llama-server."""
