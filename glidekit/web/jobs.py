"""The web app's jobs, without any web framework: limits, input checks, running the pipelines
and writing the results as PNG files (with their parameters) into the app's work folder.

Everything a browser or an API client sends is checked here against :class:`Limits` and
refused with an :class:`InputError` whose message is meant for the person who sent it. Uploads
are only ever read from the folders the app owns (``WebConfig.workdir`` and the upload folder
of the web framework): a path from anywhere else is refused, so no client can make the server
read an arbitrary file.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from glidekit.checkpoints import CHECKPOINTS
from glidekit.errors import OptionError
from glidekit.pipelines import InpaintPipeline, Text2ImagePipeline, save_png
from glidekit.pipelines.devices import dtype_name
from glidekit.pipelines.images import keep_tensors, load_replace_mask, load_source, resize
from glidekit.pipelines.options import step_count
from glidekit.pipelines.sources import EMBEDDED_PREFIX, default_source

logger = logging.getLogger(__name__)

#: ``--upsampler none`` and the like: no model in this slot.
NO_MODEL = ("", "none", "off", "no")


class InputError(ValueError):
    """A request the app refuses; the message is shown to the user as is."""


class JobCancelled(Exception):
    """Raised inside a running job (from the pipeline's step callback) when its user cancelled."""


class CancelFlags:
    """One cancel flag per browser session, so Cancel stops that session's running job."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A cleared flag for a job about to start in ``session``."""
        with self._lock:
            flag = self._flags.setdefault(session, threading.Event())
            flag.clear()
            return flag

    def cancel(self, session: str) -> None:
        with self._lock:
            if session in self._flags:
                self._flags[session].set()

    def finish(self, session: str) -> None:
        with self._lock:
            self._flags.pop(session, None)


def step_callback(
    flag: threading.Event | None, report: Callable[[str, int, int], None] | None = None
) -> Callable[[str, int, int], None]:
    """A pipeline callback that reports progress and stops the job once ``flag`` is set."""

    def callback(stage: str, step: int, total: int) -> None:
        if report is not None:
            report(stage, step, total)
        if flag is not None and flag.is_set():
            logger.info("job cancelled at %s step %d/%d", stage, step, total)
            raise JobCancelled

    return callback


@dataclass(frozen=True)
class Limits:
    """Per-request limits (every request is checked against them)."""

    max_images: int = 4
    max_steps: int = 250
    max_upsample_steps: int = 100
    max_prompt_chars: int = 300
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 8
    max_guidance: float = 30.0


@dataclass
class WebConfig:
    """What ``glidekit serve`` serves and how.

    Model sources are released names ("base", "upsample", "base-inpaint", "upsample-inpaint"),
    glidekit model files, or None for the package defaults (the embedded demo models if the
    package ships them, else the released weights); an upsampler of "none" switches it off.
    ``workdir``: the only folder the app writes to (results, uploads); the caller creates it
    and removes it at exit (``glidekit serve`` uses a fresh temporary folder). ``preset``:
    every job's (:mod:`glidekit.pipelines.presets`: "official" or "fast").
    """

    workdir: Path
    base: str | None = None
    upsampler: str | None = None
    inpaint: str | None = None
    inpaint_upsampler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    preset: str = "official"
    cache_dir: str | None = None
    upsample_steps: str | None = None  # None: the preset's, else the model's, else fast27
    default_steps: str | None = None  # the page's; None: the preset's, the model's, else 100
    limits: Limits = field(default_factory=Limits)
    queue_size: int = 8
    output_ttl_s: float = 3600.0
    title: str = "GLIDE"

    @property
    def outputs_dir(self) -> Path:
        return Path(self.workdir) / "outputs"

    @property
    def uploads_dir(self) -> Path:
        """Where the web framework keeps uploads (``GRADIO_TEMP_DIR`` for gradio)."""
        return Path(self.workdir) / "uploads"


# --------------------------------------------------------------------------- checks


def check_prompt(prompt: Any, limits: Limits) -> str:
    if prompt is None or not isinstance(prompt, str):
        raise InputError("Prompt: please type a text prompt.")
    text = " ".join(prompt.split())
    if not text:
        raise InputError("Prompt is empty: please describe the picture you want.")
    if len(text) > limits.max_prompt_chars:
        raise InputError(
            f"Prompt is too long: {len(text)} characters, at most {limits.max_prompt_chars}."
        )
    return text


#: The page's settings of a job, in the order the page (and the API) sends them.
SETTINGS = ("num_images", "guidance_scale", "steps", "sampler", "seed", "random_seed", "upsample",
            "guidance_interval")  # fmt: skip

#: How the page labels each option in the messages it shows (the checks are the options').
LABELS = {"prompt": "Prompt", "num_images": "Number of images", "guidance_scale": "Guidance scale",
          "steps": "Steps", "sampler": "Sampler", "seed": "Seed",
          "upsample_steps": "Upsampler steps",
          "guidance_interval": "Guidance interval"}  # fmt: skip


def whole(value: Any) -> Any:
    """A number box's 2.0 as 2 (other values unchanged; the options check their types)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def check_limits(opts: Any, limits: Limits, upsample_high: int | None = None) -> None:
    """The server's per-request limits on already-checked options."""
    if opts.num_images > limits.max_images:
        raise InputError(f"Number of images must be between 1 and {limits.max_images}, got "
                         f"{opts.num_images}.")  # fmt: skip
    for name, high in (("steps", limits.max_steps), ("upsample_steps", upsample_high)):
        count = step_count(getattr(opts, name)) if hasattr(opts, name) else 0
        if high is not None and count > high:
            raise InputError(f"{LABELS[name]} must be between 1 and {high}, got {count}.")
    if abs(getattr(opts, "guidance_scale", 0.0)) > limits.max_guidance:
        raise InputError(f"Guidance scale must be between 0 and {limits.max_guidance}, got "
                         f"{opts.guidance_scale}.")  # fmt: skip


def seed_field(seed: Any, random_seed: bool) -> int | None:
    """The seed a request asks for: None (a fresh random one) when ``random_seed`` is ticked or
    the box is empty; a number box's text or float as an int."""
    if random_seed or seed is None or (isinstance(seed, str) and not seed.strip()):
        return None
    if isinstance(seed, str):
        try:
            return int(seed.strip())
        except ValueError:
            raise InputError(f"Seed must be a whole number, got {seed!r}.") from None
    seed = whole(seed)
    if isinstance(seed, int) and not 0 <= seed < 2**31:  # the page's number box holds 31 bits
        raise InputError(f"Seed must be between 0 and {2**31 - 1}, got {seed}.")
    return seed


# --------------------------------------------------------------------------- uploads


def upload_path(value: Any, roots: Sequence[Path], name: str) -> Path:
    """The file behind an upload, which must lie inside one of ``roots``.

    ``value``: a path string or a dict with a ``path`` key (how web frameworks hand over
    uploaded files). Anything else, or a path outside ``roots``, is refused.
    """
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, (str, Path)) or not str(value):
        raise InputError(f"{name}: please upload an image.")
    path = Path(value).resolve()
    for root in roots:
        try:
            path.relative_to(Path(root).resolve())
        except ValueError:
            continue
        if path.is_file():
            return path
        break
    raise InputError(f"{name}: only uploaded files are accepted.")


