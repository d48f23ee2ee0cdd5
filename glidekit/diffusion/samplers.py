"""Samplers: one step functions and loops over a :class:`GaussianDiffusion`.

Each step is a small function of (diffusion, model, x, t); loops are generators that yield every
step so callers can show progress, preview, or stop early. Guidance plugs in through:

* ``cond_fn(x, t_model, **model_kwargs) -> grad`` (same shape as x, the gradient of a log
  probability): added to the mean scaled by the variance in ancestral sampling ("mean form"), used
  as a score correction of eps in DDIM ("score form");
* ``denoised_fn(pred_xstart) -> pred_xstart``, applied before clamping (inpainting).

Random numbers: each step draws exactly one ``randn`` of x's shape after the model call (also at
t = 0 and with eta = 0), from ``generator`` or else the global RNG, so a seed gives the same
image as the official implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from glidekit.diffusion.gaussian import DenoisedFn, GaussianDiffusion, MeanVariance, ModelFn

CondFn = Callable[..., torch.Tensor]


@dataclass
class StepOutput:
    """One sampler step: x_{t-1} and the model's x_0 estimate, both (B, C, H, W)."""

    t: int
    sample: torch.Tensor
    pred_xstart: torch.Tensor


def _progress(indices: list[int], show: bool, desc: str) -> Iterable[int]:
    # No tqdm object at all unless shown: even a disabled bar starts tqdm's monitor thread.
    return tqdm(indices, desc=desc, leave=False) if show else indices


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _nonzero(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (t != 0).float().view(-1, *([1] * (x.ndim - 1)))


def _call_cond_fn(
    diffusion: GaussianDiffusion,
    cond_fn: CondFn,
    x: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict[str, Any],
) -> torch.Tensor:
    # Gradients are needed inside cond_fn even when the loop runs under no_grad.
    with torch.enable_grad():
        grad = cond_fn(x.detach(), diffusion.model_timesteps(t), **model_kwargs)
    if not isinstance(grad, torch.Tensor) or grad.shape != x.shape:
        raise ValueError(
            f"cond_fn must return a tensor of x's shape {tuple(x.shape)}, "
            f"got {getattr(grad, 'shape', type(grad).__name__)}"
        )
    return grad.detach()


def condition_mean(
    diffusion: GaussianDiffusion,
    cond_fn: CondFn,
    out: MeanVariance,
    x: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict[str, Any],
) -> torch.Tensor:
    """Mean form of guidance (Dhariwal & Nichol 2021): mean + variance * grad log p(y | x_t)."""
    grad = _call_cond_fn(diffusion, cond_fn, x, t, model_kwargs)
    return out.mean.float() + out.variance * grad.float()


def condition_score(
    diffusion: GaussianDiffusion,
    cond_fn: CondFn,
    out: MeanVariance,
    x: torch.Tensor,
    t: torch.Tensor,
    model_kwargs: dict[str, Any],
) -> MeanVariance:
    """Score form of guidance: eps' = eps - sqrt(1 - abar) * grad; x_0 and the mean follow eps'."""
    grad = _call_cond_fn(diffusion, cond_fn, x, t, model_kwargs)
    eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
    eps = eps - diffusion.coef("sqrt_one_minus_alphas_cumprod", t, x) * grad
    pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps)
    mean, _, _ = diffusion.q_posterior(pred_xstart, x, t)
    return MeanVariance(mean, out.variance, out.log_variance, pred_xstart, eps)


def p_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t). x: (B, C, H, W); t: (B,)."""
    model_kwargs = model_kwargs or {}
    out = diffusion.p_mean_variance(
        model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
    )
    noise = _randn(x, generator)
    mean = out.mean
    if cond_fn is not None:
        mean = condition_mean(diffusion, cond_fn, out, x, t, model_kwargs)
    sample = mean + _nonzero(t, x) * torch.exp(0.5 * out.log_variance) * noise
    return StepOutput(int(t[0]), sample, out.pred_xstart)


def ddim_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DDIM step (Song et al. 2021); eta=0 is deterministic, eta=1 matches ancestral noise."""
    model_kwargs = model_kwargs or {}
    out = diffusion.p_mean_variance(
        model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
    )
    noise = _randn(x, generator)
    if cond_fn is not None:
        out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
    eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
    abar = diffusion.coef("alphas_cumprod", t, x)
    abar_prev = diffusion.coef("alphas_cumprod_prev", t, x)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
    mean_pred = out.pred_xstart * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
    sample = mean_pred + _nonzero(t, x) * sigma * noise
    return StepOutput(int(t[0]), sample, out.pred_xstart)


