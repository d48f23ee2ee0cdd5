#!/usr/bin/env python3
"""GPU throughput and fp16 / bf16 faithfulness of the full-size cascade, in one run.

    bash benchmarks/gpu.sh                                  # on a CUDA machine (about 5 min)
    python benchmarks/bench_gpu.py --device cpu --tiny      # a smoke test of this script

Models: the released architectures with the fixed synthetic weights of ``bench_cascade.py``
(built once under ``--workdir``). Measured, each on the pipeline a user runs
(:class:`~glidekit.pipelines.Text2ImagePipeline`, text encoding included), with the device
synchronised around every timing and a warm-up call first:

1. The base stage alone (official steps: 100 ancestral, classifier-free guidance 3), images/s
   at batch 1, 4 and 16, in fp16 and bf16.
2. The whole cascade at batch 16, images/s: official steps (100 + "fast27") and
   ``preset="fast"`` (DPM-Solver++ karras25 + 10, guidance for t/T in [0.3, 1]), fp16 and bf16.
3. Peak device memory of each row (``torch.cuda.max_memory_allocated``).
4. Faithfulness (openai/glide-text2im #31 reports NaN / black images in fp16 on some cards): the
   cascade at official steps for 4 prompts in fp32, fp16 and bf16 on the same seed (the noise is
   drawn in float32 whatever the dtype); every output finite, and the mean absolute difference
   of the 8-bit images from fp32's, against 2/255.

Output: a Markdown table (stdout and ``--out``.md) and every figure (``--out``.json), with the
card's name, torch and CUDA versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_cascade beside this file
from bench_cascade import _set_tiktoken_dir, model_paths, worker_prepare  # noqa: E402

from glidekit.pipelines import Text2ImagePipeline  # noqa: E402

logger = logging.getLogger("bench_gpu")
PROMPTS = [f"an oil painting of a corgi number {i}" for i in range(16)]
CRITERION_MAD = 2.0  # /255, against fp32 at the same noise
GOAL_IMAGES_PER_S = 5.0  # the cascade at official steps, batch 16, fp16 (issue 18)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, call: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """(result, seconds, peak device memory in MiB) of ``call()``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = call()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return result, seconds, peak


def base_rows(paths: dict[str, Path], device: torch.device, dtypes: list[str],
              batches: list[int], steps: str) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for dtype in dtypes:
        pipe = Text2ImagePipeline(paths["base"], None, device=device, dtype=dtype)
        pipe(PROMPTS[:1], seed=0, steps="3")  # warm-up: load, kernels, allocator
        for batch in batches:
            _, seconds, peak = timed(
                device, lambda b=batch, p=pipe: p(PROMPTS[:b], seed=0, steps=steps)
            )
            rows.append({"what": "base", "dtype": dtype, "batch": batch, "steps": steps,
                         "seconds": seconds, "images_per_s": batch / seconds,
                         "peak_mib": peak})  # fmt: skip
            logger.info("base %s batch %d: %.2f images/s", dtype, batch, batch / seconds)
        del pipe
    return rows


