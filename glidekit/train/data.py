"""Training data: datasets from the config, resumable per-rank sample streams, batches.

Streams hand out lists of samples (``{"image": (3, S, S) in [-1, 1], "caption": str, ...}``)
and record where they are, so a resumed run sees exactly the samples it would have seen:

* :class:`MapStream` (shapes world, image folders): each epoch is a permutation seeded by
  ``(seed, epoch)``, split over ranks (``perm[rank::world]``); position = (epoch, index).
* :class:`IterableStream` (tar shards): position = (epoch, samples consumed this epoch), which
  are skipped on resume.

Everything random per sample beyond the dataset itself (caption dropout, inpainting masks) is
drawn in the training process from a generator whose state is checkpointed.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from glidekit.data import (
    ImageFolderDataset,
    ShapesDataset,
    TarShardDataset,
    make_inpaint_example,
    make_low_res,
    random_mask,
)
from glidekit.data.shapes import POSITIONS, ShapeScene, canonical_caption, generate, random_scene
from glidekit.data.transforms import to_tensor
from glidekit.tokenizer import (
    ClipTokenizer,
    GPT2Tokenizer,
    ShapesClipTokenizer,
    ShapesTokenizer,
    Tokenizer,
)
from glidekit.train.config import DataSection

logger = logging.getLogger(__name__)


def tokenizer_name(data: DataSection, model_kind: str) -> str:
    """``data.tokenizer`` with ``auto`` resolved: the shapes world's for shapes data, CLIP BPE
    for CLIP models, GPT-2 otherwise."""
    if data.tokenizer != "auto":
        return data.tokenizer
    if data.kind == "shapes":
        return "shapes"
    return "clip" if model_kind == "clip" else "gpt2"


def make_tokenizer(data: DataSection, model_kind: str, text_ctx: int) -> Any:
    """The tokenizer named by ``data.tokenizer`` (see :func:`tokenizer_name`)."""
    name = tokenizer_name(data, model_kind)
    if name == "shapes":
        return ShapesTokenizer(text_ctx=text_ctx)
    if name == "gpt2":
        if model_kind == "clip":
            raise ValueError(
                "data.tokenizer: gpt2 is not a CLIP tokenizer; use clip or shapes for model.kind: clip"
            )
        return GPT2Tokenizer(text_ctx)
    if model_kind != "clip":
        raise ValueError(
            "data.tokenizer: clip only applies to model.kind: clip; use gpt2 or shapes"
        )
    return ClipTokenizer()


def make_dataset(data: DataSection, image_size: int, *, rank: int, world_size: int) -> Dataset:
    """The dataset of ``data.kind`` at ``image_size`` (low-res/masks are made per batch)."""
    if data.kind == "shapes":
        return ShapesDataset(
            data.length,
            image_size,
            seed=data.seed,
            inpaint_prob=data.inpaint_object_prob,
            include_scene=data.position_twins > 0,
        )
    key = "data.root" if data.kind == "folder" else "data.shards"
    try:
        if data.kind == "folder":
            return ImageFolderDataset(data.root, image_size, random_crop=data.random_crop)  # type: ignore[arg-type]
        return TarShardDataset(
            data.shards,  # type: ignore[arg-type]
            image_size,
            shuffle_buffer=data.shuffle_buffer,
            seed=data.seed,
            rank=rank,
            world_size=world_size,
            random_crop=data.random_crop,
        )
    except (FileNotFoundError, ValueError) as exc:
        # Name the config key to fix (the CLI prints this and exits 2).
        raise ValueError(f"{key}: {exc}") from exc


def _identity(x: Any) -> Any:
    return x


def _loader_generator(*parts: int) -> torch.Generator:
    """A generator for a DataLoader (it seeds its workers from it): without one, creating the
    loader's iterator would draw from the global RNG and a resumed run would diverge."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % 2**62
    return torch.Generator().manual_seed(seed)


