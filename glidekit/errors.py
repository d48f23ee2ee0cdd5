"""Exceptions glidekit raises for bad input, kept import-light (no torch here).

Layer: a utility; imports nothing from glidekit. The command line prints any of these as one
line (``glidekit CMD: error: ...``) with exit code 2; the web app shows the message.
"""

from __future__ import annotations


class OptionError(ValueError):
    """A run option (a keyword argument, a command-line flag, a web field) is not valid.

    ``arg`` is the option's Python name (``"steps"``, ``"upsample_sampler"``); each face spells
    it its own way (the CLI as ``--steps``) without parsing the message. ``str(exc)`` is
    ``"<arg> must ..."`` or ``"<arg>: <message>"`` (see :meth:`spelled`).
    """

    def __init__(self, arg: str, message: str) -> None:
        super().__init__(self.spelled(arg, message))
        self.arg = arg
        self.message = message

    @staticmethod
    def spelled(name: str, message: str) -> str:
        """The message with the argument spelled ``name``: "steps must be >= 1" reads as a
        sentence; other messages follow a colon ("steps: cannot read 'x'")."""
        sentence = message.startswith(("must ", "expected ", "is ", "has "))
        return f"{name} {message}" if sentence else f"{name}: {message}"


class OptionTypeError(OptionError, TypeError):
    """An option of the wrong type (a str where a number belongs); also a TypeError."""


class MissingFileError(OptionError, FileNotFoundError):
    """An option names a file (or model) that does not exist; also a FileNotFoundError."""


class UsageError(Exception):
    """Bad use of the command line that no single option names (printed; exit code 2)."""


class VocabularyUnavailableError(RuntimeError):
    """The GPT-2 vocabulary could not be loaded (offline, with no cached copy)."""
