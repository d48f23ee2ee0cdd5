"""Where glidekit keeps files, and writing them so that nothing a user owns is half-written.

:func:`cache_dir` is the one place the cache directory is decided (checkpoints, the CLIP
vocabulary). :func:`atomic_path` is the one way glidekit writes a file in place: write to a
unique temporary name beside the destination, fsync, ``os.replace`` over the destination, fsync
the folder. Readers, and a process killed at any point, see either the old file or the whole
new one.

Layer: a utility; imports nothing from glidekit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

#: Environment variable naming the cache directory.
CACHE_ENV = "GLIDEKIT_CACHE"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory (absolute; created on first write, not here).

    Order: ``override``, ``$GLIDEKIT_CACHE``, ``$XDG_CACHE_HOME/glidekit`` (if absolute),
    ``~/.cache/glidekit``. Never the working directory.
    """
    if override is not None and str(override) != "":
        return Path(override).expanduser().absolute()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "glidekit"
    return Path.home() / ".cache" / "glidekit"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` to write; on success it replaces ``dest``.

    On an exception the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with O_EXCL (not mkstemp, so the final file gets umask permissions).
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "xb"):
        pass
    mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file
    try:
        yield tmp
        # Some writers (safetensors) recreate the file owner-only; keep the usual permissions.
        if tmp.stat().st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Best-effort fsync of a folder so a rename in it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
