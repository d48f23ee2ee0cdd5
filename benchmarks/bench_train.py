#!/usr/bin/env python3
"""Training throughput of the FULL-size 64x64 base model (385M parameters) on CPU.

One step = what ``glidekit train`` does per optimizer step (:meth:`Trainer.train_step`):
shapes-world batch, caption dropout, forward + hybrid loss + backward through the UNet, global
grad-norm clipping, AdamW, LR schedule and the EMA update. The model is
``RELEASED_CONFIGS["base"]`` with random weights (its dropout 0.1), fp32 weights, either plain
fp32 or bf16 autocast. Checkpoints, samples and logs are off.

Each precision: ``--warmup`` steps, then ``--steps`` timed steps; ``shared/bench/calibrate.py``
is measured in the same process before and after, and the report gives images/s, seconds per
image, and seconds per image / calibrate seconds (shared machines drift; the ratio does not).
Usage (one command, prints JSON)::

    python3 benchmarks/bench_train.py [--batch 2] [--steps 3] [--precision fp32 bf16]
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
        cal_before = calibrate()
        for _ in range(warmup):
            trainer.train_step()
        times, losses = [], []
        for _ in range(steps):
            start = time.perf_counter()
            m = trainer.train_step()
            times.append(time.perf_counter() - start)
            losses.append(m["loss"])
        cal_after = calibrate()
        trainer.close()
        del trainer
        gc.collect()
    step_s = statistics.median(times)
    cal = statistics.median([cal_before, cal_after])
    per_image = step_s / batch
    return {
        "precision": precision,
        "parameters": n_params,
        "batch": batch,
        "step_seconds": [round(t, 3) for t in times],
        "median_step_seconds": round(step_s, 3),
        "images_per_s": round(batch / step_s, 4),
        "seconds_per_image": round(per_image, 3),
        "calibrate_seconds": [round(cal_before, 4), round(cal_after, 4)],
        "ratio_to_calibrate": round(per_image / cal, 2),
        "losses": [round(v, 4) for v in losses],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision")
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
