"""``glide_text2im.respace``: sampling a trained process with fewer steps.

:func:`space_timesteps` is :func:`glidekit.diffusion.space_timesteps` returning the official
set; :class:`SpacedDiffusion` is the official class over glidekit's respaced process (the model
and ``cond_fn`` are called with the original timesteps).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from glidekit.compat.gaussian_diffusion import GaussianDiffusion
from glidekit.diffusion import GaussianDiffusion as _Process
from glidekit.diffusion import respace_betas
from glidekit.diffusion import space_timesteps as _space_timesteps


def _spelling(section_counts: str | Sequence[int]) -> str:
    if isinstance(section_counts, str):
        return section_counts
    return ",".join(str(int(count)) for count in section_counts)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Which of the ``num_timesteps`` original steps to keep, as a set.

    ``section_counts``: a list of step counts, one per equal section of the process, or the
    same as a comma-separated string, or "ddimN" (the integer stride giving N steps), or
    "fast27" (the upsampler's 27 steps). Raises ValueError when a section cannot hold its count.
    """
    return set(_space_timesteps(num_timesteps, _spelling(section_counts)))


class SpacedDiffusion(GaussianDiffusion):
    """The process over ``betas=`` visiting only ``use_timesteps`` (original step indices).

    ``timestep_map[t]`` is the original step of this process's step t; ``use_timesteps`` the
    set given, ``original_num_steps`` the length of ``betas``. Steps outside
    [0, len(betas)) are ignored.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - {"betas"})
        if unknown or "betas" not in kwargs:
            raise TypeError(
                f"SpacedDiffusion takes use_timesteps and betas=; got keywords {sorted(kwargs)}"
            )
        betas = np.array(kwargs["betas"], dtype=np.float64)
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(betas)
        self.timestep_map = sorted(i for i in self.use_timesteps if 0 <= i < len(betas))
        # The kept steps' betas from the cumulative products, also when every step is kept.
        new_betas = respace_betas(betas, self.timestep_map)
        self._attach(_Process(new_betas, list(self.timestep_map)))


__all__ = ["SpacedDiffusion", "space_timesteps"]
