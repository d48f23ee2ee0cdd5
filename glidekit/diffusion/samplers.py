"""Samplers: one table of step functions, and the loop that runs any of them.

In the manner of k-diffusion's ``sampling.py``: each sampler is a small step function of one
signature, ``step(run, at) -> StepOutput``, that moves x from step t of the (respaced) process
to t - 1, given (:class:`StepInput`) x_t, the model's prediction there (already guided) and the
step's noise. :data:`SAMPLERS` maps each name to a :class:`Sampler`: the step function, the
options it takes (``("eta",)`` for DDIM) and the form in which it applies ``cond_fn``.
:func:`sample_progressive` is the one loop; it yields every step so callers can show progress,
preview, or stop early. Guidance plugs in through:

* ``cond_fn(x, t_model, **model_kwargs) -> grad`` (same shape as x, the gradient of a log
  probability): added to the mean scaled by the variance in ancestral sampling ("mean form"),
  used as a score correction of eps in DDIM and DPM-Solver++ ("score form");
* ``denoised_fn(pred_xstart) -> pred_xstart``, applied before clamping (inpainting).

Random numbers: each step of a stochastic sampler (ancestral, DDIM) draws exactly one ``randn``
of x's shape after the model call (also at t = 0 and with eta = 0), from ``generator`` or else
the global RNG, so a seed gives the same image as the official implementation; DPM-Solver++(2M)
draws none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from glidekit.diffusion.gaussian import DenoisedFn, GaussianDiffusion, MeanVariance, ModelFn
from glidekit.errors import OptionError

CondFn = Callable[..., torch.Tensor]


@dataclass
class StepOutput:
    """One sampler step: x_{t-1} and the model's x_0 estimate, both (B, C, H, W)."""

    t: int
    sample: torch.Tensor
    pred_xstart: torch.Tensor


@dataclass
class SamplingRun:
    """What stays fixed through one run of a sampler, and what a multistep sampler carries.

    ``options``: the sampler's own options (``{"eta": 0.0}`` for DDIM), checked.
    ``memory``: a multistep sampler's state from the previous step (empty at the start).
    """

    diffusion: GaussianDiffusion
    model: ModelFn
    clip_denoised: bool = True
    denoised_fn: DenoisedFn | None = None
    cond_fn: CondFn | None = None
    model_kwargs: dict[str, Any] | None = None
    generator: Generator | None = None
    options: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_kwargs = dict(self.model_kwargs or {})


@dataclass
class StepInput:
    """Where one step starts: x_t (B, C, H, W) at steps t (B,) of the process, the model's
    prediction there (already guided), and the step's noise (None for a deterministic sampler)."""

    x: torch.Tensor
    t: torch.Tensor
    out: MeanVariance
    noise: torch.Tensor | None


#: ``step(run, at) -> StepOutput``: one step from ``at.t`` to ``at.t - 1``.
StepFn = Callable[[SamplingRun, StepInput], StepOutput]
CondForm = Literal["mean", "score"]


@dataclass(frozen=True)
class Sampler:
    """One entry of :data:`SAMPLERS`.

    ``options``: the option names the step reads from ``run.options``. ``cond_form``: how it
    applies ``cond_fn``: "mean" (shift the mean by variance * grad, Dhariwal & Nichol) or
    "score" (correct eps by -sqrt(1 - abar) * grad). ``stochastic``: it draws one ``randn`` of
    x's shape every step, after the model call (even where it multiplies it by 0), so a seed
    gives the official implementation's images.
    """

    name: str
    step: StepFn
    options: tuple[str, ...] = ()
    cond_form: CondForm = "score"
    stochastic: bool = True

    def pick(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The options of ``given`` this sampler takes, checked (others are ignored)."""
        return {k: OPTION_CHECKS[k](v) for k, v in given.items() if k in self.options}


def _progress(indices: Iterable[int], show: bool, desc: str) -> Iterable[int]:
    # No tqdm object at all unless shown: even a disabled bar starts tqdm's monitor thread.
    return tqdm(indices, desc=desc, leave=False) if show else indices


class RowGenerators:
    """Noise drawn item by item, so an item's noise does not depend on its batch.

    ``generators[i]`` is item i's; ``rows[r]`` is the item batch row r belongs to (with
    classifier-free guidance an item has its conditional and unconditional rows, e.g. rows =
    [0, 1, 0, 1] for two items). Each draw of a (R, ...) tensor takes, for each item in turn,
    one ``randn`` of (its row count, ...) from its own generator and puts the rows in place.
    """

    def __init__(self, generators: Sequence[torch.Generator], rows: Sequence[int]) -> None:
        self.generators = list(generators)
        self.rows = torch.tensor(list(rows), dtype=torch.long)
        if len(self.rows) and not 0 <= int(self.rows.min()) <= int(self.rows.max()) < len(
            self.generators
        ):
            raise ValueError("rows name an item without a generator")
        # each item's rows, found once (every step of the run draws through them)
        self._where = [(self.rows == item).nonzero().flatten() for item in range(len(generators))]

    def randn(self, shape: Sequence[int], device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
        """A (len(rows), ...) standard normal tensor, each item's rows from its generator."""
        if shape[0] != len(self.rows):
            raise ValueError(f"noise for {shape[0]} rows, but {len(self.rows)} rows are known")
        out = torch.empty(tuple(shape), device=device, dtype=dtype or torch.float32)
        for generator, where in zip(self.generators, self._where, strict=True):
            draw = torch.randn((len(where), *shape[1:]), generator=generator,
                               device=generator.device, dtype=out.dtype)  # fmt: skip
            out[where.to(out.device)] = draw.to(out.device)
        return out


