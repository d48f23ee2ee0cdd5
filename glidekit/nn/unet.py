"""The GLIDE UNet: an ADM UNet whose attention also attends to the encoded prompt.

Parameter names reproduce the released checkpoints' state-dict keys exactly, so those files load
with ``strict=True``. One class serves all four released kinds; the config decides which extra
inputs are concatenated to x:

    text2im            [x]                                             3 channels
    inpaint            [x, inpaint_image * mask, mask]                 7
    super_res          [x, upsample(low_res)]                          6
    super_res_inpaint  [x, inpaint_image * mask, mask, upsample(low_res)] 10
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from glidekit.nn.config import UNetConfig
from glidekit.nn.layers import (
    GroupNorm32,
    LayerNorm32,
    attention,
    sincos_position_embedding,
    timestep_embedding,
)
from glidekit.nn.text_transformer import Transformer

logger = logging.getLogger(__name__)


@dataclass
class TextCondition:
    """The encoded prompt, computed once per sampling run and reused at every step.

    xf_proj: (B, 4 * num_channels), added to the timestep embedding.
    xf_out: (B, xf_width, text_ctx), keys/values source for every attention block.
    kv: per attention block, its projected text keys/values (filled lazily, reused each step).
    """

    xf_proj: torch.Tensor
    xf_out: torch.Tensor
    kv: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.xf_proj.shape[0]


class ResBlock(nn.Module):
    """Residual block with timestep-conditioned scale-shift norm, optionally up/down-sampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        # Index layout (0, 2 / 0, 3) mirrors the released keys: parameter-free layers hold slots.
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, swish=True),
            nn.Identity(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, swish=not use_scale_shift_norm),
            nn.SiLU() if use_scale_shift_norm else nn.Identity(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); emb: (B, emb_channels) float32 -> (B, out_channels, H', W')."""
        h = self.in_layers[0](x)
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


@functools.lru_cache(maxsize=8)
def cosine_maps(count: int, side: int) -> torch.Tensor:
    """(count, side, side) the lowest-frequency 2D DCT-II basis maps of a side x side grid
    (frequencies (u, v) with u, v < ceil(sqrt(count)), lowest u + v first), values in [-1, 1].
    Made once per (count, side), on the CPU (every forward of a model with the maps reads them;
    callers must not write to the tensor)."""
    k = math.ceil(math.sqrt(count))
    pos = (torch.arange(side, dtype=torch.float64) + 0.5) * math.pi / side
    pairs = sorted(((u, v) for u in range(k) for v in range(k)), key=lambda uv: (sum(uv), uv))
    maps = [torch.outer((pos * u).cos(), (pos * v).cos()) for u, v in pairs[:count]]
    return torch.stack(maps).float()


class TextSpatialBias(nn.Module):
    """A picture of where, chosen by the pooled text (``UNetConfig.text_spatial_maps``).

    ``forward(xf_proj)``: xf_proj (B, emb_channels) -> (B, channels, side, side), per channel a
    combination of ``maps`` fixed cosine maps (:func:`cosine_maps`) with coefficients linear in
    the pooled text; the linear map starts at zero (the model starts as without it).
    """

    def __init__(self, emb_channels: int, channels: int, maps: int, side: int) -> None:
        super().__init__()
        self.channels, self.maps, self.side = channels, maps, side
        self.proj = nn.Linear(emb_channels, channels * maps)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, xf_proj: torch.Tensor) -> torch.Tensor:
        coeffs = self.proj(xf_proj.float()).view(-1, self.channels, self.maps)
        # Fixed maps (cached, a few hundred numbers): nothing to save, load or keep in the model.
        basis = cosine_maps(self.maps, self.side).flatten(1).to(coeffs.device)
        return (coeffs @ basis).view(-1, self.channels, self.side, self.side)


class AttentionBlock(nn.Module):
    """Spatial self-attention whose keys/values are prefixed by the projected text tokens.

    Per head h, channels [3d*h, 3d*(h+1)) of ``qkv`` hold q, k, v, and channels [2d*h, 2d*(h+1))
    of ``encoder_kv`` hold the text k, v. Padded text positions are not masked (as released).
    With ``resolution`` set (``attention_pos_emb``), a learned (resolution**2, channels) position
    embedding (the sine-cosine table after :func:`init_weights`) is added to the normalised
    image tokens before q, k, v.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        encoder_channels: int,
        name: str,
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.name = name
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, channels * 2, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        if resolution is not None:
            self.pos_emb = nn.Parameter(torch.zeros(resolution * resolution, channels))
        else:
            self.pos_emb = None

    # The 1x1 convs are applied as linears over (B, tokens, channels): the per-head q/k/v then
    # come out with a contiguous last dimension, which torch's fused CPU attention kernel needs
    # (with (B, H, d, T) views it silently falls back to the slow math path).
    @staticmethod
    def _linear(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, conv.weight.squeeze(-1), conv.bias)

    def text_kv(self, text: TextCondition, dtype: torch.dtype) -> torch.Tensor:
        """(B, heads, text_ctx, 2d) text keys|values, computed once per TextCondition."""
        kv = text.kv.get(self.name)
        if kv is None:
            b, _, length = text.xf_out.shape
            xf = text.xf_out.transpose(1, 2).to(self.encoder_kv.weight.dtype)  # (B, L, W)
            kv = self._linear(self.encoder_kv, xf).view(b, length, self.num_heads, -1)
            kv = kv.transpose(1, 2)
            if not torch.is_grad_enabled():
                text.kv[self.name] = kv
        return kv.to(dtype)

    def forward(self, x: torch.Tensor, text: TextCondition) -> torch.Tensor:
        b, c, hh, ww = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, T, C)
        if self.pos_emb is not None:  # forward() has checked x's size against the config
            tokens = tokens + self.pos_emb.to(tokens.dtype)
        qkv = self._linear(self.qkv, tokens).view(b, hh * ww, self.num_heads, -1)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # (B, H, T, d) each
        ek, ev = self.text_kv(text, q.dtype).chunk(2, dim=-1)
        k = torch.cat([ek, k], dim=2)
        v = torch.cat([ev, v], dim=2)
        a = attention(q, k, v).transpose(1, 2).reshape(b, hh * ww, c)  # (B, T, C)
        out = self._linear(self.proj_out, a).transpose(1, 2).reshape(b, c, hh, ww)
        return x + out


