#!/usr/bin/env python3
"""Cost of one CLIP-guided sampling step on CPU, fp32.

One step = ``cond_fn(x, t)``: forward and backward (w.r.t. the image) through the FULL-size
noised CLIP image encoder (ViT, 12 blocks x 768, 257 tokens) at batch 1, 64x64, random weights.
The text embedding is computed once when the cond_fn is built and is not part of the step.

Reported as a ratio to ``shared/bench/calibrate.py`` measured in the same process (shared
machines drift in speed; the ratio does not), interleaved in rounds: ``ratio_to_calibrate`` is
the median of the per-round ratios, ``ratio_of_fastest_rounds`` = fastest step round / fastest
calibration (robust when other processes compete for the cores). Usage::

    python3 benchmarks/bench_clip_step.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


def build_step():
    """A zero-argument callable doing one CLIP-guided step with the full-size image encoder."""
    from glidekit.clip import CLIPConfig, create_clip_model

    torch.manual_seed(0)
    config = CLIPConfig()
    model = create_clip_model(config, device="cpu")
    # Token ids instead of text prompts: no vocabulary needed; any ids give the same cost.
    tokens = torch.zeros(1, config.max_text_len, dtype=torch.long)
    tokens[0, :3] = torch.tensor([49406, 320, 49407])
    cond_fn = model.cond_fn(tokens, grad_scale=1.0)
    x = torch.rand(1, 3, config.image_size, config.image_size) * 2 - 1
    t = torch.tensor([500])

    def step() -> torch.Tensor:
        return cond_fn(x, t)

    return step


def time_step(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        grad = step()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(grad).all():
        raise RuntimeError("non-finite gradient")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="steps timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="calibrate/step rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calibrate_seconds = load_calibrate()
    step = build_step()
    calibrate_seconds(repeats=2)  # warm-up (thread pool, allocator)
    step()
    # Interleave calibration and step timing so machine drift affects both alike.
    cals, steps = [], []
    for _ in range(args.rounds):
        cals.append(calibrate_seconds())
        steps.append(time_step(step, args.repeats))
    ratios = [s / c for s, c in zip(steps, cals, strict=True)]
    result = {
        "benchmark": "clip_guided_step",
        "what": "cond_fn fwd+bwd, full-size noised-CLIP image encoder, batch 1, 64x64, fp32 CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "repeats_per_round": args.repeats,
        "step_seconds": [round(s, 4) for s in steps],
        "calibrate_seconds": [round(c, 4) for c in cals],
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_to_calibrate": round(statistics.median(ratios), 3),
        # Least disturbed by other processes on a shared machine: fastest round of each.
        "ratio_of_fastest_rounds": round(min(steps) / min(cals), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
