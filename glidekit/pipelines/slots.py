"""The models of a pipeline, each loaded on first use and kept: UNets and the noise-aware CLIP.

A slot takes a *source* (see :class:`ModelSlot`) and turns it into a model on the pipeline's
device and dtype when first asked; ``release()`` drops it again (``low_memory``).
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glidekit.checkpoints import CHECKPOINTS, load_into
from glidekit.checkpoints.modelfile import is_unet_file, load_clip, load_unet, read_unet_config
from glidekit.checkpoints.registry import lookup
from glidekit.clip import NoisedCLIP
from glidekit.diffusion import DiffusionConfig
from glidekit.errors import MissingFileError, OptionError
from glidekit.guidance import clip_cond_fn
from glidekit.nn import RELEASED_CONFIGS, GlideUNet, create_model
from glidekit.pipelines.devices import trim_heap
from glidekit.pipelines.sources import (
    RELEASED,
    RELEASED_CLIP,
    ModelSource,
    model_defaults,
    resolve_source,
    source_label,
)
from glidekit.tokenizer import GPT2Tokenizer, Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A UNet ready to sample: in eval mode on the pipeline's device and dtype."""

    model: GlideUNet
    diffusion: DiffusionConfig
    tokenizer: Tokenizer
    label: str


def _released(name: str, dtype: torch.dtype, path: Path | None = None, cache_dir: Any = None):
    """The released ``name``'s model built on the meta device in ``dtype``'s layout (so each
    tensor is read straight into its final dtype), filled from the cache or ``path``."""
    model = create_model(RELEASED_CONFIGS[name], device="meta")
    if dtype != torch.float32:
        model.convert_to_fp16(dtype)
    if path is None:
        load_into(model, name, cache_dir=cache_dir)
    else:
        load_into(model, path, checkpoint=name)
    return model, DiffusionConfig.for_model(model.config), GPT2Tokenizer(model.config.text_ctx)


