"""Seeded shapes-world datasets: a fixed-length map-style one and an infinite stream.

Items are ``{"image": FloatTensor (3, S, S) in [-1, 1], "caption": str}``, plus
``"scene": {attribute: value}`` with ``include_scene`` and ``"inpaint_keep"`` for inpainting
examples; :class:`ShapesItems` holds the options that say how items are drawn, which both
datasets take as keyword arguments.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from glidekit.data.shapes.captions import canonical_caption, caption
from glidekit.data.shapes.world import generate, inpaint_scene
from glidekit.data.transforms import to_tensor


class ShapesItems:
    """How each shapes-world item is drawn and captioned (the datasets' keyword options).

    Args:
        image_size: side S of the square images, in pixels (>= 8).
        seed: selects the scenes (and the captions' variation).
        drop_prob, vary_order_prob: caption variation
            (:func:`~glidekit.data.shapes.captions.caption`): the probability that each
            attribute is left out, and that the phrases come in another order.
        canonical: canonical captions instead (no variation).
        include_scene: add ``"scene": {attribute: value}`` to each item.
        inpaint_prob: the share of items that are inpainting examples
            (:func:`~glidekit.data.shapes.world.inpaint_scene`); they also hold
            ``"inpaint_keep"``, a (1, S, S) float mask, 0 over the quadrant to repaint (which
            the caption describes), 1 elsewhere.
    """

    def __init__(
        self,
        image_size: int = 64,
        *,
        seed: int = 0,
        drop_prob: float = 0.25,
        vary_order_prob: float = 0.3,
        canonical: bool = False,
        include_scene: bool = False,
        inpaint_prob: float = 0.0,
    ) -> None:
        if int(image_size) < 8:
            raise ValueError(f"shapes dataset: image_size must be >= 8, got {image_size}")
        probs = {
            "drop_prob": drop_prob,
            "vary_order_prob": vary_order_prob,
            "inpaint_prob": inpaint_prob,
        }
        for name, value in probs.items():
            if not 0 <= value <= 1:
                raise ValueError(f"shapes dataset: {name} must be in [0, 1], got {value}")
        # Normalised types: a seed of 1.0 draws the scenes of seed 1.
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.drop_prob = float(drop_prob)
        self.vary_order_prob = float(vary_order_prob)
        self.canonical = bool(canonical)
        self.include_scene = bool(include_scene)
        self.inpaint_prob = float(inpaint_prob)

    def sample(self, scene_rng: random.Random, caption_rng: random.Random) -> dict[str, Any]:
        """One item, its scene drawn from ``scene_rng`` and its caption's variation from
        ``caption_rng`` (which may be the same generator)."""
        size = self.image_size
        keep = None
        # The extra draw only when asked for: plain datasets keep their exact scenes.
        if self.inpaint_prob > 0 and scene_rng.random() < self.inpaint_prob:
            img, scene, box = inpaint_scene(scene_rng, size)
            keep = torch.ones(1, size, size)
            keep[:, box[1] : box[3], box[0] : box[2]] = 0
        else:
            img, scene = generate(scene_rng, size)
        text = (
            canonical_caption(scene)
            if self.canonical
            else caption(scene, caption_rng, self.drop_prob, self.vary_order_prob)
        )
        out: dict[str, Any] = {"image": to_tensor(img), "caption": text}
        if keep is not None:
            out["inpaint_keep"] = keep
        if self.include_scene:
            out["scene"] = scene.attributes()
        return out


class _Seeded:
    """What both datasets share: the item options and the epoch (set before iterating)."""

    items: ShapesItems
    epoch: int = 0

    @property
    def image_size(self) -> int:
        return self.items.image_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: it varies the map-style dataset's captions (its images stay the
        same) and seeds the stream's samples."""
        self.epoch = int(epoch)


class ShapesDataset(_Seeded, Dataset):
    """A fixed-length, seeded shapes-world dataset (map-style).

    ``options``: the fields of :class:`ShapesItems` (``seed``, ``drop_prob``,
    ``vary_order_prob``, ``canonical``, ``include_scene``, ``inpaint_prob``). The scene of item
    ``i`` depends on ``(seed, i)`` only; the caption's drops/order also on the epoch
    (:meth:`set_epoch`).
    """

    def __init__(self, length: int = 10_000, image_size: int = 64, **options: Any) -> None:
        if int(length) <= 0:
            raise ValueError(f"ShapesDataset: length must be positive, got {length}")
        self.length = int(length)
        self.items = ShapesItems(image_size, **options)
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"ShapesDataset: index {index} out of range for {self.length} items")
        index %= self.length
        seed = self.items.seed
        return self.items.sample(
            random.Random(f"shapes-scene-{seed}-{index}"),
            random.Random(f"shapes-caption-{seed}-{self.epoch}-{index}"),
        )


class ShapesIterableDataset(_Seeded, IterableDataset):
    """An infinite (or ``samples_per_epoch``-long) seeded stream of shapes-world samples.

    Each (rank, DataLoader worker) gets its own stream, seeded by ``(seed, epoch, rank,
    worker)``; ``rank`` defaults to ``torch.distributed``'s when initialised. With
    ``samples_per_epoch``, that many samples are split over all ranks x workers. ``options``
    and items as :class:`ShapesDataset`.
    """

    def __init__(
        self,
        image_size: int = 64,
        *,
        samples_per_epoch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if samples_per_epoch is not None and int(samples_per_epoch) <= 0:
            raise ValueError(
                f"ShapesIterableDataset: samples_per_epoch must be positive, got {samples_per_epoch}"
            )
        if (rank is None) != (world_size is None):
            raise ValueError("ShapesIterableDataset: pass both rank and world_size, or neither")
        self.items = ShapesItems(image_size, **options)
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.world_size is not None:
            rank, world = int(self.rank), int(self.world_size)  # type: ignore[arg-type]
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        slot, n_slots = rank * nw + wid, world * nw
        rng = random.Random(f"shapes-stream-{self.items.seed}-{self.epoch}-{slot}")
        # This slot's share of samples_per_epoch (None: endless).
        share = None
        if self.samples_per_epoch is not None:
            share = (self.samples_per_epoch - slot + n_slots - 1) // n_slots
        count = 0
        while share is None or count < share:
            count += 1
            yield self.items.sample(rng, rng)


__all__ = ["ShapesDataset", "ShapesItems", "ShapesIterableDataset"]
