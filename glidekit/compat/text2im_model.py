"""``glide_text2im.text2im_model``: the official text-conditional UNet classes, not served.

Build them from official options with :func:`glidekit.compat.create_model_and_diffusion` (an
:class:`~glidekit.compat.model_creation.OfficialUNet`, with ``tokenizer`` and ``del_cache``);
each name here raises :class:`~glidekit.compat._unserved.NotServedError` when used.
"""

from __future__ import annotations

from torch import nn

from glidekit.compat._unserved import unserved_class

_WAY = (
    "build it from official options with glidekit.compat.create_model_and_diffusion(**options)"
    " (inpaint= and super_res= pick the kind), or glidekit.nn.create_model(glidekit.nn."
    "Text2ImConfig(...))"
)

Text2ImUNet = unserved_class("text2im_model.Text2ImUNet", _WAY, nn.Module)
SuperResText2ImUNet = unserved_class("text2im_model.SuperResText2ImUNet", _WAY, Text2ImUNet)
InpaintText2ImUNet = unserved_class("text2im_model.InpaintText2ImUNet", _WAY, Text2ImUNet)
SuperResInpaintText2ImUnet = unserved_class(
    "text2im_model.SuperResInpaintText2ImUnet", _WAY, Text2ImUNet
)

__all__ = [
    "InpaintText2ImUNet",
    "SuperResInpaintText2ImUnet",
    "SuperResText2ImUNet",
    "Text2ImUNet",
]
