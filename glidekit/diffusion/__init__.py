"""Diffusion processes (schedules, respacing, closed forms) and samplers."""

from glidekit.diffusion.gaussian import GaussianDiffusion, MeanVariance
from glidekit.diffusion.samplers import (
    StepOutput,
    ddim_sample,
    p_sample,
    sample,
    sample_progressive,
)
from glidekit.diffusion.schedules import named_beta_schedule, respace_betas, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "MeanVariance",
    "StepOutput",
    "ddim_sample",
    "named_beta_schedule",
    "p_sample",
    "respace_betas",
    "sample",
    "sample_progressive",
    "space_timesteps",
]
