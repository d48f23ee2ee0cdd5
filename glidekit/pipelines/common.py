"""Shared machinery of the pipelines: devices and dtypes, lazily loaded models, the sampler
registry, argument checks, and the result object.

Nothing here knows about GLIDE's particular flows; :mod:`glidekit.pipelines.engine` wires
these pieces into the two-stage (base, then upsampler) sampling that every pipeline runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import math
import os
import secrets
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from glidekit.diffusion.gaussian import GaussianDiffusion
from glidekit.diffusion.samplers import SAMPLERS, validate_eta
from glidekit.nn.config import DiffusionConfig
from glidekit.nn.unet import GlideUNet
from glidekit.tokenizer import GPT2Tokenizer, Tokenizer

logger = logging.getLogger(__name__)


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed model weights otherwise, and the
    next model's load would add to the resident size instead of reusing them)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


# --------------------------------------------------------------------------- devices and dtypes

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): cuda if available, then mps, then cpu; anything else as given."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: cannot parse {device!r} ({exc}); use auto, cpu, cuda, mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device: {device!r} requested but MPS is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype of the UNets: "auto" is float16 on cuda/mps and float32 on cpu.

    bfloat16 works everywhere (on the CPU it is the fast path: weights and activations in bf16,
    norms in float32, channels-last). float16 is for accelerators only: asked for on the CPU it
    logs a warning and computes in float32 (CPU half-precision convolutions are slow and inexact).
    """
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"dtype: unknown dtype {dtype!r}; expected one of {DTYPE_NAMES}")
        resolved = _DTYPES[key]
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: {resolved} is not supported; expected one of {DTYPE_NAMES}")
    if resolved == torch.float16 and device.type == "cpu":
        logger.warning("dtype float16 requested on the CPU; computing in float32 (use bf16)")
        return torch.float32
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


# --------------------------------------------------------------------------- argument checks


def check_prompts(prompt: str | Sequence[str], name: str = "prompt") -> list[str]:
    """A prompt or a list of prompts -> a non-empty list of str."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, Iterable):
        raise TypeError(f"{name} must be a str or a list of str, got {type(prompt).__name__}")
    prompts = list(prompt)
    if not prompts:
        raise ValueError(f"{name}: empty list of prompts; pass at least one")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must contain only str, got {type(bad[0]).__name__}")
    return prompts


def check_count(value: Any, name: str = "num_images") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:  # fmt: skip
    """A finite real number, optionally in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return value


def check_strength(value: Any, name: str = "strength") -> float:
    """SDEdit strength: in (0, 1]; 1 starts from (almost) pure noise."""
    return check_number(value, name, low=0.0, high=1.0, low_open=True)


def check_seed(seed: Any, name: str = "seed") -> int:
    """The seed to use: ``None`` draws a fresh random one (recorded in the result's params)."""
    if seed is None:
        return secrets.randbits(31)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be in [0, 2**63), got {seed}")
    return seed


def respacing_spelling(steps: int | str, name: str = "steps") -> str:
    """``steps`` as a timestep-respacing spelling: 100 -> "100"; strings pass unchanged."""
    if isinstance(steps, bool):
        raise TypeError(f"{name} must be an int or a respacing str, got bool")
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"{name} must be >= 1, got {steps}")
        return str(steps)
    if isinstance(steps, str):
        if not steps.strip():
            raise ValueError(f"{name}: empty string; use e.g. 100, 'fast27', 'ddim50'")
        return steps.strip()
    raise TypeError(f"{name} must be an int or a respacing str, got {type(steps).__name__}")


# --------------------------------------------------------------------------- samplers

#: Options each sampler understands (``sampler_options`` / ``--eta``).
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {"ancestral": (), "ddim": ("eta",), "dpm++2m": ()}


def available_samplers() -> list[str]:
    """Sampler names every pipeline (and ``--sampler``) accepts."""
    return list(SAMPLERS)


