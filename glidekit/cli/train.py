"""``glidekit train CONFIG [section.key=value ...] [--resume | --resume-from CHECKPOINT]``.

Runs the same way on one process or under ``torchrun --nproc_per_node N``. Exit codes: 0 when
training finished or was stopped by SIGTERM/SIGINT after writing its checkpoint (continue with
``--resume``); 2 for a bad config, override or command line.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command to the ``glidekit`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a GLIDE model or the noised CLIP",
        description=(
            "Train a GLIDE UNet (text2im, inpaint, super_res, super_res_inpaint) or the "
            "noise-aware CLIP from a YAML/JSON config. Any config key can be overridden as "
            "section.key=value (e.g. optim.lr=1e-4 model.num_channels=64 train.steps=500). "
            "Use torchrun --nproc_per_node N for several processes (DDP)."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="YAML or JSON training config")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (section.key=value)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <train.out_dir>/checkpoint.pt, exactly as if never stopped",
    )
    p.add_argument(
        "--resume-from",
        metavar="CHECKPOINT",
        help="continue from this checkpoint file (writing into train.out_dir)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="write the checkpoint's EMA weights as a model file (export.path) and exit, "
        "without training; with --resume (train.out_dir's checkpoint) or --resume-from",
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from glidekit.cli.main import UsageError
    from glidekit.train.config import load_config

    try:
        config = load_config(args.config, args.overrides)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:  # only rank 0 logs progress
        logging.getLogger("glidekit").setLevel(logging.WARNING)
    from glidekit.train.trainer import Trainer, train

    resume: bool | str = args.resume_from if args.resume_from else bool(args.resume)
    if args.export_only:
        if not resume:
            raise UsageError("--export-only needs --resume or --resume-from CHECKPOINT")
        trainer = Trainer(config, resume=resume)
        path = trainer.export()
        logger.info("step %d exported to %s", trainer.step, path)
        return 0
    result = train(config, resume=resume)
    if result.stopped:
        logger.info("stopped at step %d; resume with --resume", result.step)
    return 0
