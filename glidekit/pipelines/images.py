"""Images into the pipelines: pictures and masks, read, checked, squared and resized.

In: any image Pillow reads (RGBA, grayscale, palette, 16-bit, EXIF-rotated JPEG, ...) through
:func:`glidekit.data.transforms.load_image`; non-square images are centre-cropped
(``fit="crop"``) or padded with mid grey (``fit="pad"``) to a square, then resized with bicubic
resampling as the official notebooks do.

Masks: **white (or True / 1) marks the region to replace**, black the region to keep; any
Pillow image (converted to grayscale, threshold 50%) or a tensor/array. Without a mask, an
image's alpha channel is used: transparent (alpha < 50%) = replace. Internally the models take
the opposite, ``inpaint_mask`` = 1 where the source is KEPT; :func:`prepare_keep_masks` returns
that form.

Pictures are size-checked from their header before decoding (:data:`MAX_PIXELS`). PNG files
out: :mod:`glidekit.pipelines.results`.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from glidekit.data.transforms import load_image, to_tensor

FITS = ("crop", "pad")
_PAD_GREY = (128, 128, 128)

ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | torch.Tensor (3, H, W) in [-1, 1]


# --------------------------------------------------------------------------- reading


def input_label(source: Any) -> str | None:
    """How an input image is named in the params."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    return f"<{type(source).__name__}>"


#: Input pictures larger than this are refused from their header, before decoding (the CLI's
#: ``--max-megapixels`` and the web app's limit default to it: 4096 x 4096).
MAX_PIXELS = 4096 * 4096


