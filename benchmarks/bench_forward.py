"""Forward cost of the full-size base and upsampler on CPU, fp32 and bf16, as calibrate ratios.

    python benchmarks/bench_forward.py [--rounds 5] [--json out.json]

Each (model, dtype) runs in its own subprocess (``glidekit bench --json``) so its peak resident
memory is its own. ``../shared/bench/calibrate.py`` is timed right before each forward in the same
process; the ratio is the median over rounds of forward_seconds / calibrate_seconds, the form of
``../shared/reference/timings.json`` (the official code's figures), printed beside ours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
KEYS = {"base": "base_forward_batch2_64px", "upsample": "upsample_forward_batch1_256px"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reference = json.loads((SHARED / "reference" / "timings.json").read_text())
    rows = []
    for name in KEYS:
        for dtype in ("fp32", "bf16"):
            cmd = [sys.executable, "-m", "glidekit.cli.main", "bench", "--models", name,
                   "--dtypes", dtype, "--rounds", str(args.rounds), "--json"]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.extend(json.loads(out))
    print("| model | dtype | seconds | ratio to calibrate | official fp32 | "
          "official bf16 autocast | peak RSS MB (official fp32) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = reference[KEYS[r["model"]]]
        print(
            f"| {r['model']} (batch {r['batch']}, {r['size']} px) | {r['dtype']} | "
            f"{r['seconds']:.3f} | {r['ratio']:.2f} | {ref['official_fp32_ratio']} | "
            f"{ref['official_under_bf16_autocast_ratio']} | {r['peak_rss_mb']:.0f} "
            f"({ref['peak_rss_mb_fp32']}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
