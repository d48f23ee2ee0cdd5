"""``glide_text2im.xf``: the diffusion models' text transformer, served by glidekit's
(:mod:`glidekit.nn.text_transformer`: same state-dict keys) under the official constructors."""

from __future__ import annotations

import torch
from torch import nn

from glidekit.nn import text_transformer as _xf
from glidekit.nn.layers import LayerNorm32, attention

_TO_F16 = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def convert_module_to_f16(l: nn.Module) -> None:  # noqa: E741  (the official argument name)
    """Hold a linear or 2-D (transposed) convolution's weight and bias in float16."""
    if isinstance(l, _TO_F16):
        l.weight.data = l.weight.data.half()
        if l.bias is not None:
            l.bias.data = l.bias.data.half()


class LayerNorm(LayerNorm32):
    """``nn.LayerNorm`` computed in float32 (fp16 inputs, fp32 gain and bias); output in the
    input's dtype."""


class QKVMultiheadAttention(nn.Module):
    """Attention over a fused (B, n_ctx, 3 * width) qkv tensor whose per-head slices hold
    [q | k | v]; q and k are each scaled by d^-1/4, no mask."""

    def __init__(self, n_heads: int, n_ctx: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_ctx = n_ctx

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, n, _ = qkv.shape
        q, k, v = qkv.view(b, n, self.n_heads, -1).transpose(1, 2).chunk(3, dim=-1)
        return attention(q, k, v).transpose(1, 2).reshape(b, n, -1)


class MultiheadAttention(_xf.MultiheadSelfAttention):
    """Self-attention with fused ``c_qkv`` and output ``c_proj`` linears."""

    def __init__(self, n_ctx: int, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.n_ctx = n_ctx
        self.width = width


class MLP(_xf.MLP):
    """``c_fc`` (width -> 4 width), exact GELU, ``c_proj`` back."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.width = width


class ResidualAttentionBlock(_xf.ResidualAttentionBlock):
    """Pre-LayerNorm attention and MLP, each residual."""

    def __init__(self, n_ctx: int, width: int, heads: int) -> None:
        super().__init__(width, heads)


class Transformer(_xf.Transformer):
    """``layers`` residual blocks over x (B, n_ctx, width), no attention mask."""

    def __init__(self, n_ctx: int, width: int, layers: int, heads: int) -> None:
        super().__init__(width, layers, heads)
        self.n_ctx = n_ctx
        self.width = width
        self.layers = layers


__all__ = [
    "LayerNorm",
    "MLP",
    "MultiheadAttention",
    "QKVMultiheadAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "convert_module_to_f16",
]
