"""Diffusion processes (schedules, respacing, closed forms), their configs, and samplers.

Layer: below ``glidekit.guidance``, ``glidekit.checkpoints`` and ``glidekit.pipelines``, beside
``glidekit.clip`` and ``glidekit.data``; imports only the utilities (``glidekit.errors``). Models
are plain callables here: it never imports ``glidekit.nn``.
"""

from glidekit.diffusion.config import DiffusionConfig, create_diffusion
from glidekit.diffusion.gaussian import GaussianDiffusion, MeanVariance
from glidekit.diffusion.samplers import (
    SAMPLERS,
    RowGenerators,
    Sampler,
    SamplingRun,
    StepInput,
    StepOutput,
    check_sampler_options,
    ddim_sample,
    get_sampler,
    p_sample,
    randn_like_rows,
    sample,
    sample_progressive,
    take_step,
    validate_eta,
)
from glidekit.diffusion.schedules import named_beta_schedule, respace_betas, space_timesteps

__all__ = [
    "SAMPLERS",
    "RowGenerators",
    "DiffusionConfig",
    "GaussianDiffusion",
    "MeanVariance",
    "Sampler",
    "SamplingRun",
    "StepInput",
    "StepOutput",
    "check_sampler_options",
    "create_diffusion",
    "ddim_sample",
    "get_sampler",
    "named_beta_schedule",
    "p_sample",
    "randn_like_rows",
    "respace_betas",
    "sample",
    "sample_progressive",
    "space_timesteps",
    "take_step",
    "validate_eta",
]
