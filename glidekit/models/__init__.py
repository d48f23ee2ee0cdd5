"""The embedded default models: a small GLIDE cascade trained on the shapes world.

They ship inside the package (fp16 safetensors with their config and word vocabulary), so a new
user sees glidekit work with no download. The released GLIDE weights take precedence as soon as
they are in the cache (``glidekit download``): ``default_<role>()`` answers the released name
then, else the embedded file (or None where no embedded model of that role exists yet).
The pipelines call these through ``glidekit.pipelines.common.default_source``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent

#: role -> (released checkpoint name, embedded file name)
ROLES: dict[str, tuple[str, str]] = {
    "base": ("base", "shapes-base.safetensors"),
    "upsampler": ("upsample", "shapes-upsample.safetensors"),
    "base_inpaint": ("base-inpaint", "shapes-base-inpaint.safetensors"),
    "upsampler_inpaint": ("upsample-inpaint", "shapes-upsample-inpaint.safetensors"),
}


#: the embedded shapes-world noise-aware CLIP (both towers and their vocabulary in one file)
CLIP_FILE = "shapes-clip.safetensors"

#: How the embedded models sample by default: role -> (pipeline, its keyword defaults). The
#: small shapes base binds the object's colour and position only with its CLIP's help, so
#: text to image is CLIP-guided (ClipGuidedPipeline, 250 ancestral steps) and inpainting adds
#: the CLIP's gradient to classifier-free guidance 3 (InpaintPipeline). Measured in
#: benchmarks/RESULTS.md ("Embedded shapes models"); the released models keep GLIDE's defaults.
EMBEDDED_SAMPLING: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("clip-guided", {"guidance_scale": 20.0, "steps": 250}),
    "base_inpaint": (
        "inpaint",
        {"guidance_scale": 3.0, "clip_guidance_scale": 30.0, "steps": 100},
    ),
}


def released_in_cache(name: str) -> bool:
    """Whether the released checkpoint ``name`` is already in glidekit's cache."""
    from glidekit.checkpoints import CHECKPOINTS, cache_dir
    from glidekit.checkpoints.download import preferred_files

    return any(f.is_file() for f in preferred_files(cache_dir(), CHECKPOINTS[name].stem))


def embedded_path(role: str) -> Path | None:
    """The embedded model file for ``role``, if the package ships one."""
    path = MODELS_DIR / ROLES[role][1]
    return path if path.is_file() else None


def _default(role: str) -> str | None:
    released, _ = ROLES[role]
    # The cascade comes from one family: the released base decides for its upsampler too.
    family_base = "base-inpaint" if "inpaint" in role else "base"
    if released_in_cache(family_base) or embedded_path(role.replace("upsampler", "base")) is None:
        return released
    path = embedded_path(role)
    if path is not None:
        logger.info("no released %s checkpoint in the cache: using the embedded shapes-world "
                    "model %s (run `glidekit download` for the released weights)",
                    family_base, path.name)  # fmt: skip
        return str(path)
    return None


def default_base() -> str | None:
    return _default("base")


def default_upsampler() -> str | None:
    return _default("upsampler")


def default_base_inpaint() -> str | None:
    return _default("base_inpaint")


def default_upsampler_inpaint() -> str | None:
    return _default("upsampler_inpaint")


def default_clip() -> str | tuple[str, str]:
    """The CLIP for CLIP guidance: the embedded one beside the embedded base (it sees that
    base's 32x32 pictures and reads its words), else the released towers."""
    from glidekit.pipelines.common import RELEASED_CLIP

    path = MODELS_DIR / CLIP_FILE
    if released_in_cache("base") or embedded_path("base") is None or not path.is_file():
        return RELEASED_CLIP
    logger.info("no released base checkpoint in the cache: CLIP guidance uses the embedded "
                "shapes-world CLIP %s", path.name)  # fmt: skip
    return str(path)


def sampling_defaults(role: str, source: Any) -> tuple[str, dict[str, Any]] | None:
    """``(pipeline name, keyword defaults)`` for sampling with ``source`` as the ``role`` model
    ("base" or "base_inpaint") if it is the embedded one (see :data:`EMBEDDED_SAMPLING`),
    else None (GLIDE's defaults apply)."""
    if role not in EMBEDDED_SAMPLING or not isinstance(source, (str, Path)):
        return None
    path = embedded_path(role)
    if path is None or Path(source).resolve() != path:
        return None
    pipeline, defaults = EMBEDDED_SAMPLING[role]
    return pipeline, dict(defaults)
