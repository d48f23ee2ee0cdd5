"""Configuration of GLIDE's noise-aware CLIP (the released ``clip/config.yaml``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of the noised CLIP image and text encoders; defaults = the released model.

    Widths: the image transformer is ``n_head_image * n_head_state_image`` wide (768), the text
    transformer ``n_head_text * n_head_state_text`` (512); both project to ``n_embd`` (512).
    ``n_timesteps`` is the number of rows of the image encoder's timestep-token table
    (it sees the original, unspaced diffusion timestep). ``logit_scale`` is the multiplier itself
    (100); the model stores ``log(logit_scale)``.
    """

    logit_scale: float = 100.0
    beta_schedule: str = "squaredcos_cap_v2"
    n_timesteps: int = 1000
    image_size: int = 64
    patch_size: int = 4
    n_vocab: int = 65536
    max_text_len: int = 77
    n_embd: int = 512
    n_head_state_text: int = 64
    n_head_text: int = 8
    n_xf_blocks_text: int = 12
    n_head_state_image: int = 64
    n_head_image: int = 12
    n_xf_blocks_image: int = 12

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name in ("logit_scale", "beta_schedule"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")
        if isinstance(self.logit_scale, bool) or not isinstance(self.logit_scale, (int, float)):
            raise TypeError(f"logit_scale must be a number, got {type(self.logit_scale).__name__}")
        if not math.isfinite(self.logit_scale) or self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be finite and > 0, got {self.logit_scale!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )

    @property
    def n_state_image(self) -> int:
        """Width of the image transformer (768 for the released model)."""
        return self.n_head_image * self.n_head_state_image

    @property
    def n_state_text(self) -> int:
        """Width of the text transformer (512 for the released model)."""
        return self.n_head_text * self.n_head_state_text

    @property
    def n_patches(self) -> int:
        """Number of image patch tokens ((image_size / patch_size) ** 2)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the config.yaml keys."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """Build from a config.yaml-style mapping; unknown keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"d must be a mapping of config keys, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"unknown CLIP config keys: {unknown}; expected a subset of {sorted(names)}"
            )
        values = dict(d)
        if "logit_scale" in values and isinstance(values["logit_scale"], int):
            values["logit_scale"] = float(values["logit_scale"])
        return cls(**values)

    def replace(self, **changes: Any) -> CLIPConfig:
        return dataclasses.replace(self, **changes)


__all__ = ["BETA_SCHEDULES", "CLIPConfig"]
