"""Runtimes autoctx plans for and launches."""
