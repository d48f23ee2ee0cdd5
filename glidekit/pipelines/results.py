"""What a pipeline returns, and the PNG files it is saved as.

:class:`PipelineResult` holds the images and the params that made them. Every PNG carries its
params as JSON in a ``glidekit`` text chunk (plus a few readable keys), so
``glidekit generate --from picture.png`` can make it again; the same image and params give the
same bytes. Files are never overwritten (a taken name gets ``-1``, ``-2``, ...) and are written
to a temporary name first, so no partial PNG ever has a final name.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from glidekit import __version__
from glidekit.fileio import fsync_dir

PNG_KEY = "glidekit"


def tensor_to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB images (rounded to 8 bits as the notebooks do)."""
    arr = ((batch.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy(), mode="RGB") for a in arr]


def make_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile images (all the size of the first) into a near-square grid."""
    if not images:
        raise ValueError("make_grid: no images")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, img in enumerate(images):
        grid.paste(
            img.resize((w, h)) if img.size != (w, h) else img, ((i % cols) * w, (i // cols) * h)
        )
    return grid


@dataclass
class PipelineResult:
    """What a pipeline returns.

    images: the final PIL images, one per batch row (prompt-major: each prompt's
    ``num_images`` images in a row). params: every parameter that made them (JSON-able); with
    ``prompts`` the batch's prompts in row order. samples: the final images as a (B, 3, H, W)
    float tensor in [-1, 1] (CPU). low_res: the base model's images when an upsampler ran.
    """

    images: list[Image.Image]
    params: dict[str, Any]
    samples: torch.Tensor | None = None
    low_res: list[Image.Image] | None = None
    rows: list[int] | None = None  # batch row of each image, when only some are kept

    def select(self, index: int) -> PipelineResult:
        """Only image ``index`` (its params still describe the whole batch it came from)."""
        rows = self.rows or list(range(len(self.images)))
        return PipelineResult(
            images=[self.images[index]],
            params=self.params,
            samples=None if self.samples is None else self.samples[index : index + 1],
            low_res=None if self.low_res is None else [self.low_res[index]],
            rows=[rows[index]],
        )

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Image.Image]:
        return iter(self.images)

    def image_params(self, index: int) -> dict[str, Any]:
        """The params of image ``index`` alone: its own ``prompt``, ``index`` and (in a batch
        with a seed per prompt) its own ``seed`` added."""
        row = self.rows[index] if self.rows is not None else index
        params = dict(self.params)
        params["index"] = row
        params["prompt"] = self.params["prompts"][row]
        if isinstance(params.get("seed"), list):
            params["seed"] = params["seed"][row // int(params.get("num_images") or 1)]
        return params

    def items(self) -> list[PipelineResult]:
        """One result per prompt of a batch made with one seed per prompt, each with the
        params that prompt has alone (its seed, its rows): what an unbatched run records."""
        seeds = self.params.get("seed")
        if not isinstance(seeds, list):
            return [self]
        n = int(self.params.get("num_images") or 1)
        out = []
        for k, seed in enumerate(seeds):
            rows = slice(k * n, (k + 1) * n)
            params = dict(self.params, seed=seed, prompts=self.params["prompts"][rows])
            out.append(PipelineResult(
                images=self.images[rows], params=params,
                samples=None if self.samples is None else self.samples[rows],
                low_res=None if self.low_res is None else self.low_res[rows],
            ))  # fmt: skip
        return out

    def grid(self, cols: int | None = None) -> Image.Image:
        return make_grid(self.images, cols)

    def save(self, folder: str | os.PathLike = ".", *, prefix: str | None = None,
             grid: bool = False) -> list[Path]:  # fmt: skip
        """Write each image as a PNG carrying its params (never overwriting); returns paths.

        With ``grid`` the grid image comes last in the list.
        """
        folder = Path(folder)
        paths = []
        for i, img in enumerate(self.images):
            p = self.image_params(i)
            stem = prefix or output_stem(p["prompt"], p["seed"])
            name = f"{stem}-{i}" if len(self.images) > 1 else stem
            paths.append(save_png(img, folder / f"{name}.png", p))
        if grid:
            seed = self.params["seed"]
            stem = prefix or output_stem(self.params["prompts"][0],
                                         seed[0] if isinstance(seed, list) else seed)  # fmt: skip
            grid_params = dict(self.params)
            grid_params["grid"] = True
            paths.append(save_png(self.grid(), folder / f"{stem}-grid.png", grid_params))
        return paths


def jsonable(value: Any) -> Any:
    """Params values as JSON types (dataclasses, paths, tuples, dtypes...)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def output_stem(prompt: str, seed: int, max_len: int = 48) -> str:
    """A file-name stem from a prompt and seed: ``an-oil-painting-of-a-corgi-s42``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_len].strip("-")
    return f"{slug or 'image'}-s{seed}"


def fresh_path(path: str | os.PathLike) -> Path:
    """``path`` if free, else the first free ``<stem>-1<suffix>``, ``-2``, ... (not created)."""
    path = Path(path)
    if not path.exists():
        return path
    n = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def png_info(params: dict[str, Any]) -> PngImagePlugin.PngInfo:
    """The text chunks of a glidekit PNG: the params as JSON, and a few readable keys."""
    info = PngImagePlugin.PngInfo()
    data = jsonable(params)
    info.add_text(PNG_KEY, json.dumps(data, sort_keys=True))
    readable = {
        "prompt": data.get("prompt"),
        "seed": data.get("seed"),
        "model": data.get("base") or data.get("upsampler"),
        "upsampler": data.get("upsampler"),
        "sampler": data.get("sampler"),
        "steps": data.get("steps"),
        "guidance_scale": data.get("guidance_scale"),
    }
    for key, value in readable.items():
        if value is not None:
            info.add_itxt(key, str(value))
    info.add_text("Software", f"glidekit {__version__}")
    return info


def png_bytes(image: Image.Image, params: dict[str, Any]) -> bytes:
    """The PNG file of ``image`` with ``params`` as text chunks.

    The same image and params give the same bytes: no time chunk, sorted JSON, fixed chunk
    order and compression.
    """
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info(params))
    return buf.getvalue()


def _temp_beside(path: Path) -> Path:
    """A fresh hidden temporary name next to ``path`` (not a ``.png``; removed on failure)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_temp(data: bytes, tmp: Path) -> None:
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (overwrites).

    Readers (and a run killed at any point) see either no file / the old file or the whole new
    one under ``path``, never a part.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        _write_temp(data, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def save_png(image: Image.Image, path: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Write ``image`` with ``params`` in its metadata to ``path`` or a fresh variant of it.

    Never overwrites, and never leaves a partial PNG under a final name: the file is written
    to a temporary name and then linked to the first free name (link fails on a taken name, so
    a file that appears meanwhile is not overwritten either).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(image, params)
    tmp = _temp_beside(path)
    try:
        _write_temp(data, tmp)
        while True:
            target = fresh_path(path)
            try:
                os.link(tmp, target)
            except FileExistsError:  # raced with another writer; try the next name
                continue
            except OSError:  # no hard links here: replace, after the free-name check
                os.replace(tmp, target)
            break
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return target


def read_png_params(path: str | os.PathLike, name: str = "--from") -> dict[str, Any]:
    """The params a glidekit PNG was made with (its ``glidekit`` text chunk, which glidekit
    writes before the pixels: read from the header, nothing is decoded)."""
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        raise FileNotFoundError(f"{name}: {str(path)!r} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                raw = img.info.get(PNG_KEY)
    except Image.DecompressionBombError:
        raise ValueError(
            f"{name}: {str(path)!r} has far too many pixels for a glidekit PNG"
        ) from None
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {str(path)!r} as an image ({exc})") from None
    if raw is None:
        raise ValueError(f"{name}: {str(path)!r} carries no glidekit parameters")
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{name}: the glidekit parameters of {str(path)!r} are corrupt ({exc})"
        ) from None
    if not isinstance(params, dict):
        raise ValueError(f"{name}: the glidekit parameters of {str(path)!r} are not an object")
    return params
