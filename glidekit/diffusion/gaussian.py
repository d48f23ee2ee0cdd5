"""Gaussian diffusion with learned-range variance (Nichol & Dhariwal 2021), as GLIDE uses it.

A :class:`GaussianDiffusion` holds one (possibly respaced) schedule and its closed forms:
forward noising, the posterior q(x_{t-1} | x_t, x_0), and the model's p(x_{t-1} | x_t). Samplers
live in :mod:`glidekit.diffusion.samplers`. Timesteps ``t`` index this (respaced) process; the
model is always called with the original step ``timestep_map[t]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glidekit.diffusion.schedules import named_beta_schedule, respace_betas, space_timesteps

ModelFn = Callable[..., torch.Tensor]
DenoisedFn = Callable[[torch.Tensor], torch.Tensor]


PREDICTIONS = ("eps", "v")


@dataclass
class MeanVariance:
    """p(x_{t-1} | x_t) of one step: all (B, C, H, W) float32."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """A (respaced) Gaussian diffusion process.

    betas: (T,) float64 of the process actually sampled; timestep_map[t] is the original step the
    model saw in training for this process's step t. prediction: what the model's first C output
    channels are: "eps" (the noise, as every released GLIDE model) or "v" (Salimans & Ho 2022:
    v = sqrt(abar) eps - sqrt(1 - abar) x0, which stays well conditioned at the highest noise
    levels, where an eps model must reproduce x_t almost exactly to say anything about x0).
    Everything downstream (guidance, samplers, inpainting) sees eps either way.
    """

    def __init__(
        self, betas: np.ndarray, timestep_map: list[int] | None = None, prediction: str = "eps"
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (
            list(range(self.num_timesteps)) if timestep_map is None else timestep_map
        )
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map must have one entry per beta")

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        arrays = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
            "posterior_variance": post_var,
            # The first posterior variance is 0; use the second so the log is finite.
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            "log_betas": np.log(betas),
        }
        self._np = arrays
        self.alphas_cumprod = abar
        # Cast after the float64 math: gathering then casting equals casting then gathering.
        self._f32 = {k: torch.from_numpy(v).float() for k, v in arrays.items()}
        self._map = torch.tensor(self.timestep_map, dtype=torch.long)

    @classmethod
    def from_config(
        cls,
        noise_schedule: str = "squaredcos_cap_v2",
        steps: int = 1000,
        timestep_respacing: str = "",
        prediction: str = "eps",
    ) -> GaussianDiffusion:
        """The ``steps``-step ``noise_schedule`` process, respaced by ``timestep_respacing``."""
        base = named_beta_schedule(noise_schedule, steps)
        use = space_timesteps(steps, timestep_respacing, base)
        if len(use) == steps:
            return cls(base, prediction=prediction)
        return cls(respace_betas(base, use), use, prediction=prediction)

    def respaced(self, timestep_respacing: str) -> GaussianDiffusion:
        """This process (which must be unspaced) sampled with fewer steps."""
        if self.timestep_map != list(range(self.num_timesteps)):
            raise ValueError("respaced() needs the original, unspaced process")
        use = space_timesteps(self.num_timesteps, timestep_respacing, self.betas)
        return GaussianDiffusion(respace_betas(self.betas, use), use, prediction=self.prediction)

    # ------------------------------------------------------------------ helpers
    def coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gather schedule array ``name`` at t (B,) and shape it to broadcast against x."""
        arr = self._f32[name].to(t.device)[t]
        return arr.to(x.device).view(-1, *([1] * (x.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-process steps for this process's steps t: what the model and cond_fn see."""
        return self._map.to(t.device)[t]

    def check_t(self, t: torch.Tensor, batch: int) -> None:
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        if t.min() < 0 or t.max() >= self.num_timesteps:
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got {t.tolist()}")

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Noise x_start (B, C, H, W) in [-1, 1] to step t: sqrt(abar) x0 + sqrt(1 - abar) noise."""
        self.check_t(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(
                f"noise must have shape {tuple(x_start.shape)}, got {tuple(noise.shape)}"
            )
        return (
            self.coef("sqrt_alphas_cumprod", t, x_start) * x_start
            + self.coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self.coef("posterior_mean_coef1", t, x_t) * x_start
            + self.coef("posterior_mean_coef2", t, x_t) * x_t
        )
        return (
            mean,
            self.coef("posterior_variance", t, x_t),
            self.coef("posterior_log_variance_clipped", t, x_t),
        )

    def predict_xstart_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return (
            self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        return (self.coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self.coef(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # ------------------------------------------------------------------ reverse process
    def split_model_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps, variance, log_variance) from a model output (B, 2C or C, H, W).

        With 2C channels the second half r sets the learned-range variance:
        log_var = frac * log(beta_t) + (1 - frac) * log(posterior variance), frac = (r + 1) / 2
        (r is not clamped). With C channels the variance is the fixed posterior one. The first C
        channels are eps, or v for a v-prediction process (converted:
        eps = sqrt(abar) v + sqrt(1 - abar) x_t).
        """
        c = x_t.shape[1]
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"model output {tuple(model_output.shape)} does not match x_t {tuple(x_t.shape)}"
            )
        min_log = self.coef("posterior_log_variance_clipped", t, x_t)
        if model_output.shape[1] == 2 * c:
            eps, v = model_output[:, :c], model_output[:, c:]
            frac = (v + 1) / 2
            log_var = frac * self.coef("log_betas", t, x_t) + (1 - frac) * min_log
        elif model_output.shape[1] == c:
            eps = model_output
            log_var = min_log.expand_as(x_t)
        else:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; expected {c} or {2 * c}"
            )
        if self.prediction == "v":
            eps = (
                self.coef("sqrt_alphas_cumprod", t, x_t) * eps
                + self.coef("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            )
        return eps, torch.exp(log_var), log_var

    def training_target(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """What the model's first C channels should output for x_t = q_sample(x_start, t, noise):
        the noise (eps prediction) or v = sqrt(abar) noise - sqrt(1 - abar) x_start."""
        if self.prediction == "eps":
            return noise
        return (
            self.coef("sqrt_alphas_cumprod", t, x_start) * noise
            - self.coef("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start
        )

    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> MeanVariance:
        """Run the model at x_t (B, C, H, W) and step t (B,) -> p(x_{t-1} | x_t).

        pred_xstart = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (v models: sqrt(abar) x_t -
        sqrt(1 - abar) v), then ``denoised_fn`` (e.g.
        inpainting's known-region replacement), then clamped to [-1, 1] if ``clip_denoised``.
        """
        self.check_t(t, x.shape[0])
        model_output = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        eps, variance, log_variance = self.split_model_output(model_output, x, t)
        if self.prediction == "v":  # x0 straight from v: through eps it loses digits at high t
            pred_xstart = (
                self.coef("sqrt_alphas_cumprod", t, x) * x
                - self.coef("sqrt_one_minus_alphas_cumprod", t, x) * model_output[:, : x.shape[1]]
            )
        else:
            pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_xstart, x, t)
        return MeanVariance(mean, variance, log_variance, pred_xstart, eps)
