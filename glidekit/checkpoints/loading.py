"""Safe, verified loading of checkpoints into state dicts and modules, and conversion.

Nothing is ever unpickled beyond tensors: ``.pt`` files go through
``torch.load(..., weights_only=True)``, and ``.safetensors`` (preferred wherever present) through
``safetensors``. Before a model is touched, a file is checked against the cache manifest (size and
sha256) and its ``{key: shape}`` against the expected layout.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glidekit.checkpoints import cache as _cache
from glidekit.checkpoints.cache import Manifest, atomic_path, is_inside, sha256_file
from glidekit.checkpoints.download import fetch, local_checkpoint_path, preferred_files
from glidekit.checkpoints.errors import (
    ChangedCheckpointError,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from glidekit.checkpoints.layout import Layout, check_layout, expected_layout, released_layout
from glidekit.checkpoints.registry import CheckpointInfo, get_checkpoint, lookup
from glidekit.tensorfile import open_regular, read_header, read_tensors, write_tensors

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Metadata of a converted released checkpoint (glidekit's own model files: modelfile.py).
SOURCE_KEY = "glidekit.source"
DTYPE_KEY = "glidekit.dtype"
CHECKPOINT_KEY = "glidekit.checkpoint"


def read_state_dict(
    path: PathLike, dtypes: Mapping[str, torch.dtype] | None = None
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into CPU tensors, safely and without any checks of its layout.

    ``.safetensors`` files are read one tensor at a time (:mod:`glidekit.tensorfile`), each
    floating tensor named in ``dtypes`` cast as it is read (so a float32 file loads into a
    bfloat16 model without a float32 copy of it in memory); anything else with
    ``torch.load(map_location="cpu", weights_only=True)`` (memory-mapped when the file is a zip
    archive). Raises :class:`UnsafeCheckpointError` for pickles holding anything but tensors and
    plain containers (never executing them), :class:`CorruptCheckpointError` for anything
    unreadable.
    """
    path = Path(path)
    try:
        open_regular(path).close()  # a FIFO or a device would block torch.load or never end
        if path.name.endswith(".safetensors"):
            obj: Any = read_tensors(path, dtypes)
        else:
            mmap = zipfile.is_zipfile(path)  # memory-map the zip format; legacy files are read
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            if dtypes:
                obj = _cast(obj, dtypes)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            reason = str(exc).strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it contains pickled Python objects other than tensors, "
                "which could run arbitrary code when unpickled, so it was not unpickled "
                f"(torch.load weights_only=True: {reason}). glidekit only loads plain state "
                "dicts; if the file is meant to be a released checkpoint, delete it and "
                "download it again."
            ) from exc
        raise _corrupt(path, exc) from exc
    except FileNotFoundError:
        raise
    except Exception as exc:  # any reader failure means the file is unusable
        raise _corrupt(path, exc) from exc
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CorruptCheckpointError(
            f"{path} is not a checkpoint: expected a plain state dict (str -> tensor), got "
            f"{type(obj).__name__}"
        )
    return dict(obj)


def _cast(obj: Any, dtypes: Mapping[str, torch.dtype]) -> Any:
    """Cast the floating tensors of a plain state dict named in ``dtypes`` (others untouched)."""
    if not isinstance(obj, Mapping):
        return obj  # reported as "not a checkpoint" by the caller
    return {
        k: v.to(dtypes[k])
        if isinstance(v, torch.Tensor) and v.is_floating_point() and k in dtypes
        else v
        for k, v in obj.items()
    }


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}. The file is truncated or "
        "corrupt (or not a checkpoint); delete it and download it again."
    )


def read_layout(path: PathLike) -> Layout | None:
    """``{key: shape}`` from a safetensors header without reading the data (None for ``.pt``)."""
    path = Path(path)
    if not path.name.endswith(".safetensors"):
        return None
    try:
        return {k: e.shape for k, e in read_header(path).tensors.items()}
    except Exception as exc:  # unreadable header
        raise _corrupt(path, exc) from exc


@dataclass(frozen=True)
class _Request:
    """How to load a checkpoint, as :func:`load_state_dict` documents its arguments."""

    expected: Any
    cache: Path
    verify: bool | None
    prefer_safetensors: bool
    fetch_kwargs: dict[str, Any]
    dtypes: Mapping[str, torch.dtype] | None = None


