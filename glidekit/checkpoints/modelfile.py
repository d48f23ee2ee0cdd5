"""glidekit's own model files: self-describing safetensors files for UNets and noise-aware CLIPs.

One module writes and reads them (``glidekit train`` exports through it, the pipelines and
``glidekit.models`` read through it). A file's ``__metadata__`` holds, under the keys below
(all JSON except the format):

* :data:`FORMAT_KEY`: :data:`UNET_FORMAT` (a diffusion UNet) or :data:`CLIP_FORMAT` (both
  towers of a noise-aware CLIP, ``image_encoder.*`` and ``text_encoder.*``);
* a UNet: :data:`CONFIG_KEY` (the ``UNetConfig``), :data:`DIFFUSION_KEY` (the
  ``DiffusionConfig`` it was trained with), :data:`TOKENIZER_KEY`, and optionally
  :data:`SAMPLING_KEY`, the model's own sampling defaults (option name -> value);
* a CLIP: :data:`CLIP_CONFIG_KEY` (the ``CLIPConfig``) and :data:`TOKENIZER_KEY`.

Tokenizers are described by one codec (:func:`tokenizer_to_metadata`): ``{"type": "gpt2",
"text_ctx": n}``, ``{"type": "clip"}`` (CLIP's BPE) or ``{"type": "shapes", "id_offset": k,
"data": words}`` (the shapes world's words; ``id_offset`` 1 for a CLIP, which pads with 0).
:func:`tokenizer_from_metadata` also reads the older UNet dialect ``{"type":
"ShapesTokenizer", "data": words}``, so every file glidekit ever wrote loads.

The same model saved twice gives the same bytes (:func:`glidekit.tensorfile.write_tensors`;
the JSON is written with sorted keys). Files may come from anyone: before a model is
allocated, the header is checked (:mod:`glidekit.tensorfile`), every config field is bounded
(:data:`UNET_LIMITS`, :data:`CLIP_LIMITS`, :data:`DIFFUSION_LIMITS`), and the model the config
describes is built on the ``meta`` device (which allocates nothing) and its every tensor's name
and shape compared with the file's. Every fault is a :class:`ModelFileError` (a
``CheckpointError``, so a ``ValueError``) with one line naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glidekit.checkpoints.errors import CheckpointError, ModelFileError
from glidekit.checkpoints.layout import diff_layouts, module_layout
from glidekit.checkpoints.loading import load_into
from glidekit.clip import CLIPConfig, NoisedCLIP, create_clip_model
from glidekit.diffusion.config import DiffusionConfig
from glidekit.diffusion.gaussian import PREDICTIONS
from glidekit.diffusion.schedules import SCHEDULES
from glidekit.fileio import atomic_path
from glidekit.nn.config import UNetConfig, config_from_dict
from glidekit.nn.unet import GlideUNet, create_model
from glidekit.tensorfile import Header, TensorEntry, iter_tensors, read_header, write_tensors
from glidekit.tokenizer import (
    ClipTokenizer,
    GPT2Tokenizer,
    ShapesClipTokenizer,
    ShapesTokenizer,
    Tokenizer,
)

PathLike = str | os.PathLike[str]

FORMAT_KEY = "glidekit.format"
UNET_FORMAT = "glide-unet/1"
CLIP_FORMAT = "glide-clip/1"
CONFIG_KEY = "glidekit.config"
CLIP_CONFIG_KEY = "glidekit.clip_config"
DIFFUSION_KEY = "glidekit.diffusion"
TOKENIZER_KEY = "glidekit.tokenizer"
SAMPLING_KEY = "glidekit.sampling"
#: Keys a caller's ``metadata`` may not set: glidekit writes them itself.
RESERVED_KEYS = frozenset(
    (FORMAT_KEY, CONFIG_KEY, CLIP_CONFIG_KEY, DIFFUSION_KEY, TOKENIZER_KEY, SAMPLING_KEY)
)

TOKENIZER_GPT2 = "gpt2"
TOKENIZER_CLIP = "clip"
TOKENIZER_SHAPES = "shapes"
_TOKENIZER_SHAPES_V0 = "ShapesTokenizer"  # the UNet files' dialect before this module

# Upper bounds of config fields (and derived sizes), well above every released and shapes model
# (the released base: 192 channels, 3 blocks, a 16-layer 512-wide text transformer, 50257
# tokens) and low enough that the meta-device build of any accepted config is quick.
UNET_LIMITS: Mapping[str, int] = {
    "image_size": 1024,
    "num_channels": 1024,
    "num_res_blocks": 8,
    "num_heads": 64,
    "num_head_channels": 1024,
    "num_heads_upsample": 64,
    "text_ctx": 1024,
    "xf_width": 4096,
    "xf_layers": 64,
    "xf_heads": 64,
    "n_vocab": 1 << 20,
}
#: Sequences of a UNetConfig: (most entries, largest entry).
UNET_SEQUENCE_LIMITS: Mapping[str, tuple[int, int]] = {
    "channel_mult": (8, 16),
    "attention_resolutions": (16, 1024),
}
CLIP_LIMITS: Mapping[str, int] = {
    "n_timesteps": 10_000,
    "image_size": 1024,
    "patch_size": 64,
    "n_patches": 4096,
    "n_vocab": 1 << 20,
    "max_text_len": 1024,
    "n_embd": 4096,
    "n_head_text": 64,
    "n_head_image": 64,
    "n_state_text": 4096,
    "n_state_image": 4096,
    "n_xf_blocks_text": 64,
    "n_xf_blocks_image": 64,
}
DIFFUSION_LIMITS: Mapping[str, int] = {"steps": 100_000}
_MAX_WORDS = 1 << 16  # a shapes vocabulary
#: Most options a model file's sampling defaults may hold.
MAX_SAMPLING_OPTIONS = 64

# The noise-aware CLIP's towers: (attribute, released checkpoint name, argument name).
_TOWERS = (
    ("image_encoder", "clip/image-enc", "clip_image_enc"),
    ("text_encoder", "clip/text-enc", "clip_text_enc"),
)


# --------------------------------------------------------------------------------------------
# The tokenizer codec
# --------------------------------------------------------------------------------------------


def tokenizer_to_metadata(tok: Any) -> dict[str, Any]:
    """The JSON-able description of a tokenizer that :func:`tokenizer_from_metadata` rebuilds.

    ``tok``: a :class:`GPT2Tokenizer`, a :class:`ShapesTokenizer`, a
    :class:`ShapesClipTokenizer` (the same words with ids shifted by one) or a
    :class:`ClipTokenizer`. Raises ``TypeError`` for anything else (it could not be rebuilt).
    """
    if isinstance(tok, GPT2Tokenizer):
        return {"type": TOKENIZER_GPT2, "text_ctx": tok.text_ctx}
    if isinstance(tok, ClipTokenizer):
        return {"type": TOKENIZER_CLIP}
    if isinstance(tok, ShapesClipTokenizer):
        return {"type": TOKENIZER_SHAPES, "id_offset": 1, "data": tok.words.to_dict()}
    if isinstance(tok, ShapesTokenizer):
        return {"type": TOKENIZER_SHAPES, "id_offset": 0, "data": tok.to_dict()}
    raise TypeError(
        f"tokenizer: a {type(tok).__name__} cannot be recorded in a model file; use "
        "GPT2Tokenizer, ClipTokenizer, ShapesTokenizer or ShapesClipTokenizer"
    )


def tokenizer_from_metadata(meta: Mapping[str, Any]) -> Any:
    """Rebuild a tokenizer from :func:`tokenizer_to_metadata`'s dict or an older dialect.

    Returns a :class:`GPT2Tokenizer`, :class:`ShapesTokenizer`, :class:`ShapesClipTokenizer` or
    :class:`ClipTokenizer`. Raises ``ValueError`` (``"tokenizer: ..."``) for a dict that
    describes none of them.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"tokenizer: expected a JSON object, got {type(meta).__name__}")
    kind = meta.get("type")
    if kind == TOKENIZER_GPT2:
        text_ctx = meta.get("text_ctx", 128)
        if not _is_int(text_ctx) or not 0 < text_ctx <= UNET_LIMITS["text_ctx"]:
            raise ValueError(f"tokenizer: text_ctx {text_ctx!r} is not in 1..1024")
        return GPT2Tokenizer(text_ctx)
    if kind == TOKENIZER_CLIP:
        return ClipTokenizer()
    if kind in (TOKENIZER_SHAPES, _TOKENIZER_SHAPES_V0):
        offset = meta.get("id_offset", 0)
        if offset not in (0, 1) or isinstance(offset, bool):
            raise ValueError(f"tokenizer: id_offset must be 0 or 1, got {offset!r}")
        data = meta.get("data")
        words = data.get("words") if isinstance(data, Mapping) else None
        if not isinstance(words, list) or len(words) > _MAX_WORDS:
            raise ValueError(f"tokenizer: the shapes vocabulary needs 1..{_MAX_WORDS} words")
        try:
            tok = ShapesTokenizer.from_dict(data)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tokenizer: {exc}") from None
        return ShapesClipTokenizer(tok) if offset else tok
    raise ValueError(
        f"tokenizer: type {str(kind)[:40]!r} is unknown; expected "
        f"{TOKENIZER_GPT2!r}, {TOKENIZER_CLIP!r} or {TOKENIZER_SHAPES!r}"
    )


