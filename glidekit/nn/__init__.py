"""Neural network models: the text transformer and the GLIDE UNet family."""

from glidekit.nn.config import (
    RELEASED_CONFIGS,
    DiffusionConfig,
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
    "DiffusionConfig",
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
