"""The diffusion a model was trained with, and the one constructor of a process from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from glidekit.diffusion.gaussian import GaussianDiffusion


class _HasSuperRes(Protocol):
    """What :meth:`DiffusionConfig.for_model` reads of a model config (a ``UNetConfig``)."""

    @property
    def super_res(self) -> bool: ...


@dataclass(frozen=True)
class DiffusionConfig:
    """The Gaussian diffusion a model was trained with and how it is sampled.

    ``timestep_respacing``: "" (all steps), "100", "fast27", "ddim50", "10,10,3,2,2", ...
    ``prediction``: "eps" (every released model) or "v" (see
    :class:`glidekit.diffusion.GaussianDiffusion`).
    """

    steps: int = 1000
    noise_schedule: str = "squaredcos_cap_v2"
    timestep_respacing: str = ""
    learn_sigma: bool = True
    prediction: str = "eps"

    @classmethod
    def for_model(cls, config: _HasSuperRes, timestep_respacing: str = "") -> DiffusionConfig:
        """The released models' diffusion for a model config: the upsamplers were trained with
        the linear schedule, the 64x64 models with the cosine one."""
        schedule = "linear" if config.super_res else "squaredcos_cap_v2"
        return cls(noise_schedule=schedule, timestep_respacing=timestep_respacing)


def create_diffusion(config: DiffusionConfig, respacing: str | None = None) -> GaussianDiffusion:
    """The process of ``config`` (schedule, steps, prediction), respaced by ``respacing``.

    ``respacing=None`` uses ``config.timestep_respacing``; "" uses every step.
    """
    return GaussianDiffusion.from_config(
        config.noise_schedule,
        config.steps,
        config.timestep_respacing if respacing is None else respacing,
        prediction=config.prediction,
    )


__all__ = ["DiffusionConfig", "create_diffusion"]
