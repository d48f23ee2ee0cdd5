"""Downloading released checkpoints into the cache: resumable, retried, locked, atomic.

One download per file at a time across processes (a ``filelock`` next to the file); bytes go to
``<file>.partial`` and are resumed with an HTTP ``Range`` request after a dropped connection; the
finished file is size-checked against ``Content-Length`` and moved into place with
``os.replace``, so a file with the final name is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError, URLError

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from glidekit import __version__
from glidekit.checkpoints import cache as _cache
from glidekit.checkpoints.cache import Manifest
from glidekit.checkpoints.errors import DownloadError, OfflineError, UnknownCheckpointError
from glidekit.checkpoints.registry import CHECKPOINTS, CheckpointInfo, get_checkpoint, lookup

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt")


class _Incomplete(Exception):
    """A transfer ended early or inconsistently; retrying (and resuming) may fix it."""


def fetch(
    name: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    url: str | None = None,
    checkpoint: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    lock_timeout: float | None = None,
) -> Path:
    """Return the local path of a checkpoint, downloading a released one into the cache if needed.

    Args:
        name: a released name (``"base"``, ``"clip/image-enc"``, ... see ``CHECKPOINTS``), a
            checkpoint file, or a directory holding one (``base.pt`` / ``base.safetensors``;
            ``checkpoint`` picks one when it holds several).
        cache_dir: cache directory; default ``$GLIDEKIT_CACHE``, else ``$XDG_CACHE_HOME/glidekit``,
            else ``~/.cache/glidekit``.
        progress: show a tqdm progress bar while downloading.
        url: download from this URL instead of ``$GLIDEKIT_BASE_URL`` / the official one.
        checkpoint: released name to pick inside a directory.
        retries: further attempts after a failed one (each resumes the partial file).
        backoff: first delay between attempts in seconds, doubled each time (capped at 60 s).
        timeout: socket timeout in seconds for connecting and each read.
        lock_timeout: give up waiting for another process's download after this many seconds
            (default: wait as long as it takes).

    Raises:
        OfflineError: ``GLIDEKIT_OFFLINE`` is set and the file is not cached; the message names
            the URL and the exact path to put the file at.
        DownloadError: the download failed after all retries (the partial file is kept).
        UnknownCheckpointError: not a released name and not an existing path.
    """
    info = lookup(name) if isinstance(name, str) else None
    if info is None:
        return local_checkpoint_path(name, checkpoint)
    return _fetch_released(
        info,
        cache_dir=cache_dir,
        progress=progress,
        url=url,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        lock_timeout=lock_timeout,
    )


def local_checkpoint_path(path: str | os.PathLike[str], checkpoint: str | None = None) -> Path:
    """Resolve a local checkpoint file, or the checkpoint file inside a directory.

    In a directory, ``<stem>.safetensors`` is preferred over ``<stem>.pt`` over
    ``<stem>.fp16.safetensors`` (lossless first; ``stem`` = the official file stem of
    ``checkpoint``, e.g. ``base_inpaint``).
    Without ``checkpoint`` the directory must hold files of exactly one stem.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p.absolute()
    if not p.is_dir():
        raise UnknownCheckpointError(
            f"{str(path)!r} is neither a released checkpoint ({', '.join(CHECKPOINTS)}) "
            "nor an existing file or directory"
        )
    if checkpoint is not None:
        stems = [get_checkpoint(checkpoint).stem]
    else:
        found = sorted(
            {_stem(f) for f in p.iterdir() if f.is_file() and f.name.endswith(CHECKPOINT_SUFFIXES)}
        )
        if len(found) != 1:
            what = f"several checkpoints ({', '.join(found)})" if found else "no checkpoint"
            raise UnknownCheckpointError(
                f"directory {p} holds {what}; pass a file, or checkpoint=NAME "
                f"(one of {', '.join(CHECKPOINTS)})"
            )
        stems = found
    for candidate in preferred_files(p, stems[0]):
        if candidate.is_file():
            return candidate.absolute()
    raise UnknownCheckpointError(
        f"directory {p} has no {stems[0]}.safetensors, {stems[0]}.pt or {stems[0]}.fp16.safetensors"
    )


def preferred_files(directory: Path, stem: str) -> tuple[Path, ...]:
    """Candidate files for ``stem`` in ``directory``, most preferred first (lossless first)."""
    return (
        directory / f"{stem}.safetensors",
        directory / f"{stem}.pt",
        directory / f"{stem}.fp16.safetensors",
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".fp16.safetensors", ".safetensors", ".pt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def cached_path(info: CheckpointInfo, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the official file of ``info`` lives in the cache (whether present or not)."""
    return _cache.cache_dir(cache_dir) / info.filename


def _fetch_released(
    info: CheckpointInfo,
    *,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    url: str | None,
    retries: int,
    backoff: float,
    timeout: float,
    lock_timeout: float | None,
) -> Path:
    dest = cached_path(info, cache_dir)
    source = url or info.url()
    manifest = Manifest(dest.parent)
    if _cache.offline():
        if dest.is_file():
            return dest
        raise OfflineError(
            f"GLIDEKIT_OFFLINE is set and checkpoint {info.name!r} ({info.filename}) is not in "
            f"the cache. Download it from {source} and put it at {dest} "
            "(or unset GLIDEKIT_OFFLINE to download it)."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest, lock_timeout):
        if dest.is_file():
            if _cached_file_ok(dest, manifest, source, timeout):
                logger.debug("using cached %s", dest)
                return dest
            dest.unlink()
            manifest.forget(dest)
        logger.info("downloading %s from %s to %s", info.name, source, dest)
        size, digest = _download(
            source,
            dest,
            progress=progress,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
        )
        manifest.record(dest, sha256=digest, size=size, source=source)
        logger.info("downloaded %s (%d bytes, sha256 %s)", dest, size, digest)
    return dest


@contextlib.contextmanager
def _locked(dest: Path, lock_timeout: float | None) -> Iterator[None]:
    """Hold ``<dest>.lock``; log once if another process holds it."""
    lock = FileLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=0.05)
    except Timeout:
        logger.info("waiting for another process to finish downloading %s", dest)
        try:
            lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout)
        except Timeout as exc:
            raise DownloadError(
                f"gave up after {lock_timeout} s waiting for another process downloading {dest} "
                f"(lock file {lock.lock_file})"
            ) from exc
    try:
        yield
    finally:
        lock.release()