def validate_eta(eta: float) -> float:
    if not isinstance(eta, (int, float)) or not (0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    return float(eta)


SAMPLERS = ("ancestral", "ddim", "dpm++2m")


def dpmpp_2m_progressive(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    indices: list[int],
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> Iterator[StepOutput]:
    """DPM-Solver++(2M) (Lu et al. 2022), the data-prediction multistep solver, deterministic.

    Each step predicts x_0 (after ``denoised_fn`` and the [-1, 1] clamp guided pixel models need),
    then moves x from step s to the next step n in log-SNR lambda = log(alpha / sigma):
    x_n = (sigma_n / sigma_s) x_s - alpha_n (e^{-h} - 1) D, h = lambda_n - lambda_s, with D the
    x_0 estimate, extrapolated with the previous one from the second step on. At the last index
    (normally 0) it returns the x_0 estimate. One model call per index. Only eps is used: the
    learned variance channels are ignored.
    """
    model_kwargs = model_kwargs or {}
    abar = diffusion.alphas_cumprod
    n_steps = len(indices)
    prev_x0: torch.Tensor | None = None
    prev_h: float | None = None
    for k, s in enumerate(_progress(indices, progress, "dpm++2m")):
        t = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = diffusion.p_mean_variance(
                model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                model_kwargs=model_kwargs,
            )  # fmt: skip
        if cond_fn is not None:
            out = condition_score(diffusion, cond_fn, out, x, t, model_kwargs)
            # The guided x_0 goes through the same processing as the model's own (unlike the
            # official DDIM score form), so inpainting's known region survives CLIP guidance.
            if denoised_fn is not None:
                out.pred_xstart = denoised_fn(out.pred_xstart)
            if clip_denoised:
                out.pred_xstart = out.pred_xstart.clamp(-1, 1)
        x0 = out.pred_xstart
        if k == n_steps - 1:
            yield StepOutput(s, x0, x0)
            return
        n = indices[k + 1]
        alpha_s, sigma_s = math.sqrt(abar[s]), math.sqrt(1.0 - abar[s])
        alpha_n, sigma_n = math.sqrt(abar[n]), math.sqrt(1.0 - abar[n])
        h = math.log(alpha_n / sigma_n) - math.log(alpha_s / sigma_s)
        # Second order from the second step on. The step into the last index stays first
        # order: near t = 0 the log-SNR steps grow fast, so the previous estimate is far back
        # (r = h_prev / h small) and extrapolating from it overshoots.
        use_first_order = prev_x0 is None or k == n_steps - 2
        if use_first_order:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (sigma_n / sigma_s) * x - alpha_n * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
        yield StepOutput(s, x, x0)


def sample_progressive(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    *,
    sampler: str = "ancestral",
    noise: torch.Tensor | None = None,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    start_index: int | None = None,
) -> Iterator[StepOutput]:
    """Run the reverse process, yielding every step (t = start_index, ..., 0).

    sampler: "ancestral" (the official p_sample loop), "ddim" (with ``eta``) or "dpm++2m"
    (DPM-Solver++(2M), deterministic; good with few steps). The steps are the diffusion's own
    (respace it for fewer: "100", "ddim50", "karras25", ...).
    shape: (B, C, H, W); noise: x at the first step, of that shape (else drawn from
    ``generator``/the global RNG). start_index: the first step (default the last, T-1); with a
    partly noised image as ``noise`` this is SDEdit. The last yielded ``sample`` is the result,
    nominally in [-1, 1].
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler == "ddim":
        eta = validate_eta(eta)
    shape = tuple(shape)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = noise.to(device) if device is not None else noise
    else:
        if device is None:
            device = "cpu"
        x = torch.randn(shape, generator=generator, device=device)
    first = diffusion.num_timesteps - 1 if start_index is None else start_index
    if not isinstance(first, int) or not 0 <= first < diffusion.num_timesteps:
        raise ValueError(
            f"start_index must be an int in [0, {diffusion.num_timesteps}), got {start_index!r}"
        )
    indices = list(range(first, -1, -1))
    common = dict(
        clip_denoised=clip_denoised,
        denoised_fn=denoised_fn,
        cond_fn=cond_fn,
        model_kwargs=model_kwargs,
    )
    if sampler == "dpm++2m":
        yield from dpmpp_2m_progressive(diffusion, model, x, indices, progress=progress, **common)
        return
    step_fn: Callable[..., StepOutput] = p_sample if sampler == "ancestral" else ddim_sample
    extra: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
    for i in _progress(indices, progress, sampler):
        t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = step_fn(diffusion, model, x, t, generator=generator, **common, **extra)
        yield out
        x = out.sample


def sample(
    diffusion: GaussianDiffusion, model: ModelFn, shape: tuple[int, ...], **kwargs: Any
) -> torch.Tensor:
    """Run :func:`sample_progressive` to the end and return x_0: (B, C, H, W)."""
    *_, final = sample_progressive(diffusion, model, shape, **kwargs)
    return final.sample
