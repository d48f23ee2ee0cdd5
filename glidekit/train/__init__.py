"""Training and fine-tuning of the GLIDE UNets and the noise-aware CLIP (``glidekit train``).

Quick use::

    from glidekit.train import load_config, train

    config = load_config("configs/shapes-base-32.yaml", ["train.steps=200"])
    result = train(config)                 # or train(config, resume=True)
    # result.export -> <out_dir>/export.safetensors, loadable by glidekit.nn.bundle.load_model

Under ``torchrun --nproc_per_node N`` the same call trains with DDP (gloo on CPU, NCCL on GPU).
"""

from glidekit.train.clip import load_clip, save_clip
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
)
from glidekit.train.state import load_checkpoint
from glidekit.train.trainer import FitResult, Trainer, train

__all__ = [
    "DataSection",
    "DiffusionSection",
    "ExportSection",
    "FitResult",
    "ModelSection",
    "OptimSection",
    "SampleSection",
    "TrainConfig",
    "TrainSection",
    "Trainer",
    "load_checkpoint",
    "load_clip",
    "load_config",
    "save_clip",
    "train",
]
