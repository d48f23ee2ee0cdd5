"""Guidance: classifier-free guidance, CLIP guidance, and inpainting's known-region replacement.

Each wraps a model, makes a ``cond_fn`` or a ``denoised_fn``, so the samplers stay unaware of
them: :class:`ClassifierFreeGuidance` is a model, :class:`ClipGuidance` (made by
:func:`clip_cond_fn`) a ``cond_fn``, :func:`known_region_replacer` a ``denoised_fn``.

Layer: below ``glidekit.pipelines``, beside ``glidekit.checkpoints``; imports ``glidekit.clip``
(the noise-aware CLIP) and the layers below it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from glidekit.clip.model import NoisedCLIP
from glidekit.nn import TextCondition

ModelFn = Callable[..., torch.Tensor]
#: ``cond_fn(x, t, **model_kwargs) -> grad``: see :mod:`glidekit.diffusion.samplers`.
CondFn = Callable[..., torch.Tensor]


def check_guidance_scale(guidance_scale: float, name: str = "guidance_scale") -> float:
    """``guidance_scale`` as a finite float (a real number or a one-element tensor).

    Raises TypeError / ValueError whose message starts with ``name``.
    """
    if isinstance(guidance_scale, torch.Tensor) and guidance_scale.numel() == 1:
        guidance_scale = guidance_scale.item()
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(guidance_scale).__name__}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"{name} must be finite, got {guidance_scale}; pass e.g. {name}=3.0")
    return float(guidance_scale)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2021) over a batch of [conditional; unconditional].

    The batch holds B conditional rows followed by B unconditional (empty-caption) rows; the model
    kwargs (tokens, mask, ...) are laid out the same way. Each call runs the model once on the
    first half of x duplicated, mixes eps = eps_u + s * (eps_c - eps_u) on the first
    ``eps_channels`` channels, and returns [eps, eps] with each row's own variance channels, so
    both halves follow the same guided trajectory.

    ``interval=(lo, hi)``: guide only the steps whose timestep t (the model's, in [0,
    ``num_timesteps``)) has lo <= t / num_timesteps <= hi (Kynkaanniemi et al. 2024, "Applying
    Guidance in a Limited Interval"); outside it the model runs on the conditional half alone
    (half the batch) and both halves follow its prediction.
    """

    def __init__(self, model: ModelFn, guidance_scale: float, eps_channels: int = 3,
                 interval: tuple[float, float] | None = None,
                 num_timesteps: int = 1000) -> None:  # fmt: skip
        self.model = model
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.eps_channels = eps_channels
        self.interval = interval
        self.num_timesteps = num_timesteps
        self._halves: dict[int, Any] = {}  # id(kwarg) -> its conditional half, made once

    def guided(self, ts: torch.Tensor) -> bool:
        """Whether the step at timesteps ``ts`` (B,) is inside the guidance interval."""
        if self.interval is None:
            return True
        lo, hi = self.interval
        return lo <= float(ts.reshape(-1)[0]) / self.num_timesteps <= hi

    def _half(self, value: Any, n: int) -> Any:
        """The conditional rows of a model input (tensors and the encoded text), cached: the
        text's keys/values are then computed once for the unguided steps too."""
        key = id(value)
        if key not in self._halves:
            if isinstance(value, torch.Tensor) and value.shape[:1] == (2 * n,):
                self._halves[key] = value[:n]
            elif isinstance(value, TextCondition):
                self._halves[key] = TextCondition(value.xf_proj[:n], value.xf_out[:n])
            else:
                self._halves[key] = value
        return self._halves[key]

    def __call__(self, x_t: torch.Tensor, ts: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if x_t.shape[0] % 2:
            raise ValueError(
                f"classifier-free guidance needs an even batch [cond; uncond], got {x_t.shape[0]} rows"
            )
        if not self.guided(ts):
            n = len(x_t) // 2
            half_kwargs = {k: self._half(v, n) for k, v in kwargs.items()}
            out = self.model(x_t[:n], ts[:n], **half_kwargs)
            return torch.cat([out, out], dim=0)
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


def _usable(t: torch.Tensor) -> torch.Tensor:
    """A tensor autograd may save: inference-mode tensors are cloned into ordinary ones (and
    anything else is passed on for the CLIP's input checks to name)."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


class ClipGuidance:
    """CLIP guidance (Nichol et al. 2021) for a sampler's ``cond_fn``.

    ``ClipGuidance(clip, prompts, grad_scale)(x, t, **model_kwargs) -> grad``, with ``x``
    (N, 3, S, S) in [-1, 1] (x_t), ``t`` (N,) int64 ORIGINAL (unspaced) timesteps, and ``grad``
    of x's shape and dtype: ``grad_scale * d/dx [exp(logit_scale) * sum(z_text * z_image(x,
    t))]``. Model kwargs are accepted and ignored. Samplers add it as ``mean + variance * grad``
    (ancestral) or use it as a score (DDIM: ``eps - sqrt(1 - abar) * grad``).

    The B text embeddings are computed once, here. ``N`` must be a multiple of B: the text
    embeddings are tiled, so row ``i`` of ``x`` is guided towards prompt ``i % B``. This fits
    the classifier-free-guidance batch ``[conditional rows; unconditional rows]`` (N = 2B, both
    halves in prompt order); the plain case is N = B.

    ``prompts``: B strings (or a token tensor, see :meth:`NoisedCLIP.text_embeddings`);
    ``grad_scale``: a finite real number.
    """

    def __init__(
        self, clip: NoisedCLIP, prompts: Sequence[str] | torch.Tensor, grad_scale: float
    ) -> None:
        self.clip = clip
        self.grad_scale = check_guidance_scale(grad_scale, "grad_scale")
        with torch.no_grad():
            self.z_text = clip.text_embeddings(prompts).detach()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        n_text = self.z_text.shape[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 4 and x.shape[0] % n_text:
            raise ValueError(
                f"x: {x.shape[0]} rows is not a multiple of the {n_text} prompt(s) given "
                "to cond_fn; pass B or k*B rows (e.g. [conditional; unconditional] under "
                "classifier-free guidance)"
            )
        # Under inference_mode (a pipeline's) autograd needs ordinary tensors and grad on.
        with torch.inference_mode(False), torch.enable_grad():
            x_in = _usable(x.detach()).requires_grad_(True)
            z_i = self.clip.image_embeddings(x_in, _usable(t), names=("x", "t"))
            z_t = _usable(self.z_text).to(z_i.device, z_i.dtype)
            if x.shape[0] != n_text:
                z_t = z_t.repeat(x.shape[0] // n_text, 1)
            logit_scale = _usable(self.clip.logit_scale).to(z_i.device)
            loss = torch.exp(logit_scale) * (z_t * z_i).sum()
            (grad,) = torch.autograd.grad(loss, x_in)
        return grad * self.grad_scale


def clip_cond_fn(
    clip: NoisedCLIP, prompts: Sequence[str] | torch.Tensor, grad_scale: float
) -> ClipGuidance:
    """CLIP guidance towards ``prompts`` at ``grad_scale``, as a sampler's ``cond_fn``
    (:class:`ClipGuidance`; the text embeddings are computed here, once)."""
    return ClipGuidance(clip, prompts, grad_scale)