def _cached_file_ok(dest: Path, manifest: Manifest, source: str, timeout: float) -> bool:
    """Decide whether a cached file is complete: its size against the manifest, or, when it was
    never recorded (put there by hand), against the server's ``Content-Length``."""
    size = dest.stat().st_size
    entry = manifest.get(dest)
    if entry is not None:
        if entry.size == size:
            return True
        logger.warning(
            "cached %s has %d bytes but %d were recorded: truncated or replaced; re-downloading",
            dest,
            size,
            entry.size,
        )
        return False
    remote = _remote_size(source, timeout)
    if remote is None:
        return True  # cannot tell; loading checks it
    if remote == size:
        manifest.record(dest, sha256=None, size=size, source=source)  # sha256 on first load
        return True
    logger.warning(
        "cached %s has %d bytes but %s has %d: truncated; re-downloading",
        dest,
        size,
        source,
        remote,
    )
    return False


def _remote_size(url: str, timeout: float) -> int | None:
    """``Content-Length`` from a HEAD request, or None when unavailable."""
    request = urllib.request.Request(url, method="HEAD", headers=_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            value = resp.headers.get("Content-Length")
    except (URLError, http.client.HTTPException, OSError) as exc:
        logger.debug("HEAD %s failed (%s); cannot check the cached size", url, exc)
        return None
    return int(value) if value and value.isdigit() else None


def _headers() -> dict[str, str]:
    return {"User-Agent": f"glidekit/{__version__}", "Accept-Encoding": "identity"}


def _download(
    url: str,
    dest: Path,
    *,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> tuple[int, str]:
    """Download ``url`` to ``dest`` with retries; return (size, sha256)."""
    partial = dest.with_name(dest.name + ".partial")
    attempts = max(0, int(retries)) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            delay = min(backoff * 2 ** (attempt - 1), 60.0)
            logger.warning(
                "download of %s failed (%s); retry %d of %d in %.2g s",
                url,
                last,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        try:
            return _download_once(url, partial, dest, progress=progress, timeout=timeout)
        except HTTPError as exc:
            if exc.code not in _RETRYABLE_STATUS:
                raise DownloadError(
                    f"downloading {url} failed: HTTP {exc.code} {exc.reason}"
                ) from exc
            last = exc
        except (URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            last = exc
        except _Incomplete as exc:
            last = exc
    kept = (
        f"; the partial file {partial} ({partial.stat().st_size} bytes) is kept and the next "
        "attempt resumes it"
        if partial.is_file()
        else ""
    )
    raise DownloadError(
        f"downloading {url} to {dest} failed after {attempts} attempt(s): {last}{kept}"
    ) from last


def _download_once(
    url: str, partial: Path, dest: Path, *, progress: bool, timeout: float
) -> tuple[int, str]:
    """One attempt: resume ``partial`` if present, then move it to ``dest``."""
    offset = partial.stat().st_size if partial.is_file() else 0
    headers = _headers()
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            logger.warning("server refused to resume %s at byte %d; restarting", url, offset)
            partial.unlink(missing_ok=True)
            return _download_once(url, partial, dest, progress=progress, timeout=timeout)
        raise
    with resp:
        total: int | None
        if offset and resp.status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"), resp.headers)
            if start != offset:
                partial.unlink(missing_ok=True)
                raise _Incomplete(f"server resumed at byte {start} instead of {offset}")
            mode = "ab"
            logger.info("resuming %s at byte %d", url, offset)
        elif resp.status == 200:
            if offset:
                logger.info("server ignored the Range request; restarting %s from byte 0", url)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise DownloadError(f"unexpected HTTP status {resp.status} from {url}")
        hasher = hashlib.sha256()
        if mode == "ab":
            with open(partial, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        with (
            open(partial, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        if size > total:
            partial.unlink(missing_ok=True)
        raise _Incomplete(f"connection ended after {size} of {total} bytes")
    if total is None:
        logger.warning("%s sent no Content-Length; the download's size cannot be verified", url)
    os.replace(partial, dest)
    return size, hasher.hexdigest()


def _parse_content_range(
    value: str | None, headers: http.client.HTTPMessage
) -> tuple[int, int | None]:
    """(first byte, full size or None) of a 206 response."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        raise _Incomplete(f"bad Content-Range header {value!r} in a 206 response")
    start = int(match.group(1))
    if match.group(3) != "*":
        return start, int(match.group(3))
    length = headers.get("Content-Length")
    return start, (start + int(length)) if length and length.isdigit() else None


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "cached_path",
    "fetch",
    "local_checkpoint_path",
    "preferred_files",
]