# --------------------------------------------------------------------------------------------
# Reading and checking metadata
# --------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dumps(value: Any) -> str:
    """JSON with sorted keys: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _header(path: PathLike, where: str | None = None) -> Header:
    """The checked header; ``FileNotFoundError`` as is, any other fault a ModelFileError."""
    try:
        return read_header(path)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # the message names the file already
        raise ModelFileError(f"{where}: {exc}" if where else str(exc)) from None


def _require_format(where: str, meta: Mapping[str, str], fmt: str) -> None:
    found = meta.get(FORMAT_KEY)
    if found == fmt:
        return
    what = "CLIP" if fmt == CLIP_FORMAT else "model"
    got = f"its {FORMAT_KEY} is {found[:40]!r}" if found else f"no {FORMAT_KEY} metadata"
    raise ModelFileError(
        f"{where}: not a glidekit {what} file ({got}, expected {fmt!r}); released .pt "
        "checkpoints load through glidekit.checkpoints"
    )


def _json_object(where: str, meta: Mapping[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored under ``key``; ModelFileError when absent or malformed."""
    raw = meta.get(key)
    if raw is None:
        raise ModelFileError(f"{where}: no {key} metadata; the file is incomplete, export it again")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{where}: {key} is not JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: {key} is not a JSON object")
    return value


