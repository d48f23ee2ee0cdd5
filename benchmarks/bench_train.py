#!/usr/bin/env python3
"""Training throughput of the FULL-size 64x64 base model (385M parameters) on CPU.

One step = what ``glidekit train`` does per optimizer step (:meth:`Trainer.train_step`):
shapes-world batch, caption dropout, forward + hybrid loss + backward through the UNet, global
grad-norm clipping, AdamW, LR schedule and the EMA update. The model is
``RELEASED_CONFIGS["base"]`` with random weights (its dropout 0.1), fp32 weights, either plain
fp32 or bf16 autocast. Checkpoints, samples and logs are off.

Each precision: ``--warmup`` steps, then ``--steps`` rounds of (``shared/bench/calibrate.py``,
one timed step) in the same process. Reported: images/s (median step), seconds per image, and
seconds per image / calibrate seconds as the median of the per-round ratios and as fastest
step / fastest calibration (shared machines drift; the ratio much less).
Usage (one command, prints JSON)::

    python3 benchmarks/bench_train.py [--batch 2] [--steps 5] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"


def load_calibrate():
    sys.path.insert(0, str(SHARED_BENCH))
    try:
        from calibrate import calibrate_seconds
    finally:
        sys.path.pop(0)
    return calibrate_seconds


def make_trainer(precision: str, batch: int, threads: int, out_dir: str):
    from glidekit.nn.config import RELEASED_CONFIGS
    from glidekit.train import Trainer, load_config

    arch = dataclasses.asdict(RELEASED_CONFIGS["base"])
    config = load_config(
        {
            "model": {"kind": "text2im", **arch},
            "data": {"kind": "shapes", "length": 1000},
            "train": {
                "steps": 1000,
                "batch_size": batch,
                "precision": precision,
                "device": "cpu",
                "threads": threads,
                "out_dir": out_dir,
                "log_every": 0,
                "checkpoint_every": 0,
                "progress": False,
            },
            "sample": {"every": -1},
        }
    )
    return Trainer(config)


def bench(precision: str, batch: int, steps: int, warmup: int, threads: int, calibrate) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = make_trainer(precision, batch, threads, out_dir)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        for _ in range(warmup):  # also allocates AdamW's state
            trainer.train_step()
        times, cals, losses = [], [], []
        for _ in range(steps):  # rounds: calibrate, then one step
            cals.append(calibrate())
            start = time.perf_counter()
            m = trainer.train_step()
            times.append(time.perf_counter() - start)
            losses.append(m["loss"])
        trainer.close()
        del trainer
        gc.collect()
    ratios = [t / batch / c for t, c in zip(times, cals, strict=True)]
    step_s = statistics.median(times)
    return {
        "precision": precision,
        "parameters": n_params,
        "batch": batch,
        "step_seconds": [round(t, 3) for t in times],
        "calibrate_seconds": [round(c, 4) for c in cals],
        "median_step_seconds": round(step_s, 3),
        "images_per_s": round(batch / step_s, 4),
        "best_images_per_s": round(batch / min(times), 4),
        "seconds_per_image": round(step_s / batch, 3),
        # seconds per image / calibrate seconds: median of the rounds, and fastest / fastest
        "ratio_to_calibrate": round(statistics.median(ratios), 2),
        "ratio_of_fastest": round(min(times) / batch / min(cals), 2),
        "losses": [round(v, 4) for v in losses],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    calibrate = load_calibrate()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = [
        bench(prec, args.batch, args.steps, args.warmup, args.threads, calibrate)
        for prec in args.precision
    ]
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg_start": load,
        "loadavg_end": os.getloadavg() if load is not None else None,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