class TimestepSequential(nn.Sequential):
    """A UNet stage: passes the timestep embedding to ResBlocks and the text to attention."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: TextCondition) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, text)
            else:
                x = layer(x)
        return x


class GlideUNet(nn.Module):
    """Text-conditional UNet of the GLIDE family (base, upsampler, and their inpainting variants).

    Call ``model(x, timesteps, text=model.encode_text(tokens, mask))`` (plus ``low_res=`` for
    super-resolution and ``inpaint_image=``, ``inpaint_mask=`` for inpainting): samplers encode
    the prompt once per run and pass ``text=`` at every step. ``tokens=..., mask=...`` instead
    encode the prompt on that call (training). The model holds no state between calls: its
    output is a function of its inputs and weights.
    Output: (B, 6, H, W): channels 0-2 predicted noise eps, 3-5 the learned-range variance
    interpolation v (roughly in [-1, 1]).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.dtype = torch.float32  # compute dtype of the convs/linears (see convert_to_fp16)
        c = config.num_channels
        emb_ch = 4 * c

        # Text transformer (top-level names match the released keys).
        # Left uninitialised here (init_weights draws it): nn.Embedding's own normal_ would, on
        # the "meta" device that loading builds on, cost a second of lazy setup per process.
        self.token_embedding = nn.Embedding(
            config.n_vocab, config.xf_width, _weight=torch.empty(config.n_vocab, config.xf_width)
        )
        self.positional_embedding = nn.Parameter(torch.empty(config.text_ctx, config.xf_width))
        self.transformer = Transformer(config.xf_width, config.xf_layers, config.xf_heads)
        self.final_ln = LayerNorm32(config.xf_width) if config.xf_final_ln else None
        if config.xf_padding:
            self.padding_embedding = nn.Parameter(torch.empty(config.text_ctx, config.xf_width))
        self.transformer_proj = nn.Linear(config.xf_width, emb_ch)

        self.time_embed = nn.Sequential(nn.Linear(c, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def heads_for(ch: int, upsample: bool) -> int:
            if config.num_head_channels != -1:
                return ch // config.num_head_channels
            if upsample and config.num_heads_upsample != -1:
                return config.num_heads_upsample
            return config.num_heads

        n_attn = 0

        def attn(ch: int, upsample: bool = False) -> AttentionBlock:
            nonlocal n_attn
            n_attn += 1
            res = config.image_size // ds if config.attention_pos_emb else None
            return AttentionBlock(
                ch, heads_for(ch, upsample), config.xf_width, f"attn{n_attn}", resolution=res
            )

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in, emb_ch, ch_out, config.dropout, config.use_scale_shift_norm, **kw
            )

        attention_ds = set(config.attention_ds)
        ch = int(config.channel_mult[0] * c)
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * c))]
                ch = int(mult * c)
                if ds in attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(config.channel_mult) - 1:
                if not config.resblock_updown:
                    raise NotImplementedError("only resblock_updown=True is implemented")
                self.input_blocks.append(TimestepSequential(res(ch, ch, down=True)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.text_spatial = (
            TextSpatialBias(emb_ch, ch, config.text_spatial_maps, config.image_size // ds)
            if config.text_spatial_maps
            else None
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(c * mult))]
                ch = int(c * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, upsample=True))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch, swish=True),
            nn.Identity(),
            nn.Conv2d(c * config.channel_mult[0], config.out_channels, 3, padding=1),
        )

    # ------------------------------------------------------------------ text
    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> TextCondition:
        """Run the text transformer.

        tokens: (B, text_ctx) int64 token ids; mask: (B, text_ctx) bool, True for real tokens.
        A sampler encodes the prompt once and passes the result to every step as ``text=``;
        nothing is kept on the model.
        """
        cfg = self.config
        if tokens.ndim != 2 or tokens.shape[1] != cfg.text_ctx:
            raise ValueError(
                f"tokens must have shape (B, {cfg.text_ctx}) (text_ctx), got {tuple(tokens.shape)}; "
                "pad with tokenizer.padded_tokens_and_mask"
            )
        if mask is not None and mask.shape != tokens.shape:
            raise ValueError(
                f"mask must have the shape of tokens {tuple(tokens.shape)}, got {tuple(mask.shape)}"
            )
        x = self.token_embedding(tokens.long()).float() + self.positional_embedding.float()[None]
        if cfg.xf_padding:
            if mask is None:
                raise ValueError("mask is required: this model substitutes padding embeddings")
            x = torch.where(mask[..., None], x, self.padding_embedding.float()[None])
        x = self.transformer(x.to(self.dtype))
        if self.final_ln is not None:
            x = self.final_ln(x)
        xf_proj = self.transformer_proj(x[:, -1].to(self.transformer_proj.weight.dtype)).float()
        return TextCondition(xf_proj=xf_proj, xf_out=x.permute(0, 2, 1))

    # ------------------------------------------------------------------ forward
    def _assemble_input(
        self,
        x: torch.Tensor,
        low_res: torch.Tensor | None,
        inpaint_image: torch.Tensor | None,
        inpaint_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        cfg = self.config
        b, _, h, w = x.shape
        parts = [x]
        if cfg.inpaint:
            if inpaint_image is None:
                inpaint_image = torch.zeros_like(x)
            if inpaint_mask is None:
                inpaint_mask = torch.zeros_like(x[:, :1])
            if inpaint_image.shape != x.shape:
                raise ValueError(
                    f"inpaint_image must have the shape of x {tuple(x.shape)}, "
                    f"got {tuple(inpaint_image.shape)}"
                )
            if inpaint_mask.shape != (b, 1, h, w):
                raise ValueError(
                    f"inpaint_mask must have shape {(b, 1, h, w)} (1 = keep), "
                    f"got {tuple(inpaint_mask.shape)}"
                )
            parts += [inpaint_image * inpaint_mask, inpaint_mask]
        elif inpaint_image is not None or inpaint_mask is not None:
            raise ValueError(
                "inpaint_image/inpaint_mask given to a model that is not an inpainting one"
            )
        if cfg.super_res:
            if low_res is None:
                raise ValueError("low_res is required by a super-resolution model: (B, 3, h, w)")
            if low_res.ndim != 4 or low_res.shape[:2] != (b, 3):
                raise ValueError(
                    f"low_res must have shape ({b}, 3, h, w), got {tuple(low_res.shape)}"
                )
            parts.append(F.interpolate(low_res, (h, w), mode="bilinear", align_corners=False))
        elif low_res is not None:
            raise ValueError("low_res given to a model that is not a super-resolution one")
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        text: TextCondition | None = None,
    ) -> torch.Tensor:
        """x: (B, 3, S, S) noisy image; timesteps: (B,) in [0, 1000) (original process steps).

        tokens/mask: (B, text_ctx); or ``text`` from :meth:`encode_text`. low_res: (B, 3, S/4, S/4)
        in [-1, 1]; inpaint_image: (B, 3, S, S) in [-1, 1]; inpaint_mask: (B, 1, S, S), 1 = known.
        Returns (B, out_channels, S, S) float32.
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"x must have shape (B, 3, S, S), got {tuple(x.shape)}")
        if (cfg.attention_pos_emb or cfg.text_spatial_maps) and x.shape[2] != cfg.image_size:
            raise ValueError(
                f"x must be {cfg.image_size}x{cfg.image_size} for this model (its position "
                f"embeddings or text maps are per pixel), got {tuple(x.shape)}"
            )
        if x.shape[2] % (2 ** (len(cfg.channel_mult) - 1)):
            raise ValueError(
                f"x size {x.shape[2]} must be divisible by {2 ** (len(cfg.channel_mult) - 1)}"
            )
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if timesteps.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}"
            )
        if text is None:
            if tokens is None:
                raise ValueError("pass tokens and mask (or a precomputed text=) to the model")
            text = self.encode_text(tokens, mask)
        if len(text) != x.shape[0]:
            raise ValueError(f"text batch {len(text)} does not match x batch {x.shape[0]}")

        h = self._assemble_input(x, low_res, inpaint_image, inpaint_mask)
        emb = self.time_embed(timestep_embedding(timesteps, cfg.num_channels)) + text.xf_proj
        h = h.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, text)
            skips.append(h)
        if self.text_spatial is not None:
            h = h + self.text_spatial(text.xf_proj).to(h.dtype)
        h = self.middle_block(h, emb, text)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, text)
        return self.out(h.float())

    # ------------------------------------------------------------------ precision
    def convert_to_fp16(self, dtype: torch.dtype = torch.float16) -> GlideUNet:
        """Hold the UNet's convolutions and the text transformer's linears in ``dtype``.

        Norms (GroupNorm/LayerNorm, computed in float32), the timestep MLP, the ResBlocks'
        embedding projections, the positional/padding embeddings and the output head stay in
        float32, as in the released fp16 setup.
        """
        for module in (*self.input_blocks, self.middle_block, *self.output_blocks):
            for sub in module.modules():
                if isinstance(sub, (nn.Conv1d, nn.Conv2d)):
                    sub.to(dtype)
        for sub in self.transformer.modules():
            if isinstance(sub, nn.Linear):
                sub.to(dtype)
        self.transformer_proj.to(dtype)
        self.token_embedding.to(dtype)
        self.dtype = dtype
        return self

    def convert_to_fp32(self) -> GlideUNet:
        self.float()
        self.dtype = torch.float32
        return self


def create_model(config: UNetConfig, device: torch.device | str | None = None) -> GlideUNet:
    """Build a GLIDE UNet for ``config``, initialised, on ``device`` ("meta" allocates nothing)."""
    with torch.device(device or "cpu"):
        model = GlideUNet(config)
    if str(device) != "meta":
        init_weights(model)
    return model


def init_weights(model: GlideUNet) -> None:
    """Initialise for training: normal embeddings (std 0.01 text, as usual for GPT-style models),
    PyTorch defaults for layers, and zeroed output convs so every residual block starts as identity.
    """
    cfg = model.config
    with torch.no_grad():
        nn.init.normal_(model.token_embedding.weight, std=0.02)
        nn.init.normal_(model.positional_embedding, std=0.01)
        if cfg.xf_padding:
            nn.init.normal_(model.padding_embedding, std=0.01)
        for m in model.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.out_layers[3].weight)
                nn.init.zeros_(m.out_layers[3].bias)
            elif isinstance(m, AttentionBlock):
                nn.init.zeros_(m.proj_out.weight)
                nn.init.zeros_(m.proj_out.bias)
                if m.pos_emb is not None:
                    m.pos_emb.copy_(
                        sincos_position_embedding(m.pos_emb.shape[0], m.pos_emb.shape[1])
                    )
        nn.init.zeros_(model.out[2].weight)
        nn.init.zeros_(model.out[2].bias)
