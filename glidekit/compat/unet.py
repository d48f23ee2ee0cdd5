"""``glide_text2im.unet``: the official ADM UNet classes, not served.

glidekit has one UNet class for every GLIDE kind, :class:`glidekit.nn.GlideUNet` (same
state-dict keys as the official models); each name here raises
:class:`~glidekit.compat._unserved.NotServedError` naming it when used.
"""

from __future__ import annotations

from torch import nn

from glidekit.compat._unserved import unserved_class

_MODEL = (
    "build a GLIDE UNet with glidekit.compat.create_model_and_diffusion(**options) or "
    "glidekit.nn.create_model(glidekit.nn.Text2ImConfig(...)) (a glidekit.nn.GlideUNet)"
)
_BLOCK = "glidekit.nn.GlideUNet's blocks are in glidekit.nn.unet (ResBlock, AttentionBlock)"

TimestepBlock = unserved_class("unet.TimestepBlock", _BLOCK, nn.Module)
TimestepEmbedSequential = unserved_class("unet.TimestepEmbedSequential", _BLOCK, nn.Sequential)
Upsample = unserved_class("unet.Upsample", _BLOCK, nn.Module)
Downsample = unserved_class("unet.Downsample", _BLOCK, nn.Module)
ResBlock = unserved_class("unet.ResBlock", _BLOCK, nn.Module)
AttentionBlock = unserved_class("unet.AttentionBlock", _BLOCK, nn.Module)
QKVAttention = unserved_class("unet.QKVAttention", _BLOCK, nn.Module)
UNetModel = unserved_class("unet.UNetModel", _MODEL, nn.Module)
SuperResUNetModel = unserved_class("unet.SuperResUNetModel", _MODEL, nn.Module)
InpaintUNetModel = unserved_class("unet.InpaintUNetModel", _MODEL, nn.Module)
SuperResInpaintUNetModel = unserved_class("unet.SuperResInpaintUNetModel", _MODEL, nn.Module)

__all__ = [
    "AttentionBlock",
    "Downsample",
    "InpaintUNetModel",
    "QKVAttention",
    "ResBlock",
    "SuperResInpaintUNetModel",
    "SuperResUNetModel",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
]
