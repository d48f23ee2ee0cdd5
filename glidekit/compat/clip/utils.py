"""``glide_text2im.clip.utils``: the official CLIP layers, not served (glidekit's
``LayerNorm``/``Affine`` in :mod:`glidekit.clip.model` hold the same ``g``/``b``/``w`` keys)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from glidekit.compat._unserved import unserved_class, unserved_function

FilterFn = Callable[[torch.Tensor], torch.Tensor]

_WAY = "use glidekit.clip.model.LayerNorm / Affine (same parameter names g, b, w)"

LayerNorm = unserved_class("clip.utils.LayerNorm", _WAY, nn.Module)
Affine = unserved_class("clip.utils.Affine", _WAY, nn.Module)
ZeroKeyBiasGrad = unserved_class(
    "clip.utils.ZeroKeyBiasGrad", "it is a training detail glidekit.train does not use"
)
zero_key_bias_grad = unserved_function(
    "clip.utils.zero_key_bias_grad", "it is a training detail glidekit.train does not use"
)

__all__ = ["Affine", "FilterFn", "LayerNorm", "ZeroKeyBiasGrad", "zero_key_bias_grad"]
