#!/usr/bin/env python3
"""Caption agreement under classifier-free guidance against training images seen (issue 17).

    python benchmarks/learning_curve.py --point 0=benchmarks/results/guidance-interval.json \\
        --point 64000=benchmarks/results/issue17-step1000.json \\
        --point 128000=benchmarks/results/issue17-step2000.json \\
        --out benchmarks/results/issue17-learning-curve

Each ``--point IMAGES=JSON`` is a ``shapes_suite.py guidance-sweep`` (or ``agreement``) result
of one export of the run, measured with the same command and seed; of its rows with no
guidance interval, the one at ``--scale`` (3, the default scale) is read, else the first.
Writes ``OUT.md`` (a table: images seen, each attribute, all at once) and ``OUT.png`` (the same as curves against images seen, with the
issue's targets dashed), and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ATTRIBUTES = ("color", "shape", "size", "position", "background", "all")
TARGETS = {"color": 0.95, "shape": 0.90, "size": 0.90, "position": 0.90, "background": 0.95,
           "all": 0.80}  # fmt: skip


def read_point(spec: str, scale: float = 3.0) -> tuple[int, dict[str, float], Path]:
    """``IMAGES=PATH`` -> (images seen, {attribute: agreement} at guidance ``scale``, path)."""
    images, sep, path = spec.partition("=")
    if not sep or not images.strip().isdigit():
        raise SystemExit(f"--point: expected IMAGES=JSON (e.g. 64000=run.json), got {spec!r}")
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--point: cannot read {path!r} ({exc})") from None
    rows: list[dict[str, Any]] = data.get("results") or [data]
    plain = [r for r in rows if not r.get("interval")] or rows
    row = next((r for r in plain if r.get("scale") == scale), plain[0])
    agreement = row.get("agreement", row)
    missing = [a for a in ATTRIBUTES if a not in agreement]
    if missing:
        raise SystemExit(f"--point: {path!r} has no agreement for {', '.join(missing)}")
    return int(images), {a: float(agreement[a]) for a in ATTRIBUTES}, file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--point", action="append", required=True, metavar="IMAGES=JSON")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale to read (3)")
    args = p.parse_args(argv)
    points = sorted(read_point(spec, args.scale) for spec in args.point)
    lines = [
        "| images seen | " + " | ".join(ATTRIBUTES) + " | source |",
        "|---|" + "---|" * (len(ATTRIBUTES) + 1),
        "| target | " + " | ".join(f">= {TARGETS[a]:.2f}" for a in ATTRIBUTES) + " | |",
    ]
    for images, agreement, path in points:
        lines.append(f"| {images:,} | " + " | ".join(f"{agreement[a]:.2f}" for a in ATTRIBUTES)
                     + f" | `{path}` |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table + "\n")
    import matplotlib  # optional dependency (the [bench] extra): only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [images for images, _, _ in points]
    for i, attr in enumerate(ATTRIBUTES):
        colour = f"C{i}"
        ax.plot(xs, [agreement[attr] for _, agreement, _ in points], "o-", color=colour,
                label=attr)  # fmt: skip
        ax.axhline(TARGETS[attr], color=colour, linestyle=":", linewidth=0.8)
    ax.set_xlabel("training images seen (from the first point's model)")
    ax.set_ylabel("agreement (classifier-free guidance)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Embedded base: caption agreement vs training (targets dotted)")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