def get_sampler(name: str, arg: str = "sampler") -> str:
    """The canonical sampler name for ``name``, or a ValueError naming ``arg``."""
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in SAMPLERS:
        raise ValueError(
            f"{arg}: unknown sampler {name!r}; expected one of {', '.join(available_samplers())}"
        )
    return key


def check_sampler_options(
    sampler: str, options: dict[str, Any], arg: str = "sampler_options"
) -> dict[str, Any]:
    """Validate ``options`` for ``sampler`` (e.g. ``{"eta": 0.5}`` for DDIM)."""
    unknown = sorted(set(options) - set(SAMPLER_OPTIONS[sampler]))
    if unknown:
        raise ValueError(f"{arg}: {unknown} not understood by the {sampler} sampler")
    out = dict(options)
    if "eta" in out:
        out["eta"] = validate_eta(out["eta"])
    return out


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A UNet ready to sample: in eval mode on the pipeline's device and dtype."""

    model: GlideUNet
    diffusion: DiffusionConfig
    tokenizer: Tokenizer
    label: str

    def process(self, respacing: str, arg: str = "steps") -> GaussianDiffusion:
        """The diffusion this model was trained with, respaced to ``respacing``."""
        dc = self.diffusion
        try:
            return GaussianDiffusion.from_config(
                dc.noise_schedule, dc.steps, respacing, prediction=dc.prediction
            )
        except ValueError as exc:
            raise ValueError(f"{arg}: {exc}") from None


ModelSource = Any  # str | os.PathLike | GlideUNet | tuple[GlideUNet, DiffusionConfig, Tokenizer]

#: The released checkpoint a slot falls back to for a local ``.pt`` file.
ROLE_CHECKPOINT = {
    "base": "base",
    "upsampler": "upsample",
    "base_inpaint": "base-inpaint",
    "upsampler_inpaint": "upsample-inpaint",
}


def source_label(source: ModelSource) -> str:
    """How a model source is written in the params (a name, an absolute path or "custom")."""
    if isinstance(source, str):
        from glidekit.checkpoints.registry import lookup

        info = lookup(source)
        if info is not None:
            return info.name
        return str(Path(source).expanduser().absolute())
    if isinstance(source, os.PathLike):
        return str(Path(source).expanduser().absolute())
    return "custom"


