"""Released GLIDE weights: download, cache, verify and load them safely.

Quick use::

    from glidekit.checkpoints import fetch, load_into, load_state_dict

    path = fetch("base")                       # ~/.cache/glidekit/base.pt, resumable, locked
    state = load_state_dict("base")            # verified: sha256, layout, no pickled code
    load_into(model, "upsample")               # checks keys/shapes against model first

Environment: ``GLIDEKIT_CACHE`` (cache directory), ``GLIDEKIT_OFFLINE=1`` (never download),
``GLIDEKIT_BASE_URL`` (mirror of the weights), ``GLIDEKIT_CHECKPOINT_SPECS`` (a
``checkpoint_specs.json``-like file giving the released layouts).
"""

from glidekit.checkpoints.cache import Manifest, ManifestEntry, cache_dir, sha256_file
from glidekit.checkpoints.download import fetch
from glidekit.checkpoints.errors import (
    ChangedCheckpointError,
    CheckpointError,
    CorruptCheckpointError,
    DownloadError,
    LayoutMismatchError,
    OfflineError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
)
from glidekit.checkpoints.layout import (
    build_meta_model,
    check_layout,
    detect_kind,
    diff_layouts,
    expected_layout,
    module_layout,
    released_layout,
)
from glidekit.checkpoints.loading import (
    compat_load_checkpoint,
    convert,
    load_into,
    load_state_dict,
    read_state_dict,
)
from glidekit.checkpoints.registry import CHECKPOINTS, CheckpointInfo, get_checkpoint

__all__ = [
    "CHECKPOINTS",
    "ChangedCheckpointError",
    "CheckpointError",
    "CheckpointInfo",
    "CorruptCheckpointError",
    "DownloadError",
    "LayoutMismatchError",
    "Manifest",
    "ManifestEntry",
    "OfflineError",
    "UnknownCheckpointError",
    "UnsafeCheckpointError",
    "build_meta_model",
    "cache_dir",
    "check_layout",
    "compat_load_checkpoint",
    "convert",
    "detect_kind",
    "diff_layouts",
    "expected_layout",
    "fetch",
    "get_checkpoint",
    "load_into",
    "load_state_dict",
    "module_layout",
    "read_state_dict",
    "released_layout",
    "sha256_file",
]