def cascade_rows(paths: dict[str, Path], device: torch.device, dtypes: list[str], batch: int,
                 official: dict[str, str], fast: dict[str, str]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for dtype in dtypes:
        for preset in ("official", "fast"):
            pipe = Text2ImagePipeline(paths["base"], paths["upsample"], device=device,
                                      dtype=dtype, preset=preset)  # fmt: skip
            pipe(PROMPTS[:1], seed=0, steps="3", upsample_steps="2")  # warm-up
            kwargs = official if preset == "official" else fast
            result, seconds, peak = timed(
                device, lambda p=pipe, k=kwargs: p(PROMPTS[:batch], seed=0, **k)
            )
            params = result.params
            rows.append({"what": "cascade", "preset": preset, "dtype": dtype, "batch": batch,
                         "steps": f"{params['sampler']} {params['steps']} + "
                                  f"{params['upsample_sampler']} {params['upsample_steps']}",
                         "seconds": seconds, "images_per_s": batch / seconds,
                         "peak_mib": peak})  # fmt: skip
            logger.info("cascade %s %s: %.2f images/s", preset, dtype, batch / seconds)
            del pipe, result
    return rows


def faithfulness(paths: dict[str, Path], device: torch.device, dtypes: list[str],
                 official: dict[str, str]) -> list[dict[str, Any]]:  # fmt: skip
    """Each dtype's cascade against fp32's on the same seed: finite, MAD of the 8-bit images."""
    outs: dict[str, Any] = {}
    for dtype in ["fp32", *dtypes]:
        pipe = Text2ImagePipeline(paths["base"], paths["upsample"], device=device, dtype=dtype)
        result = pipe(PROMPTS[:4], seed=1, **official)
        outs[dtype] = (result.samples, np.stack([np.asarray(im, np.int16) for im in result.images]))
        del pipe
    ref = outs["fp32"][1]
    rows = []
    for dtype in dtypes:
        samples, images = outs[dtype]
        diff = np.abs(images - ref)
        finite, mad = bool(torch.isfinite(samples).all()), float(diff.mean())
        rows.append({"what": "faithfulness", "dtype": dtype, "finite": finite,
                     "mad_vs_fp32": mad, "max_vs_fp32": int(diff.max()),
                     "met": finite and mad <= CRITERION_MAD})  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"Device: {machine['device_name']} (torch {machine['torch']}, CUDA "
             f"{machine['cuda']}); synthetic weights, "
             f"{'TINY models (a smoke test)' if machine['tiny'] else 'full size'}; "
             f"{machine['when']}", ""]  # fmt: skip
    lines += ["| what | dtype | batch | steps | images/s | seconds | peak MiB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["what"] == "faithfulness":
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        name = r["what"] + (f" ({r['preset']})" if "preset" in r else "")
        goal = ""
        if r.get("preset") == "official" and r["dtype"] == "fp16":
            goal = " (goal 5: " + ("met)" if r["images_per_s"] >= GOAL_IMAGES_PER_S else "not met)")
        lines.append(f"| {name} | {r['dtype']} | {r['batch']} | {r['steps']} | "
                     f"{r['images_per_s']:.2f}{goal} | {r['seconds']:.1f} | {peak} |")  # fmt: skip
    lines += ["", "| dtype | finite | MAD vs fp32 (/255) | max | within 2/255 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["what"] == "faithfulness":
            lines.append(f"| {r['dtype']} | {r['finite']} | {r['mad_vs_fp32']:.2f} | "
                         f"{r['max_vs_fp32']} | {'met' if r['met'] else 'NOT met'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu with --tiny")
    p.add_argument("--tiny", action="store_true", help="small models, few steps: a smoke test")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/glidekit-bench-gpu"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"),
                   help="writes OUT.md and OUT.json")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench_gpu] %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (run with --device cpu --tiny to smoke-test)")
    if device.type != "cuda" and not args.tiny:
        p.error("--device cpu: the full run is for GPUs; add --tiny for a smoke test")
    _set_tiktoken_dir()
    worker_prepare(args.workdir, args.tiny)
    paths = model_paths(args.workdir, args.tiny)
    dtypes = ["fp16", "bf16"] if device.type == "cuda" else ["bf16"]
    official = {"steps": "100", "upsample_steps": "fast27"}
    if args.tiny:
        official = {"steps": "4", "upsample_steps": "3"}
    rows = base_rows(paths, device, dtypes, [1, 4, 16] if not args.tiny else [1, 4],
                     official["steps"])  # fmt: skip
    fast = {"steps": "karras4", "upsample_steps": "3"} if args.tiny else {}  # else the preset's
    rows += cascade_rows(paths, device, dtypes, 16 if not args.tiny else 2, official, fast)
    rows += faithfulness(paths, device, dtypes, official)
    machine = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tiny": args.tiny,
    }  # fmt: skip
    text = markdown(rows, machine)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                        indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
