"""The six released GLIDE (filtered) checkpoints: names, official files, URLs, configs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from glidekit.checkpoints.errors import UnknownCheckpointError
from glidekit.clip.config import CLIPConfig
from glidekit.nn.config import RELEASED_CONFIGS, UNetConfig

#: Where OpenAI publishes the weights (the ``dec-2021`` release).
OFFICIAL_BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/"

#: Environment variable replacing :data:`OFFICIAL_BASE_URL` (a mirror, or a test server).
BASE_URL_ENV = "GLIDEKIT_BASE_URL"


@dataclass(frozen=True)
class CheckpointInfo:
    """One released checkpoint.

    Attributes:
        name: glidekit name (``"base"``, ``"clip/image-enc"``, ...).
        filename: official file name (``"base.pt"``); also its name in the cache.
        model_class: class name of the module the official code loads it into.
        family: ``"diffusion"`` (a UNet) or ``"clip"`` (one tower of the noised CLIP).
        clip_part: for CLIP, the attribute of the CLIP model the file belongs to.
        in_channels: input channels of a UNet's first convolution (its kind's fingerprint).
        description: short human description, used in messages.
    """

    name: str
    filename: str
    model_class: str
    family: Literal["diffusion", "clip"]
    description: str
    clip_part: str | None = None
    in_channels: int | None = None

    @property
    def stem(self) -> str:
        """File name without ``.pt`` (``base_inpaint``); converted files are
        ``<stem>.safetensors``."""
        return self.filename.rsplit(".", 1)[0]

    @property
    def official_url(self) -> str:
        """The official download URL."""
        return OFFICIAL_BASE_URL + self.filename

    def url(self, base_url: str | None = None) -> str:
        """Download URL: ``base_url`` or ``$GLIDEKIT_BASE_URL`` if set, else the official one."""
        base = base_url or os.environ.get(BASE_URL_ENV) or OFFICIAL_BASE_URL
        return base.rstrip("/") + "/" + self.filename

    def config(self) -> UNetConfig | CLIPConfig:
        """The model config this checkpoint belongs to (``UNetConfig`` or ``CLIPConfig``)."""
        if self.family == "clip":
            return CLIPConfig()
        return RELEASED_CONFIGS[self.name]


_ENTRIES = (
    CheckpointInfo(
        "base", "base.pt", "Text2ImUNet", "diffusion", "64x64 text-to-image UNet", in_channels=3
    ),
    CheckpointInfo(
        "upsample",
        "upsample.pt",
        "SuperResText2ImUNet",
        "diffusion",
        "64->256 super-resolution UNet",
        in_channels=6,
    ),
    CheckpointInfo(
        "base-inpaint",
        "base_inpaint.pt",
        "InpaintText2ImUNet",
        "diffusion",
        "64x64 inpainting UNet",
        in_channels=7,
    ),
    CheckpointInfo(
        "upsample-inpaint",
        "upsample_inpaint.pt",
        "SuperResInpaintText2ImUnet",
        "diffusion",
        "64->256 super-resolution inpainting UNet",
        in_channels=10,
    ),
    CheckpointInfo(
        "clip/image-enc",
        "clip_image_enc.pt",
        "ImageEncoder",
        "clip",
        "noised CLIP image encoder",
        clip_part="image_encoder",
    ),
    CheckpointInfo(
        "clip/text-enc",
        "clip_text_enc.pt",
        "TextEncoder",
        "clip",
        "noised CLIP text encoder",
        clip_part="text_encoder",
    ),
)

#: The released checkpoints by glidekit name (read-only).
CHECKPOINTS: Mapping[str, CheckpointInfo] = MappingProxyType({e.name: e for e in _ENTRIES})

# Other spellings accepted for a name: the official file name and stem, underscores.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        alias: e.name
        for e in _ENTRIES
        for alias in (e.filename, e.stem, e.name.replace("-", "_"), e.stem.replace("_", "-"))
    }
)


def lookup(name: str) -> CheckpointInfo | None:
    """The released checkpoint called ``name`` (or an alias such as ``base_inpaint.pt``), or
    None."""
    key = name.strip().lower()
    if key in CHECKPOINTS:
        return CHECKPOINTS[key]
    if key in _ALIASES:
        return CHECKPOINTS[_ALIASES[key]]
    return None


def get_checkpoint(name: str) -> CheckpointInfo:
    """Like :func:`lookup` but raises :class:`UnknownCheckpointError` listing the valid names."""
    info = lookup(name)
    if info is None:
        raise UnknownCheckpointError(
            f"unknown checkpoint {name!r}; expected one of {', '.join(CHECKPOINTS)}"
        )
    return info


__all__ = [
    "BASE_URL_ENV",
    "CHECKPOINTS",
    "CheckpointInfo",
    "OFFICIAL_BASE_URL",
    "get_checkpoint",
    "lookup",
]
