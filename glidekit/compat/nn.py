"""``glide_text2im.nn``: small network utilities (normalisation, layer factories, timestep
embedding), served as the official functions; :func:`timestep_embedding` is glidekit's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glidekit.nn.layers import timestep_embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (output in the input's dtype), then the swish
    y * sigmoid(swish * y) when ``swish`` is non-zero (1.0: SiLU)."""

    def __init__(self, num_groups: int, num_channels: int, swish: float, eps: float = 1e-5) -> None:
        super().__init__(num_groups=num_groups, num_channels=num_channels, eps=eps)
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.float()).to(x.dtype)
        if self.swish == 1.0:
            return F.silu(y)
        if self.swish:
            return y * torch.sigmoid(y * float(self.swish))
        return y


def _by_dims(kinds: dict[int, Callable[..., nn.Module]], dims: int) -> Callable[..., nn.Module]:
    if dims not in kinds:
        raise ValueError(f"unsupported dimensions: {dims}")
    return kinds[dims]


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-, 2- or 3-D convolution (``nn.Conv{dims}d(*args, **kwargs)``)."""
    return _by_dims({1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}, dims)(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1-, 2- or 3-D average pooling (``nn.AvgPool{dims}d(*args, **kwargs)``)."""
    return _by_dims({1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}, dims)(*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    """``nn.Linear(*args, **kwargs)``."""
    return nn.Linear(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero ``module``'s parameters in place; returns it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply ``module``'s parameters by ``scale`` in place; returns it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def normalization(channels: int, swish: float = 0.0) -> GroupNorm32:
    """The UNet's normalisation: :class:`GroupNorm32` with 32 groups."""
    return GroupNorm32(num_groups=32, num_channels=channels, swish=swish)


__all__ = [
    "GroupNorm32",
    "avg_pool_nd",
    "conv_nd",
    "linear",
    "normalization",
    "scale_module",
    "timestep_embedding",
    "zero_module",
]
