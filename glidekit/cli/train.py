"""``glidekit train CONFIG [section.key=value ...] [--resume | --resume-from CHECKPOINT]``.

Runs the same way on one process or under ``torchrun --nproc_per_node N``. Exit codes: 0 when
training finished or was stopped by SIGTERM/SIGINT after writing its checkpoint (continue with
``--resume``); 1 when the loss stopped being finite (the last good checkpoint is kept, nothing
is exported); 2 for a bad config, override or command line, a corrupt checkpoint, or a run
folder another training run is using.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import yaml

from glidekit.errors import UsageError
from glidekit.train import (
    NonFiniteLossError,
    RunFolderBusyError,
    export_checkpoint,
    load_run_config,
    train,
)

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Train a GLIDE UNet (text2im, inpaint, super_res, super_res_inpaint) or the noise-aware "
    "CLIP from a YAML/JSON config. Any config key can be overridden as section.key=value "
    "(e.g. optim.lr=1e-4 model.num_channels=64 train.steps=500). --resume reads CONFIG again "
    "(edits to it apply) and applies again the overrides the run was started with, which its "
    "checkpoint records; a key given again replaces the recorded one (train.steps=60000 to "
    "train on). A run folder is locked while a run trains in it. Use torchrun "
    "--nproc_per_node N for several processes (DDP)."
)


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command to the ``glidekit`` parser."""
    p = subparsers.add_parser(
        "train", help="train or fine-tune a GLIDE model or the noised CLIP", description=DESCRIPTION
    )
    p.add_argument("config", metavar="CONFIG", help="YAML or JSON training config")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (section.key=value)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <train.out_dir>/checkpoint.pt, exactly as if never stopped, with "
        "the run's recorded overrides unless given again",
    )
    p.add_argument(
        "--resume-from",
        metavar="CHECKPOINT",
        help="continue from this checkpoint file (writing into train.out_dir), with its "
        "recorded overrides unless given again",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="write the checkpoint's EMA weights as a model file (export.path) and exit, "
        "without training (also while a run trains); with --resume (train.out_dir's "
        "checkpoint) or --resume-from",
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    resume: bool | str = args.resume_from if args.resume_from else bool(args.resume)
    config, overrides = load_run_config(args.config, args.overrides, resume=resume)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if int(os.environ.get("RANK", "0") or 0) != 0:  # only rank 0 logs progress
        logging.getLogger("glidekit").setLevel(logging.WARNING)
    if args.export_only:
        if not resume:
            raise UsageError("--export-only needs --resume or --resume-from CHECKPOINT")
        export_checkpoint(config, resume)
        return 0
    try:
        result = train(config, resume=resume, overrides=overrides)
    except RunFolderBusyError as exc:
        raise UsageError(str(exc)) from None
    except NonFiniteLossError as exc:  # the run, not the input: exit code 1, one line
        print(f"glidekit train: error: {exc}", file=sys.stderr)
        return 1
    if result.stopped:
        logger.info("stopped at step %d; resume with --resume", result.step)
    return 0