def _bounded(where: str, key: str, config: Any, limits: Mapping[str, int]) -> None:
    """Refuse a config whose fields (or derived sizes) exceed ``limits``."""
    for name, top in limits.items():
        value = getattr(config, name)
        if not _is_int(value) or value > top:
            raise ModelFileError(
                f"{where}: {key} asks for {name}={str(value)[:40]}, beyond any glidekit model "
                f"(at most {top}); the file is corrupt or not meant for glidekit"
            )


def _unet_config(where: str, meta: Mapping[str, str]) -> UNetConfig:
    raw = _json_object(where, meta, CONFIG_KEY)
    try:
        config = config_from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: {CONFIG_KEY} is not a valid model config ({exc})") from None
    _bounded(where, CONFIG_KEY, config, UNET_LIMITS)
    for name, (most, largest) in UNET_SEQUENCE_LIMITS.items():
        values = getattr(config, name)
        if len(values) > most or any(not 0 < v <= largest for v in values):
            raise ModelFileError(
                f"{where}: {CONFIG_KEY} asks for {name}={list(values)[:10]}, beyond any glidekit "
                f"model (at most {most} entries in 1..{largest})"
            )
    return config


def _clip_config(where: str, meta: Mapping[str, str]) -> CLIPConfig:
    raw = _json_object(where, meta, CLIP_CONFIG_KEY)
    try:
        config = CLIPConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{where}: {CLIP_CONFIG_KEY} is not a valid CLIP config ({exc})"
        ) from None
    _bounded(where, CLIP_CONFIG_KEY, config, CLIP_LIMITS)
    return config


def _diffusion_config(where: str, meta: Mapping[str, str]) -> DiffusionConfig:
    raw = _json_object(where, meta, DIFFUSION_KEY)
    # DiffusionConfig checks nothing itself; its annotations are strings ("int", "str", "bool").
    fields = {f.name: f.type for f in dataclasses.fields(DiffusionConfig)}
    types = {"int": int, "str": str, "bool": bool}
    for name, value in raw.items():
        want = types.get(str(fields.get(name)))
        if want is None or type(value) is not want or len(str(value)) > 200:
            raise ModelFileError(
                f"{where}: {DIFFUSION_KEY} has {name[:40]}={str(value)[:40]}, not a field of "
                f"DiffusionConfig of the right type ({', '.join(fields)})"
            )
    config = DiffusionConfig(**raw)
    _bounded(where, DIFFUSION_KEY, config, DIFFUSION_LIMITS)
    if config.noise_schedule not in SCHEDULES or config.prediction not in PREDICTIONS:
        raise ModelFileError(
            f"{where}: {DIFFUSION_KEY} names schedule {config.noise_schedule[:40]!r} and "
            f"prediction {config.prediction[:40]!r}; expected one of {SCHEDULES} and of "
            f"{PREDICTIONS}"
        )
    return config