def _load_checked(path: Path, name: str | None, req: _Request) -> dict[str, torch.Tensor]:
    """Integrity check (manifest), layout check, then the tensors (CPU; cast per ``dtypes``).

    ``name``: the released checkpoint the file is (or is meant to be), if any.
    """
    manifest = Manifest(req.cache)
    in_cache = is_inside(path, req.cache)
    entry = manifest.get(path)
    track = req.verify is True or (req.verify is None and in_cache)
    digest: str | None = None
    if track and entry is not None:
        size = path.stat().st_size
        if size != entry.size:
            what = f"{path} has {size} bytes but {entry.size} were recorded ({entry.recorded_at})"
            if in_cache:
                raise CorruptCheckpointError(
                    f"{what}: it is truncated or was replaced; delete it and download it again."
                )
            raise ChangedCheckpointError(
                f"{what}: the file changed on disk. Load it with verify=False to accept and "
                "re-record it."
            )
        digest = sha256_file(path)
        if entry.sha256 and digest != entry.sha256:
            raise ChangedCheckpointError(
                f"{path} changed on disk since it was recorded ({entry.recorded_at}): sha256 "
                f"is {digest}, recorded {entry.sha256}. If you replaced it on purpose, load it "
                "with verify=False to accept and re-record it; otherwise delete it and download "
                "it again."
            )
    if req.expected is not None:
        layout: Layout | None = expected_layout(req.expected)
    elif name is not None:
        layout = released_layout(name)
    else:
        layout = None
    header = read_layout(path)
    if header is not None:
        check_layout(header, layout, file=path, name=name)
    tensors = read_state_dict(path, req.dtypes)
    if header is None:
        check_layout({k: tuple(v.shape) for k, v in tensors.items()}, layout, file=path, name=name)
    if in_cache or req.verify is True or entry is not None:
        if req.verify is False or entry is None or not entry.sha256:
            manifest.record(
                path,
                sha256=digest or sha256_file(path),
                source=entry.source if entry is not None else None,
            )
    return tensors


def _released_source(info: CheckpointInfo, req: _Request) -> Path:
    """The file to load for a released name: ``<stem>.safetensors`` if converted, else the
    official file (``<stem>.fp16.safetensors`` instead when only that one is cached), downloaded
    if needed."""
    if req.prefer_safetensors:
        converted, official, half = preferred_files(req.cache, info.stem)
        if converted.is_file():
            return converted
        if half.is_file() and not official.is_file():
            return half
    return fetch(info.name, cache_dir=req.cache, **req.fetch_kwargs)


def _resolve_and_load(
    name_or_path: PathLike, checkpoint: str | None, req: _Request
) -> tuple[Path, CheckpointInfo | None, dict[str, torch.Tensor]]:
    """(the file loaded, the released checkpoint it is or is meant to be, its tensors) for a
    released name (fetched if needed) or a local file or folder.

    A released checkpoint whose cached file is corrupt or truncated is deleted and fetched
    again once (unless offline).
    """
    info = lookup(name_or_path) if isinstance(name_or_path, str) else None
    if info is None:
        info = get_checkpoint(checkpoint) if checkpoint else None
        source = local_checkpoint_path(name_or_path, checkpoint)
        return source, info, _load_checked(source, info.name if info else None, req)
    retried = False
    while True:
        source = _released_source(info, req)
        try:
            return source, info, _load_checked(source, info.name, req)
        except CorruptCheckpointError as exc:
            if retried or _cache.offline() or not is_inside(source, req.cache):
                raise
            logger.warning("%s; deleting it and fetching it again", exc)
            source.unlink(missing_ok=True)
            Manifest(req.cache).forget(source)
            retried = True


