"""Training configuration: nested dataclasses read from YAML or JSON, with dotted overrides.

A config file is a mapping of sections::

    model:     {kind: text2im, init: null, <UNetConfig or CLIPConfig fields>...}
    diffusion: {steps: 1000, noise_schedule: auto}
    data:      {kind: shapes, ...}
    optim:     {lr: 1.0e-4, warmup_steps: 0, grad_clip: 1.0, ema_decay: 0.9999, ...}
    train:     {steps: 1000, batch_size: 8, precision: fp32, out_dir: runs/x, ...}
    sample:    {every: 500, prompts: [...], steps: "25", guidance_scale: 3.0, ...}
    export:    {dtype: fp32, path: export.safetensors,
                sampling: {guidance_scale: 3.0, steps: karras25, sampler: dpm++2m}}

Every key can be overridden as ``section.key=value`` (the value is parsed as YAML, so
``optim.lr=1e-4``, ``model.channel_mult=[1,2,2]`` and ``model.init=null`` work), and a key of
a mapping as ``section.key.name=value`` (``export.sampling.steps=karras25``). Unknown keys and
bad values raise :class:`ValueError` naming the dotted key and what to do.

Resuming (:func:`load_run_config`): the config file is read again, so edits to it apply, and
the overrides the run was started with (recorded in its checkpoint) are applied again before
the ones given now; a key given again replaces the recorded one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glidekit.clip.config import CLIPConfig
from glidekit.diffusion import SAMPLERS
from glidekit.nn.config import CONFIG_CLASSES, UNetConfig
from glidekit.train.state import CHECKPOINT_NAME, read_checkpoint_overrides

logger = logging.getLogger(__name__)

#: Model kinds: the four UNets plus the noise-aware CLIP.
MODEL_KINDS: tuple[str, ...] = (*CONFIG_CLASSES, "clip")
DATA_KINDS: tuple[str, ...] = ("shapes", "folder", "shards")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
TOKENIZERS: tuple[str, ...] = ("auto", "gpt2", "shapes", "clip")
SCHEDULES: tuple[str, ...] = ("auto", "squaredcos_cap_v2", "linear")
MASK_KINDS: tuple[str, ...] = ("mixed", "box", "brush")
#: What a model file's sampling defaults may hold (glidekit.checkpoints.modelfile checks the same).
MAX_SAMPLING_OPTIONS = 64


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(section: str, d: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in d:
        if key not in known:
            name = f"{section}.{key}" if section else str(key)
            raise ValueError(
                f"unknown config key {name!r}{_suggest(str(key), known)}; "
                f"valid keys{' of ' + section if section else ''}: {', '.join(sorted(known))}"
            )


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check/convert ``value`` to the field type ``annotation`` (a resolved typing object)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{name}: bad value {value!r}")
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, section: str, d: Mapping[str, Any] | None) -> Any:
    """Instantiate dataclass ``cls`` from ``d``, checking keys and value types."""
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {section!r} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, d, list(fields))
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in d.items()}
    return cls(**kwargs)


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else 'positive'}, got {value!r}")


def _check_fields(
    section: str,
    obj: Any,
    *,
    choices: Mapping[str, Sequence[str]] | None = None,
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    fractions: Sequence[str] = (),
) -> None:
    """The simple checks of a section's fields, by name: one of ``choices``, > 0, >= 0, in
    [0, 1]. A field that is ``None`` (optional and unset) passes."""
    for name, allowed in (choices or {}).items():
        _choice(f"{section}.{name}", getattr(obj, name), allowed)
    for names, zero_ok in ((positive, False), (non_negative, True)):
        for name in names:
            if getattr(obj, name) is not None:
                _positive(f"{section}.{name}", getattr(obj, name), zero_ok=zero_ok)
    for name in fractions:
        value = getattr(obj, name)
        if value is not None and not 0 <= float(value) <= 1:
            raise ValueError(f"{section}.{name} must be in [0, 1], got {value}")


@dataclass
class ModelSection:
    """``model``: what to train and where its weights start.

    kind: text2im | inpaint | super_res | super_res_inpaint | clip.
    init: ``null`` (from scratch), a released name (``base``, ``upsample``, ``base-inpaint``,
        ``upsample-inpaint``; ``clip`` for the released CLIP pair), a ``.pt``/``.safetensors``
        checkpoint path, or a glidekit bundle (``export.safetensors``). With a released name or
        a bundle, the architecture defaults to that model's; keys given here override it.
    arch: the remaining keys, fields of :class:`~glidekit.nn.config.UNetConfig` (or
        :class:`~glidekit.clip.config.CLIPConfig` for ``kind: clip``).
    init_text_attention_scale: GLIDE UNets with ``init``: multiply the text transformer's
        attention queries and keys (weights and biases) by this factor in (0, 1] when the
        weights are loaded, before the first step, which divides its attention logits by the
        factor squared (:func:`glidekit.train.unet.soften_text_attention`). A trained text
        transformer can have saturated, one-hot attention (the shapes base's pooled token reads
        one word per head), whose softmax passes no gradient to words it ignores; softening it
        lets them in again. 1 (the default) loads the weights as they are; a resumed run keeps
        its checkpoint's weights.
    """

    kind: str = "text2im"
    init: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    init_text_attention_scale: float = 1.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ModelSection:
        if d is not None and not isinstance(d, Mapping):
            raise ValueError(f"config section 'model' must be a mapping, got {type(d).__name__}")
        d = dict(d or {})
        kind = _coerce("model.kind", d.pop("kind", "text2im"), str)
        _choice("model.kind", kind, MODEL_KINDS)
        init = _coerce("model.init", d.pop("init", None), str | None)
        scale = _coerce(
            "model.init_text_attention_scale", d.pop("init_text_attention_scale", 1.0), float
        )
        if not 0 < scale <= 1:
            raise ValueError(
                f"model.init_text_attention_scale must be in (0, 1] (1 = as loaded), got {scale}"
            )
        if scale != 1.0 and (kind == "clip" or not init):
            raise ValueError(
                "model.init_text_attention_scale softens a loaded GLIDE UNet's text attention; "
                "it needs model.init and a UNet model.kind: remove it"
            )
        if kind == "clip":
            known = [f.name for f in dataclasses.fields(CLIPConfig)]
        else:
            known = [f.name for f in dataclasses.fields(CONFIG_CLASSES[kind])]
        _check_keys("model", d, [*known, "kind", "init"])
        for key in ("channel_mult", "attention_resolutions"):
            if key in d:
                d[key] = list(_coerce(f"model.{key}", d[key], list[int]))
        return cls(kind=kind, init=init, arch=d, init_text_attention_scale=scale)

    def to_dict(self) -> dict[str, Any]:
        extra = {}
        if self.init_text_attention_scale != 1.0:  # only when set: old configs read the same
            extra["init_text_attention_scale"] = self.init_text_attention_scale
        return {"kind": self.kind, "init": self.init, **extra, **self.arch}

    def unet_config(self, base: UNetConfig | None = None, **defaults: Any) -> UNetConfig:
        """The UNet config: ``base`` (or the kind's defaults), then ``defaults``, then arch keys."""
        if self.kind == "clip":
            raise ValueError("model.kind is clip: no UNet config")
        cls = CONFIG_CLASSES[self.kind]
        values: dict[str, Any] = {}
        if base is not None:
            values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        values.update(defaults)
        values.update(self.arch)
        for key in ("channel_mult", "attention_resolutions"):
            if key in values:
                values[key] = tuple(values[key])
        return _make(cls, "model", values)

    def clip_config(self, **defaults: Any) -> CLIPConfig:
        if self.kind != "clip":
            raise ValueError(f"model.kind is {self.kind}: no CLIP config")
        values = {**defaults, **self.arch}
        if "logit_scale" in values:
            values["logit_scale"] = _coerce("model.logit_scale", values["logit_scale"], float)
        return _make(CLIPConfig, "model", values)


def _make(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    for key, value in list(values.items()):
        if key in hints and hints[key] in (int, float, bool, str):
            values[key] = _coerce(f"{section}.{key}", value, hints[key])
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        named = next((k for k in values if msg.startswith(k)), None)
        prefix = f"{section}.{named}" if named else section
        raise ValueError(f"{prefix}: {msg}") from exc


@dataclass
class DiffusionSection:
    """``diffusion``: the training process. ``noise_schedule: auto`` = linear for upsamplers,
    squaredcos_cap_v2 otherwise (as released). ``high_noise_fraction``: the share of each batch's
    timesteps drawn from ``[high_noise_start, steps)`` instead of uniformly (0 = uniform, as
    GLIDE); colour and layout are decided at the highest noise levels, which uniform sampling
    visits rarely. ``mse_weight_max``: > 1 weights the eps MSE by clamp(1/SNR(t), 1, max), an x0
    loss at high noise where a plain eps loss barely rewards the right picture (1 = GLIDE).
    ``prediction``: eps (GLIDE) or v, the model's output (see
    :class:`glidekit.diffusion.GaussianDiffusion`); saved with the exported model.
    ``pooled_bow_weight``: text-conditional UNets: > 0 adds this multiple of an auxiliary loss
    that asks the pooled text token to name the caption's words through the tied token
    embedding (:func:`glidekit.train.unet.pooled_bow_loss`; no new weights; 0 = GLIDE's loss
    alone). It makes the text encoder carry words the UNet does not use yet."""

    steps: int = 1000
    noise_schedule: str = "auto"
    high_noise_fraction: float = 0.0
    high_noise_start: int = 900
    mse_weight_max: float = 1.0
    prediction: str = "eps"
    pooled_bow_weight: float = 0.0

    def validate(self) -> None:
        _check_fields(
            "diffusion",
            self,
            choices={"noise_schedule": SCHEDULES, "prediction": ("eps", "v")},
            positive=("steps",),
            fractions=("high_noise_fraction",),
            non_negative=("pooled_bow_weight",),
        )
        if not float(self.mse_weight_max) >= 1.0:
            raise ValueError(
                "diffusion.mse_weight_max must be >= 1 (1 = GLIDE's unweighted loss), "
                f"got {self.mse_weight_max}"
            )
        if not 0 <= int(self.high_noise_start) < self.steps:
            raise ValueError(
                f"diffusion.high_noise_start must be in [0, diffusion.steps={self.steps}), "
                f"got {self.high_noise_start}"
            )


@dataclass
class DataSection:
    """``data``: where images and captions come from and how batches are made.

    kind: shapes (the generated shapes world), folder (``root``: images with ``.txt``
        captions) or shards (``shards``: WebDataset-style tars, a path/pattern/folder).
    length: shapes-world dataset size (items are generated from ``(seed, index)``).
    caption_dropout: probability of replacing a caption by "" (for classifier-free guidance);
        ``null`` = 0.2 for diffusion models, 0 for CLIP.
    low_res_size: upsampler input side (``null`` = image_size / 4).
    mask_kind: inpainting masks: mixed | box | brush.
    inpaint_object_prob: shapes world, inpainting models: the share of examples whose mask is
        one quadrant holding the captioned object, with (3 times in 4) another object in
        another quadrant; the caption then describes the region to repaint, which is how
        GLIDE's inpainting is used (the rest get ``mask_kind`` masks and whole-scene captions).
    position_twins: shapes world, CLIP models: the share of each batch's pairs whose second
        sample is the first one's object and background at another position (both with
        canonical captions): hard negatives, without which a contrastive CLIP can tell most
        captions in a batch apart by colour alone and never learns where the object is.
    tokenizer: auto (shapes world's word tokenizer for ``kind: shapes``, else GPT-2; CLIP's
        own BPE for ``model.kind: clip`` outside the shapes world) | gpt2 | shapes | clip.
    patch_size: upsamplers only: train on random aligned patches of this side (the low-res
        input is made from the whole image first, then cropped to the matching patch), so a
        convolutional upsampler learns at the full resolution's scale for a fraction of the
        cost; it still samples whole images (``null`` = whole images, as released).
    """

    kind: str = "shapes"
    root: str | None = None
    shards: str | None = None
    length: int = 100_000
    seed: int = 0
    caption_dropout: float | None = None
    low_res_size: int | None = None
    mask_kind: str = "mixed"
    inpaint_object_prob: float = 0.0
    position_twins: float = 0.0
    tokenizer: str = "auto"
    shuffle_buffer: int = 1000
    num_workers: int = 0
    random_crop: bool = False
    patch_size: int | None = None

    def validate(self) -> None:
        _check_fields(
            "data",
            self,
            choices={"kind": DATA_KINDS, "mask_kind": MASK_KINDS, "tokenizer": TOKENIZERS},
            positive=("length", "low_res_size", "patch_size"),
            non_negative=("shuffle_buffer", "num_workers"),
            fractions=("caption_dropout", "inpaint_object_prob", "position_twins"),
        )
        if self.kind == "folder" and not self.root:
            raise ValueError("data.root is required for data.kind: folder (a folder of images)")
        if self.kind == "shards" and not self.shards:
            raise ValueError(
                "data.shards is required for data.kind: shards (e.g. 'data/{000000..000009}.tar')"
            )


@dataclass
class OptimSection:
    """``optim``: AdamW, LR warm-up then constant or cosine, clipping and EMA.

    grad_clip: max global gradient norm (0 = off). ema_decay: EMA of the weights (exported);
    with ``ema_warmup`` the decay is ``min(ema_decay, (1 + step) / (10 + step))``.
    text_lr_mult: GLIDE UNets only: the text encoder's learning rate as a multiple of ``lr``
    (its token, positional and padding embeddings, transformer, final LayerNorm and the
    projection of the pooled token; :data:`glidekit.train.unet.TEXT_ENCODER_PARAMS`). 1 (the
    default) keeps one parameter group, as before. The text encoder reaches the loss only
    through the UNet, diluted by its attention over the whole context, so a word the UNet does
    not use yet (the shapes world's position) gets little gradient; a larger multiple lets it
    move faster. On ``--resume`` the checkpoint's group learning rates are restored.
    """

    lr: float = 1.0e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    text_lr_mult: float = 1.0

    def validate(self) -> None:
        _check_fields(
            "optim",
            self,
            choices={"schedule": ("constant", "cosine")},
            positive=("lr", "eps", "text_lr_mult"),
            non_negative=("weight_decay", "warmup_steps", "grad_clip"),
            fractions=("min_lr_ratio",),
        )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class TrainSection:
    """``train``: the loop.

    steps: optimizer steps in total. batch_size: images per process per micro-batch; one step
    sees ``batch_size * grad_accum * world_size`` images. precision: fp32 | bf16 (autocast;
    CPU or GPU) | fp16 (GPU only, with a gradient scaler). device: auto | cpu | cuda.
    out_dir: checkpoint.pt, metrics.jsonl, loss.png, samples/, export.safetensors go here.
    checkpoint_every / log_every: in steps (0 = only at the end). threads: torch CPU threads
    (``null`` = leave torch's default).
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/glidekit"
    log_every: int = 10
    checkpoint_every: int = 500
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        _check_fields(
            "train",
            self,
            choices={"precision": PRECISIONS, "device": ("auto", "cpu", "cuda")},
            positive=("steps", "batch_size", "grad_accum", "threads"),
            non_negative=("log_every", "checkpoint_every"),
        )
        if not self.out_dir:
            raise ValueError("train.out_dir must name a folder")


@dataclass
class SampleSection:
    """``sample``: periodic sample grids from the EMA model (diffusion models only).

    every: steps between grids (0 = only at the end, -1 = never). prompts: captions to sample
    (empty = captions of fixed dataset items; upsamplers/inpainters always use fixed items for
    their low-res/masked inputs). steps: timestep respacing ("25", "ddim25", "karras25", ...).
    sampler: a name of :data:`glidekit.diffusion.SAMPLERS` (ancestral, ddim, dpm++2m).
    guidance_scale: classifier-free guidance scale (1 = none).
    """

    every: int = 500
    prompts: list[str] = field(default_factory=list)
    count: int = 4
    steps: str = "25"
    sampler: str = "ancestral"
    guidance_scale: float = 3.0
    seed: int = 0

    def validate(self) -> None:
        if self.every < -1:
            raise ValueError(f"sample.every must be >= -1, got {self.every}")
        _check_fields("sample", self, choices={"sampler": tuple(SAMPLERS)}, positive=("count",))
        if not self.steps:
            raise ValueError("sample.steps must be a respacing string such as '25' or 'ddim25'")


@dataclass
class ExportSection:
    """``export``: the EMA weights as a glidekit model file, written at the end of training.

    dtype: fp32 | fp16 | bf16, the weights' type in the file. path: the file, relative to
    ``train.out_dir`` (or absolute).
    sampling: diffusion models only: the model's own sampling defaults, written into the file
    (``glidekit.checkpoints.modelfile.save_unet(sampling=...)``), which every face (Python,
    CLI, web) uses where the user gives no value: a mapping of pipeline option -> value, e.g.
    ``{guidance_scale: 3.0, steps: karras25, sampler: dpm++2m}`` (the options of
    :mod:`glidekit.pipelines.options`, such as ``guidance``, ``guidance_scale``, ``steps``,
    ``sampler``, ``upsample_steps``). At most 64 options; each value a finite number, a string
    or true/false. ``null`` (the default): none, so GLIDE's defaults apply.
    """

    dtype: str = "fp32"
    path: str = "export.safetensors"
    sampling: dict[str, Any] | None = None

    def validate(self) -> None:
        _choice("export.dtype", self.dtype, ("fp32", "fp16", "bf16"))
        if self.sampling is None:
            return
        if not isinstance(self.sampling, Mapping):
            raise ValueError(
                "export.sampling must be a mapping of sampling option -> value (e.g. "
                f"{{guidance_scale: 3.0, steps: karras25}}), got {self.sampling!r}"
            )
        if len(self.sampling) > MAX_SAMPLING_OPTIONS:
            raise ValueError(f"export.sampling: at most {MAX_SAMPLING_OPTIONS} options")
        for key, value in self.sampling.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(
                    f"export.sampling: {key!r} is not an option name (such as guidance_scale)"
                )
            plain = isinstance(value, (str, int, float)) and len(str(value)) <= 200
            if not plain or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(
                    f"export.sampling.{key}: {value!r} is not a finite number, a string (of at "
                    "most 200 characters) or true/false"
                )


@dataclass
class TrainConfig:
    """The whole training run (see the module docstring for the file format)."""

    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    export: ExportSection = field(default_factory=ExportSection)

    SECTIONS: typing.ClassVar[dict[str, type]] = {
        "diffusion": DiffusionSection,
        "data": DataSection,
        "optim": OptimSection,
        "train": TrainSection,
        "sample": SampleSection,
        "export": ExportSection,
    }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build and validate from a nested mapping; raises ValueError naming the bad key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a training config must be a mapping, got {type(d).__name__}")
        _check_keys("", d, ["model", *cls.SECTIONS])
        sections = {name: _build(sc, name, d.get(name)) for name, sc in cls.SECTIONS.items()}
        config = cls(model=ModelSection.from_dict(d.get("model")), **sections)
        config.validate()
        return config

    def validate(self) -> None:
        for name in self.SECTIONS:
            getattr(self, name).validate()
        if self.data.patch_size is not None:
            self._check_patch_size()
        if self.data.inpaint_object_prob and (
            self.data.kind != "shapes" or self.model.kind not in ("inpaint", "super_res_inpaint")
        ):
            raise ValueError(
                "data.inpaint_object_prob is for inpainting models (model.kind inpaint) on the "
                f"shapes world (data.kind shapes); this is {self.model.kind} on "
                f"{self.data.kind}: remove it"
            )
        if self.data.position_twins and (self.data.kind != "shapes" or self.model.kind != "clip"):
            raise ValueError(
                "data.position_twins is for CLIP models (model.kind clip) on the shapes world "
                f"(data.kind shapes); this is {self.model.kind} on {self.data.kind}: remove it"
            )
        if self.model.kind == "clip" and self.diffusion.pooled_bow_weight:
            raise ValueError(
                "diffusion.pooled_bow_weight is for the GLIDE UNets' text encoder; remove it "
                "for model.kind: clip"
            )
        if self.model.kind == "clip" and self.optim.text_lr_mult != 1.0:
            raise ValueError(
                "optim.text_lr_mult is for the GLIDE UNets' text encoder; remove it for "
                "model.kind: clip"
            )
        if self.model.kind == "clip" and self.export.sampling is not None:
            raise ValueError(
                "export.sampling holds a diffusion model's sampling defaults; remove it for "
                "model.kind: clip"
            )
        if self.model.kind == "clip" and self.model.init not in (None, "clip"):
            path = Path(self.model.init)
            if not path.is_file():
                raise ValueError(
                    f"model.init: {self.model.init!r} is neither 'clip' (the released pair) "
                    "nor a CLIP file exported by glidekit train"
                )

    def _check_patch_size(self) -> None:
        patch = int(self.data.patch_size)  # type: ignore[arg-type]
        if self.model.kind not in ("super_res", "super_res_inpaint"):
            raise ValueError(
                f"data.patch_size is for upsamplers (model.kind super_res); this is "
                f"{self.model.kind}: remove data.patch_size"
            )
        size = int(self.model.unet_config().image_size)
        low = int(self.data.low_res_size or max(1, size // 4))
        factor = size // low
        if size % low or patch > size or patch % factor:
            raise ValueError(
                f"data.patch_size={patch} must be at most model.image_size={size} and a "
                f"multiple of the upsampling factor {factor} (e.g. {size // 2})"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model.to_dict()}
        for name in self.SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d[a][b] = value`` for ``dotted = "a.b"``, ``d[a][b][c] = value`` for "a.b.c" (a
    key of a mapping such as ``export.sampling``), creating mappings as needed."""
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(
            f"override {dotted!r}: expected section.key=value (e.g. optim.lr=1e-4); "
            f"sections: model, {', '.join(TrainConfig.SECTIONS)}"
        )
    section = parts[0]
    if section not in ("model", *TrainConfig.SECTIONS):
        raise ValueError(
            f"override {dotted!r}: unknown section {section!r}"
            f"{_suggest(section, ['model', *TrainConfig.SECTIONS])}"
        )
    target = d
    for i, part in enumerate(parts[:-1]):
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            raise ValueError(
                f"override {dotted!r}: {'.'.join(parts[: i + 1])} is not a mapping; "
                f"set it as {'.'.join(parts[: i + 1])}=value"
            )
    target[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 1e-4)`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected section.key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def load_config(
    source: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> TrainConfig:
    """Read a config file (or take a dict), apply ``section.key=value`` overrides, validate."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source))  # deep copy, plain types
    else:
        data = read_config_file(source)
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(data, key, value)
    return TrainConfig.from_dict(data)


def _same_or_nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def merge_overrides(remembered: Sequence[str], given: Sequence[str]) -> list[str]:
    """A resumed run's overrides: the ``remembered`` ones (those it was started with) whose
    key is not given again, then the ``given`` ones (``train.steps=20`` given again replaces
    ``train.steps=10``; ``export.sampling=...`` replaces ``export.sampling.steps=...``)."""
    keys = [parse_override(o)[0] for o in given]
    kept = [
        o for o in remembered if not any(_same_or_nested(parse_override(o)[0], k) for k in keys)
    ]
    return [*kept, *given]


def load_run_config(
    source: str | os.PathLike | Mapping[str, Any] | None,
    overrides: Sequence[str] = (),
    *,
    resume: bool | str | os.PathLike = False,
) -> tuple[TrainConfig, list[str]]:
    """The config of a run to start or to continue, and the overrides it is built with.

    Starting (``resume=False``): :func:`load_config` of ``source`` and ``overrides``.
    Resuming (``True``: ``<train.out_dir>/checkpoint.pt``; or a checkpoint path): ``source`` is
    read again and the overrides recorded in the checkpoint (those the run was started with)
    are applied before ``overrides``, see :func:`merge_overrides`. Give the returned overrides
    to :class:`~glidekit.train.Trainer` so the next checkpoint records them.
    """
    given = list(overrides)
    config = load_config(source, given)
    if not resume:
        return config, given
    path = Path(config.train.out_dir) / CHECKPOINT_NAME if resume is True else Path(resume)
    merged = merge_overrides(read_checkpoint_overrides(path), given)
    if merged == given:
        return config, given
    reused = [o for o in merged if o not in given]
    logger.info("resume: the run's overrides %s apply again (give a key to change it)", reused)
    return load_config(source, merged), merged


__all__ = [
    "DataSection",
    "DiffusionSection",
    "ExportSection",
    "ModelSection",
    "OptimSection",
    "SampleSection",
    "TrainConfig",
    "TrainSection",
    "load_config",
    "load_run_config",
    "merge_overrides",
    "parse_override",
    "read_config_file",
]
