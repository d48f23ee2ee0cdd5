"""Neural network models: the text transformer and the GLIDE UNet family, and their configs.

Layer: below ``glidekit.clip``, ``glidekit.diffusion`` and ``glidekit.data``; imports only
``glidekit.tokenizer`` and the utilities. Never ``glidekit.diffusion`` (the diffusion a model
was trained with is :class:`glidekit.diffusion.DiffusionConfig`) nor ``glidekit.data``.
"""

from glidekit.nn.config import (
    RELEASED_CONFIGS,
    InpaintConfig,
    SuperResConfig,
    SuperResInpaintConfig,
    Text2ImConfig,
    UNetConfig,
    config_from_dict,
)
from glidekit.nn.unet import GlideUNet, TextCondition, create_model

__all__ = [
    "RELEASED_CONFIGS",
    "GlideUNet",
    "InpaintConfig",
    "SuperResConfig",
    "SuperResInpaintConfig",
    "Text2ImConfig",
    "TextCondition",
    "UNetConfig",
    "config_from_dict",
    "create_model",
]
