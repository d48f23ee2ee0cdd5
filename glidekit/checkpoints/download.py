"""Downloading released checkpoints into the cache: resumable, retried, locked, atomic.

One download per file at a time across processes (a ``filelock`` next to the file); bytes go to
``<file>.partial`` and are resumed with an HTTP ``Range`` request after a dropped connection; the
finished file is size-checked against ``Content-Length``, then verified before it counts as
complete: against the MD5 the server sends (``Content-MD5``, ``x-goog-hash: md5=``,
``x-ms-blob-content-md5``), a sha256 pinned by the caller, and the released checkpoint's
state-dict layout (keys and shapes, read without unpickling code). Only then is it moved into
place with ``os.replace``, so a file with the final name is always complete and checked; a file
that fails a check is deleted and :class:`DownloadVerificationError` says why in one line.

A host name that does not resolve (no network) fails at once with
:class:`NetworkUnavailableError`, before anything is created in the cache.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.client
import logging
import os
import pickle
import re
import socket
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from glidekit import __version__
from glidekit.checkpoints import cache as _cache
from glidekit.checkpoints.cache import Manifest, sha256_file
from glidekit.checkpoints.errors import DownloadError, OfflineError, UnknownCheckpointError
from glidekit.checkpoints.layout import describe_kind, detect_kind, diff_layouts, released_layout
from glidekit.checkpoints.registry import CHECKPOINTS, CheckpointInfo, get_checkpoint, lookup
from glidekit.tensorfile import read_header

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt")


class DownloadVerificationError(DownloadError):
    """Downloaded bytes failed a check before they counted as complete: the MD5 the server sent
    (``Content-MD5``, ``x-goog-hash``, ``x-ms-blob-content-md5``), the sha256 the caller pinned,
    or the released checkpoint's state-dict layout. The bytes were deleted: nothing is left under
    the final name, nor as a partial file to resume."""


class NetworkUnavailableError(DownloadError):
    """The download host's name does not resolve (no network, or no DNS): raised at once, with no
    retries, before anything is created in the cache."""


class _Incomplete(Exception):
    """A transfer ended early or inconsistently; retrying (and resuming) may fix it.

    ``error``: what to raise if no attempt is left (a verification failure of a resumed file is
    retried once from byte 0, since the kept prefix may be what was wrong).
    """

    def __init__(self, message: str, error: DownloadError | None = None) -> None:
        super().__init__(message)
        self.error = error


@dataclass
class _Expect:
    """What a download must match beyond its size.

    Attributes:
        info: the released checkpoint being fetched (its layout is checked), or None.
        sha256: hex sha256 pinned by the caller (lower case), or None.
        md5: the whole file's MD5 as announced by the server during this call (base64 text ->
            where it came from); reset by a response that starts the file from byte 0.
    """

    info: CheckpointInfo | None = None
    sha256: str | None = None
    md5: dict[str, str] = field(default_factory=dict)


def check_sha256(value: str | None, name: str = "sha256") -> str | None:
    """``value`` as 64 lower-case hex digits (None stays None); ``ValueError`` naming ``name``
    if it is anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.strip()):
        raise ValueError(
            f"{name} must be 64 hexadecimal digits (the output of `sha256sum FILE`), got {value!r}"
        )
    return value.strip().lower()


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
    sha256: str | None = None,
) -> Path:
    """Return the local path of a checkpoint, downloading a released one into the cache if needed.

    A download counts as complete only when its size matches ``Content-Length``, its MD5 the
    one the server announces (when it announces one), its sha256 ``sha256`` (when given) and its
    ``{key: shape}`` the released checkpoint's (:func:`~glidekit.checkpoints.released_layout`);
    otherwise the bytes are deleted and :class:`DownloadVerificationError` is raised.

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
        sha256: the file's expected sha256 (64 hex digits), pinned by you. A cached file that
            differs is downloaded again; a local file that differs is refused.

    Raises:
        ValueError: ``sha256`` is not 64 hex digits.
        OfflineError: ``GLIDEKIT_OFFLINE`` is set and the file is not cached; the message names
            the URL and the exact path to put the file at.
        NetworkUnavailableError: the host name does not resolve (at once, no retries; nothing
            is created in the cache).
        DownloadVerificationError: the bytes failed a check (nothing kept under the final name).
        DownloadError: the download failed after all retries (the partial file is kept).
        UnknownCheckpointError: not a released name and not an existing path.
    """
    pinned = check_sha256(sha256)
    info = lookup(name) if isinstance(name, str) else None
    if info is None:
        path = local_checkpoint_path(name, checkpoint)
        if pinned is not None:
            digest = sha256_file(path)
            if digest != pinned:
                raise DownloadVerificationError(
                    f"{path} has sha256 {digest}, not the pinned {pinned}: it is another file "
                    "(or corrupt); fetch the right one or correct the pin"
                )
        return path
    return _fetch_released(
        info,
        cache_dir=cache_dir,
        progress=progress,
        url=url,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        lock_timeout=lock_timeout,
        sha256=pinned,
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
    sha256: str | None = None,
) -> Path:
    dest = cached_path(info, cache_dir)
    source = url or info.url()
    manifest = Manifest(dest.parent)
    if _cache.offline():
        if dest.is_file():
            _check_cached_pin(dest, manifest, sha256, offline=True)
            return dest
        raise OfflineError(
            f"GLIDEKIT_OFFLINE is set and checkpoint {info.name!r} ({info.filename}) is not in "
            f"the cache. Download it from {source} and put it at {dest} "
            "(or unset GLIDEKIT_OFFLINE to download it)."
        )
    if not dest.is_file():
        # Before the cache folder or a lock file exists: with no network, fail at once and
        # leave nothing behind (retrying a name that does not resolve only wastes time).
        _check_resolves(source, info, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest, lock_timeout):
        if dest.is_file():
            if _cached_file_ok(dest, manifest, source, timeout) and _check_cached_pin(
                dest, manifest, sha256
            ):
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
            expect=_Expect(info=info, sha256=sha256),
        )
        manifest.record(dest, sha256=digest, size=size, source=source)
        logger.info("downloaded %s (%d bytes, sha256 %s)", dest, size, digest)
    return dest


