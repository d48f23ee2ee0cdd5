"""Exceptions raised by :mod:`glidekit.checkpoints`.

Every error is a :class:`CheckpointError` (a ``ValueError``), so callers and the CLI can catch
one type; the subclasses let code react to the specific failure.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint could not be found, downloaded, read safely, or does not fit the model."""


class UnknownCheckpointError(CheckpointError):
    """The name is neither a released checkpoint nor an existing file or directory."""


class OfflineError(CheckpointError):
    """``GLIDEKIT_OFFLINE`` is set and the file is not in the cache."""


class DownloadError(CheckpointError):
    """The download failed (after all retries)."""


class CorruptCheckpointError(CheckpointError):
    """The file cannot be read: truncated, corrupt, or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The file contains pickled Python objects other than tensors; it was not unpickled."""


class ChangedCheckpointError(CheckpointError):
    """The file's size or sha256 differs from the one recorded in the cache manifest."""


class LayoutMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped tensors, or a checkpoint of another model kind."""


class ModelFileError(CheckpointError):
    """A glidekit model file (UNet or CLIP, :mod:`glidekit.checkpoints.modelfile`) that cannot be
    used: not such a file, metadata missing or invalid, a config beyond any glidekit model's
    size, or tensors that do not match the config. Raised before any model is allocated."""


__all__ = [
    "ChangedCheckpointError",
    "CheckpointError",
    "CorruptCheckpointError",
    "DownloadError",
    "LayoutMismatchError",
    "ModelFileError",
    "OfflineError",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
]
