"""Named presets: one word for a measured combination of a pipeline's settings.

A preset sets what a pipeline is built with (the compute dtype and whether one model is held at
a time, for the device it runs on) and a layer of run options between the ones given and the
model file's own defaults (precedence in :meth:`~glidekit.pipelines.options.RunOptions.build`:
given > preset > model file > GLIDE's). ``"official"`` is GLIDE's own sampling (today's
default: no options of its own); ``"fast"`` is the fastest combination measured to keep the
shapes models' caption agreement (benchmarks/RESULTS.md, "The fast preset"):

* bf16 on CPUs with native bf16 (AMX or AVX-512 bf16) and on GPUs that have it, fp16 on other
  GPUs, fp32 elsewhere (:func:`~glidekit.pipelines.devices.fast_dtype`);
* DPM-Solver++(2M) with 25 Karras-spaced base steps (it has converged by 25 on the shapes base:
  the same agreement as 100) and 10 upsampler steps;
* classifier-free guidance only for t/T in [0.3, 1] (Kynkaanniemi et al. 2024): the 8 low-noise
  steps of 25 run the base on half the batch, with the same agreement on the shapes models;
* on the CPU, one model resident at a time (peak memory the larger model, not both, for about a
  second of loading per call); GPUs keep both.

Its sampling options are made for classifier-free guidance, where they were measured: a
CLIP-guided run (the embedded shapes models' default before issue 17) keeps the model file's own steps and
sampler and takes only the dtype and memory use. CLIP guidance corrects the picture a little at
every step and needs its many steps: with the fast options it fell from 0.875 to 0.55 of the
embedded models' captions met in full (RESULTS.md, "The fast preset").

The preset's name is recorded in every result's params (and so in every PNG), with the
options it chose, so ``glidekit generate --from`` repeats the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from glidekit.errors import OptionError
from glidekit.pipelines.devices import fast_dtype, resolve_dtype
from glidekit.pipelines.options import RunOptions, UpsampleOptions


@dataclass(frozen=True)
class Preset:
    """One named preset.

    ``options``: run options under the ones given (each options class takes those it has),
    for runs with classifier-free guidance.
    ``fast_dtype``: the device's fast dtype (:func:`fast_dtype`) instead of the pipeline's
    "auto" (fp32 on the CPU, fp16 on GPUs). ``low_memory_on_cpu``: one model at a time on the
    CPU.
    """

    name: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fast_dtype: bool = False
    low_memory_on_cpu: bool = False

    def dtype(self, device: torch.device) -> torch.dtype:
        """The compute dtype for ``device`` when the pipeline is asked for "auto"."""
        return fast_dtype(device) if self.fast_dtype else resolve_dtype("auto", device)

    def low_memory(self, device: torch.device) -> bool:
        """Whether to hold one model at a time on ``device`` when not asked either way."""
        return self.low_memory_on_cpu and device.type == "cpu"

    def options_for(self, options_class: type[RunOptions]) -> dict[str, Any]:
        """The preset's run options that ``options_class`` takes. A run of the upsampler alone
        takes the upsampler's (``upsample_steps`` is its ``steps``)."""
        given = dict(self.options)
        if options_class.kind == UpsampleOptions.kind:
            given = {k.removeprefix("upsample_"): v for k, v in given.items()
                     if k.startswith("upsample_")}  # fmt: skip
        names = options_class.option_names()
        return {k: v for k, v in given.items() if k in names}


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "official": Preset(
            "official", "GLIDE's sampling as the official notebooks run it (the default)"
        ),
        "fast": Preset(
            "fast",
            "bf16/fp16 where the device runs it natively, DPM-Solver++ karras25 + 10 upsampler "
            "steps, guidance for t/T in [0.3, 1], one model at a time on the CPU",
            options=MappingProxyType(
                {
                    "steps": "karras25",
                    "sampler": "dpm++2m",
                    "guidance_interval": (0.3, 1.0),
                    "upsample_steps": "10",
                    "upsample_sampler": "dpm++2m",
                }
            ),
            fast_dtype=True,
            low_memory_on_cpu=True,
        ),
    }
)
DEFAULT_PRESET = "official"


def get_preset(value: Any, arg: str = "preset") -> Preset:
    """The preset named ``value`` (None: the default); an unknown name names ``arg``."""
    if value is None:
        return PRESETS[DEFAULT_PRESET]
    if isinstance(value, Preset):
        return value
    if not isinstance(value, str) or value.strip().lower() not in PRESETS:
        raise OptionError(arg, f"unknown preset {value!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[value.strip().lower()]


__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "get_preset"]
