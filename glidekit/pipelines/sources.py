"""Where a pipeline's models come from, and how each model samples by default.

One table maps the pipelines' roles to the released checkpoints; :func:`default_source` picks a
role's model when none is named (the released weights once they are in the cache, else the
shapes-world models embedded in the package); :func:`model_defaults` reads a model file's own
sampling defaults (written into its metadata by ``glidekit train``); :func:`source_label` is how
a source is written in a result's params (a released name, a package-relative name for the
embedded files, an absolute path for the user's own files).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from glidekit.checkpoints import CHECKPOINTS, cache_dir
from glidekit.checkpoints.download import preferred_files
from glidekit.checkpoints.modelfile import read_sampling_defaults
from glidekit.checkpoints.registry import lookup
from glidekit.models import MODELS_DIR, embedded_path

logger = logging.getLogger(__name__)

#: str | os.PathLike | GlideUNet | (GlideUNet, DiffusionConfig, tokenizer) | None
ModelSource = Any

#: The released CLIP towers, as (image encoder, text encoder) sources.
RELEASED_CLIP = ("clip/image-enc", "clip/text-enc")

#: role -> the released checkpoint of that role (also the layout of a local ``.pt`` file).
RELEASED: dict[str, Any] = {
    "base": "base",
    "upsampler": "upsample",
    "base_inpaint": "base-inpaint",
    "upsampler_inpaint": "upsample-inpaint",
    "clip": RELEASED_CLIP,
}

#: How each role is named in messages.
ROLE_NAMES = {"base": "base", "upsampler": "upsampler", "base_inpaint": "inpainting base",
              "upsampler_inpaint": "inpainting upsampler", "clip": "CLIP"}  # fmt: skip

#: Prefix of an embedded model's label in params ("embedded:shapes-base.safetensors").
EMBEDDED_PREFIX = "embedded:"


def released_in_cache(name: str) -> bool:
    """Whether the released checkpoint ``name`` is already in glidekit's cache."""
    return any(f.is_file() for f in preferred_files(cache_dir(), CHECKPOINTS[name].stem))


def default_source(role: str) -> ModelSource:
    """The model ``from_pretrained()`` uses for ``role`` when none is named.

    Roles: base, upsampler, base_inpaint, upsampler_inpaint, clip. The released checkpoint if
    its family's base is in the cache (or the package ships no embedded model), else the
    embedded file; None where neither exists (e.g. no embedded upsampler: base images only).
    """
    family_base = "base-inpaint" if "inpaint" in role else "base"
    if released_in_cache(family_base) or embedded_path("base") is None:
        return RELEASED[role]
    path = embedded_path(role)
    if path is None:
        return None if role.startswith("upsampler") else RELEASED[role]
    logger.info("no released %s checkpoint in the cache: the %s is the embedded shapes-world "
                "model %s (`glidekit download` fetches the released weights)",
                family_base, ROLE_NAMES[role], path.name)  # fmt: skip
    return str(path)


def resolve_source(source: ModelSource) -> ModelSource:
    """An ``embedded:NAME`` label (as params record it) -> the embedded file's path."""
    if isinstance(source, str) and source.startswith(EMBEDDED_PREFIX):
        return str(MODELS_DIR / source[len(EMBEDDED_PREFIX) :])
    return source


def source_label(source: ModelSource) -> str:
    """How a model source is written in the params: a released name, ``embedded:NAME`` for a
    file shipped in the package, the absolute path of any other file, or "custom"."""
    if isinstance(source, tuple) and all(isinstance(s, (str, os.PathLike)) for s in source):
        return ",".join(source_label(s) for s in source)
    if isinstance(source, str) and lookup(source) is not None:
        return lookup(source).name  # type: ignore[union-attr]
    if isinstance(source, (str, os.PathLike)):
        path = Path(resolve_source(source)).expanduser().absolute()
        try:
            return EMBEDDED_PREFIX + str(path.resolve().relative_to(MODELS_DIR))
        except (ValueError, OSError, RuntimeError):
            return str(path)
    return "custom"


def model_defaults(source: ModelSource) -> dict[str, Any]:
    """The sampling defaults a model file carries ({} for released names, tensors, other
    files): options such as guidance, guidance_scale, steps, sampler."""
    if not isinstance(source, (str, os.PathLike)) or (
        isinstance(source, str) and lookup(source) is not None
    ):
        return {}
    path = Path(resolve_source(source)).expanduser()
    try:
        if path.suffix != ".safetensors" or not path.is_file():
            return {}
    except OSError:  # a symlink loop, a path too long...: the model slot reports it
        return {}
    return read_sampling_defaults(path)