def _tokenizer(where: str, raw: Mapping[str, Any], n_vocab: int, offset: int) -> Any:
    """The tokenizer :data:`TOKENIZER_KEY` describes (``raw``), checked to produce only ids
    below ``n_vocab`` (after a CLIP's shift by ``offset``)."""
    try:
        tok = tokenizer_from_metadata(raw)
    except ValueError as exc:
        raise ModelFileError(f"{where}: {TOKENIZER_KEY}: {exc}") from None
    words = tok.words if isinstance(tok, ShapesClipTokenizer) else tok
    if isinstance(words, ShapesTokenizer) and words.n_vocab + offset > n_vocab:
        raise ModelFileError(
            f"{where}: the tokenizer has {words.n_vocab} ids but the model reads only {n_vocab}"
        )
    return tok


def read_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensor data is read).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: not a readable safetensors file (one line naming it).
    """
    return _header(path).metadata


def _is_format(path: Any, fmt: str) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        return Path(path).is_file() and read_header(path).metadata.get(FORMAT_KEY) == fmt
    except (OSError, ValueError):  # unreadable, or not a safetensors file
        return False


def is_unet_file(path: Any) -> bool:
    """Whether ``path`` is a glidekit UNet file (:data:`UNET_FORMAT`). Never raises: anything
    else (a released name, a missing path, a FIFO, a broken file) is False."""
    return _is_format(path, UNET_FORMAT)


def is_clip_file(path: Any) -> bool:
    """Whether ``path`` is a glidekit CLIP file (:data:`CLIP_FORMAT`); never raises."""
    return _is_format(path, CLIP_FORMAT)


def read_unet_config(path: PathLike) -> UNetConfig:
    """The ``UNetConfig`` of a glidekit UNet file (checked and bounded; no weights are read).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: not a glidekit UNet file, or its config is missing or invalid.
    """
    meta = read_metadata(path)
    _require_format(str(path), meta, UNET_FORMAT)
    return _unet_config(str(path), meta)


def read_sampling_defaults(path: Any) -> dict[str, Any]:
    """The model's own sampling defaults (option name -> value, e.g. ``{"guidance": "clip",
    "guidance_scale": 20.0, "steps": 250}``), stored under :data:`SAMPLING_KEY`.

    ``{}`` when the file has none, and for anything that is not a glidekit UNet file (a
    released name, a ``.pt``, a path that does not resolve): loading it reports what is wrong.

    Raises:
        ModelFileError: a UNet file whose sampling defaults are malformed.
    """
    if not is_unet_file(path):
        return {}
    meta = read_metadata(path)
    if SAMPLING_KEY not in meta:
        return {}
    where = str(path)
    try:
        return check_sampling_defaults(_json_object(where, meta, SAMPLING_KEY), where=where)
    except ModelFileError:
        raise
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None


def check_sampling_defaults(sampling: Any, *, where: str = "sampling") -> dict[str, Any]:
    """``sampling`` as a dict of at most :data:`MAX_SAMPLING_OPTIONS` option names (Python
    identifiers) to finite numbers, strings (up to 200 characters) or booleans: what a model
    file may carry. Raises ``ValueError`` (``"<where>: ..."``) otherwise. Which options exist
    is the pipelines' business (they check the values when they use them)."""
    if not isinstance(sampling, Mapping) or len(sampling) > MAX_SAMPLING_OPTIONS:
        raise ValueError(
            f"{where}: sampling defaults must map at most {MAX_SAMPLING_OPTIONS} option names "
            "to values"
        )
    for name, value in sampling.items():
        ok = isinstance(value, (str, int, float)) and len(str(value)) <= 200
        if isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not (isinstance(name, str) and name.isidentifier() and ok):
            raise ValueError(
                f"{where}: sampling default {str(name)[:40]}={str(value)[:40]} is not an option "
                "name with a finite number, a string or a boolean"
            )
    return dict(sampling)


