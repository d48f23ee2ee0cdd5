"""The checkpoint cache: where it lives (:func:`glidekit.fileio.cache_dir`, re-exported here),
atomic writes, and the sha256 manifest."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from glidekit.fileio import CACHE_ENV, atomic_path, cache_dir

logger = logging.getLogger(__name__)

OFFLINE_ENV = "GLIDEKIT_OFFLINE"
MANIFEST_NAME = "manifest.json"
_MANIFEST_VERSION = 1
_HASH_CHUNK = 8 << 20


def offline() -> bool:
    """True when ``GLIDEKIT_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    """What the manifest knows about one file."""

    size: int
    sha256: str | None = None
    source: str | None = None
    recorded_at: str = ""


class Manifest:
    """``manifest.json`` in a cache directory: size and sha256 of each file, keyed by path.

    Files inside the cache directory are keyed by their relative path, others by their absolute
    path. Every update is a locked read-modify-write followed by an atomic replace, so concurrent
    processes never see or produce a half-written manifest.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME

    def key(self, file: str | os.PathLike[str]) -> str:
        """Manifest key of ``file``."""
        file = Path(file).absolute()
        try:
            return file.relative_to(self.directory.absolute()).as_posix()
        except ValueError:
            return str(file)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable checkpoint manifest %s (%s)", self.path, exc)
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def get(self, file: str | os.PathLike[str]) -> ManifestEntry | None:
        """The recorded entry of ``file``, or None."""
        raw = self._read().get(self.key(file))
        if not isinstance(raw, dict) or not isinstance(raw.get("size"), int):
            return None
        return ManifestEntry(
            size=raw["size"],
            sha256=raw.get("sha256"),
            source=raw.get("source"),
            recorded_at=str(raw.get("recorded_at", "")),
        )

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            files = self._read()
            yield files
            payload = {"version": _MANIFEST_VERSION, "files": files}
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")

    def record(
        self,
        file: str | os.PathLike[str],
        *,
        sha256: str | None,
        size: int | None = None,
        source: str | None = None,
    ) -> ManifestEntry:
        """Record ``file`` (its current size unless given) and return the entry."""
        entry = ManifestEntry(
            size=Path(file).stat().st_size if size is None else size,
            sha256=sha256,
            source=source,
            recorded_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        with self._update() as files:
            files[self.key(file)] = asdict(entry)
        return entry

    def forget(self, file: str | os.PathLike[str]) -> None:
        """Remove the entry of ``file`` if there is one."""
        key = self.key(file)
        if key not in self._read():
            return
        with self._update() as files:
            files.pop(key, None)


def is_inside(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """True when ``path`` lies inside ``directory`` (after resolving symlinks)."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
    except ValueError:
        return False
    return True


__all__ = [
    "CACHE_ENV",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestEntry",
    "OFFLINE_ENV",
    "atomic_path",
    "cache_dir",
    "is_inside",
    "offline",
    "sha256_file",
]