#: A generator for the whole batch, or one per item (:class:`RowGenerators`).
Generator = torch.Generator | RowGenerators


def randn_like_rows(shape: Sequence[int], generator: Generator | None,
                    device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
    """``torch.randn(shape)`` from ``generator`` (one for the batch, or per item)."""
    if isinstance(generator, RowGenerators):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _randn(x: torch.Tensor, generator: Generator | None) -> torch.Tensor:
    return randn_like_rows(x.shape, generator, device=x.device, dtype=x.dtype)


def _nonzero(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (t != 0).float().view(-1, *([1] * (x.ndim - 1)))


# ------------------------------------------------------------------------------- guidance forms


def _call_cond_fn(run: SamplingRun, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Gradients are needed inside cond_fn even when the loop runs under no_grad.
    with torch.enable_grad():
        grad = run.cond_fn(x.detach(), run.diffusion.model_timesteps(t), **run.model_kwargs)
    if not isinstance(grad, torch.Tensor) or grad.shape != x.shape:
        raise ValueError(
            f"cond_fn must return a tensor of x's shape {tuple(x.shape)}, "
            f"got {getattr(grad, 'shape', type(grad).__name__)}"
        )
    return grad.detach()


def condition_mean(
    run: SamplingRun, out: MeanVariance, x: torch.Tensor, t: torch.Tensor
) -> MeanVariance:
    """Mean form of guidance (Dhariwal & Nichol 2021): mean + variance * grad log p(y | x_t)."""
    grad = _call_cond_fn(run, x, t)
    return replace(out, mean=out.mean.float() + out.variance * grad.float())


def condition_score(
    run: SamplingRun, out: MeanVariance, x: torch.Tensor, t: torch.Tensor
) -> MeanVariance:
    """Score form of guidance: eps' = eps - sqrt(1 - abar) * grad; x_0 and the mean follow eps'."""
    diffusion = run.diffusion
    grad = _call_cond_fn(run, x, t)
    eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
    eps = eps - diffusion.coef("sqrt_one_minus_alphas_cumprod", t, x) * grad
    pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps)
    mean, _, _ = diffusion.q_posterior(pred_xstart, x, t)
    return MeanVariance(mean, out.variance, out.log_variance, pred_xstart, eps)


#: ``guide(run, out, x, t) -> out``: the prediction at (x, t) corrected by ``run.cond_fn``.
GuideFn = Callable[[SamplingRun, MeanVariance, torch.Tensor, torch.Tensor], MeanVariance]
#: Each form in which a sampler applies ``cond_fn`` (:attr:`Sampler.cond_form`).
COND_FORMS: dict[str, GuideFn] = {"mean": condition_mean, "score": condition_score}


# ------------------------------------------------------------------------------- step functions


def ancestral_step(run: SamplingRun, at: StepInput) -> StepOutput:
    """x_{t-1} ~ p(x_{t-1} | x_t): the mean plus the model's variance times the noise."""
    out = at.out
    sample = out.mean + _nonzero(at.t, at.x) * torch.exp(0.5 * out.log_variance) * at.noise
    return StepOutput(int(at.t[0]), sample, out.pred_xstart)


def ddim_step(run: SamplingRun, at: StepInput) -> StepOutput:
    """One DDIM step (Song et al. 2021); ``eta`` 0 is deterministic, 1 matches ancestral noise."""
    diffusion, x, t, out = run.diffusion, at.x, at.t, at.out
    eta = run.options.get("eta", 0.0)
    eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
    abar = diffusion.coef("alphas_cumprod", t, x)
    abar_prev = diffusion.coef("alphas_cumprod_prev", t, x)
    sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
    mean_pred = out.pred_xstart * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
    sample = mean_pred + _nonzero(t, x) * sigma * at.noise
    return StepOutput(int(t[0]), sample, out.pred_xstart)


def dpmpp_2m_step(run: SamplingRun, at: StepInput) -> StepOutput:
    """DPM-Solver++(2M) (Lu et al. 2022), the data-prediction multistep solver, deterministic.

    Moves x from step s to n = s - 1 in log-SNR lambda = log(alpha / sigma):
    x_n = (sigma_n / sigma_s) x_s - alpha_n (e^{-h} - 1) D, h = lambda_n - lambda_s, with D the
    x_0 estimate (after ``denoised_fn`` and the [-1, 1] clamp guided pixel models need),
    extrapolated with the previous step's (``run.memory``) from the second step on. At step 0
    it returns the x_0 estimate. Only eps is used: the learned variance channels are ignored.
    """
    s, out = int(at.t[0]), at.out
    if run.cond_fn is not None:
        # The guided x_0 goes through the same processing as the model's own (unlike the
        # official DDIM score form), so inpainting's known region survives CLIP guidance.
        if run.denoised_fn is not None:
            out.pred_xstart = run.denoised_fn(out.pred_xstart)
        if run.clip_denoised:
            out.pred_xstart = out.pred_xstart.clamp(-1, 1)
    x0 = out.pred_xstart
    if s == 0:
        return StepOutput(s, x0, x0)
    n = s - 1
    abar = run.diffusion.alphas_cumprod
    alpha_s, sigma_s = math.sqrt(abar[s]), math.sqrt(1.0 - abar[s])
    alpha_n, sigma_n = math.sqrt(abar[n]), math.sqrt(1.0 - abar[n])
    h = math.log(alpha_n / sigma_n) - math.log(alpha_s / sigma_s)
    # Second order from the second step on. The step into step 0 stays first order: near
    # t = 0 the log-SNR steps grow fast, so the previous estimate is far back (r = h_prev / h
    # small) and extrapolating from it overshoots.
    previous = run.memory.get("dpm++2m")
    if previous is None or n == 0:
        d = x0
    else:
        prev_x0, prev_h = previous
        r = prev_h / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
    run.memory["dpm++2m"] = (x0, h)
    return StepOutput(s, (sigma_n / sigma_s) * at.x - alpha_n * math.expm1(-h) * d, x0)


#: Every sampler by name: what ``sampler=`` (and the CLI's ``--sampler``) accepts.
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ancestral", ancestral_step, cond_form="mean"),
        Sampler("ddim", ddim_step, options=("eta",)),
        Sampler("dpm++2m", dpmpp_2m_step, stochastic=False),
    )
}


