"""Training and fine-tuning of the GLIDE UNets and the noise-aware CLIP (``glidekit train``).

Quick use::

    from glidekit.train import load_config, train

    config = load_config("configs/shapes-base-32.yaml", ["train.steps=200"])
    result = train(config)                 # or train(config, resume=True)
    # result.export -> <out_dir>/export.safetensors, which
    # glidekit.checkpoints.modelfile.load_unet (load_clip for a CLIP) reads

Under ``torchrun --nproc_per_node N`` the same call trains with DDP (gloo on CPU, NCCL on GPU).

Modules: :mod:`~glidekit.train.config` (the run's config, overrides, what a resume reapplies),
:mod:`~glidekit.train.trainer` (the one loop), :mod:`~glidekit.train.task` (what a kind of model
brings to it) with :mod:`~glidekit.train.unet` and :mod:`~glidekit.train.clip`,
:mod:`~glidekit.train.data` (datasets and resumable streams), :mod:`~glidekit.train.state`
(checkpoints, checksums, the run lock, torchrun), :mod:`~glidekit.train.report` (metrics, plots,
grids), :mod:`~glidekit.train.errors`.

Layer: beside ``glidekit.web``, ``glidekit.compat`` and ``glidekit.bench``, under
``glidekit.cli``, which is the only package that imports it. It may import
``glidekit.pipelines`` and everything below (``checkpoints``, ``guidance``, ``clip``,
``diffusion``, ``data``, ``nn``, ``tokenizer`` and the utilities); model files are written
only through :mod:`glidekit.checkpoints.modelfile`.
"""

from glidekit.train.config import (
    DataSection,
    DiffusionSection,
    ExportSection,
    ModelSection,
    OptimSection,
    SampleSection,
    TrainConfig,
    TrainSection,
    load_config,
    load_run_config,
)
from glidekit.train.errors import NonFiniteLossError, RunFolderBusyError
from glidekit.train.state import load_checkpoint
from glidekit.train.trainer import FitResult, Trainer, export_checkpoint, train

__all__ = [
    "DataSection",
    "DiffusionSection",
    "ExportSection",
    "FitResult",
    "ModelSection",
    "NonFiniteLossError",
    "OptimSection",
    "RunFolderBusyError",
    "SampleSection",
    "TrainConfig",
    "TrainSection",
    "Trainer",
    "export_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_run_config",
    "train",
]
