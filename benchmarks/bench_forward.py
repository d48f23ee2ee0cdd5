"""Forward cost of the full-size base and upsampler on CPU, fp32 and bf16, as calibrate ratios.

    python benchmarks/bench_forward.py [--models base upsample] [--rounds 3] [--json out.json]

Each (model, precision) runs in its own subprocess so its peak resident memory is its own. In
each round the yardstick ../shared/bench/calibrate.py is timed right before the forward, in the
same process; the reported ratio is the median over rounds of forward_seconds / calibrate_seconds
(what ../shared/reference/timings.json holds for the official code). Weights are random (timing
does not depend on their values); the text encoding is computed once, outside the timed forward,
as glidekit's samplers do.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CASES = {"base": (2, 64), "upsample": (1, 256)}


def run_case(name: str, precision: str, rounds: int) -> dict:
    import torch

    sys.path.insert(0, str(SHARED / "bench"))
    from calibrate import calibrate_seconds

    from glidekit.nn import RELEASED_CONFIGS, create_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = RELEASED_CONFIGS[name]
    model = create_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    batch, size = CASES[name]
    x = torch.randn(batch, 3, size, size)
    kwargs = {}
    if config.super_res:
        kwargs["low_res"] = torch.rand(batch, 3, size // 4, size // 4) * 2 - 1
    if precision == "bf16":
        model.convert_to_fp16(torch.bfloat16)
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 500)
    tokens = torch.randint(0, config.n_vocab, (batch, config.text_ctx))
    mask = torch.ones(batch, config.text_ctx, dtype=torch.bool)
    with torch.inference_mode():
        text = model.encode_text(tokens, mask)
        model(x, t, text=text, **kwargs)  # warm-up (also fills the per-layer text k/v cache)
        ratios, fwd, cal = [], [], []
        for _ in range(rounds):
            c = calibrate_seconds(3)
            start = time.perf_counter()
            model(x, t, text=text, **kwargs)
            f = time.perf_counter() - start
            ratios.append(f / c)
            fwd.append(f)
            cal.append(c)
    return {
        "model": name,
        "precision": precision,
        "batch": batch,
        "size": size,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "forward_s": fwd,
        "calibrate_s": cal,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], args.rounds)))
        return
    reference = json.loads((SHARED / "reference" / "timings.json").read_text())
    results = []
    for name in args.models:
        for precision in args.precisions:
            out = subprocess.run(
                [sys.executable, __file__, "--case", name, precision, "--rounds", str(args.rounds)],
                check=True,
                capture_output=True,
                text=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    key = {"base": "base_forward_batch2_64px", "upsample": "upsample_forward_batch1_256px"}
    print("| model | precision | ratio to calibrate | official fp32 | official bf16 autocast | "
          "peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        ref = reference[key[r["model"]]]
        print(
            f"| {r['model']} (batch {r['batch']}, {r['size']} px) | {r['precision']} | "
            f"{r['ratio']:.2f} | {ref['official_fp32_ratio']} | "
            f"{ref['official_under_bf16_autocast_ratio']} | {r['peak_rss_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
