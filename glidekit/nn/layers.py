"""Small building blocks shared by the text transformer and the UNet."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in float32, optionally followed by SiLU.

    Half-precision models keep these in float32 (as the official fp16 conversion does); the output
    has the input's dtype.
    """

    def __init__(self, num_channels: int, swish: bool = False, num_groups: int = 32) -> None:
        super().__init__(num_groups=num_groups, num_channels=num_channels, eps=1e-5)
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_autocast_enabled():
            # The CPU kernel reads bf16 with float32 affine parameters and accumulates the
            # statistics in float32: the float32 norm without two full-tensor casts (2x faster).
            y = F.group_norm(x, self.num_groups, self.weight.float(), self.bias.float(), self.eps)
            return F.silu(y) if self.swish else y
        y = F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        )
        if self.swish:
            y = F.silu(y)
        return y.to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm (eps 1e-5) computed in float32; output in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return y.to(x.dtype)


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    timesteps: (B,) -> (B, dim) float32, [cos(t * f_i), sin(t * f_i)] with
    f_i = exp(-ln(max_period) * i / half), i < half (computed in float32, as the released models
    were trained).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over (B, H, T, d) tensors with q and k each scaled by d^-1/4.

    Scaling both operands (rather than the logits by 1/sqrt(d)) is how the released models
    compute it; the product goes through torch's fused scaled_dot_product_attention.
    """
    scale = q.shape[-1] ** -0.25
    return F.scaled_dot_product_attention(q * scale, k * scale, v, scale=1.0)


def sincos_position_embedding(tokens: int, channels: int) -> torch.Tensor:
    """(tokens, channels) fixed 2D sine-cosine embedding of a square grid of ``tokens`` pixels
    (row-major), values in [-1, 1]: the first half of the channels encodes the row, the second
    the column, each as sin/cos pairs of geometrically spaced frequencies (as in ViT/MAE).
    A linear map of it says where a pixel is ("left half", "top quadrant") from the start,
    where a zero or small random start leaves the attention to learn that from nothing."""
    side = int(round(tokens**0.5))
    if side * side != tokens or channels % 4:
        raise ValueError(f"need a square grid and channels % 4 == 0, got {tokens}, {channels}")
    freqs = 1.0 / 10000 ** (torch.arange(channels // 4, dtype=torch.float64) / (channels // 4))
    pos = torch.arange(side, dtype=torch.float64)[:, None] * freqs[None]  # (side, C/4)
    axis = torch.cat([pos.sin(), pos.cos()], dim=1)  # (side, C/2)
    rows = axis[:, None, :].expand(side, side, -1)
    cols = axis[None, :, :].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).reshape(tokens, channels).float()
