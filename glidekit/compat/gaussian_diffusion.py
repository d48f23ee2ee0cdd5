"""``glide_text2im.gaussian_diffusion``: beta schedules and the diffusion with the official API.

:class:`GaussianDiffusion` takes ``betas=`` and offers the official methods and their return
values (dicts with ``"sample"``/``"pred_xstart"``, ``"mean"``/``"variance"``/...); the numbers
come from glidekit's process (:class:`glidekit.diffusion.GaussianDiffusion`, held as
:attr:`GaussianDiffusion.process`) and its samplers (:mod:`glidekit.diffusion.samplers`), so
they are the official numbers. The schedule arrays (``alphas_cumprod``, ``posterior_variance``,
...) are float64 numpy arrays as officially.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from glidekit.diffusion import GaussianDiffusion as _Process
from glidekit.diffusion import MeanVariance, named_beta_schedule
from glidekit.diffusion.samplers import (
    SAMPLERS,
    SamplingRun,
    condition_mean,
    condition_score,
    sample_progressive,
    take_step,
)
from glidekit.diffusion.schedules import SCHEDULES

ModelFn = Callable[..., Any]


# ------------------------------------------------------------------------------- schedules


def _warmup(beta_start: float, beta_end: float, steps: int, fraction: float) -> np.ndarray:
    betas = np.full(steps, beta_end, dtype=np.float64)
    warm = int(steps * fraction)
    betas[:warm] = np.linspace(beta_start, beta_end, warm, dtype=np.float64)
    return betas


_BETA_SCHEDULES: dict[str, Callable[[float, float, int], np.ndarray]] = {
    "quad": lambda a, b, n: np.linspace(a**0.5, b**0.5, n, dtype=np.float64) ** 2,
    "linear": lambda a, b, n: np.linspace(a, b, n, dtype=np.float64),
    "warmup10": lambda a, b, n: _warmup(a, b, n, 0.1),
    "warmup50": lambda a, b, n: _warmup(a, b, n, 0.5),
    "const": lambda a, b, n: np.full(n, b, dtype=np.float64),
    # 1/T, 1/(T-1), ..., 1
    "jsd": lambda a, b, n: 1.0 / np.linspace(n, 1, n, dtype=np.float64),
}


def get_beta_schedule(
    beta_schedule: str, *, beta_start: float, beta_end: float, num_diffusion_timesteps: int
) -> np.ndarray:
    """(num_diffusion_timesteps,) float64 betas of the older named schedules: "quad",
    "linear", "warmup10", "warmup50", "const", "jsd". Raises NotImplementedError for others."""
    if beta_schedule not in _BETA_SCHEDULES:
        raise NotImplementedError(beta_schedule)
    return _BETA_SCHEDULES[beta_schedule](beta_start, beta_end, num_diffusion_timesteps)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """(num_diffusion_timesteps,) float64 betas of ``"linear"`` or ``"squaredcos_cap_v2"``
    (:func:`glidekit.diffusion.named_beta_schedule`). Raises NotImplementedError for others."""
    if schedule_name not in SCHEDULES:
        raise NotImplementedError(f"unknown beta schedule: {schedule_name}")
    return named_beta_schedule(schedule_name, num_diffusion_timesteps)


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas discretising ``alpha_bar`` (t in [0, 1] -> the cumulative product of 1 - beta):
    beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)."""
    n = num_diffusion_timesteps
    return np.array(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    )


# ------------------------------------------------------------------------------- helpers


