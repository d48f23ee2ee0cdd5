"""A streaming dataset over WebDataset-style tar shards, read with the stdlib ``tarfile``.

A shard is a tar file whose members are grouped into samples by *key*: the member path up to
the first ``.`` of its file name (``0001.jpg`` and ``0001.txt`` form sample ``0001``; a folder
prefix is part of the key). Members of one sample must be adjacent in the tar, as WebDataset
writers produce them. A sample needs one image (``jpg``/``jpeg``/``png``/``webp``) and may
have a ``txt`` caption (missing -> ``""``).

Splitting: the epoch's (shuffled) shard order is the same in every process; each
(rank, DataLoader worker) *slot* then takes every ``n_slots``-th shard, or, when there are
fewer shards than slots, every ``n_slots``-th sample of the whole stream. Either way each
sample is produced exactly once per epoch over all ranks and workers. Slots may get unequal
sample counts: under DDP, bound the steps per epoch (or use a fixed number of steps) so all
ranks stop together.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .transforms import image_to_tensor, make_low_res

__all__ = ["TarShardDataset", "expand_brace_pattern", "iter_tar_samples", "shuffle_buffer"]

logger = logging.getLogger(__name__)

SHARD_IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_brace_pattern(pattern: str) -> list[str]:
    """Expand ``{000000..000009}`` numeric ranges and ``{a,b,c}`` alternatives in ``pattern``.

    Zero padding follows the endpoints (``{8..10}`` -> ``8, 9, 10``; ``{08..10}`` -> ``08, 09,
    10``). Several braces expand to their product, in order. Nested braces are not supported.

    Raises ``ValueError`` for unbalanced/nested/empty braces or a decreasing range.
    """
    depth = 0
    for ch in pattern:
        depth += (ch == "{") - (ch == "}")
        if depth < 0 or depth > 1:
            raise ValueError(
                f"expand_brace_pattern: pattern={pattern!r} has unbalanced or nested braces; "
                "use e.g. 'data/{000000..000009}.tar'"
            )
    if depth != 0:
        raise ValueError(
            f"expand_brace_pattern: pattern={pattern!r} has an unclosed '{{'; "
            "use e.g. 'data/{000000..000009}.tar'"
        )
    parts: list[list[str]] = []
    pos = 0
    for m in _BRACE.finditer(pattern):
        parts.append([pattern[pos : m.start()]])
        body = m.group(1)
        rng = _RANGE.match(body.strip())
        if rng:
            lo_s, hi_s = rng.groups()
            lo, hi = int(lo_s), int(hi_s)
            if hi < lo:
                raise ValueError(
                    f"expand_brace_pattern: range {{{body}}} in pattern={pattern!r} is decreasing"
                )
            padded = (len(lo_s) > 1 and lo_s.startswith("0")) or (
                len(hi_s) > 1 and hi_s.startswith("0")
            )
            width = max(len(lo_s), len(hi_s)) if padded else 0
            parts.append([str(i).zfill(width) for i in range(lo, hi + 1)])
        else:
            options = body.split(",")
            if body == "" or (len(options) == 1 and ".." in body):
                raise ValueError(
                    f"expand_brace_pattern: cannot expand {{{body}}} in pattern={pattern!r}; "
                    "use {first..last} with integers or {a,b,c}"
                )
            parts.append(options)
        pos = m.end()
    parts.append([pattern[pos:]])
    return ["".join(p) for p in itertools.product(*parts)]


def _resolve_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(shards, (str, os.PathLike)):
        items: list[str | os.PathLike] = [shards]
    else:
        items = list(shards)
        if not items:
            raise ValueError("TarShardDataset: shards is an empty list; pass paths or a pattern")
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if isinstance(item, str) and ("{" in text or "}" in text):
            paths.extend(expand_brace_pattern(text))
        elif Path(text).is_dir():
            found = sorted(str(p) for p in Path(text).glob("*.tar"))
            if not found:
                raise ValueError(f"TarShardDataset: folder shards={text!r} holds no *.tar files")
            paths.extend(found)
        else:
            paths.append(text)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"TarShardDataset: {len(missing)} of {len(paths)} shards not found, first "
            f"{missing[0]!r}; check the shards path/pattern (e.g. 'data/{{000000..000009}}.tar')"
        )
    return paths


def _split_key(name: str) -> tuple[str, str]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``): key up to the basename's first dot."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _missing_end_marker(path: str | os.PathLike, end: int) -> bool:
    """True if an uncompressed tar stops before the two zero blocks that end an archive."""
    with open(path, "rb") as f:
        head = f.read(6)
        if any(head.startswith(m) for m in _COMPRESSED_MAGIC):
            return False
        size = f.seek(0, os.SEEK_END)
    return size < end + 2 * tarfile.BLOCKSIZE


def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict[str, bytes | str]]:
    """Stream the samples of one tar shard as ``{"__key__": key, ext: bytes, ...}`` dicts.

    Members are read sequentially (``tarfile`` stream mode); consecutive members with the same
    key form one sample. A truncated/corrupt tar ends with a warning after the complete samples
    read so far.
    """
    current_key: str | None = None
    current: dict[str, bytes | str] = {}
    try:
        with tarfile.open(os.fspath(path), mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if not ext or Path(key).name.startswith("__"):
                    continue  # e.g. __index__ metadata
                if key != current_key:
                    if current:
                        yield current
                    current_key, current = key, {"__key__": key}
                f = tar.extractfile(member)
                if f is not None:
                    current[ext] = f.read()
            end = tar.offset
        if _missing_end_marker(path, end):
            raise tarfile.ReadError("truncated: no end-of-archive marker after the last member")
    except (tarfile.TarError, OSError, EOFError) as exc:
        warnings.warn(
            f"TarShardDataset: error reading shard {os.fspath(path)!r} ({exc}); dropping its "
            "last, possibly incomplete sample and continuing with the next shard",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    if current:
        yield current


def shuffle_buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Approximately shuffle a stream with a reservoir of ``size`` items (``size <= 1``: no-op)."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TarShardDataset(IterableDataset):
    """Stream ``{"image", "caption"}`` samples from WebDataset-style tar shards.

    Args:
        shards: a path, a folder of ``*.tar``, a brace pattern (``"data/{000000..000009}.tar"``)
            or a list of those.
        image_size: output side ``S``; images are resized (shortest side) and square-cropped.
        low_res_size: if set, items also hold ``"low_res"`` ``(3, L, L)`` for upsampler training.
        shuffle_buffer: size of the sample shuffle buffer (``0``/``1``: stream order).
        shuffle_shards: shuffle the shard order each epoch.
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only, so it is
            reproducible and identical on every rank (required for the split).
        rank, world_size: distributed position; default from ``torch.distributed`` if it is
            initialised when iteration starts, else ``0`` / ``1``.
        split: ``"shard"`` (each slot reads whole shards), ``"sample"`` (each slot reads all
            shards and keeps every ``n``-th sample) or ``"auto"`` (shard when there are at least
            as many shards as rank x worker slots).
        random_crop: random instead of centre crop (seeded from ``(seed, epoch, slot)``).
        image_extensions: member extensions accepted as the image.

    Items: ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str, "key": str}``.
    Samples whose image fails to decode are skipped with a warning.

    Call :meth:`set_epoch` before each epoch (with ``persistent_workers=True`` the workers keep
    their copy, so recreate the DataLoader instead).
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        image_size: int = 64,
        *,
        low_res_size: int | None = None,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        split: Literal["auto", "shard", "sample"] = "auto",
        random_crop: bool = False,
        image_extensions: Sequence[str] = SHARD_IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__()
        self.shards = _resolve_shards(shards)
        if int(image_size) <= 0:
            raise ValueError(f"TarShardDataset: image_size must be positive, got {image_size}")
        if low_res_size is not None and not 0 < int(low_res_size) <= int(image_size):
            raise ValueError(
                f"TarShardDataset: low_res_size must be in (0, image_size={image_size}], "
                f"got {low_res_size}"
            )
        if split not in ("auto", "shard", "sample"):
            raise ValueError(f"TarShardDataset: split must be auto|shard|sample, got {split!r}")
        if int(shuffle_buffer) < 0:
            raise ValueError(f"TarShardDataset: shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if (rank is None) != (world_size is None):
            raise ValueError("TarShardDataset: pass both rank and world_size, or neither")
        if world_size is not None and not 0 <= int(rank) < int(world_size):  # type: ignore[arg-type]
            raise ValueError(
                f"TarShardDataset: need 0 <= rank < world_size, got rank={rank}, "
                f"world_size={world_size}"
            )
        self.image_size = int(image_size)
        self.low_res_size = None if low_res_size is None else int(low_res_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_shards = bool(shuffle_shards)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.random_crop = bool(random_crop)
        self.image_extensions = tuple(e.lower().lstrip(".") for e in image_extensions)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard/sample order the next iteration uses."""
        self.epoch = int(epoch)

    def _slot(self) -> tuple[int, int]:
        """(this slot's index, number of slots) over ranks x DataLoader workers."""
        if self.world_size is None:
            rank, world = _dist_rank_world()
        else:
            rank, world = int(self.rank), int(self.world_size)  # type: ignore[arg-type]
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        return rank * nw + wid, world * nw

    def _decode(self, raw: dict[str, bytes | str], gen: torch.Generator) -> dict | None:
        key = str(raw["__key__"])
        data = next((raw[e] for e in self.image_extensions if e in raw), None)
        if data is None:
            logger.debug("TarShardDataset: sample %r has no image member, skipped", key)
            return None
        try:
            image = image_to_tensor(
                data,  # type: ignore[arg-type]
                self.image_size,
                random_crop=self.random_crop,
                generator=gen,
            )
        except Exception as exc:  # noqa: BLE001 - a bad sample must not end the epoch
            warnings.warn(
                f"TarShardDataset: skipping sample {key!r} ({type(exc).__name__}: {exc})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        txt = raw.get("txt", b"")
        caption = txt.decode("utf-8", errors="replace") if isinstance(txt, bytes) else txt
        sample = {"image": image, "caption": " ".join(caption.split()), "key": key}
        if self.low_res_size is not None:
            sample["low_res"] = make_low_res(image, self.low_res_size)
        return sample

    def _raw_samples(self, slot: int, n_slots: int) -> Iterator[dict[str, bytes | str]]:
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        by_shard = self.split == "shard" or (self.split == "auto" and len(order) >= n_slots)
        if by_shard:
            for path in order[slot::n_slots]:
                yield from iter_tar_samples(path)
        else:
            stream = itertools.chain.from_iterable(iter_tar_samples(p) for p in order)
            yield from itertools.islice(stream, slot, None, n_slots)

    def __iter__(self) -> Iterator[dict]:
        slot, n_slots = self._slot()
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{slot}")
        gen = torch.Generator().manual_seed(rng.getrandbits(62))
        raw = shuffle_buffer(self._raw_samples(slot, n_slots), self.shuffle_buffer, rng)
        for item in raw:
            sample = self._decode(item, gen)
            if sample is not None:
                yield sample

    def __repr__(self) -> str:
        return (
            f"TarShardDataset({len(self.shards)} shards, image_size={self.image_size}, "
            f"shuffle_buffer={self.shuffle_buffer}, seed={self.seed}, epoch={self.epoch})"
        )
