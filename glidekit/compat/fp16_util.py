"""``glide_text2im.fp16_util``: per-module precision conversion of convolutions.

(A whole UNet converts with ``model.convert_to_fp16()`` / ``convert_to_fp32()``.)
"""

from __future__ import annotations

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _cast(module: nn.Module, kinds: tuple[type, ...], dtype: torch.dtype) -> None:
    if isinstance(module, kinds):
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)


def convert_module_to_f16(l: nn.Module) -> None:  # noqa: E741  (the official argument name)
    """Hold a convolution's weight and bias in float16 (other modules are left alone); for
    ``model.apply(convert_module_to_f16)``."""
    _cast(l, _CONVS, torch.float16)


def convert_module_to_f32(l: nn.Module) -> None:  # noqa: E741
    """Undo :func:`convert_module_to_f16`: a convolution's weight and bias back to float32."""
    _cast(l, _CONVS, torch.float32)


__all__ = ["convert_module_to_f16", "convert_module_to_f32"]
