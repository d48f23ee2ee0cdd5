"""Model weights on disk: released GLIDE checkpoints and glidekit's own model files.

Quick use::

    from glidekit.checkpoints import fetch, load_into, load_state_dict, load_unet

    path = fetch("base")                       # ~/.cache/glidekit/base.pt, resumable, locked
    state = load_state_dict("base")            # verified: sha256, layout, no pickled code
    load_into(model, "upsample")               # checks keys/shapes against model first
    model, diffusion, tokenizer = load_unet("export.safetensors")  # a glidekit model file

Modules: ``registry`` (the released names), ``download`` and ``cache`` (fetching into the
cache, its manifest), ``layout`` (expected tensor layouts and their checks), ``loading``
(verified loading and conversion of checkpoints), ``modelfile`` (glidekit's self-describing
UNet and CLIP files and their tokenizer metadata), ``errors``.

Environment: ``GLIDEKIT_CACHE`` (cache directory), ``GLIDEKIT_OFFLINE=1`` (never download),
``GLIDEKIT_BASE_URL`` (mirror of the weights), ``GLIDEKIT_CHECKPOINT_SPECS`` (a
``checkpoint_specs.json``-like file giving the released layouts).

Layer: above the models (``glidekit.nn``, ``glidekit.clip``, ``glidekit.diffusion``), below
``glidekit.pipelines``. May import those, ``glidekit.tokenizer`` and the utilities
(``glidekit.errors``, ``glidekit.fileio``, ``glidekit.tensorfile``); never ``glidekit.data``,
the pipelines, ``train``, ``cli`` or ``web``.
"""

from glidekit.checkpoints.cache import Manifest, ManifestEntry, cache_dir, sha256_file
from glidekit.checkpoints.download import fetch
from glidekit.checkpoints.errors import (
    ChangedCheckpointError,
    CheckpointError,
    CorruptCheckpointError,
    DownloadError,
    LayoutMismatchError,
    ModelFileError,
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
from glidekit.checkpoints.modelfile import (
    is_clip_file,
    is_unet_file,
    load_clip,
    load_unet,
    read_metadata,
    read_sampling_defaults,
    read_unet_config,
    save_clip,
    save_unet,
    tokenizer_from_metadata,
    tokenizer_to_metadata,
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
    "ModelFileError",
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
    "is_clip_file",
    "is_unet_file",
    "load_clip",
    "load_into",
    "load_state_dict",
    "load_unet",
    "module_layout",
    "read_metadata",
    "read_sampling_defaults",
    "read_state_dict",
    "read_unet_config",
    "released_layout",
    "save_clip",
    "save_unet",
    "sha256_file",
    "tokenizer_from_metadata",
    "tokenizer_to_metadata",
]
