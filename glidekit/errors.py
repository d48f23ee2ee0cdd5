"""Exceptions the command line reports as messages (kept import-light: no torch here)."""

from __future__ import annotations


class VocabularyUnavailableError(RuntimeError):
    """The GPT-2 vocabulary could not be loaded (offline, with no cached copy)."""