def open_header(fp: Any, name: str, label: str, max_pixels: int) -> Image.Image:
    """Open ``fp`` reading its header only, and refuse more than ``max_pixels`` pixels (before
    anything is decoded; Pillow's own bomb warning is ours to give, as one line)."""
    limit = (
        f"more than {max_pixels / 1e6:.1f} megapixels; resize it first (or raise --max-megapixels)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError:
        raise ValueError(f"{name}: {label} has far {limit}") from None
    except OSError as exc:  # includes UnidentifiedImageError
        raise ValueError(f"{name}: cannot read {label} as an image ({exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ValueError(f"{name}: {label} is {w}x{h} pixels, {limit}")
    return img


def _decode(fp: Any, name: str, label: str, max_pixels: int) -> Image.Image:
    """Open ``fp``, check the pixel count from the header, then decode."""
    img = open_header(fp, name, label, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: cannot decode {label} ({exc})") from None
    return img


def _open(source: ImageInput, name: str, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` keeping its mode (EXIF orientation applied); a file or bytes of more
    than ``max_pixels`` (default :data:`MAX_PIXELS`) are refused from the header."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            is_file = path.is_file()
        except OSError:  # a symlink loop, a name too long
            is_file = False
        if not is_file:
            raise FileNotFoundError(f"{name}: {str(source)!r} is not a file")
        img = _decode(path, name, repr(str(source)), limit)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _decode(io.BytesIO(bytes(source)), name, "the image bytes", limit)
    else:
        raise TypeError(
            f"{name} must be a path, bytes, a PIL image or a tensor, got {type(source).__name__}"
        )
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{name}: the image is empty ({img.width}x{img.height})")
    return ImageOps.exif_transpose(img)


def _tensor_to_pil(t: torch.Tensor, name: str) -> Image.Image:
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(
            f"{name}: a tensor image must be (3, H, W) in [-1, 1], got {tuple(t.shape)}"
        )
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def read_rgb(source: ImageInput, name: str = "image", *, keep_hidden: bool = False,
             max_pixels: int | None = None) -> Image.Image:  # fmt: skip
    """The 8-bit RGB picture of ``source``: transparency composited on white, or with
    ``keep_hidden`` the colours stored under it (when the alpha channel is the mask, those
    pixels are replaced anyway, and white would bleed into the known pixels when resizing).
    """
    if isinstance(source, torch.Tensor):
        return _tensor_to_pil(source, name)
    img = _open(source, name, max_pixels)
    if keep_hidden and img.mode in ("RGBA", "LA", "RGBa", "La"):
        img = img.convert("RGB") if img.mode in ("RGBA", "RGBa") else img.convert("L")
    return load_image(img)


def read_alpha(source: ImageInput, name: str = "image",
               max_pixels: int | None = None) -> Image.Image | None:  # fmt: skip
    """The alpha channel of ``source`` as an "L" image, or None if it has none."""
    if isinstance(source, torch.Tensor):
        return None
    img = _open(source, name, max_pixels)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        return img.convert("RGBA").getchannel("A")
    return None


def read_replace_mask(mask: Any, name: str = "mask", max_pixels: int | None = None) -> Image.Image:
    """A user's mask as an "L" image: 255 = replace, 0 = keep (white = replace)."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if isinstance(mask, torch.Tensor):
        m = mask.detach().float().cpu()
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2:
            raise ValueError(
                f"{name}: a tensor mask must be (H, W) or (1, H, W), got {tuple(mask.shape)}"
            )
        if m.numel() and m.max() > 1:
            m = m / 255.0
        arr = ((m >= 0.5).numpy().astype(np.uint8)) * 255
        return Image.fromarray(arr, mode="L")
    # Any mode to 8-bit grey (transparent parts of a mask image composite to white: replace).
    gray = np.asarray(load_image(_open(mask, name, max_pixels)).convert("L"))
    return Image.fromarray(((gray >= 128).astype(np.uint8)) * 255, mode="L")


# --------------------------------------------------------------------------- geometry


def check_fit(fit: str, name: str = "fit") -> str:
    if fit not in FITS:
        raise ValueError(f"{name}: unknown fit {fit!r}; expected one of {', '.join(FITS)}")
    return fit


def fit_square(img: Image.Image, fit: str, fill: int | tuple[int, ...]) -> Image.Image:
    """Centre-crop (``"crop"``) or pad with ``fill`` (``"pad"``) to a square."""
    w, h = img.size
    if w == h:
        return img
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize to ``size`` x ``size`` (a no-op at that size), as the notebooks do."""
    return img if img.size == (size, size) else img.resize((size, size), Image.BICUBIC)


def load_source(
    source: ImageInput,
    fit: str = "crop",
    name: str = "image",
    *,
    keep_hidden: bool = False,
    max_pixels: int | None = None,
) -> Image.Image:
    """``source`` as a square 8-bit RGB picture (centre-cropped or grey-padded by ``fit``).

    ``keep_hidden``: see :func:`read_rgb` (used when the alpha channel is the mask).
    """
    check_fit(fit)
    img = read_rgb(source, name, keep_hidden=keep_hidden, max_pixels=max_pixels)
    return fit_square(img, fit, _PAD_GREY)


def load_replace_mask(
    image: ImageInput,
    mask: Any | None,
    fit: str = "crop",
    *,
    image_name: str = "image",
    mask_name: str = "mask",
    max_pixels: int | None = None,
) -> Image.Image:
    """The region to replace as a square "L" image (255 = replace), squared like the image.

    ``mask``: white = replace (see the module doc); None takes ``image``'s alpha channel
    (transparent = replace). The mask must have the image's size; padding (``fit="pad"``)
    counts as keep.
    """
    check_fit(fit)
    if mask is None:
        alpha = read_alpha(image, image_name, max_pixels)
        if alpha is None:
            raise ValueError(
                f"{mask_name}: no mask given and {image_name} has no alpha channel; pass a mask "
                "(white = region to replace) or an image with transparent holes"
            )
        replace = Image.fromarray(((np.asarray(alpha) < 128).astype(np.uint8)) * 255, mode="L")
    else:
        replace = read_replace_mask(mask, mask_name, max_pixels)
        if isinstance(image, torch.Tensor):
            img_size = (image.shape[-1], image.shape[-2])
        else:
            img_size = _open(image, image_name, max_pixels).size
        if replace.size != img_size:
            raise ValueError(
                f"{mask_name}: mask size {replace.size[0]}x{replace.size[1]} does not match "
                f"{image_name} size {img_size[0]}x{img_size[1]}"
            )
    return fit_square(replace, fit, 0)


def check_mask_coverage(replace: Image.Image, name: str = "mask", *,
                        allow_full: bool = False) -> Image.Image:  # fmt: skip
    """Reject a replace mask that marks nothing (nothing to do) or, unless ``allow_full``,
    everything (nothing of the image is kept: that is text-to-image, not inpainting)."""
    arr = np.asarray(replace)
    if not arr.any():
        raise ValueError(
            f"{name}: the mask is empty (all black): nothing to repaint; white marks the region "
            "to replace"
        )
    if not allow_full and arr.all():
        raise ValueError(
            f"{name}: the mask covers the whole image: nothing of it would be kept; black marks "
            "the region to keep (to make a new picture use generate)"
        )
    return replace


def image_tensors(square: Image.Image, sizes: Sequence[int]) -> list[torch.Tensor]:
    """A square picture resized (bicubic) to each of ``sizes``: (1, 3, S, S) in [-1, 1]."""
    return [to_tensor(resize(square, s))[None] for s in sizes]


def keep_tensors(replace: Image.Image, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Keep masks (1 = keep the source, 0 = replace), (1, 1, S, S), for ``sizes``.

    The mask is resized to the largest size (bilinear, thresholded at 50%); each smaller size
    keeps a pixel only if every larger pixel it covers is kept, so a known low-res pixel never
    mixes in replaced content.
    """
    order = sorted(set(sizes), reverse=True)
    top = order[0]
    big = replace if replace.size == (top, top) else replace.resize((top, top), Image.BILINEAR)
    keep = torch.from_numpy((np.asarray(big) < 128).astype(np.float32))[None, None]
    out = {top: keep}
    for s in order[1:]:
        out[s] = -F.adaptive_max_pool2d(-keep, s)
    return [out[s] for s in sizes]


def prepare_image(source: ImageInput, sizes: Sequence[int], fit: str = "crop",
                  name: str = "image") -> list[torch.Tensor]:  # fmt: skip
    """``source`` squared by ``fit`` and resized to each of ``sizes``: (1, 3, S, S) in [-1, 1]."""
    return image_tensors(load_source(source, fit, name), sizes)


def prepare_keep_masks(image: ImageInput, mask: Any | None, sizes: Sequence[int],
                       fit: str = "crop", **names: str) -> list[torch.Tensor]:  # fmt: skip
    """Keep masks (1 = keep) for ``sizes`` from a user's mask or ``image``'s alpha channel."""
    return keep_tensors(load_replace_mask(image, mask, fit, **names), sizes)


# --------------------------------------------------------------------------- writing