def validate_eta(eta: float) -> float:
    """DDIM's ``eta`` as a float in [0, 1], or a ValueError."""
    if not isinstance(eta, (int, float)) or not (0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    return float(eta)


#: How each sampler option's value is checked (and normalised).
OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {"eta": validate_eta}


def get_sampler(name: str, arg: str = "sampler") -> Sampler:
    """The :class:`Sampler` called ``name`` (case and surrounding blanks ignored).

    Raises :class:`~glidekit.errors.OptionError` naming ``arg`` for an unknown name.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in SAMPLERS:
        raise OptionError(arg, f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[key]


def check_sampler_options(
    sampler_name: str, options: Mapping[str, Any], arg: str = "sampler_options"
) -> dict[str, Any]:
    """``options`` for the sampler ``sampler_name`` (e.g. ``{"eta": 0.5}`` for DDIM), checked.

    Raises :class:`~glidekit.errors.OptionError` naming ``arg`` for an option the sampler does
    not take or a bad value.
    """
    sampler = get_sampler(sampler_name)
    unknown = sorted(set(options) - set(sampler.options))
    if unknown:
        takes = ", ".join(sampler.options) or "no options"
        raise OptionError(
            arg, f"{unknown} not understood by the {sampler.name} sampler (it takes {takes})"
        )
    try:
        return {key: OPTION_CHECKS[key](value) for key, value in options.items()}
    except ValueError as exc:
        raise OptionError(arg, str(exc)) from None


# ------------------------------------------------------------------------------- running


def take_step(sampler: Sampler, run: SamplingRun, x: torch.Tensor, t: torch.Tensor) -> StepOutput:
    """One step of ``sampler`` from x_t: x (B, C, H, W), t (B,) steps of ``run.diffusion``.

    The model call, then the step's noise (stochastic samplers), then ``cond_fn`` in the
    sampler's form, then its step function.
    """
    out = run.diffusion.p_mean_variance(
        run.model, x, t, clip_denoised=run.clip_denoised, denoised_fn=run.denoised_fn,
        model_kwargs=run.model_kwargs,
    )  # fmt: skip
    noise = _randn(x, run.generator) if sampler.stochastic else None
    if run.cond_fn is not None:
        out = COND_FORMS[sampler.cond_form](run, out, x, t)
    return sampler.step(run, StepInput(x, t, out, noise))


def p_sample(
    diffusion: GaussianDiffusion, model: ModelFn, x: torch.Tensor, t: torch.Tensor, **kwargs: Any
) -> StepOutput:
    """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t). x: (B, C, H, W); t: (B,).

    ``kwargs``: ``clip_denoised``, ``denoised_fn``, ``cond_fn``, ``model_kwargs``,
    ``generator`` (see :class:`SamplingRun`).
    """
    return take_step(SAMPLERS["ancestral"], SamplingRun(diffusion, model, **kwargs), x, t)


def ddim_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    eta: float = 0.0,
    **kwargs: Any,
) -> StepOutput:
    """One DDIM step (Song et al. 2021); eta=0 is deterministic, eta=1 matches ancestral noise.

    ``kwargs`` as :func:`p_sample`.
    """
    run = SamplingRun(diffusion, model, options={"eta": eta}, **kwargs)
    return take_step(SAMPLERS["ddim"], run, x, t)


def _start(
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    noise: torch.Tensor | None,
    device: torch.device | str | None,
    generator: Generator | None,
    start_index: int | None,
) -> tuple[torch.Tensor, int]:
    """x at the first step (``noise`` or a fresh draw) and that step's index."""
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        x = noise.to(device) if device is not None else noise
    else:
        x = randn_like_rows(shape, generator, device=device or "cpu")
    first = diffusion.num_timesteps - 1 if start_index is None else start_index
    if not isinstance(first, int) or not 0 <= first < diffusion.num_timesteps:
        raise ValueError(
            f"start_index must be an int in [0, {diffusion.num_timesteps}), got {start_index!r}"
        )
    return x, first


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
    generator: Generator | None = None,
    progress: bool = False,
    start_index: int | None = None,
) -> Iterator[StepOutput]:
    """Run the reverse process, yielding every step (t = start_index, ..., 0).

    sampler: a name in :data:`SAMPLERS`: "ancestral" (the official p_sample loop), "ddim"
    (with ``eta``) or "dpm++2m" (DPM-Solver++(2M), deterministic; good with few steps). The
    steps are the diffusion's own (respace it for fewer: "100", "ddim50", "karras25", ...).
    shape: (B, C, H, W); noise: x at the first step, of that shape (else drawn from
    ``generator``/the global RNG). start_index: the first step (default the last, T-1); with a
    partly noised image as ``noise`` this is SDEdit. The last yielded ``sample`` is the result,
    nominally in [-1, 1].
    """
    spec = get_sampler(sampler)
    options = spec.pick({"eta": eta})  # the sampler options this function takes as keywords
    shape = tuple(shape)
    x, first = _start(diffusion, shape, noise, device, generator, start_index)
    run = SamplingRun(
        diffusion, model, clip_denoised, denoised_fn, cond_fn, model_kwargs, generator, options
    )
    for i in _progress(range(first, -1, -1), progress, spec.name):
        t = torch.full((shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = take_step(spec, run, x, t)
        yield out
        x = out.sample


def sample(
    diffusion: GaussianDiffusion, model: ModelFn, shape: tuple[int, ...], **kwargs: Any
) -> torch.Tensor:
    """Run :func:`sample_progressive` to the end and return x_0: (B, C, H, W)."""
    *_, final = sample_progressive(diffusion, model, shape, **kwargs)
    return final.sample
