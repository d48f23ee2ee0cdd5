"""``glidekit bench``: forward cost of the released architectures on this machine."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from glidekit.bench import as_dict, find_calibrate, forward_cost
from glidekit.pipelines.devices import BF16_FEATURES, cpu_info

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure forward cost per model and dtype on this machine",
        description="Time one forward of the full-size base (batch 2, 64 px) and upsampler "
        "(batch 1, 256 px) with random weights, per dtype; with the calibrate.py yardstick "
        "beside a checkout (or $GLIDEKIT_CALIBRATE), also as a ratio to it.",
    )
    p.add_argument("--models", nargs="+", default=["base", "upsample"],
                   choices=["base", "upsample", "base-inpaint", "upsample-inpaint"])  # fmt: skip
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--rounds", type=int, default=3, help="timed forwards per case (median)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="time the torch.compile'd forward (its compile time is reported apart)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    calibrate = find_calibrate() if args.device == "cpu" else None
    rows = []
    for name in args.models:
        for dtype in args.dtypes:
            if dtype == "fp16" and args.device == "cpu":
                raise ValueError("--dtypes fp16 is not supported on the CPU; use bf16")
            rows.append(
                as_dict(
                    forward_cost(
                        name,
                        getattr(torch, DTYPES[dtype]),
                        rounds=args.rounds,
                        device=args.device,
                        calibrate=calibrate,
                        compile=args.compile,
                    )
                )
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{'model':<18}{'dtype':<10}{'batch':>6}{'px':>6}{'seconds':>10}{'steps/s':>9}"
        f"{'calibrate s':>12}{'ratio':>8}{'peak MB':>9}{'compile s':>11}"
    )
    for r in rows:
        print(
            f"{r['model']:<18}{r['dtype']:<10}{r['batch']:>6}{r['size']:>6}"
            f"{r['seconds']:>10.3f}{r['steps_per_second']:>9.2f}"
            f"{_opt(r['calibrate_seconds'], '.3f'):>12}{_opt(r['ratio'], '.2f'):>8}"
            f"{r['peak_rss_mb']:>9.0f}{_opt(r['compile_seconds'], '.1f'):>11}"
        )
    if args.device == "cpu":
        info = cpu_info()
        have = [f for f in BF16_FEATURES if info[f]]
        print(
            f"cpu: {info['cpu']}; bf16 features: {', '.join(have) or 'none'}"
            + ("" if info["amx_bf16"] else " (no AMX: bf16 is not much faster than fp32 here)")
        )
    if calibrate is None and args.device == "cpu":
        print("(no calibrate.py found: set GLIDEKIT_CALIBRATE to ../shared/bench/calibrate.py)")
    return 0


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