# --------------------------------------------------------------------------------------------
# Checking tensors against the config, then reading them
# --------------------------------------------------------------------------------------------


def _check_tensors(
    where: str, key: str, entries: Mapping[str, TensorEntry], module: torch.nn.Module, part: str
) -> None:
    """Compare the file's tensors (those of ``part``, e.g. ``"text_encoder."``) with those of
    ``module`` (built on ``meta`` from ``key``): names, shapes, and floating point where the
    module holds floating point."""
    want = module_layout(module)
    have = {name: entry.shape for name, entry in entries.items()}
    diff = diff_layouts(have, want)
    if diff:
        n_want = sum(math.prod(s) for s in want.values())
        n_have = sum(math.prod(s) for s in have.values())
        which = f"{part[:-1]} tensors" if part else "tensors"
        raise ModelFileError(
            f"{where}: the {which} do not match its {key}, which makes {n_want:,} parameters in "
            f"{len(want)} tensors (the file holds {n_have:,} in {len(have)}): {diff.summary()}"
        )
    state = module.state_dict()
    for name, entry in entries.items():
        if entry.dtype.is_floating_point != state[name].is_floating_point():
            raise ModelFileError(
                f"{where}: tensor {part + name!r} is {entry.dtype}, the model holds "
                f"{state[name].dtype} there"
            )