def open_image(path: Path, limits: Limits, name: str) -> Image.Image:
    """Decode an uploaded image after checking its file size and pixel count."""
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{name} is too large: {size / 1e6:.1f} MB, at most "
            f"{limits.max_upload_bytes / 1e6:.0f} MB."
        )
    try:
        with Image.open(path) as probe:  # reads the header only
            w, h = probe.size
    except (UnidentifiedImageError, OSError):
        raise InputError(f"{name} is not an image that can be read (PNG, JPEG, WebP...).") from None
    except Image.DecompressionBombError:
        raise InputError(f"{name} has too many pixels.") from None
    if w * h > limits.max_pixels:
        raise InputError(
            f"{name} has too many pixels: {w}x{h}, at most {limits.max_pixels / 1e6:.1f} "
            "megapixels."
        )
    if min(w, h) < limits.min_side:
        raise InputError(
            f"{name} is too small: {w}x{h}; at least {limits.min_side}x{limits.min_side}."
        )
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name} cannot be decoded ({type(exc).__name__}).") from None


def mask_from_layers(layers: Sequence[Image.Image], size: tuple[int, int]) -> Image.Image | None:
    """Painted brush layers -> an "L" mask (255 = replace) of ``size``; None if nothing painted."""
    union = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        rgba = layer.convert("RGBA")
        if rgba.size != size:
            rgba = rgba.resize(size, Image.NEAREST)
        union |= np.asarray(rgba.getchannel("A")) > 0
    if not union.any():
        return None
    return Image.fromarray(union.astype(np.uint8) * 255, mode="L")


