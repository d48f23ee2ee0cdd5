"""Batched bulk generation on the full-size base: images/s at several batch sizes.

    python benchmarks/bench_batch.py [--prompts 16] [--batches 1,4,8] [--steps 5] [--dtype bf16]
        [--threads 2] [--json PATH]

The released base architecture (385M parameters) with random weights (timing does not depend on
them) in ``--dtype`` on the CPU, classifier-free guidance 3, DPM-Solver++(2M) with ``--steps``
karras steps, base stage only (no upsampler). ``--prompts`` items, each with its own seed, are
sampled ``--batches`` at a time as ``glidekit generate --prompts-file --batch-size`` does (one
pipeline call per batch, a seed per prompt). ``calibrate.py`` (``../shared/bench``) runs before
each batch size in the same process: each figure is also given as a ratio to it, and the CPU's
model and bf16 features are printed with the results.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from glidekit.bench import cpu_info, find_calibrate
from glidekit.diffusion import DiffusionConfig
from glidekit.nn import RELEASED_CONFIGS, create_model
from glidekit.pipelines import Text2ImagePipeline
from glidekit.tokenizer import GPT2Tokenizer

PROMPTS = ["a red circle", "a corgi", "a lighthouse at dusk", "an oil painting of a fox"]


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    config = RELEASED_CONFIGS["base"]
    model = create_model(config).eval()
    tokenizer = GPT2Tokenizer(config.text_ctx)
    pipe = Text2ImagePipeline((model, DiffusionConfig.for_model(config), tokenizer), None,
                              device="cpu", dtype=args.dtype)  # fmt: skip
    calibrate = find_calibrate()
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(args.prompts)]
    kw = {"steps": f"karras{args.steps}", "sampler": "dpm++2m", "guidance_scale": 3.0}
    pipe(prompts[:1], seed=[0], **kw)  # warm-up: load, convert, first kernels
    rows = []
    for size in args.batches:
        cal = calibrate(5) if calibrate is not None else None
        start = time.perf_counter()
        for i in range(0, len(prompts), size):
            chunk = prompts[i : i + size]
            pipe(chunk, seed=list(range(i, i + len(chunk))), **kw)
        seconds = time.perf_counter() - start
        per_image = seconds / len(prompts)
        rows.append({"batch": size, "seconds": seconds, "images_per_s": len(prompts) / seconds,
                     "seconds_per_image": per_image, "calibrate_seconds": cal,
                     "ratio_per_image": per_image / cal if cal else None})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    machine = {**cpu_info(), "torch": torch.__version__, "threads": args.threads}
    print(json.dumps(machine))
    rows = run(args)
    print(f"\n{machine['cpu']}; dtype {args.dtype}; {args.prompts} prompts, {args.steps} steps")
    print("| batch | images/s | s per image | ratio to calibrate (per image) |\n|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_per_image']:.1f}" if r["ratio_per_image"] else "-"
        print(f"| {r['batch']} | {r['images_per_s']:.3f} | {r['seconds_per_image']:.2f} | "
              f"{ratio} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