class _Stream:
    """What both streams share: batches from a DataLoader iterator that is (re)started at the
    recorded position (``epoch``, ``pos``: samples of the epoch already handed out), shut down
    on :meth:`close`. Subclasses say how to start an epoch's iterator (:meth:`_start`), and
    under which names the checkpoint records them (``KIND``, ``POS_KEY``)."""

    KIND: ClassVar[int]
    POS_KEY: ClassVar[str]

    def __init__(
        self, dataset: Any, batch_size: int, *, seed: int = 0, rank: int = 0, num_workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.num_workers = num_workers
        self.epoch = 0
        self.pos = 0
        self._it: Iterator[dict] | None = None

    def _start(self) -> None:
        raise NotImplementedError

    def _advance(self) -> None:
        self.pos += 1

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.pos = 0

    def state_dict(self) -> dict[str, int]:
        return {"kind": self.KIND, "epoch": self.epoch, self.POS_KEY: self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state[self.POS_KEY])
        self._it = None

    def next_batch(self) -> list[dict]:
        """The next ``batch_size`` samples of this rank (crossing epochs as needed)."""
        out: list[dict] = []
        while len(out) < self.batch_size:
            if self._it is None:
                self._start()
            try:
                out.append(next(self._it))  # type: ignore[arg-type]
            except StopIteration:
                self._end_epoch()
                self._it = None
                continue
            self._advance()
        return out

    def close(self) -> None:
        """Drop the DataLoader iterator now (its worker processes, if any, are shut down)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it


class MapStream(_Stream):
    """Resumable per-rank batches from a map-style dataset (see the module docstring)."""

    KIND, POS_KEY = 0, "index"

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(dataset, batch_size, seed=seed, rank=rank, num_workers=num_workers)
        self.n = len(dataset)  # type: ignore[arg-type]
        if self.n < world_size:
            raise ValueError(
                f"data: {self.n} items cannot be split over {world_size} processes; add data"
            )
        self.world_size = world_size

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = -(-self.n // self.world_size)
        perm += perm[: per_rank * self.world_size - self.n]  # pad so ranks get equal shares
        return perm[self.rank :: self.world_size]

    def _start(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        order = self._indices()[self.pos :]
        self._it = iter(
            DataLoader(
                self.dataset,
                batch_size=None,
                sampler=order,
                num_workers=self.num_workers,
                collate_fn=_identity,
                generator=_loader_generator(self.seed, self.epoch, self.rank),
            )
        )


class IterableStream(_Stream):
    """Resumable per-rank batches from an iterable dataset (tar shards); a resumed epoch skips
    the samples already handed out."""

    KIND, POS_KEY = 1, "consumed"

    def __init__(self, dataset: IterableDataset, batch_size: int, **options: int) -> None:
        """``options``: ``seed``, ``rank``, ``num_workers`` (see :class:`MapStream`)."""
        super().__init__(dataset, batch_size, **options)
        self._empty_epochs = 0  # epochs in a row that held no sample (two: give up)

    def _start(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            generator=_loader_generator(self.seed, self.epoch, self.rank),
        )
        it = iter(loader)
        if self.pos:
            skipped = sum(1 for _ in itertools.islice(it, self.pos))
            if skipped < self.pos:
                raise ValueError(
                    f"data: cannot resume at sample {self.pos} of epoch {self.epoch}: the "
                    f"stream holds only {skipped}; did data.shards change?"
                )
        self._it = it

    def _advance(self) -> None:
        super()._advance()
        self._empty_epochs = 0

    def _end_epoch(self) -> None:
        if self.pos == 0:
            self._empty_epochs += 1
            if self._empty_epochs > 1:
                raise ValueError(
                    "data.shards: this process's share of the shards holds no readable "
                    "samples; add shards or samples"
                )
        super()._end_epoch()


def make_stream(
    dataset: Dataset, data: DataSection, batch_size: int, seed: int, rank: int, world_size: int
) -> MapStream | IterableStream:
    if isinstance(dataset, IterableDataset):
        return IterableStream(
            dataset, batch_size, seed=seed, rank=rank, num_workers=data.num_workers
        )
    return MapStream(
        dataset,
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=data.num_workers,
    )


def reference_items(data: DataSection, dataset: Dataset, count: int) -> list[dict]:
    """``count`` fixed samples for the sample grids (canonical captions for the shapes world)."""
    if data.kind == "shapes":
        size = dataset.image_size  # type: ignore[attr-defined]
        ref = ShapesDataset(count, size, seed=data.seed + 7919, canonical=True)
        return [ref[i] for i in range(count)]
    if isinstance(dataset, IterableDataset):
        return list(itertools.islice(iter(dataset), count))
    return [dataset[i % len(dataset)] for i in range(count)]  # type: ignore[arg-type]


def default_prompts(count: int, seed: int = 0) -> list[str]:
    """Canonical shapes-world captions of ``count`` seeded random scenes."""
    rng = random.Random(seed)
    return [canonical_caption(random_scene(rng)) for _ in range(count)]


def add_position_twins(
    samples: Sequence[dict], prob: float, generator: torch.Generator, image_size: int
) -> list[dict]:
    """Shapes-world hard negatives: for each pair (2k, 2k+1), with probability ``prob``, sample
    2k+1 becomes sample 2k's object and background at another position, and both get their
    canonical captions, so the pair differs in the position words alone. Samples need their
    ``"scene"`` (a dataset made with ``include_scene``)."""
    out = list(samples)
    for i in range(1, len(out), 2):
        if float(torch.rand((), generator=generator)) >= prob:
            continue
        first = out[i - 1]
        if "scene" not in first:
            raise ValueError("position twins need the samples' scenes (include_scene=True)")
        attrs = dict(first["scene"])
        rng = random.Random(int(torch.randint(2**31, (), generator=generator)))
        attrs["position"] = rng.choice([p for p in POSITIONS if p != attrs["position"]])
        image, scene = generate(rng, image_size, **attrs)
        out[i - 1] = {**first, "caption": canonical_caption(ShapeScene(**first["scene"]))}
        out[i] = {"image": to_tensor(image), "caption": canonical_caption(scene),
                  "scene": scene.attributes()}  # fmt: skip
    return out


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" with probability ``p`` (one draw per caption, always)."""
    draws = torch.rand(len(captions), generator=generator)
    return ["" if float(u) < p else c for u, c in zip(draws, captions, strict=True)]


def conditioning(
    images: torch.Tensor,
    *,
    super_res: bool,
    inpaint: bool,
    low_res_size: int,
    mask_kind: str,
    generator: torch.Generator,
    keeps: Sequence[torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """The UNet's image conditioning for clean ``images`` (B, 3, S, S) in [-1, 1].

    super_res: ``low_res`` (B, 3, L, L) = the images downsampled. inpaint: a mask per image
    (1 = known; ``keeps[i]`` (1, S, S) where the dataset gave one, else a random
    ``mask_kind`` mask) -> ``inpaint_image`` (B, 3, S, S) (masked), ``inpaint_mask`` (B, 1, S, S).
    """
    out: dict[str, torch.Tensor] = {}
    if super_res:
        out["low_res"] = make_low_res(images, low_res_size)
    if inpaint:
        given = list(keeps) if keeps is not None else [None] * len(images)
        masks = torch.stack(
            [
                k.to(images.dtype)
                if k is not None
                else random_mask(images.shape[-1], generator, kind=mask_kind)
                for k in given
            ]
        )
        out.update(make_inpaint_example(images, masks))
    return out


def random_patches(
    images: torch.Tensor,
    cond: dict[str, torch.Tensor],
    patch_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Crop ``images`` (B, 3, S, S) to random (B, 3, P, P) patches and the conditioning to
    the matching regions: ``low_res`` (B, 3, L, L) to (B, 3, P/f, P/f) with f = S / L, and
    inpainting tensors (B, C, S, S) like the images. Offsets are multiples of f, so every
    patch lines up with whole low-res pixels."""
    size = images.shape[-1]
    low = cond.get("low_res")
    factor = size // low.shape[-1] if low is not None else 1
    if patch_size > size or patch_size % factor:
        raise ValueError(
            f"patch_size {patch_size} must be at most {size} and a multiple of {factor}"
        )
    slots = (size - patch_size) // factor + 1
    offsets = torch.randint(0, slots, (len(images), 2), generator=generator) * factor
    crops: list[torch.Tensor] = []
    out: dict[str, list[torch.Tensor]] = {k: [] for k in cond}
    for i, (y, x) in enumerate(offsets.tolist()):
        crops.append(images[i, :, y : y + patch_size, x : x + patch_size])
        for key, value in cond.items():
            f = size // value.shape[-1]
            p = patch_size // f
            out[key].append(value[i, :, y // f : y // f + p, x // f : x // f + p])
    return torch.stack(crops), {k: torch.stack(v) for k, v in out.items()}


def tokenize_shapes_for_clip(
    tokenizer: ShapesTokenizer, captions: Sequence[str], ctx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes-world captions as CLIP text-encoder input (:class:`ShapesClipTokenizer`'s form):
    (tokens (B, ctx) int64, lens (B,) int64 incl. the end token)."""
    rows, lens = ShapesClipTokenizer(tokenizer).tokenize(captions, ctx)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(lens, dtype=torch.long)


def tokenize_for_clip(
    tokenizer: Tokenizer | Any, captions: Sequence[str], ctx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (tokens (B, ctx), lens (B,)) for the CLIP text encoder."""
    if isinstance(tokenizer, ShapesTokenizer):
        return tokenize_shapes_for_clip(tokenizer, captions, ctx)
    rows, lens = tokenizer.tokenize(list(captions), ctx)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(lens, dtype=torch.long)


__all__ = [
    "IterableStream",
    "MapStream",
    "conditioning",
    "default_prompts",
    "drop_captions",
    "make_dataset",
    "make_stream",
    "make_tokenizer",
    "tokenizer_name",
    "reference_items",
    "tokenize_for_clip",
    "tokenize_shapes_for_clip",
]
