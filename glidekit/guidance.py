"""Guidance: classifier-free guidance and inpainting's known-region replacement.

Both wrap a model or a denoiser so the samplers stay unaware of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

ModelFn = Callable[..., torch.Tensor]


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(guidance_scale).__name__}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"{name} must be finite, got {guidance_scale}")
    return float(guidance_scale)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2021) over a batch of [conditional; unconditional].

    The batch holds B conditional rows followed by B unconditional (empty-caption) rows; the model
    kwargs (tokens, mask, ...) are laid out the same way. Each call runs the model once on the
    first half of x duplicated, mixes eps = eps_u + s * (eps_c - eps_u) on the first
    ``eps_channels`` channels, and returns [eps, eps] with each row's own variance channels, so
    both halves follow the same guided trajectory.
    """

    def __init__(self, model: ModelFn, guidance_scale: float, eps_channels: int = 3) -> None:
        self.model = model
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.eps_channels = eps_channels

    def __call__(self, x_t: torch.Tensor, ts: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if x_t.shape[0] % 2:
            raise ValueError(
                f"classifier-free guidance needs an even batch [cond; uncond], got {x_t.shape[0]} rows"
            )
        half = x_t[: len(x_t) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.model(combined, ts, **kwargs)
        eps, rest = model_out[:, : self.eps_channels], model_out[:, self.eps_channels :]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + self.guidance_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


def known_region_replacer(
    inpaint_image: torch.Tensor, inpaint_mask: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Inpainting's denoised_fn: keep the source where mask = 1 in each predicted x_0.

    inpaint_image: (B, 3, H, W) in [-1, 1]; inpaint_mask: (B, 1, H, W) in {0, 1}, 1 = known.
    """
    if inpaint_mask.ndim != 4 or inpaint_mask.shape[1] != 1:
        raise ValueError(
            f"inpaint_mask must have shape (B, 1, H, W), got {tuple(inpaint_mask.shape)}"
        )
    if (
        inpaint_image.shape[0] != inpaint_mask.shape[0]
        or inpaint_image.shape[2:] != inpaint_mask.shape[2:]
    ):
        raise ValueError(
            f"inpaint_image {tuple(inpaint_image.shape)} and inpaint_mask "
            f"{tuple(inpaint_mask.shape)} must agree on batch and size"
        )

    def denoised_fn(x_start: torch.Tensor) -> torch.Tensor:
        return x_start * (1 - inpaint_mask) + inpaint_image * inpaint_mask

    return denoised_fn