class ModelSlot:
    """One UNet of a pipeline, loaded on first use and kept.

    ``source``: a released name ("base", "upsample", ...; fetched through
    :mod:`glidekit.checkpoints`), a glidekit model file
    (:mod:`glidekit.checkpoints.modelfile`), a released-layout ``.pt``/``.safetensors`` file, a
    :class:`GlideUNet`, or a ``(model, DiffusionConfig, tokenizer)`` tuple. ``role`` (base,
    upsampler, base_inpaint, upsampler_inpaint) names the argument in errors.
    """

    def __init__(self, source: ModelSource, role: str, cache_dir: str | os.PathLike | None = None):
        if source is None:
            raise OptionError(role, "no model given")
        self.source = resolve_source(source)
        self.role = role
        self.cache_dir = cache_dir
        self._local_file()  # a missing file is said at once, before anything is written
        self.label = source_label(source)
        self._loaded: LoadedModel | None = None
        self._compiled = False

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def defaults(self) -> dict[str, Any]:
        """The model file's own sampling defaults ({} if it has none); no weights are read."""
        return model_defaults(self.source)

    def image_size(self) -> int | None:
        """The model's output side, without loading weights where the source tells it; else
        None."""
        src = self.source[0] if isinstance(self.source, tuple) else self.source
        if self._loaded is not None:
            return self._loaded.model.config.image_size
        if isinstance(src, GlideUNet):
            return src.config.image_size
        if not isinstance(src, (str, os.PathLike)):
            return None
        info = lookup(src) if isinstance(src, str) else None
        if info is not None and info.name in RELEASED_CONFIGS:
            return RELEASED_CONFIGS[info.name].image_size
        path = Path(src).expanduser()
        return read_unet_config(path).image_size if is_unet_file(path) else None

    def release(self) -> None:
        """Drop the loaded model (the next :meth:`get` loads it again)."""
        if self._loaded is not None:
            logger.debug("releasing %s model %s", self.role, self.label)
            self._loaded = None
            self._compiled = False
            gc.collect()
            trim_heap()

    def get(self, device: torch.device, dtype: torch.dtype, compile: bool = False) -> LoadedModel:
        """The model, loaded on first use on ``device`` in ``dtype``; ``compile``: wrap its
        forward in ``torch.compile`` (once; the first step then compiles, which takes minutes)."""
        if self._loaded is None:
            self._loaded = self._load(device, dtype)
        if compile and not self._compiled:
            logger.info("%s: torch.compile is on; the first step compiles (minutes on a CPU)",
                        self.role)  # fmt: skip
            self._loaded.model.compile()
            self._compiled = True
        return self._loaded

    def _load(self, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        try:
            model, dc, tokenizer = self._build(dtype)
        except (FileNotFoundError, TypeError, OptionError):
            raise
        except ValueError as exc:  # includes CheckpointError: name the model argument
            raise OptionError(self.role, str(exc)) from exc
        model = model.to(device).eval()
        if dtype != torch.float32:
            model.convert_to_fp16(dtype)
            if device.type == "cpu":  # oneDNN's fast bf16 convolutions are channels-last
                model.to(memory_format=torch.channels_last)
        elif model.dtype != torch.float32:
            model.convert_to_fp32()
        logger.debug("loaded %s model %s on %s (%s)", self.role, self.label, device, dtype)
        return LoadedModel(model, dc, tokenizer, self.label)

    def _local_file(self) -> Path | None:
        """The source's path if it names a local file (None for released names and models);
        a path that is not a readable file is an error naming the role."""
        src = self.source
        if not isinstance(src, (str, os.PathLike)) or (isinstance(src, str) and lookup(src)):
            return None
        path = Path(src).expanduser()
        try:
            exists = path.is_file()
        except OSError as exc:  # a symlink loop, a name too long
            raise OptionError(self.role, f"cannot read {str(src)!r} ({exc})") from None
        if not exists:
            names = ", ".join(n for n in CHECKPOINTS if not n.startswith("clip"))
            raise MissingFileError(
                self.role, f"{str(src)!r} is neither a released model name ({names}) nor a file"
            )
        return path

    def _build(self, dtype: torch.dtype) -> tuple[GlideUNet, DiffusionConfig, Tokenizer]:
        src = self.source
        if isinstance(src, GlideUNet):
            tokenizer = getattr(src, "tokenizer", None) or GPT2Tokenizer(src.config.text_ctx)
            return src, DiffusionConfig.for_model(src.config), tokenizer
        if isinstance(src, tuple):
            if len(src) != 3 or not isinstance(src[0], GlideUNet):
                raise TypeError(f"{self.role}: a tuple must be (GlideUNet, DiffusionConfig, "
                                "tokenizer)")  # fmt: skip
            model, dc, tokenizer = src
            return model, dc or DiffusionConfig.for_model(model.config), tokenizer
        if not isinstance(src, (str, os.PathLike)):
            raise TypeError(
                f"{self.role}: expected a released name, a path, a GlideUNet or a "
                f"(model, diffusion, tokenizer) tuple, got {type(src).__name__}"
            )
        if isinstance(src, str) and lookup(src) is not None:
            return _released(lookup(src).name, dtype, cache_dir=self.cache_dir)  # type: ignore[union-attr]
        path = self._local_file()
        if is_unet_file(path):  # read straight into the compute dtype: no float32 copy
            return load_unet(path, device="cpu", dtype=None if dtype == torch.float32 else dtype)
        released = RELEASED.get(self.role, "base")
        return _released(released, dtype, path=path)


class ClipSlot:
    """A noise-aware CLIP for guidance, loaded on first use.

    ``source``: a :class:`~glidekit.clip.NoisedCLIP` (used as is), a glidekit CLIP file (both
    towers, config and vocabulary), or an ``(image encoder, text encoder)`` pair of released
    names or checkpoint paths (default: the released towers). ``tokenizer``: path of the CLIP
    BPE merges file if it is not in the glidekit cache.
    """

    def __init__(self, source: Any = None, tokenizer: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:  # fmt: skip
        source = RELEASED_CLIP if source is None else source
        self.source = tuple(resolve_source(s) for s in source) if isinstance(source, tuple) else (
            resolve_source(source))  # fmt: skip
        self.label = source_label(source)
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self._model: NoisedCLIP | None = None

    def get(self, device: torch.device) -> NoisedCLIP:
        """The noise-aware CLIP on ``device`` (float32, eval mode)."""
        if self._model is None:
            src = self.source
            if isinstance(src, NoisedCLIP):
                model = src
            elif isinstance(src, (tuple, str, os.PathLike)):
                try:
                    model = load_clip(src, tokenizer=self.tokenizer, cache_dir=self.cache_dir)
                except (ValueError, FileNotFoundError) as exc:  # "clip_text_enc: ..." -> its arg
                    arg, _, rest = str(exc).partition(": ")
                    if arg in ("clip", "clip_image_enc", "clip_text_enc") and rest:
                        raise OptionError(arg, rest) from None
                    raise
            else:
                raise TypeError(
                    "clip: expected a NoisedCLIP, a glidekit CLIP file or an (image encoder, "
                    f"text encoder) pair of names/paths, got {type(src).__name__}"
                )
            self._model = model.to(device).float().eval()
        return self._model

    def cond_fn(self, device: torch.device, rows: list[str], scale: float, image_size: int):
        """CLIP guidance for ``rows`` at ``scale`` (see :func:`glidekit.guidance.clip_cond_fn`),
        after checking that the CLIP sees the base model's ``image_size``."""
        clip = self.get(device)
        if clip.config.image_size != image_size:
            side = clip.config.image_size
            raise OptionError("clip", f"the CLIP sees {side}x{side} images but the base model "
                              f"makes {image_size}x{image_size}")  # fmt: skip
        return clip_cond_fn(clip, rows, scale)
