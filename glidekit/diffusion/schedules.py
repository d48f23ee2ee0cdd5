"""Noise schedules and timestep respacing.

All schedule math is float64 (numpy), as the released models were trained; coefficients are cast
to float32 only when gathered for a batch.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("squaredcos_cap_v2", "linear")


def named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Betas (num_steps,) float64 of the ``"squaredcos_cap_v2"`` (cosine) or ``"linear"`` schedule.

    cosine: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999), abar(t) = cos((t+0.008)/1.008 * pi/2)^2.
    linear: linspace(1e-4, 0.02) scaled by 1000/T so other step counts keep the same process.
    """
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), 0.999)
                for i in range(num_steps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"noise_schedule: unknown schedule {name!r}; expected one of {SCHEDULES}")


# The upsampler's "fast27" schedule: the "10,10,3,2,2" steps with the last (999) moved to 997.
_FAST27_SECTIONS = "10,10,3,2,2"


def karras_timesteps(
    betas: np.ndarray, count: int, rho: float = 7.0, sigma_max: float = 80.0
) -> list[int]:
    """``count`` steps spaced as in Karras et al. (2022).

    The last original step T-1 (pure noise, where colour and layout are decided) is always
    kept; the other count-1 steps are spaced evenly in sigma^(1/rho), sigma = sqrt((1-abar)/abar),
    from min(sigma(T-1), sigma_max) down to sigma(0), each mapped to the nearest original step in
    log sigma. Karras' sigma_max of 80 matters for the cosine schedule, whose sigma(T-1) is ~2e4.
    """
    num_steps = len(betas)
    if not 2 <= count <= num_steps:
        raise ValueError(
            f"timestep_respacing: karras needs between 2 and {num_steps} steps, got {count}"
        )
    if count == 2:
        return [0, num_steps - 1]
    abar = np.cumprod(1.0 - betas)
    log_sigmas = 0.5 * np.log((1.0 - abar) / abar)
    smin, smax = np.exp(log_sigmas[0]), min(np.exp(log_sigmas[-1]), sigma_max)
    ramp = np.linspace(0.0, 1.0, count - 1)
    targets = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    kept = {num_steps - 1} | {int(np.abs(log_sigmas - np.log(s)).argmin()) for s in targets}
    # Near t = 0 several targets can land on one step; fill with the smallest unused steps so
    # the count is what was asked for.
    candidate = 0
    while len(kept) < count:
        kept.add(candidate)
        candidate += 1
    return sorted(kept)


def space_timesteps(num_steps: int, respacing: str, betas: np.ndarray | None = None) -> list[int]:
    """Which of the ``num_steps`` original steps a respaced process keeps (sorted).

    respacing: "" (all), "N" (N evenly spread steps), "a,b,c" (the process split into equal
    sections with a, b, c steps each), "ddimN" (a fixed stride giving exactly N), "fast27",
    "karrasN" (N steps spaced as Karras et al.; needs the schedule's ``betas``).
    """
    if not isinstance(respacing, str):
        raise TypeError(f"timestep_respacing must be a str, got {type(respacing).__name__}")
    spec = respacing.strip()
    if spec == "":
        return list(range(num_steps))
    if spec == "fast27":
        steps = space_timesteps(num_steps, _FAST27_SECTIONS)
        steps[-1] = num_steps - 3
        return sorted(steps)
    if spec.startswith("karras"):
        if betas is None:
            raise ValueError("timestep_respacing: 'karrasN' needs the schedule's betas")
        try:
            count = int(spec[len("karras") :])
        except ValueError:
            raise ValueError(
                f"timestep_respacing: cannot parse {respacing!r}; expected e.g. 'karras25'"
            ) from None
        return karras_timesteps(betas, count)
    if spec.startswith("ddim"):
        try:
            desired = int(spec[len("ddim") :])
        except ValueError:
            desired = -1
        if desired > 0:
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == desired:
                    return list(range(0, num_steps, stride))
            raise ValueError(
                f"timestep_respacing: no integer stride gives exactly {desired} steps out of "
                f"{num_steps}; pick another ddimN or use a plain step count like '{desired}'"
            )
        raise ValueError(f"timestep_respacing: cannot parse {respacing!r}; expected e.g. 'ddim50'")
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"timestep_respacing: unknown spelling {respacing!r}; use '' (all steps), '100', "
            "'10,10,3,2,2', 'ddim50' or 'fast27'"
        ) from None
    size_per, extra = divmod(num_steps, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count <= 0 or count > size:
            raise ValueError(
                f"timestep_respacing: cannot take {count} steps from a section of {size} "
                f"(respacing {respacing!r} over {num_steps} steps)"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.add(start + round(cur))
            cur += stride
        start += size
    return sorted(kept)


def respace_betas(betas: np.ndarray, use_timesteps: list[int]) -> np.ndarray:
    """Betas of the process that only visits ``use_timesteps``: 1 - abar[k_j] / abar[k_{j-1}]."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    last = 1.0
    new = []
    for k in use_timesteps:
        new.append(1 - alphas_cumprod[k] / last)
        last = alphas_cumprod[k]
    return np.array(new, dtype=np.float64)