def _fill(
    where: str, path: PathLike, header: Header, module: torch.nn.Module, key: str, prefix: str = ""
) -> None:
    """Check the file's tensors under ``prefix`` against ``module`` (on the meta device), then
    read them into it, each cast to the dtype of the module's own entry as it is read."""
    entries = {n[len(prefix) :]: e for n, e in header.tensors.items() if n.startswith(prefix)}
    _check_tensors(where, key, entries, module, prefix)
    dtypes = {prefix + k: v.dtype for k, v in module.state_dict().items()}
    part = dataclasses.replace(header, tensors={prefix + k: e for k, e in entries.items()})
    try:
        state = {n[len(prefix) :]: t for n, t in iter_tensors(path, dtypes, part)}
    except ValueError as exc:  # changed or truncated since the header was read
        raise ModelFileError(f"{where}: {exc}") from None
    module.load_state_dict(state, strict=True, assign=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _save(
    path: PathLike,
    module: torch.nn.Module,
    own: dict[str, str],
    metadata: Mapping[str, str] | None,
    dtype: torch.dtype | None,
) -> Path:
    """Write ``module``'s state dict with glidekit's ``own`` metadata and the caller's
    ``metadata``, atomically."""
    extra = dict(metadata or {})
    clash = sorted(set(extra) & RESERVED_KEYS)
    if clash:
        raise ValueError(f"metadata: {clash} are written by glidekit itself; leave them out")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError("metadata: must map strings to strings")
    path = Path(path)
    with atomic_path(path) as tmp:
        write_tensors(tmp, module.state_dict(), {**extra, **own}, dtype=dtype)
    return path


def save_unet(
    path: PathLike,
    model: GlideUNet,
    diffusion: DiffusionConfig,
    tokenizer: Tokenizer,
    *,
    dtype: torch.dtype | None = None,
    sampling: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a UNet, its configs and tokenizer as a glidekit model file, atomically.

    ``dtype``: store floating weights in this dtype (e.g. ``torch.float16``), cast one tensor
    at a time. ``sampling``: the model's own sampling defaults (see
    :func:`read_sampling_defaults`). ``metadata``: extra string entries (not glidekit's keys).
    The same arguments always give the same bytes. Returns ``path``.

    Raises:
        ValueError: bad ``sampling`` or ``metadata``; ``TypeError``: a tokenizer that cannot be
            recorded (see :func:`tokenizer_to_metadata`).
    """
    own = {
        FORMAT_KEY: UNET_FORMAT,
        CONFIG_KEY: _dumps(model.config.to_dict()),
        DIFFUSION_KEY: _dumps(dataclasses.asdict(diffusion)),
        TOKENIZER_KEY: _dumps(tokenizer_to_metadata(tokenizer)),
    }
    if sampling:
        own[SAMPLING_KEY] = _dumps(check_sampling_defaults(sampling))
    return _save(path, model, own, metadata, dtype)


def save_clip(
    path: PathLike,
    clip: NoisedCLIP,
    tokenizer: Any,
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a noise-aware CLIP (both towers, its config and tokenizer) atomically.

    ``tokenizer``: what its text encoder reads: ``None`` or a :class:`ClipTokenizer` (CLIP's
    BPE), a :class:`ShapesClipTokenizer`, or a :class:`ShapesTokenizer` (read, as the trainer
    feeds it, with ids shifted by one). Other arguments as in :func:`save_unet`.
    """
    if tokenizer is None:
        tok: dict[str, Any] = {"type": TOKENIZER_CLIP}
    elif isinstance(tokenizer, ShapesTokenizer):
        tok = tokenizer_to_metadata(ShapesClipTokenizer(tokenizer))
    else:
        tok = tokenizer_to_metadata(tokenizer)
    if tok["type"] == TOKENIZER_GPT2:
        raise TypeError("tokenizer: a CLIP text encoder does not read GPT-2 tokens")
    own = {
        FORMAT_KEY: CLIP_FORMAT,
        CLIP_CONFIG_KEY: _dumps(clip.config.to_dict()),
        TOKENIZER_KEY: _dumps(tok),
    }
    return _save(path, clip, own, metadata, dtype)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_unet(
    path: PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[GlideUNet, DiffusionConfig, Tokenizer]:
    """Load a file written by :func:`save_unet`: (model in eval mode, diffusion config, tokenizer).

    ``dtype`` float16/bfloat16: the model is held as :meth:`GlideUNet.convert_to_fp16` holds
    it, each tensor cast as it is read, so loading never holds a float32 copy of the model (the
    peak is the cast model plus one tensor). ``float32``: float32. ``None``: float32 on the CPU,
    elsewhere the file's half precision if it is stored in one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: one line naming the file, before any model is allocated: not a
            glidekit model file, metadata missing or invalid, a config beyond bounds, tensors
            that do not match the config.
    """
    where = str(path)
    header = _header(path)
    meta = header.metadata
    _require_format(where, meta, UNET_FORMAT)
    config = _unet_config(where, meta)
    diffusion = _diffusion_config(where, meta)
    tokenizer = _tokenizer(where, _json_object(where, meta, TOKENIZER_KEY), config.n_vocab, 0)
    if dtype is None and torch.device(device).type != "cpu":
        halves = (
            e.dtype for e in header.tensors.values() if e.dtype in (torch.float16, torch.bfloat16)
        )
        dtype = next(halves, None)
    model = create_model(config, device="meta")
    if dtype is not None and dtype != torch.float32:
        model.convert_to_fp16(dtype)
    _fill(where, path, header, model, CONFIG_KEY)
    return model.to(device).eval(), diffusion, tokenizer


# One CLIP source: (what was passed, the argument it was passed as, its header if a local
# .safetensors file).
_Source = tuple[Any, str, Header | None]


def _local_header(source: Any, arg: str) -> Header | None:
    """The header of a local ``.safetensors`` source, or None (a released name, a ``.pt``)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).endswith(".safetensors"):
        return None
    if not os.path.lexists(source):
        return None  # load_into reports the missing file, naming the argument
    return _header(source, arg)


def _clip_setup(sources: Sequence[_Source], tokenizer: Any) -> tuple[CLIPConfig | None, Any]:
    """The towers' shared config (None: the released one) and the tokenizer to read prompts
    with (``tokenizer`` if given, else the file's own words, else CLIP's BPE)."""
    configs = []
    for source, arg, header in sources:
        meta = header.metadata if header is not None else {}
        if CLIP_CONFIG_KEY not in meta and meta.get(FORMAT_KEY) != CLIP_FORMAT:
            continue  # a tower of the released architecture
        where = f"{arg}: {source}"
        configs.append(_clip_config(where, meta))
        raw = _json_object(where, meta, TOKENIZER_KEY) if TOKENIZER_KEY in meta else {}
        if tokenizer is None and raw.get("type", TOKENIZER_CLIP) != TOKENIZER_CLIP:
            # A shapes-world CLIP reads its own words; CLIP's BPE is loaded on first use.
            tokenizer = _tokenizer(where, raw, configs[-1].n_vocab, 1)
            if not isinstance(tokenizer, ShapesClipTokenizer):
                raise ModelFileError(
                    f"{where}: this CLIP records a {type(tokenizer).__name__}, which its text "
                    "encoder cannot read"
                )
    if len(set(configs)) > 1:
        raise ModelFileError("clip: the image and text encoder files are of different CLIP configs")
    return (configs[0] if configs else None), tokenizer


def _load_tower(
    tower: torch.nn.Module, attr: str, released: str, source: _Source, cache_dir: PathLike | None
) -> None:
    """Fill one tower (on the meta device) from a glidekit CLIP file, a tower file or a name."""
    src, arg, header = source
    if header is not None and FORMAT_KEY in header.metadata:  # a glidekit file: CLIP, or wrong
        _require_format(f"{arg}: {src}", header.metadata, CLIP_FORMAT)
        _fill(f"{arg}: {src}", src, header, tower, CLIP_CONFIG_KEY, prefix=f"{attr}.")
        return
    checkpoint = None if header is not None else released  # a file's own layout, or a name's
    try:
        load_into(tower, src, checkpoint=checkpoint, cache_dir=cache_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{arg}: {exc}") from None
    except CheckpointError as exc:
        raise type(exc)(f"{arg}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{arg}: {exc}") from None


def load_clip(
    sources: Any, *, tokenizer: Any = None, cache_dir: PathLike | None = None
) -> NoisedCLIP:
    """A noise-aware CLIP (float32, eval mode, on the CPU) from a file or a pair of towers.

    ``sources``: one glidekit CLIP file (:func:`save_clip`; errors name it ``clip``), or an
    ``(image encoder, text encoder)`` pair (errors name ``clip_image_enc`` / ``clip_text_enc``),
    each a released name (``clip/image-enc``, ``clip/text-enc``), a checkpoint of that tower
    (``.pt`` or ``.safetensors``, of the released architecture unless its metadata carries
    :data:`CLIP_CONFIG_KEY`), or a glidekit CLIP file (its tower is taken). ``tokenizer``: a
    CLIP tokenizer object or the path of CLIP's BPE merges file; default: the file's own
    (a shapes-world CLIP reads its words), else CLIP's BPE from the glidekit cache or package.
    ``cache_dir``: glidekit's cache for released names.

    Raises:
        FileNotFoundError: a source does not exist (the message names the argument).
        CheckpointError: a source cannot be used (:class:`ModelFileError` for glidekit files,
            before any model is allocated); ``ValueError``/``TypeError`` for bad arguments.
    """
    if isinstance(sources, (str, os.PathLike)):
        header = _local_header(sources, "clip")
        if header is None:
            raise ModelFileError(
                f"clip: {sources} is not a glidekit CLIP file; pass one written by glidekit "
                "train, or an (image encoder, text encoder) pair"
            )
        _require_format(f"clip: {sources}", header.metadata, CLIP_FORMAT)
        towers = [(sources, "clip", header)] * 2
    elif isinstance(sources, (tuple, list)) and len(sources) == 2:
        towers = [
            (s, arg, _local_header(s, arg)) for s, (_, _, arg) in zip(sources, _TOWERS, strict=True)
        ]
    else:
        raise TypeError(
            "clip: expected a glidekit CLIP file or an (image encoder, text encoder) pair of "
            f"names/paths, got {type(sources).__name__}"
        )
    config, tokenizer = _clip_setup(towers, tokenizer)
    model = create_clip_model(config, device="meta", tokenizer=tokenizer)
    for (attr, released, _), source in zip(_TOWERS, towers, strict=True):
        _load_tower(getattr(model, attr), attr, released, source, cache_dir)
    # The non-persistent buffer is in no file; rebuilt as NoisedCLIP.__init__ makes it.
    model.logit_scale = torch.tensor(math.log(model.config.logit_scale), dtype=torch.float32)
    return model.float().eval()


__all__ = [
    "CLIP_CONFIG_KEY",
    "CLIP_FORMAT",
    "CLIP_LIMITS",
    "CONFIG_KEY",
    "DIFFUSION_KEY",
    "DIFFUSION_LIMITS",
    "FORMAT_KEY",
    "MAX_SAMPLING_OPTIONS",
    "RESERVED_KEYS",
    "SAMPLING_KEY",
    "TOKENIZER_KEY",
    "UNET_FORMAT",
    "UNET_LIMITS",
    "UNET_SEQUENCE_LIMITS",
    "ModelFileError",
    "check_sampling_defaults",
    "is_clip_file",
    "is_unet_file",
    "load_clip",
    "load_unet",
    "read_metadata",
    "read_sampling_defaults",
    "read_unet_config",
    "save_clip",
    "save_unet",
    "tokenizer_from_metadata",
    "tokenizer_to_metadata",
]
