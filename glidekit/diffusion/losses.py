"""The training objective of GLIDE's model family (Nichol & Dhariwal 2021, "hybrid" loss).

loss = MSE(eps_pred, eps) + L_vb, where L_vb is the variational bound term that trains the
learned-range variance (for a v-prediction process the MSE is on v instead). The mean's gradient
is stopped through L_vb (eps is detached there), so the MSE alone trains the mean, as in the
paper.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from glidekit.diffusion.gaussian import GaussianDiffusion, ModelFn


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of 8-bit images x in [-1, 1] under a Gaussian discretised to 256 bins."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def training_losses(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x_start: torch.Tensor,
    t: torch.Tensor,
    *,
    model_kwargs: dict[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    mse_weight_max: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-example losses at steps t (B,) for clean images x_start (B, C, H, W) in [-1, 1].

    Returns {"loss", "mse", "vb"}, each (B,); "mse" is unweighted. ``diffusion`` must be the
    unspaced training process (t indexes it; the model is called with ``timestep_map[t]``). For
    a model with C output channels (fixed variance) vb is zero. ``mse_weight_max`` > 1 weights
    the MSE in the loss by :func:`high_noise_weight` (1 = GLIDE's plain hybrid loss).
    """
    if noise is None:
        noise = torch.randn_like(x_start)
    x_t = diffusion.q_sample(x_start, t, noise)
    out = model(x_t, diffusion.model_timesteps(t), **(model_kwargs or {}))
    c = x_start.shape[1]
    mse = _mean_flat((out[:, :c].float() - diffusion.training_target(x_start, t, noise)) ** 2)
    if out.shape[1] == 2 * c:
        # Stop the mean's gradient through the bound: only the variance learns from it.
        frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1).float()
        pmv = diffusion.p_mean_variance(lambda *_args, **_kw: frozen, x_t, t, clip_denoised=False)
        true_mean, _, true_log_var = diffusion.q_posterior(x_start, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, pmv.mean, pmv.log_variance))
        nll = -_mean_flat(
            discretized_gaussian_log_likelihood(
                x_start, means=pmv.mean, log_scales=0.5 * pmv.log_variance
            )
        )
        vb = torch.where(t == 0, nll, kl) / math.log(2.0)
        # The bound is a sum over all steps; scale so the term is comparable for respaced training.
        vb = vb * (diffusion.num_timesteps / 1000.0)
    else:
        vb = torch.zeros_like(mse)
    weighted = (
        mse if mse_weight_max == 1.0 else mse * high_noise_weight(diffusion, t, mse_weight_max)
    )
    return {"loss": weighted + vb, "mse": mse, "vb": vb}


def high_noise_weight(
    diffusion: GaussianDiffusion, t: torch.Tensor, max_weight: float
) -> torch.Tensor:
    """(B,) weights clamp((1 - abar_t) / abar_t, 1, max_weight) for the eps MSE at steps t.

    Why: at high noise eps is almost x_t itself, so an error d in the implied x0 costs only
    abar/(1 - abar) * d^2 of eps MSE (about 0.003 d^2 at t = 950 of the cosine schedule), and a
    plain eps loss barely teaches what is decided there: the colours and the layout. Weighting
    by 1/SNR makes that part an x0 loss; the cap keeps the very top steps from dominating, and
    the floor leaves the low-noise steps (where the weight would fall below 1) as in GLIDE.
    """
    if max_weight < 1.0:
        raise ValueError(f"max_weight must be >= 1 (1 = unweighted), got {max_weight}")
    abar = torch.from_numpy(diffusion.alphas_cumprod)[t.cpu()]
    inv_snr = (1.0 - abar) / abar.clamp(min=1e-12)
    return inv_snr.clamp(1.0, max_weight).to(device=t.device, dtype=torch.float32)