def _gather(arr: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``arr[t]`` as float32, broadcast to x's full shape (as the official helpers return)."""
    values = torch.from_numpy(arr).to(t.device)[t].float()
    return values.view(-1, *([1] * (x.ndim - 1))) + torch.zeros(x.shape, device=t.device)


class _Outputs:
    """A model callable that returns its output tensor, keeping what a model returning
    ``(output, extra)`` gave as ``extra`` (the official ``p_mean_variance`` reports it)."""

    def __init__(self, model: ModelFn) -> None:
        self.model = model
        self.extra: Any = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = self.model(x, t, **kwargs)
        if isinstance(out, tuple):
            out, self.extra = out
        return out


def _default_device(model: Any, noise: torch.Tensor | None) -> torch.device:
    # Officially the model's parameters' device; a plain function (a guidance wrapper) has
    # none, so the noise's device, else the CPU.
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return noise.device if noise is not None else torch.device("cpu")


# ------------------------------------------------------------------------------- the diffusion


class GaussianDiffusion:
    """The diffusion process over ``betas`` (a 1-D array, values in (0, 1], from T to 1), with
    the official sampling and closed-form methods.

    Tensors: x (B, C, H, W), t (B,) int64 steps of this process. Models are called
    ``model(x, t, **model_kwargs)`` and must return (B, 2C, H, W): eps and the learned-range
    variance values (or a tuple (output, extra)). ``cond_fn(x, t, **model_kwargs)`` returns the
    gradient of a log probability, of x's shape. :attr:`process` is the glidekit process (for
    :mod:`glidekit.diffusion`'s samplers).
    """

    def __init__(self, *, betas: Sequence[float] | np.ndarray) -> None:
        self._attach(_Process(np.array(betas, dtype=np.float64)))

    def _attach(self, process: _Process) -> None:
        """Take ``process``'s schedule, and its arrays under the official names."""
        self.process = process
        self.betas = process.betas
        self.num_timesteps = process.num_timesteps
        abar = process.alphas_cumprod
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.alphas_cumprod_next = np.append(abar[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1)
        self.posterior_variance = self.betas * (1.0 - abar_prev) / (1.0 - abar)
        # The first posterior variance is 0: its log uses the second one.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = self.betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - self.betas) / (1.0 - abar)

    # --------------------------------------------------------------------- closed forms
    def q_mean_variance(
        self, x_start: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0), each of x_start's shape."""
        mean = _gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = _gather(1.0 - self.alphas_cumprod, t, x_start)
        return mean, variance, _gather(self.log_one_minus_alphas_cumprod, t, x_start)

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_start noised to step t (noise drawn with ``torch.randn_like`` if not given)."""
        return self.process.q_sample(x_start, t, noise)

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0), each of x_t's
        shape."""
        if x_start.shape != x_t.shape:
            raise ValueError(
                f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} must match"
            )
        mean, _, _ = self.process.q_posterior(x_start, x_t, t)
        variance = _gather(self.posterior_variance, t, x_t)
        return mean, variance, _gather(self.posterior_log_variance_clipped, t, x_t)

    def _predict_xstart_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return self.process.predict_xstart_from_eps(x_t, t, eps)

    def _predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor
    ) -> torch.Tensor:
        return self.process.predict_eps_from_xstart(x_t, t, pred_xstart)

    # --------------------------------------------------------------------- the model's step
    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """p(x_{t-1} | x_t): ``{"mean", "variance", "log_variance", "pred_xstart", "extra"}``
        (``denoised_fn`` applies to pred_xstart before the [-1, 1] clamp)."""
        wrapped = _Outputs(model)
        out = self.process.p_mean_variance(
            wrapped, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            model_kwargs=model_kwargs,
        )  # fmt: skip
        return {
            "mean": out.mean,
            "variance": out.variance,
            "log_variance": out.log_variance,
            "pred_xstart": out.pred_xstart,
            "extra": wrapped.extra,
        }

    def _run(self, model: ModelFn, **kwargs: Any) -> SamplingRun:
        return SamplingRun(self.process, _Outputs(model), **kwargs)

    def _as_mean_variance(
        self, out: dict[str, Any], x: torch.Tensor, t: torch.Tensor
    ) -> MeanVariance:
        eps = self.process.predict_eps_from_xstart(x, t, out["pred_xstart"])
        return MeanVariance(
            out["mean"], out["variance"], out["log_variance"], out["pred_xstart"], eps
        )

    def condition_mean(
        self,
        cond_fn: ModelFn,
        p_mean_var: dict[str, Any],
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """The mean shifted by variance * cond_fn's gradient (Sohl-Dickstein et al. 2015)."""
        # The run's model is never called here; cond_fn is called at the original timesteps.
        run = SamplingRun(self.process, cond_fn, cond_fn=cond_fn, model_kwargs=model_kwargs)
        return condition_mean(run, self._as_mean_variance(p_mean_var, x, t), x, t).mean

    def condition_score(
        self,
        cond_fn: ModelFn,
        p_mean_var: dict[str, Any],
        x: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``p_mean_var`` with pred_xstart and mean from eps corrected by cond_fn's gradient
        (score form, Song et al. 2020)."""
        run = SamplingRun(self.process, cond_fn, cond_fn=cond_fn, model_kwargs=model_kwargs)
        guided = condition_score(run, self._as_mean_variance(p_mean_var, x, t), x, t)
        return {**p_mean_var, "pred_xstart": guided.pred_xstart, "mean": guided.mean}

    def _step(self, sampler: str, model: ModelFn, x: torch.Tensor, t: torch.Tensor,
              clip_denoised: bool, denoised_fn: Any, cond_fn: Any, model_kwargs: Any,
              eta: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
        spec = SAMPLERS[sampler]
        run = self._run(model, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                        cond_fn=cond_fn, model_kwargs=model_kwargs,
                        options=spec.pick({"eta": eta}))  # fmt: skip
        out = take_step(spec, run, x, t)
        return {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def p_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1}: ``{"sample", "pred_xstart"}``."""
        return self._step(
            "ancestral", model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs
        )

    def ddim_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step x_t -> x_{t-1} (eta 0: deterministic): ``{"sample", "pred_xstart"}``."""
        return self._step(
            "ddim", model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta
        )

    def ddim_reverse_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """One step of the deterministic DDIM ODE forwards, x_t -> x_{t+1} (eta must be 0):
        ``{"sample", "pred_xstart"}``."""
        if eta != 0.0:
            raise ValueError(f"eta must be 0.0 for the reverse ODE (deterministic), got {eta!r}")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        eps = self.process.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar_next = _gather(self.alphas_cumprod_next, t, x)
        sample = out["pred_xstart"] * torch.sqrt(abar_next) + torch.sqrt(1 - abar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # --------------------------------------------------------------------- loops
    def _progressive(self, sampler: str, model: ModelFn, shape: Sequence[int],
                     noise: torch.Tensor | None, clip_denoised: bool, denoised_fn: Any,
                     cond_fn: Any, model_kwargs: Any, device: Any, progress: bool,
                     eta: float = 0.0) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list (N, C, H, W), got {shape!r}")
        if device is None:
            device = _default_device(model, noise)
        for out in sample_progressive(
            self.process, _Outputs(model), tuple(shape), sampler=sampler, noise=noise, eta=eta,
            clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, device=device, progress=progress,
        ):  # fmt: skip
            yield {"sample": out.sample, "pred_xstart": out.pred_xstart}

    def p_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Ancestral sampling from T-1 down to 0, yielding each step's
        ``{"sample", "pred_xstart"}``. ``noise``: x at the start (else ``torch.randn``);
        ``device``: where x is made (default: the model's)."""
        return self._progressive("ancestral", model, shape, noise, clip_denoised, denoised_fn,
                                 cond_fn, model_kwargs, device, progress)  # fmt: skip

    def p_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """The final sample (N, C, H, W) of :meth:`p_sample_loop_progressive`."""
        *_, final = self.p_sample_loop_progressive(model, shape, noise, clip_denoised,
                                                   denoised_fn, cond_fn, model_kwargs, device,
                                                   progress)  # fmt: skip
        return final["sample"]

    def ddim_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """DDIM sampling, yielding each step's ``{"sample", "pred_xstart"}`` (arguments as
        :meth:`p_sample_loop_progressive`, plus ``eta``)."""
        return self._progressive("ddim", model, shape, noise, clip_denoised, denoised_fn,
                                 cond_fn, model_kwargs, device, progress, eta)  # fmt: skip

    def ddim_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """The final sample (N, C, H, W) of :meth:`ddim_sample_loop_progressive`."""
        *_, final = self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised,
                                                      denoised_fn, cond_fn, model_kwargs,
                                                      device, progress, eta)  # fmt: skip
        return final["sample"]


__all__ = [
    "GaussianDiffusion",
    "betas_for_alpha_bar",
    "get_beta_schedule",
    "get_named_beta_schedule",
]
