"""Training reports: the JSONL metrics log, the loss-curve PNG and sample grids (Pillow only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from glidekit.data import to_pil


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step (``"step"`` always set)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []

    def load(self, up_to_step: int | None = None) -> None:
        """Read existing records (dropping those after ``up_to_step`` and rewriting the file:
        a resumed run repeats the steps after its checkpoint)."""
        self.records = []
        if not self.path.is_file():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if up_to_step is None or int(rec.get("step", 0)) <= up_to_step:
                self.records.append(rec)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def plot_loss_curve(
    steps: Sequence[float],
    losses: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "training loss",
    size: tuple[int, int] = (640, 400),
) -> Path:
    """Draw the loss (grey) and its running mean (blue) against steps, log-scaled y, as a PNG."""
    path = Path(path)
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 40
    draw.text((left, 8), title, fill="black")
    pts = [
        (float(s), float(v))
        for s, v in zip(steps, losses, strict=True)
        if v > 0 and math.isfinite(v)
    ]
    draw.rectangle((left, top, right, bottom), outline="black")
    if pts:
        xs = [p[0] for p in pts]
        ys = [math.log10(p[1]) for p in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-3
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def xy(x: float, y: float) -> tuple[float, float]:
            return (
                left + (x - x0) / (x1 - x0) * (right - left),
                bottom - (y - y0) / (y1 - y0) * (bottom - top),
            )

        for tick in _nice_ticks(x0, x1):
            px = xy(tick, y0)[0]
            draw.line((px, bottom, px, bottom + 4), fill="black")
            draw.text((px - 10, bottom + 8), f"{tick:g}", fill="black")
        for tick in _nice_ticks(y0, y1, 4):
            py = xy(x0, tick)[1]
            draw.line((left - 4, py, left, py), fill="black")
            draw.text((4, py - 6), f"{10**tick:.3g}", fill="black")
        draw.text(((left + right) // 2 - 12, h - 16), "step", fill="black")
        if len(pts) > 1:
            draw.line([xy(x, y) for x, y in zip(xs, ys, strict=True)], fill=(170, 170, 170))
            k = max(1, len(ys) // 20)
            smooth = [
                sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1])
                for i in range(len(ys))
            ]
            draw.line(
                [xy(x, y) for x, y in zip(xs, smooth, strict=True)], fill=(30, 80, 200), width=2
            )
        else:
            px, py = xy(xs[0], ys[0])
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(30, 80, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_grid(rows: Sequence[torch.Tensor], path: str | os.PathLike, pad: int = 2) -> Path:
    """Tile image rows (each (N, 3, H, W) in [-1, 1]; smaller images are scaled up, nearest
    neighbour, to the largest row's size) as a PNG."""
    path = Path(path)
    if not rows:
        raise ValueError("save_grid: no rows")
    n = max(len(r) for r in rows)
    size = max(int(r.shape[-1]) for r in rows)
    grid = Image.new("RGB", (n * (size + pad) + pad, len(rows) * (size + pad) + pad), "white")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            tile = to_pil(image)
            if tile.size != (size, size):
                tile = tile.resize((size, size), Image.NEAREST)
            grid.paste(tile, (pad + j * (size + pad), pad + i * (size + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


__all__ = ["MetricsLog", "plot_loss_curve", "save_grid"]
