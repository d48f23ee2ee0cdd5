"""``glide_text2im.download``: the released checkpoints, fetched into a cache and loaded.

Downloads go through :func:`glidekit.checkpoints.fetch` (resumable, locked, size-checked,
recorded in the cache manifest) and loading through :func:`glidekit.checkpoints.load_state_dict`
(layout-checked, never unpickling code). One deliberate difference: the default cache is
glidekit's (``$GLIDEKIT_CACHE``, else ``~/.cache/glidekit``), not ``./glide_model_cache`` in
the working directory, so a notebook run from any folder finds the weights it downloaded once.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from glidekit.checkpoints import CHECKPOINTS, UnknownCheckpointError, cache_dir, fetch
from glidekit.checkpoints import load_state_dict as _load_state_dict

#: The official URL of each released checkpoint, by name.
MODEL_PATHS: dict[str, str] = {name: info.official_url for name, info in CHECKPOINTS.items()}


def default_cache_dir() -> str:
    """The folder checkpoints are cached in: glidekit's cache directory
    (:func:`glidekit.checkpoints.cache_dir`), as an absolute path."""
    return str(cache_dir())


def _released_name(url: str) -> str | None:
    """The released checkpoint whose official file name ends ``url``, if any."""
    filename = Path(urlparse(url).path).name
    for name, info in CHECKPOINTS.items():
        if info.filename == filename:
            return name
    return None


def fetch_file_cached(
    url: str, progress: bool = True, cache_dir: str | None = None, chunk_size: int = 4096
) -> str:
    """Download ``url`` into ``cache_dir`` (default :func:`default_cache_dir`) unless a file of
    its name is already there, and return the local path.

    glidekit downloads the released checkpoints only (any URL ending in one of their file
    names, e.g. a mirror's); other URLs raise :class:`UnknownCheckpointError`. ``chunk_size``
    is accepted for compatibility (glidekit reads 1 MiB at a time).
    """
    folder = Path(cache_dir) if cache_dir is not None else Path(default_cache_dir())
    local = folder / Path(urlparse(url).path).name
    if local.is_file():
        return str(local)
    name = _released_name(url)
    if name is None:
        raise UnknownCheckpointError(
            f"url: {url!r} is not a released GLIDE checkpoint; glidekit.compat downloads only "
            f"{', '.join(info.filename for info in CHECKPOINTS.values())}: fetch other files "
            "with urllib.request.urlretrieve"
        )
    return str(fetch(name, cache_dir=folder, progress=progress, url=url))


def load_checkpoint(
    checkpoint_name: str,
    device: torch.device | str,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = 4096,
) -> dict[str, torch.Tensor]:
    """The released checkpoint ``checkpoint_name`` (a key of :data:`MODEL_PATHS`) as a state
    dict on ``device``, downloaded into the cache first if needed.

    The file comes from ``MODEL_PATHS[checkpoint_name]`` when that was changed from the
    official URL, else from ``$GLIDEKIT_BASE_URL`` or the official URL. Raises ValueError
    (:class:`~glidekit.checkpoints.CheckpointError`) for an unknown name or a bad file.
    """
    if checkpoint_name not in MODEL_PATHS:
        raise UnknownCheckpointError(
            f"checkpoint_name: unknown checkpoint {checkpoint_name!r}; "
            f"known names are {', '.join(MODEL_PATHS)}"
        )
    url = MODEL_PATHS[checkpoint_name]
    override = url if url != CHECKPOINTS[checkpoint_name].official_url else None
    return _load_state_dict(
        checkpoint_name, device=device, cache_dir=cache_dir, progress=progress, url=override
    )


__all__ = ["MODEL_PATHS", "default_cache_dir", "fetch_file_cached", "load_checkpoint"]