def binary_mask(mask: Image.Image) -> Image.Image:
    """An uploaded mask as "L", 255 = replace (white), 0 = keep; transparent counts as black."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        rgba = mask.convert("RGBA")
        grey = np.asarray(rgba.convert("L")).astype(np.float32)
        alpha = np.asarray(rgba.getchannel("A")).astype(np.float32) / 255.0
        values = grey * alpha
    else:
        values = np.asarray(mask.convert("L")).astype(np.float32)
    return Image.fromarray(((values >= 128).astype(np.uint8)) * 255, mode="L")


# --------------------------------------------------------------------------- models


def model_kind(label: str | None) -> str:
    """How a model source is described on the page."""
    if label is None:
        return "none"
    if label in CHECKPOINTS:
        return "released GLIDE weights"
    return "embedded demo model" if label.startswith(EMBEDDED_PREFIX) else "model file"


def _source(value: str | None, role: str) -> Any:
    if value is None:
        return default_source(role)
    if value.strip().lower() in NO_MODEL:
        return None
    return value


@dataclass
class JobResult:
    """What a job made: PNG files (carrying their parameters) and how they were made."""

    paths: list[Path]
    seed: int
    params: dict[str, Any]
    source: Path | None = None  # inpainting: the source as the model saw it
    mask: Path | None = None  # inpainting: the replaced region (white)


class Jobs:
    """The app's pipelines and its output folder; runs one job at a time.

    The web framework's queue already runs one job at a time; the lock makes that true for
    direct callers too (two jobs on one device would only slow each other down).
    """

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.limits = config.limits
        # The models stay resident: a preset's one-model-at-a-time (the fast one on a CPU)
        # would load them again for every request.
        opts = {"device": config.device, "dtype": config.dtype, "cache_dir": config.cache_dir,
                "preset": config.preset, "low_memory": False}  # fmt: skip
        self.text2image = Text2ImagePipeline(
            _source(config.base, "base"), _source(config.upsampler, "upsampler"), **opts
        )
        self.inpainter = InpaintPipeline(_source(config.inpaint, "base_inpaint"),
                                         _source(config.inpaint_upsampler, "upsampler_inpaint"),
                                         **opts)  # fmt: skip
        self.pipes = {"generate": self.text2image, "inpaint": self.inpainter}
        chosen = {} if config.upsample_steps is None else {"upsample_steps": config.upsample_steps}
        try:
            upsample_steps = self.text2image.build_options(chosen).upsample_steps
        except OptionError as exc:
            raise InputError(f"Upsampler steps: {exc.message}") from None
        if step_count(upsample_steps) > self.limits.max_upsample_steps:
            raise InputError(f"Upsampler steps must be at most {self.limits.max_upsample_steps}")
        self.upsample_steps = upsample_steps
        self._lock = threading.Lock()
        config.outputs_dir.mkdir(parents=True, exist_ok=True)

    def default(self, job: str, name: str) -> Any:
        """The page's default for option ``name`` of ``job`` (generate, inpaint): the server's
        ``default_steps`` if set, then the preset's, the model file's own (the embedded models
        carry theirs), else GLIDE's."""
        steps = self.config.default_steps
        given = {} if steps is None else {"steps": steps}
        return getattr(self.pipes[job].build_options(given), name)

    def options(self, job: str, prompt: Any, **fields: Any) -> Any:
        """A request's options: the fields given over the model's defaults, checked by the
        options, then against the server's limits. Raises :class:`InputError`."""
        pipe = self.pipes[job]
        given = {k: whole(v) for k, v in fields.items() if v is not None}
        given.setdefault("steps", self.default(job, "steps"))
        count = str(given["steps"]).strip()
        if count.isdigit() and len(count) < 20 and int(count) > self.limits.max_steps:
            raise InputError(f"Steps must be between 1 and {self.limits.max_steps}, got {count}.")
        given["upsample_steps"] = self.upsample_steps
        text = check_prompt(prompt, self.limits)
        try:
            _, opts = pipe.check_inputs(text, **given)
        except OptionError as exc:
            raise InputError(exc.spelled(LABELS.get(exc.arg, exc.arg), exc.message) + ".") from None
        check_limits(opts, self.limits)
        return text, opts

    # ------------------------------------------------------------------ description
    def models(self) -> dict[str, tuple[str | None, str]]:
        """{role: (label, kind)} of the configured models."""
        out = {}
        for role, pipe, slot in (
            ("base", self.text2image, "base_slot"),
            ("upsampler", self.text2image, "upsampler_slot"),
            ("inpaint base", self.inpainter, "base_slot"),
            ("inpaint upsampler", self.inpainter, "upsampler_slot"),
        ):
            s = getattr(pipe, slot)
            label = s.label if s is not None else None
            out[role] = (label, model_kind(label))
        return out

    def describe(self) -> str:
        """The models and limits, as Markdown for the page."""
        lines = ["**Models**:"]
        models = self.models()
        for role, (label, kind) in models.items():
            shown = Path(label).name if label and kind != "released GLIDE weights" else label
            lines.append(f"- {role}: `{shown}` ({kind})" if label else f"- {role}: none")
        if self.default("generate", "guidance") == "clip":
            lines.append(
                "\nThe base is guided by a CLIP (its model file's default): the guidance scale "
                "is the CLIP's."
            )
        if any(kind == "embedded demo model" for _, kind in models.values()):
            lines.append(
                "\nThe embedded shapes models know only the shapes world's words: one circle, "
                "square or triangle, small or large, its colour, place and background."
            )
        lim = self.limits
        lines.append(
            f"\nDevice: `{self.text2image.device}` ({dtype_name(self.text2image.dtype)}, preset "
            f"`{self.config.preset}`). Limits per request: {lim.max_images} images, "
            f"{lim.max_steps} steps, {lim.max_prompt_chars} prompt characters, uploads up to "
            f"{lim.max_upload_bytes // (1024 * 1024)} MB and "
            f"{lim.max_pixels / 1e6:.1f} megapixels."
        )
        return "\n".join(lines)

    def preload(self) -> None:
        """Load every configured model now (fail fast, and no wait on the first request)."""
        with self._lock:
            for pipe in (self.text2image, self.inpainter):
                _ = pipe.base
                _ = pipe.upsampler

    # ------------------------------------------------------------------ jobs
    def _sample(self, pipe: Any, status: Callable[[str], None] | None, *args: Any,
                **kwargs: Any) -> Any:  # fmt: skip
        """Run ``pipe`` holding the device, telling ``status`` what it waits for."""
        say = status or (lambda _message: None)
        if self._lock.locked():
            say("Waiting for the previous job to finish")
        with self._lock:
            slots = [pipe.base_slot, pipe.upsampler_slot]
            if not all(slot.loaded for slot in slots if slot is not None):
                say("Loading the models")
            say("Sampling")
            try:
                return pipe(*args, **kwargs)
            except OptionError as exc:
                raise InputError(
                    exc.spelled(LABELS.get(exc.arg, exc.arg), exc.message) + "."
                ) from None
            except (ValueError, TypeError) as exc:
                raise InputError(str(exc)) from None

    def _request_dir(self) -> Path:
        self._prune()
        folder = (
            self.config.outputs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        )
        folder.mkdir(parents=True)
        return folder

    def _prune(self) -> None:
        """Remove result folders older than ``output_ttl_s`` (the disk use stays bounded)."""
        cutoff = time.time() - self.config.output_ttl_s
        for folder in self.config.outputs_dir.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    def _save(self, result: Any, folder: Path, stem: str) -> list[Path]:
        paths = []
        for i, img in enumerate(result.images):
            params = result.image_params(i)
            for key in ("base", "upsampler", "clip"):  # no server paths in files sent out
                if isinstance(params.get(key), str) and Path(params[key]).is_absolute():
                    params[key] = Path(params[key]).name
            paths.append(save_png(img, folder / f"{stem}-{i}.png", params))
        return paths

    def _request(self, job: str, prompt: Any, settings: tuple, named: dict[str, Any]):
        """A request's prompt and options from the page's settings, in :data:`SETTINGS`
        order (positional) or by name; unset ones take :meth:`default`."""
        fields = dict(zip(SETTINGS, settings, strict=False)) | named
        unknown = set(fields) - set(SETTINGS)
        if unknown:
            raise TypeError(f"{job}: unknown settings {sorted(unknown)}")
        seed = seed_field(fields.pop("seed", None), bool(fields.pop("random_seed", True)))
        if (
            isinstance(fields.get("guidance_interval"), str)
            and not fields["guidance_interval"].strip()
        ):
            fields.pop("guidance_interval")  # the page's empty box: guide every step
        fields["upsample"] = bool(fields.get("upsample", True))
        return self.options(job, prompt, seed=seed, **fields)

    def generate(self, prompt: Any, *settings: Any, progress: bool = False,
                 status: Callable[[str], None] | None = None,
                 callback: Callable[[str, int, int], None] | None = None,
                 **named: Any) -> JobResult:  # fmt: skip
        """Text to image; returns the PNG paths. Raises :class:`InputError` for bad input.

        ``settings``: the page's settings (:data:`SETTINGS`: num_images, guidance_scale, steps,
        sampler, seed, random_seed, upsample), positional or by name; None or left out = the
        model's defaults (:meth:`default`). ``progress``: the pipelines' progress bars (tqdm);
        ``status``: called with what the job is doing ("Waiting for the previous job to
        finish", "Loading the models", "Sampling"); ``callback(stage, step, total)`` after
        every sampler step (raising in it cancels).
        """
        prompt, opts = self._request("generate", prompt, settings, named)
        result = self._sample(self.text2image, status, prompt, opts, progress=progress,
                              callback=callback)  # fmt: skip
        folder = self._request_dir()
        paths = self._save(result, folder, "glide")
        logger.info("generate: %d image(s), seed %d -> %s", len(paths), opts.seed, folder.name)
        return JobResult(paths, opts.seed, result.params)

    def inpaint(self, image: Image.Image, mask: Image.Image | None, prompt: Any, *settings: Any,
                progress: bool = False, status: Callable[[str], None] | None = None,
                callback: Callable[[str, int, int], None] | None = None,
                **named: Any) -> JobResult:  # fmt: skip
        """Replace the white region of ``mask`` in ``image`` (both decoded and checked); the
        rest as :meth:`generate`."""
        prompt, opts = self._request("inpaint", prompt, settings, named)
        if mask is None:
            raise InputError(
                "Mask: paint over the region to replace with the brush, or upload a mask "
                "(white = replace)."
            )
        if mask.size != image.size:
            raise InputError(
                f"Mask size {mask.size[0]}x{mask.size[1]} does not match the image size "
                f"{image.size[0]}x{image.size[1]}."
            )
        replace = binary_mask(mask)
        if not np.asarray(replace).any():
            raise InputError("Mask is empty: paint (or upload in white) the region to replace.")
        rgb = image.convert("RGB")
        result = self._sample(self.inpainter, status, prompt, rgb, replace, opts,
                              progress=progress, callback=callback)  # fmt: skip
        folder = self._request_dir()
        paths = self._save(result, folder, "inpaint")
        size = result.images[0].width
        source = resize(load_source(rgb), size)
        keep = keep_tensors(load_replace_mask(rgb, replace), [size])[0][0, 0].numpy()
        mask_img = Image.fromarray(((1 - keep) * 255).astype(np.uint8), mode="L")
        source_path = folder / "source.png"
        mask_path = folder / "mask.png"
        source.save(source_path)
        mask_img.save(mask_path)
        logger.info("inpaint: %d image(s), seed %d -> %s", len(paths), opts.seed, folder.name)
        return JobResult(paths, opts.seed, result.params, source_path, mask_path)