def _check_cached_pin(
    dest: Path, manifest: Manifest, sha256: str | None, *, offline: bool = False
) -> bool:
    """Whether a cached file has the pinned sha256 (True without a pin). Offline, a file that
    differs cannot be replaced: :class:`DownloadVerificationError`."""
    if sha256 is None:
        return True
    entry = manifest.get(dest)
    recorded = entry.sha256 if entry is not None and entry.size == dest.stat().st_size else None
    digest = recorded or sha256_file(dest)
    if digest == sha256:
        return True
    if offline:
        raise DownloadVerificationError(
            f"cached {dest} has sha256 {digest}, not the pinned {sha256}, and GLIDEKIT_OFFLINE "
            "is set: unset it to download the file again, or correct the pin"
        )
    logger.warning(
        "cached %s has sha256 %s, not the pinned %s; downloading it again", dest, digest, sha256
    )
    return False


def _check_resolves(url: str, info: CheckpointInfo, dest: Path) -> None:
    """Raise :class:`NetworkUnavailableError` when the host of ``url`` (or of the proxy that
    ``urllib`` would use for it) does not resolve."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # a malformed port: urllib reports it when it tries
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if via.hostname:
            host, port = via.hostname, via.port or 80
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _unresolvable(url, info.filename, dest, host, exc) from None


def _unresolvable(
    url: str, filename: str, dest: Path, host: str | None, exc: BaseException
) -> NetworkUnavailableError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return NetworkUnavailableError(
        f"cannot download {filename}: the host name {host!r} does not resolve ({reason}); no "
        f"network? Download {url} on another machine and put it at {dest}, or set "
        "GLIDEKIT_OFFLINE=1 to use only cached files"
    )


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
    expect: _Expect | None = None,
) -> tuple[int, str]:
    """Download ``url`` to ``dest`` with retries, verified against ``expect``; return (size,
    sha256)."""
    expect = expect if expect is not None else _Expect()
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
            return _download_once(
                url, partial, dest, progress=progress, timeout=timeout, expect=expect
            )
        except HTTPError as exc:
            if exc.code not in _RETRYABLE_STATUS:
                raise DownloadError(
                    f"downloading {url} failed: HTTP {exc.code} {exc.reason}"
                ) from exc
            last = exc
        except URLError as exc:
            if isinstance(exc.reason, socket.gaierror):  # no network: retrying cannot help
                host = urllib.parse.urlsplit(url).hostname
                raise _unresolvable(url, dest.name, dest, host, exc.reason) from None
            last = exc
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            last = exc
        except _Incomplete as exc:
            last = exc
    if isinstance(last, _Incomplete) and last.error is not None:
        raise last.error
    kept = (
        f"; the partial file {partial} ({partial.stat().st_size} bytes) is kept and the next "
        "attempt resumes it"
        if partial.is_file()
        else ""
    )
    raise DownloadError(
        f"downloading {url} to {dest} failed after {attempts} attempt(s): {last}{kept}"
    ) from last


def _announced_md5(headers: http.client.HTTPMessage, status: int) -> tuple[dict[str, str], str]:
    """MD5s a response announces: ({base64 MD5 of the whole file: header}, base64 MD5 of this
    response's body or "").

    ``Content-MD5`` covers the body sent (RFC 1864): the whole file in a 200, only the range in a
    206. ``x-goog-hash: md5=`` (Google Cloud Storage) and ``x-ms-blob-content-md5`` (Azure, the
    official host, in range responses) always cover the whole object.
    """
    whole: dict[str, str] = {}
    body = ""
    content_md5 = _md5_value(headers.get("Content-MD5"), "Content-MD5")
    if content_md5:
        if status == 200:
            whole[content_md5] = "Content-MD5"
        else:
            body = content_md5
    for value in headers.get_all("x-goog-hash") or []:
        for part in value.split(","):
            key, _, digest = part.strip().partition("=")
            if key.strip().lower() == "md5":
                md5 = _md5_value(digest, "x-goog-hash md5")
                if md5:
                    whole[md5] = "x-goog-hash"
    blob_md5 = _md5_value(headers.get("x-ms-blob-content-md5"), "x-ms-blob-content-md5")
    if blob_md5:
        whole[blob_md5] = "x-ms-blob-content-md5"
    return whole, body


def _md5_value(value: str | None, header: str) -> str:
    """A header's base64 MD5 normalised (re-encoded), or "" when absent or not an MD5."""
    if not value:
        return ""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        logger.warning("ignoring a %s header that is not a base64 MD5: %r", header, value[:80])
        return ""
    return base64.b64encode(raw).decode("ascii")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


@dataclass
class _Received:
    """What one attempt streamed into the partial file."""

    offset: int  # bytes kept from an earlier attempt
    total: int | None  # the whole file's size, if the server said
    sha256: str  # of the whole partial file
    md5: str  # base64 MD5 of the whole partial file
    body_md5: tuple[str, str | None]  # (ours, the server's) base64 MD5 of this response's body


def _download_once(
    url: str,
    partial: Path,
    dest: Path,
    *,
    progress: bool,
    timeout: float,
    expect: _Expect | None = None,
) -> tuple[int, str]:
    """One attempt: resume ``partial`` if present, verify it, then move it to ``dest``."""
    expect = expect if expect is not None else _Expect()
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
            return _download_once(
                url, partial, dest, progress=progress, timeout=timeout, expect=expect
            )
        raise
    with resp:
        got = _receive(resp, url, partial, dest, offset, progress, expect)
    return _finish(url, partial, dest, got, expect)


def _receive(resp: Any, url: str, partial: Path, dest: Path, offset: int, progress: bool,
             expect: _Expect) -> _Received:  # fmt: skip
    """Stream ``resp`` into ``partial`` (appending to a resumed prefix), hashing as it goes."""
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
    whole_md5, body_md5 = _announced_md5(resp.headers, resp.status)
    if mode == "wb":
        expect.md5.clear()  # announced for an earlier start of the file: no longer ours
    expect.md5.update(whole_md5)
    hasher = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)  # only to compare with the server's MD5
    body_hash = hashlib.md5(usedforsecurity=False)
    if mode == "ab":
        with open(partial, "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
                md5.update(chunk)
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=dest.name, disable=not progress)  # fmt: skip
    with open(partial, mode) as f, bar:
        while chunk := resp.read(_CHUNK):
            f.write(chunk)
            for h in (hasher, md5, body_hash):
                h.update(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return _Received(offset, total, hasher.hexdigest(), _b64(md5.digest()),
                     (_b64(body_hash.digest()), body_md5))  # fmt: skip


def _finish(url: str, partial: Path, dest: Path, got: _Received,
            expect: _Expect) -> tuple[int, str]:  # fmt: skip
    """Check the received file's size and checksums; move it to ``dest`` or delete it."""
    size = partial.stat().st_size
    if got.total is not None and size != got.total:
        if size > got.total:
            partial.unlink(missing_ok=True)
        raise _Incomplete(f"connection ended after {size} of {got.total} bytes")
    if got.total is None:
        logger.warning("%s sent no Content-Length; the download's size cannot be verified", url)
    problem = _verify(partial, expect, sha256=got.sha256, md5=got.md5, body_md5=got.body_md5)
    if problem is not None:
        partial.unlink(missing_ok=True)
        error = DownloadVerificationError(
            f"{url} sent {size} bytes that are not {dest.name}: {problem}; nothing was kept at "
            f"{dest} (a faulty or tampered server or mirror; try again later or use another URL)"
        )
        if got.offset:  # the kept prefix may be what is wrong: one more try from byte 0
            raise _Incomplete(f"{problem} after resuming at byte {got.offset}", error)
        raise error
    os.replace(partial, dest)
    return size, got.sha256


def _verify(
    path: Path, expect: _Expect, *, sha256: str, md5: str, body_md5: tuple[str, str]
) -> str | None:
    """None when the downloaded ``path`` passes every check of ``expect``, else what is wrong
    (one line). ``body_md5``: (MD5 of this response's body, MD5 the response announced for it
    or "")."""
    for announced, header in expect.md5.items():
        if announced != md5:
            return f"their MD5 is {md5} but the server's {header} header says {announced}"
    got, announced_body = body_md5
    if announced_body and got != announced_body:
        return f"the resumed part's MD5 is {got} but the server's Content-MD5 says {announced_body}"
    if expect.sha256 is not None and sha256 != expect.sha256:
        return f"their sha256 is {sha256}, not the pinned {expect.sha256}"
    if expect.info is not None:
        return _layout_problem(path, expect.info)
    return None


def _first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of an error message, on one line and at most ``limit`` characters."""
    line = " ".join(text.split())
    sentence = line.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _layout_problem(path: Path, info: CheckpointInfo) -> str | None:
    """None when ``path`` holds the state dict of the released ``info`` (keys and shapes), else
    what is wrong. Reads ``.pt`` files with ``torch.load(weights_only=True)``, memory-mapped: no
    code is unpickled and no tensor data is read."""
    actual: dict[str, tuple[int, ...]] = {}
    try:
        if info.filename.endswith(".safetensors"):
            actual = {k: e.shape for k, e in read_header(path).tensors.items()}
        else:
            mmap = zipfile.is_zipfile(path)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            if not isinstance(obj, Mapping) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
            ):
                return f"not a plain state dict (str -> tensor) but a {type(obj).__name__}"
            actual = {k: tuple(v.shape) for k, v in obj.items()}
            del obj
    except pickle.UnpicklingError as exc:
        # torch's message is many lines of advice; the reason is on its "WeightsUnpickler" line.
        match = re.search(r"WeightsUnpickler error: (.*)", str(exc))
        reason = _first_sentence(match.group(1) if match else str(exc))
        if "global" in reason.lower():
            return f"it holds pickled Python objects other than tensors (not unpickled: {reason})"
        return f"not a readable checkpoint (UnpicklingError{': ' + reason if reason else ''})"
    except Exception as exc:  # any reader failure means the bytes are not a checkpoint
        reason = _first_sentence(str(exc))
        return f"not a readable checkpoint ({type(exc).__name__}{': ' + reason if reason else ''})"
    try:
        expected = released_layout(info.name)
    except KeyError:  # a specs file without this name: at least the kind must be right
        kind = detect_kind(actual)
        if kind == info.name:
            return None
        return f"it looks like {describe_kind(kind)}, not {describe_kind(info.name)}"
    diff = diff_layouts(actual, expected)
    if not diff:
        return None
    kind = detect_kind(actual)
    looks = f"; it looks like {describe_kind(kind)}" if kind not in (None, info.name) else ""
    return f"its tensors are not those of the released {info.name!r} ({diff.summary()}){looks}"


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
    "DownloadVerificationError",
    "NetworkUnavailableError",
    "cached_path",
    "check_sha256",
    "fetch",
    "local_checkpoint_path",
    "preferred_files",
]
