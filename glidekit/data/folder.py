"""A map-style dataset over a folder of images with same-named ``.txt`` captions.

Layout (searched recursively)::

    root/cat.png   root/cat.txt
    root/sub/dog.jpg   root/sub/dog.txt

Each item is ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str}`` (plus
``"low_res": (3, L, L)`` when ``low_res_size`` is set, for upsampler training).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from .transforms import IMAGE_EXTENSIONS, image_to_tensor, make_low_res

__all__ = ["ImageFolderDataset", "find_images", "read_caption"]

logger = logging.getLogger(__name__)


def find_images(
    root: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """All files under ``root`` (recursive, sorted) whose lower-cased suffix is in ``extensions``.

    Hidden files and folders (name starting with ``.``) are ignored; symlinked folders are
    followed, each real folder once.
    """
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    root = Path(root)
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle, or the same folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found.append(Path(dirpath) / name)
    found.sort()
    return found


def read_caption(path: Path) -> str:
    """Text of the caption file ``path`` (UTF-8, invalid bytes replaced), whitespace-collapsed."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return " ".join(text.split())


def _image_ok(path: Path) -> str | None:
    """``None`` if ``path`` looks like a readable image, else the reason it is not."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
        return f"{type(exc).__name__}: {exc}"
    return None


class ImageFolderDataset(Dataset):
    """Images under ``root`` (recursive) with captions from same-named ``.txt`` files.

    Args:
        root: folder to search.
        image_size: output side ``S``; images are resized (shortest side) and square-cropped.
        low_res_size: if set, each item also has ``"low_res"`` ``(3, L, L)``, the image
            downsampled for upsampler training (e.g. ``image_size=256, low_res_size=64``).
        random_crop: random instead of centre crop (uses torch's default generator, which the
            DataLoader seeds differently in each worker).
        extensions: image file suffixes to include.
        verify: check every file's header at index time and skip unreadable ones with a
            warning (one ``open`` per file). Files that still fail to decode later are skipped
            at load time (the next readable item is returned, with a warning).

    Items: ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str}``; a missing caption
    file gives ``""`` (the number of such images is logged once, at index time).

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no (readable) images found, or a bad ``image_size``/``low_res_size``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 64,
        *,
        low_res_size: int | None = None,
        random_crop: bool = False,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"ImageFolderDataset: root={str(root)!r} does not exist")
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"ImageFolderDataset: root={str(root)!r} is not a folder; pass the folder "
                "holding the images and their .txt captions"
            )
        if int(image_size) <= 0:
            raise ValueError(f"ImageFolderDataset: image_size must be positive, got {image_size}")
        if low_res_size is not None and not 0 < int(low_res_size) <= int(image_size):
            raise ValueError(
                f"ImageFolderDataset: low_res_size must be in (0, image_size={image_size}], "
                f"got {low_res_size}"
            )
        self.image_size = int(image_size)
        self.low_res_size = None if low_res_size is None else int(low_res_size)
        self.random_crop = bool(random_crop)
        exts = tuple(extensions)

        candidates = find_images(self.root, exts)
        if not candidates:
            raise ValueError(
                f"ImageFolderDataset: no images with extensions {exts} found under "
                f"root={str(root)!r}; check the path or pass extensions=..."
            )
        paths: list[Path] = []
        skipped = 0
        for path in candidates:
            reason = _image_ok(path) if verify else None
            if reason is not None:
                skipped += 1
                warnings.warn(
                    f"ImageFolderDataset: skipping unreadable image {str(path)!r} ({reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            paths.append(path)
        if not paths:
            raise ValueError(
                f"ImageFolderDataset: all {len(candidates)} image files under root={str(root)!r} "
                "are unreadable"
            )
        self.paths: list[Path] = paths
        self.caption_paths: list[Path | None] = []
        missing = 0
        for path in paths:
            cap = path.with_suffix(".txt")
            if cap.is_file():
                self.caption_paths.append(cap)
            else:
                self.caption_paths.append(None)
                missing += 1
        if missing:
            logger.warning(
                "ImageFolderDataset: %d of %d images under %s have no .txt caption "
                "(they get an empty caption)",
                missing,
                len(paths),
                self.root,
            )
        logger.info(
            "ImageFolderDataset: %d images under %s (%d unreadable skipped)",
            len(paths),
            self.root,
            skipped,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        """Caption of item ``index`` (``""`` when it has no caption file)."""
        cap = self.caption_paths[index]
        return "" if cap is None else read_caption(cap)

    def _load(self, index: int) -> dict:
        image = image_to_tensor(self.paths[index], self.image_size, random_crop=self.random_crop)
        sample = {"image": image, "caption": self.caption(index)}
        if self.low_res_size is not None:
            sample["low_res"] = make_low_res(image, self.low_res_size)
        return sample

    def __getitem__(self, index: int) -> dict:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"ImageFolderDataset: index {index} out of range for {n} items")
        index %= n
        last_error: Exception | None = None
        for attempt in range(min(n, 16)):
            i = (index + attempt) % n
            try:
                return self._load(i)
            except Exception as exc:  # noqa: BLE001 - a bad file must not end the epoch
                last_error = exc
                warnings.warn(
                    f"ImageFolderDataset: failed to load {str(self.paths[i])!r} "
                    f"({type(exc).__name__}: {exc}); using the next image",
                    RuntimeWarning,
                    stacklevel=2,
                )
        raise RuntimeError(
            f"ImageFolderDataset: {min(n, 16)} consecutive images from index {index} failed to load"
        ) from last_error

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, "
            f"image_size={self.image_size}, low_res_size={self.low_res_size})"
        )