class ModelSlot:
    """One model of a pipeline, loaded on first use and kept.

    ``source``: a released name ("base", "upsample", ...; fetched through
    :mod:`glidekit.checkpoints`), a path to a glidekit model file (:mod:`glidekit.nn.bundle`) or
    to a released-layout ``.pt``/``.safetensors`` checkpoint, a :class:`GlideUNet`, or a
    ``(model, DiffusionConfig, tokenizer)`` tuple such as :func:`glidekit.nn.bundle.load_model`
    returns.
    """

    def __init__(self, source: ModelSource, role: str, cache_dir: str | os.PathLike | None = None):
        if source is None:
            raise ValueError(f"{role}: no model given")
        self.source = source
        self.role = role
        self.cache_dir = cache_dir
        self.label = source_label(source)
        self._loaded: LoadedModel | None = None
        self._compiled = False

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def image_size(self) -> int | None:
        """The model's output side, without loading weights where the source tells it (a loaded
        model, a ``GlideUNet`` or tuple, a released name, a glidekit model file); else None."""
        src = self.source
        if self._loaded is not None:
            return self._loaded.model.config.image_size
        if isinstance(src, tuple) and src and isinstance(src[0], GlideUNet):
            src = src[0]
        if isinstance(src, GlideUNet):
            return src.config.image_size
        if not isinstance(src, (str, os.PathLike)):
            return None
        from glidekit.checkpoints.registry import lookup
        from glidekit.nn.config import RELEASED_CONFIGS

        info = lookup(src) if isinstance(src, str) else None
        if info is not None and info.name in RELEASED_CONFIGS:
            return RELEASED_CONFIGS[info.name].image_size
        from glidekit.nn.bundle import is_bundle, read_config

        path = Path(src).expanduser()
        return read_config(path).image_size if is_bundle(path) else None

    def release(self) -> None:
        """Drop the loaded model (the next :meth:`get` loads it again)."""
        if self._loaded is not None:
            logger.debug("releasing %s model %s", self.role, self.label)
            self._loaded = None
            self._compiled = False
            gc.collect()
            _trim_heap()

    def get(self, device: torch.device, dtype: torch.dtype, compile: bool = False) -> LoadedModel:
        """The model, loaded on first use on ``device`` in ``dtype``; ``compile``: wrap its
        forward in ``torch.compile`` (once; the first step then compiles, which takes minutes)."""
        lm = self._load(device, dtype)
        if compile and not self._compiled:
            logger.info(
                "%s: torch.compile is on; the first step compiles the model (minutes on a CPU)",
                self.role,
            )
            lm.model.compile()
            self._compiled = True
        return lm

    def _load(self, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        if self._loaded is None:
            try:
                model, dc, tokenizer = self._build(device, dtype)
            except (FileNotFoundError, TypeError):
                raise
            except ValueError as exc:  # includes CheckpointError: name the model argument
                message = str(exc)
                if message.startswith(f"{self.role}:"):
                    raise
                raise ValueError(f"{self.role}: {message}") from exc
            model = model.to(device).eval()
            if dtype != torch.float32:
                model.convert_to_fp16(dtype)
                if device.type == "cpu":  # oneDNN's fast bf16 convolutions are channels-last
                    model.to(memory_format=torch.channels_last)
            elif model.dtype != torch.float32:
                model.convert_to_fp32()
            self._loaded = LoadedModel(model, dc, tokenizer, self.label)
            logger.debug("loaded %s model %s on %s (%s)", self.role, self.label, device, dtype)
        return self._loaded

    def _build(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[GlideUNet, DiffusionConfig, Tokenizer]:
        src = self.source
        if isinstance(src, GlideUNet):
            tokenizer = getattr(src, "tokenizer", None) or GPT2Tokenizer(src.config.text_ctx)
            return src, DiffusionConfig.for_model(src.config), tokenizer
        if isinstance(src, tuple):
            if len(src) != 3 or not isinstance(src[0], GlideUNet):
                raise TypeError(
                    f"{self.role}: a tuple must be (GlideUNet, DiffusionConfig, tokenizer)"
                )
            model, dc, tokenizer = src
            return model, dc or DiffusionConfig.for_model(model.config), tokenizer
        if not isinstance(src, (str, os.PathLike)):
            raise TypeError(
                f"{self.role}: expected a released name, a path, a GlideUNet or a "
                f"(model, diffusion, tokenizer) tuple, got {type(src).__name__}"
            )
        from glidekit.checkpoints.registry import lookup

        if isinstance(src, str) and lookup(src) is not None:
            return _load_released(lookup(src).name, self.cache_dir, dtype)  # type: ignore[union-attr]
        path = Path(src).expanduser()
        if not path.exists():
            from glidekit.checkpoints import CHECKPOINTS

            raise FileNotFoundError(
                f"{self.role}: {str(src)!r} is neither a released model name "
                f"({', '.join(n for n in CHECKPOINTS if not n.startswith('clip'))}) nor a file"
            )
        from glidekit.nn.bundle import is_bundle, load_model

        if is_bundle(path):  # read straight into the compute dtype: no float32 copy in memory
            return load_model(path, device="cpu", dtype=None if dtype == torch.float32 else dtype)
        return _load_local_checkpoint(path, ROLE_CHECKPOINT.get(self.role, "base"), dtype)


def _meta_model(name: str, dtype: torch.dtype) -> GlideUNet:
    """The released ``name``'s model on the meta device, in ``dtype``'s precision layout, so
    that loading reads each tensor straight into its final dtype (no float32 copy)."""
    from glidekit.nn.config import RELEASED_CONFIGS
    from glidekit.nn.unet import create_model

    model = create_model(RELEASED_CONFIGS[name], device="meta")
    if dtype != torch.float32:
        model.convert_to_fp16(dtype)
    return model


def _load_released(name: str, cache_dir: str | os.PathLike | None, dtype: torch.dtype):
    from glidekit.checkpoints import load_into

    model = _meta_model(name, dtype)
    load_into(model, name, cache_dir=cache_dir)
    return model, DiffusionConfig.for_model(model.config), GPT2Tokenizer(model.config.text_ctx)


def _load_local_checkpoint(path: Path, checkpoint: str, dtype: torch.dtype):
    from glidekit.checkpoints import load_into

    model = _meta_model(checkpoint, dtype)
    load_into(model, path, checkpoint=checkpoint)
    return model, DiffusionConfig.for_model(model.config), GPT2Tokenizer(model.config.text_ctx)


#: The released CLIP towers, as (image encoder, text encoder) sources.
RELEASED_CLIP = ("clip/image-enc", "clip/text-enc")

_DEFAULT_NAMES = {
    "base": "base",
    "upsampler": "upsample",
    "base_inpaint": "base-inpaint",
    "upsampler_inpaint": "upsample-inpaint",
    "clip": RELEASED_CLIP,
}


def default_source(role: str) -> ModelSource:
    """The model ``from_pretrained()`` uses when none is named.

    If the package ships embedded models (``glidekit.models`` with ``default_<role>()``, e.g.
    ``default_base()``), that function's answer; else the released checkpoint's name. A
    ``default_<role>()`` returning None means "no such model" (e.g. no upsampler). Roles:
    base, upsampler, base_inpaint, upsampler_inpaint, clip.
    """
    try:
        import glidekit.models as embedded  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name not in ("glidekit.models",):
            raise
        return _DEFAULT_NAMES[role]
    fn = getattr(embedded, f"default_{role}", None)
    return fn() if fn is not None else _DEFAULT_NAMES[role]


def embedded_sampling(role: str, source: Any) -> tuple[str, dict[str, Any]] | None:
    """``(pipeline name, keyword defaults)`` if ``source`` is the package's embedded model of
    ``role`` ("base", "base_inpaint"; see ``glidekit.models.EMBEDDED_SAMPLING``), else None:
    GLIDE's defaults apply (also in a build that ships no embedded models)."""
    try:
        from glidekit.models import sampling_defaults  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name != "glidekit.models":
            raise
        return None
    return sampling_defaults(role, source)


# --------------------------------------------------------------------------- results


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
        """The params of image ``index`` alone: its own ``prompt`` and ``index`` added."""
        row = self.rows[index] if self.rows is not None else index
        params = dict(self.params)
        params["index"] = row
        params["prompt"] = self.params["prompts"][row]
        return params

    def grid(self, cols: int | None = None) -> Image.Image:
        return make_grid(self.images, cols)

    def save(self, folder: str | os.PathLike = ".", *, prefix: str | None = None,
             grid: bool = False) -> list[Path]:  # fmt: skip
        """Write each image as a PNG carrying its params (never overwriting); returns paths.

        With ``grid`` the grid image comes last in the list.
        """
        from glidekit.pipelines.images import output_stem, save_png

        folder = Path(folder)
        paths = []
        for i, img in enumerate(self.images):
            p = self.image_params(i)
            stem = prefix or output_stem(p["prompt"], p["seed"])
            name = f"{stem}-{i}" if len(self.images) > 1 else stem
            paths.append(save_png(img, folder / f"{name}.png", p))
        if grid:
            stem = prefix or output_stem(self.params["prompts"][0], self.params["seed"])
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
