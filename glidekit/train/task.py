"""What a kind of model brings to the one training loop (:class:`~glidekit.train.Trainer`).

The loop (data, optimizer, EMA, checkpoints, logging, DDP) is the same for every model; a
:class:`TrainTask` holds what differs: the model and tokenizer it builds from the config, the
loss of a batch, the sample grid of the EMA model, and the exported file. Two implement it:
:class:`glidekit.train.unet.UNetTask` (the four GLIDE UNets) and
:class:`glidekit.train.clip.ClipTask` (the noise-aware CLIP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

#: How a task reports progress while it is built (the trainer's rank-0 logger).
Info = Callable[..., None]
#: ``export.dtype`` -> the dtype of the exported weights (None: as trained, float32).
EXPORT_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass
class StepContext:
    """What the loop lends a task for a step.

    ``gen_cpu`` draws what is random per sample on the CPU (caption dropout, masks, crops,
    position twins), ``gen_dev`` the timesteps and noise on ``device``; both are checkpointed, so
    a resumed run draws exactly the numbers it would have drawn. ``caption_dropout`` is the
    probability a caption is replaced by "". ``rank``: this process's rank under DDP.
    """

    device: torch.device
    gen_cpu: torch.Generator
    gen_dev: torch.Generator
    amp_dtype: torch.dtype = torch.float32
    caption_dropout: float = 0.0
    rank: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of the model's forward (none in float32)."""
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def load_exactly(module: nn.Module, state: dict[str, Any], error: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch raises one-line ValueError
    ``"<error>: <torch's first line>"``."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{error}: {str(exc).splitlines()[0]}") from exc


class TrainTask(Protocol):
    """One kind of model to train.

    ``model``: the module trained (and checkpointed; its EMA copy is exported). ``tokenizer``:
    what captions are read with. ``image_size``: the side of the dataset's images.
    ``default_caption_dropout``: used when ``data.caption_dropout`` is null.
    """

    model: nn.Module
    tokenizer: Any
    image_size: int
    default_caption_dropout: float

    def loss(
        self, net: nn.Module, samples: list[dict], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean loss of a micro-batch of ``samples`` through ``net`` (``model``, or its
        DDP wrapper), and extra metrics to log (floats)."""
        ...

    def sample_grid(
        self, ema: nn.Module, dataset: Dataset, path: Path, ctx: StepContext
    ) -> Path | None:
        """Write a PNG grid of ``ema``'s samples to ``path`` (None: this kind has none). Called
        under ``torch.no_grad`` with the random state forked."""
        ...

    def export(self, ema: nn.Module, path: Path) -> Path:
        """Write ``ema`` (the EMA copy of ``model``) as a glidekit model file at ``path``."""
        ...


__all__ = ["EXPORT_DTYPES", "Info", "StepContext", "TrainTask", "load_exactly"]
