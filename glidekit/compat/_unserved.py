"""Stand-ins for official names that glidekit does not serve faithfully.

Importing them works (so an official import line still runs); using them (calling a function,
instantiating or subclassing-then-instantiating a class) raises :class:`NotServedError`, whose
one-line message names the official object and the glidekit way to do the same thing.
"""

from __future__ import annotations

from typing import Any, NoReturn


class NotServedError(NotImplementedError):
    """An official ``glide_text2im`` name glidekit.compat imports but does not implement."""


def _raise(official: str, way: str) -> NoReturn:
    raise NotServedError(f"glide_text2im.{official} is not served by glidekit.compat; {way}")


def unserved_function(official: str, way: str) -> Any:
    """A function ``official`` (dotted path below ``glide_text2im``) that raises when called.

    ``way``: what to use instead, as a sentence fragment ("use glidekit.nn.create_model(...)").
    """

    def stand_in(*args: Any, **kwargs: Any) -> NoReturn:
        _raise(official, way)

    module, _, name = official.rpartition(".")
    stand_in.__name__ = stand_in.__qualname__ = name
    stand_in.__module__ = f"glidekit.compat.{module}"
    stand_in.__doc__ = f"Not served: {way}."
    return stand_in


def unserved_class(official: str, way: str, base: type = object) -> type:
    """A class ``official`` that raises on instantiation; ``base`` keeps ``issubclass`` checks
    meaningful (e.g. ``torch.nn.Module`` for a module class)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _raise(official, way)

    module, _, name = official.rpartition(".")
    namespace = {
        "__init__": __init__,
        "__doc__": f"Not served: {way}.",
        "__module__": f"glidekit.compat.{module}",
    }
    return type(name, (base,), namespace)


__all__ = ["NotServedError", "unserved_class", "unserved_function"]