def load_state_dict(
    name_or_path: PathLike,
    *,
    checkpoint: str | None = None,
    expected: Any = None,
    device: torch.device | str = "cpu",
    cache_dir: PathLike | None = None,
    verify: bool | None = None,
    progress: bool = True,
    url: str | None = None,
    prefer_safetensors: bool = True,
    dtypes: Mapping[str, torch.dtype] | None = None,
    **fetch_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Load a checkpoint as a state dict, after checking it is intact and of the right layout.

    Args:
        name_or_path: a released name (``"base"``, ...; downloaded into the cache if needed), a
            ``.pt`` / ``.safetensors`` file, or a directory holding one. A ``str`` is a name
            first; pass a ``Path`` (or ``"./base"``) for a local file called like a name.
        checkpoint: the released checkpoint a local file or directory is supposed to be (picks
            the file in a directory, and its layout is what is expected).
        expected: the expected layout: a module (e.g. built on the meta device), a config,
            ``checkpoint_specs.json``-like data, or ``{key: shape}``. Default for released
            names: the released layout (see :func:`~glidekit.checkpoints.released_layout`);
            otherwise only the file's readability is checked.
        device: device of the returned tensors.
        cache_dir: cache directory (default ``$GLIDEKIT_CACHE`` / ``~/.cache/glidekit``).
        verify: ``None`` (default): check files in the cache against the size and sha256 in the
            cache manifest, recording them the first time they load; ``True``: do so for any
            file; ``False``: skip the check and re-record the file as it is now (to accept a
            file you replaced on purpose).
        progress: show a progress bar if a download is needed.
        url: download URL override for a released name.
        prefer_safetensors: for released names, use a converted ``<stem>.safetensors`` in the
            cache when present (and ``<stem>.fp16.safetensors`` when the ``.pt`` is not cached).
        dtypes: ``{key: dtype}``: floating tensors named here are cast as they are read
            (``.safetensors`` one tensor at a time: no full-precision copy is ever held).
        **fetch_kwargs: ``retries``, ``backoff``, ``timeout``, ``lock_timeout`` of :func:`fetch`.

    Raises:
        CheckpointError: with a message naming the file, for every failure (see the subclasses).
    """
    fetching = {"progress": progress, "url": url, **fetch_kwargs}
    cache = _cache.cache_dir(cache_dir)
    req = _Request(expected, cache, verify, prefer_safetensors, fetching, dtypes)
    _, _, tensors = _resolve_and_load(name_or_path, checkpoint, req)
    if torch.device(device) != torch.device("cpu"):
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def load_into(
    module: torch.nn.Module,
    name_or_path: PathLike,
    *,
    checkpoint: str | None = None,
    cache_dir: PathLike | None = None,
    verify: bool | None = None,
    progress: bool = True,
    url: str | None = None,
    **fetch_kwargs: Any,
) -> torch.nn.Module:
    """Load a checkpoint into ``module`` (strictly) and return the module.

    The file's ``{key: shape}`` is checked against ``module.state_dict()`` first, so a wrong,
    truncated or unsafe file raises :class:`CheckpointError` and leaves the module untouched.
    A module on the ``meta`` device gets the loaded tensors assigned (``assign=True``). Each
    tensor is read straight into the dtype of the module's own entry (build the module on
    ``meta`` in bfloat16 to load a float32 file into bfloat16 with no float32 copy in memory).
    Other arguments as in :func:`load_state_dict`.
    """
    dtypes = {k: v.dtype for k, v in module.state_dict().items()}
    fetching = {"progress": progress, "url": url, **fetch_kwargs}
    req = _Request(module, _cache.cache_dir(cache_dir), verify, True, fetching, dtypes)
    _, _, tensors = _resolve_and_load(name_or_path, checkpoint, req)
    assign = any(t.is_meta for t in module.state_dict().values())
    module.load_state_dict(tensors, strict=True, assign=assign)
    return module


def convert(
    name_or_path: PathLike,
    fp16: bool = False,
    *,
    checkpoint: str | None = None,
    output: PathLike | None = None,
    expected: Any = None,
    cache_dir: PathLike | None = None,
    verify: bool | None = None,
    progress: bool = True,
    url: str | None = None,
    **fetch_kwargs: Any,
) -> Path:
    """Write a ``.safetensors`` copy of a checkpoint next to it (atomically) and return its path.

    For a released name the official file is fetched into the cache if needed and the copy is
    ``<cache>/<stem>.safetensors`` (``<stem>.fp16.safetensors`` with ``fp16=True``: floating
    tensors stored as float16); later loads of that name prefer it. For a local file the copy
    goes next to it. The source is validated exactly as :func:`load_state_dict` does.
    """
    cache = _cache.cache_dir(cache_dir)
    released = isinstance(name_or_path, str) and lookup(name_or_path) is not None
    fetching = {"progress": progress, "url": url, **fetch_kwargs}
    source, info, tensors = _resolve_and_load(
        name_or_path, checkpoint, _Request(expected, cache, verify, False, fetching)
    )
    suffix = ".fp16.safetensors" if fp16 else ".safetensors"
    if output is not None:
        dest = Path(output)
    elif released and info is not None:
        dest = cache / f"{info.stem}{suffix}"
    else:
        stem = source.name
        for ext in (".fp16.safetensors", ".safetensors", ".pt", ".pth", ".bin"):
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        dest = source.with_name(stem + suffix)
    if dest.absolute() == source.absolute():
        raise CheckpointError(f"{source} is already a {suffix} file; nothing to convert")
    metadata = {
        "format": "pt",
        SOURCE_KEY: source.name,
        DTYPE_KEY: "float16" if fp16 else "original",
    }
    if info is not None:
        metadata[CHECKPOINT_KEY] = info.name
    # Each tensor is written from its own bytes (tied weights are stored twice, as safetensors
    # needs), the float16 cast one tensor at a time; the same input gives the same bytes.
    with atomic_path(dest) as tmp:
        write_tensors(tmp, tensors, metadata, dtype=torch.float16 if fp16 else None)
    if is_inside(dest, cache) or verify is True:
        Manifest(cache).record(dest, sha256=sha256_file(dest), source=str(source))
    logger.info("wrote %s (from %s)", dest, source)
    return dest


def compat_load_checkpoint(
    checkpoint_name: str,
    device: torch.device | str,
    cache_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """Drop-in for the official ``load_checkpoint(checkpoint_name, device, cache_dir)``.

    Same names and return value (a state dict on ``device``), but cached in glidekit's cache
    (not the working directory), resumable, verified and never unpickling code.
    """
    return load_state_dict(checkpoint_name, device=device, cache_dir=cache_dir)


__all__ = [
    "compat_load_checkpoint",
    "convert",
    "load_into",
    "load_state_dict",
    "read_layout",
    "read_state_dict",
]
