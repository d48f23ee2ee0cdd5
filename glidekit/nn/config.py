"""Model configs: one dataclass per model kind, with the official defaults.

The four diffusion UNets share one architecture; what differs is the input channels and the
extra conditioning inputs. ``Text2ImConfig()`` and ``SuperResConfig()`` are exactly the
released base and upsampler; the inpainting configs only add input channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

DEFAULT_CHANNEL_MULT: dict[int, tuple[int, ...]] = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a text-conditioned ADM UNet (the fields of the official options).

    ``channel_mult=()`` picks the official default for ``image_size``; ``num_head_channels=-1``
    uses ``num_heads`` fixed heads instead of fixed head width.

    ``attention_pos_emb`` is glidekit's one addition, off in every released model: a learned
    absolute position embedding (starting as a 2D sine-cosine table) added to the image tokens
    of each attention block. GLIDE's attention has none, so the UNet only knows where a pixel is
    from the convolutions' zero padding; it is meant for teaching small models where the caption
    puts things ("in the top left"), which the shapes-world base has not learnt without it
    (nor, in short trials, with it yet: see benchmarks/RESULTS.md).

    ``text_spatial_maps`` (experimental, 0 = off, as in every released model): the pooled text
    adds a picture of *where* to the features entering the middle block, as coefficients of that
    many fixed low-frequency 2D cosine maps per channel (:class:`~glidekit.nn.unet.
    TextSpatialBias`, zero-initialised, so a model starts as without it). GLIDE's pooled text
    reaches the UNet only as a per-channel scale and shift, which cannot say "top left" unless
    the UNet has learnt a channel for each place; this route can from its first step.
    """

    kind: ClassVar[str] = "text2im"
    super_res: ClassVar[bool] = False
    inpaint: ClassVar[bool] = False

    image_size: int = 64
    num_channels: int = 192
    num_res_blocks: int = 3
    channel_mult: tuple[int, ...] = ()
    num_heads: int = 1
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.1
    text_ctx: int = 128
    xf_width: int = 512
    xf_layers: int = 16
    xf_heads: int = 8
    xf_final_ln: bool = True
    xf_padding: bool = True
    n_vocab: int = 50257
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    learn_sigma: bool = True
    attention_pos_emb: bool = False
    text_spatial_maps: int = 0

    def __post_init__(self) -> None:
        mult = tuple(int(m) for m in self.channel_mult)
        if not mult:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"channel_mult: no default for image_size={self.image_size}; "
                    f"pass channel_mult explicitly (defaults exist for {sorted(DEFAULT_CHANNEL_MULT)})"
                )
            mult = DEFAULT_CHANNEL_MULT[self.image_size]
        object.__setattr__(self, "channel_mult", mult)
        object.__setattr__(
            self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions)
        )
        for name in ("image_size", "num_channels", "num_res_blocks", "text_ctx", "n_vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_head_channels == -1 and self.num_heads <= 0:
            raise ValueError("num_heads must be positive when num_head_channels == -1")
        if self.num_head_channels != -1 and self.num_head_channels <= 0:
            raise ValueError("num_head_channels must be positive, or -1 to use num_heads")
        if self.xf_width <= 0 or self.xf_width % self.xf_heads:
            raise ValueError(
                f"xf_width ({self.xf_width}) must be positive and divisible by xf_heads "
                f"({self.xf_heads})"
            )
        for res in self.attention_resolutions:
            if res <= 0 or self.image_size % res:
                raise ValueError(
                    f"attention_resolutions: {res} does not divide image_size {self.image_size}"
                )
        if self.num_channels % 32:
            raise ValueError(
                f"num_channels must be a multiple of 32 (GroupNorm(32)), got {self.num_channels}"
            )

    @property
    def in_channels(self) -> int:
        """Channels the first conv sees: x, then [masked image, mask], then the upsampled low-res."""
        return 3 + (4 if self.inpaint else 0) + (3 if self.super_res else 0)

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample rates (image_size // resolution) at which attention blocks sit."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Text2ImConfig(UNetConfig):
    """The released 64x64 base model (``base.pt``)."""


@dataclass(frozen=True)
class InpaintConfig(UNetConfig):
    """The released 64x64 inpainting base (``base_inpaint.pt``): +4 input channels."""

    kind: ClassVar[str] = "inpaint"
    inpaint: ClassVar[bool] = True


@dataclass(frozen=True)
class SuperResConfig(UNetConfig):
    """The released 64->256 upsampler (``upsample.pt``)."""

    kind: ClassVar[str] = "super_res"
    super_res: ClassVar[bool] = True

    image_size: int = 256
    num_res_blocks: int = 2


@dataclass(frozen=True)
class SuperResInpaintConfig(SuperResConfig):
    """The released 64->256 inpainting upsampler (``upsample_inpaint.pt``)."""

    kind: ClassVar[str] = "super_res_inpaint"
    inpaint: ClassVar[bool] = True


CONFIG_CLASSES: dict[str, type[UNetConfig]] = {
    cls.kind: cls for cls in (Text2ImConfig, InpaintConfig, SuperResConfig, SuperResInpaintConfig)
}


# The released checkpoints' configs, by their glidekit names.
RELEASED_CONFIGS: dict[str, UNetConfig] = {
    "base": Text2ImConfig(),
    "upsample": SuperResConfig(),
    "base-inpaint": InpaintConfig(),
    "upsample-inpaint": SuperResInpaintConfig(),
}


def config_from_dict(d: dict[str, Any]) -> UNetConfig:
    """Inverse of ``UNetConfig.to_dict`` (unknown keys are an error, naming them)."""
    d = dict(d)
    kind = d.pop("kind", "text2im")
    if kind not in CONFIG_CLASSES:
        raise ValueError(
            f"kind: unknown model kind {kind!r}; expected one of {list(CONFIG_CLASSES)}"
        )
    cls = CONFIG_CLASSES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config keys for {kind}: {unknown}")
    for key in ("channel_mult", "attention_resolutions"):
        if key in d:
            d[key] = tuple(d[key])
    return cls(**d)


__all__ = [
    "CONFIG_CLASSES",
    "InpaintConfig",
    "RELEASED_CONFIGS",
    "SuperResConfig",
    "SuperResInpaintConfig",
    "Text2ImConfig",
    "UNetConfig",
    "config_from_dict",
]
