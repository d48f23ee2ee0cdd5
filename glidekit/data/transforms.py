"""Image loading and preprocessing for training: decode, normalise, resize, crop, to tensor.

Every training image goes through :func:`load_image` (any Pillow-readable file/bytes/image to
8-bit RGB, with EXIF orientation applied and transparency composited on white), then
:func:`resize_and_crop` (shortest side to ``size``, centre or random square crop, one high
quality bicubic resample), then :func:`to_tensor` (``(3, S, S)`` float in ``[-1, 1]``).
:func:`image_to_tensor` does all three. :func:`make_low_res` builds the upsampler's low-res
conditioning input from a high-res training image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "load_image",
    "resize_and_crop",
    "to_tensor",
    "to_pil",
    "image_to_tensor",
    "make_low_res",
    "add_low_res",
]

#: File extensions (lower case, with the dot) treated as images by the datasets.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_WHITE = (255, 255, 255)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Integer/float single-channel modes (``I;16*``, ``I``, ``F``) to 8-bit RGB, scaling the range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        arr8 = np.round(arr.astype(np.float32) / 257.0)
    elif img.mode == "I":
        arr = arr.astype(np.float64)
        # 32-bit int images are almost always 16-bit data (e.g. some PNG decoders).
        arr8 = np.round(arr / 257.0) if arr.max(initial=0) > 255 else arr
    else:  # "F"
        arr = arr.astype(np.float64)
        arr8 = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    arr8 = np.clip(arr8, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on a white background."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageSource, *, min_size: int | None = None) -> Image.Image:
    """Decode ``source`` (path, encoded bytes or a PIL image) to an 8-bit RGB PIL image.

    EXIF orientation is applied (``ImageOps.exif_transpose``); RGBA/LA/transparent palette
    images are composited on white; grayscale, palette, CMYK and 16-bit images are converted
    (16-bit values are scaled, not clipped). ``min_size``, if given, lets the JPEG decoder
    downscale by a power of two while keeping both sides >= ``min_size`` (much faster for big
    photos, no visible quality loss before the final resize).

    Raises ``FileNotFoundError`` for a missing path and ``PIL.UnidentifiedImageError`` /
    ``OSError`` for undecodable data.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            fp: io.BytesIO | Path = io.BytesIO(bytes(source))
        else:
            fp = Path(source)
            if not fp.is_file():
                raise FileNotFoundError(f"load_image: source={str(source)!r} is not a file")
        img = Image.open(fp)
        if min_size is not None and img.format == "JPEG":
            img.draft("RGB", (int(min_size), int(min_size)))
        img.load()  # decode now so a corrupt file fails here, with the file still open
    img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def resize_and_crop(
    img: Image.Image,
    size: int,
    *,
    random_crop: bool = False,
    generator: torch.Generator | None = None,
) -> Image.Image:
    """Scale ``img`` so its shortest side is ``size`` and crop a ``size`` x ``size`` square.

    The crop is centred, or uniformly random along the long side when ``random_crop`` (drawn
    from ``generator``, or torch's default generator - which the DataLoader seeds per worker).
    Cropping happens in source coordinates and the result is produced by a single bicubic
    resample (with Pillow's ``reducing_gap`` box pre-reduction for large downscales, which
    anti-aliases like an area filter).
    """
    if size <= 0:
        raise ValueError(f"resize_and_crop: size must be a positive int, got {size}")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"resize_and_crop: image has empty size {img.size}")
    side = float(min(w, h))  # square side, in source pixels
    slack_x, slack_y = w - side, h - side
    if random_crop:
        u = float(torch.rand((), generator=generator))
        left, top = slack_x * u, slack_y * u  # only one of the slacks is non-zero
    else:
        left, top = slack_x / 2.0, slack_y / 2.0
    box = (left, top, left + side, top + side)
    if side == size and left == int(left) and top == int(top):
        return img.crop(tuple(int(v) for v in box))  # type: ignore[arg-type]
    return img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image to a float32 tensor ``(3, H, W)`` in ``[-1, 1]`` (0 -> -1, 255 -> 1)."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of :func:`to_tensor`: ``(3, H, W)`` in ``[-1, 1]`` to an RGB PIL image (clamped)."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"to_pil: expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    arr = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def image_to_tensor(
    source: ImageSource,
    size: int,
    *,
    random_crop: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Load ``source``, resize/crop to ``size`` and return ``(3, size, size)`` float in ``[-1, 1]``."""
    img = load_image(source, min_size=size)
    return to_tensor(resize_and_crop(img, size, random_crop=random_crop, generator=generator))


def make_low_res(image: torch.Tensor | Image.Image, low_res_size: int = 64) -> torch.Tensor:
    """The upsampler's low-res input: downsample a high-res image to ``low_res_size``.

    ``image`` is ``(3, H, W)`` or ``(B, 3, H, W)`` float in ``[-1, 1]`` (or an RGB PIL image).
    Integer factors (256 -> 64) use an exact area (box) average; other sizes use antialiased
    bicubic. Returns the same batch layout at ``(…, 3, low_res_size, low_res_size)``, clamped
    to ``[-1, 1]``.
    """
    if isinstance(image, Image.Image):
        image = to_tensor(image)
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"make_low_res: image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}"
        )
    if low_res_size <= 0:
        raise ValueError(f"make_low_res: low_res_size must be positive, got {low_res_size}")
    batched = image.ndim == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    x = x.float()
    if h == low_res_size and w == low_res_size:
        out = x.clone()
    elif h % low_res_size == 0 and w % low_res_size == 0:
        out = F.interpolate(x, size=(low_res_size, low_res_size), mode="area")
    else:
        out = F.interpolate(
            x,
            size=(low_res_size, low_res_size),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        ).clamp_(-1.0, 1.0)
    return out if batched else out[0]


def add_low_res(sample: dict, low_res_size: int = 64) -> dict:
    """Return ``sample`` with ``"low_res"`` = :func:`make_low_res` of ``sample["image"]`` added."""
    out = dict(sample)
    out["low_res"] = make_low_res(sample["image"], low_res_size)
    return out
