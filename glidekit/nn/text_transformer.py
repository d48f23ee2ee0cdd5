"""The text transformer that encodes a prompt for the diffusion UNets.

A stack of pre-LayerNorm residual blocks over the whole context, with no attention mask at all
(not causal; padding positions are handled by substituting a learned padding embedding before the
first block, see :meth:`glidekit.nn.unet.GlideUNet.encode_text`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glidekit.nn.layers import LayerNorm32, attention


class MultiheadSelfAttention(nn.Module):
    """Self-attention with a fused qkv projection; each head's slice of 3*d holds [q | k | v]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.c_qkv(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, H, N, 3d)
        q, k, v = qkv.chunk(3, dim=-1)
        out = attention(q, k, v)  # (B, H, N, d)
        return self.c_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """x: (B, text_ctx, width) -> (B, text_ctx, width)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x
