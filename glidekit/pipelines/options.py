"""A run's options: one typed object per kind of run, validated once.

The Python API, the command line, bulk jobs, the web app and the benchmarks all build one of
these (:meth:`RunOptions.build`) and hand it to a pipeline; none of them checks or defaults an
option itself. Every field is checked and normalised in ``__post_init__``; a bad value raises
:class:`~glidekit.errors.OptionError` whose ``arg`` is the field's name, so each face spells the
argument its own way. :meth:`RunOptions.to_params` is what a result's ``params`` (and so every
PNG) records, and :meth:`RunOptions.from_params` reads it back (``glidekit generate --from``).

Precedence, in :meth:`RunOptions.build`: options given > a named preset's
(:mod:`glidekit.pipelines.presets`) > the model file's own sampling defaults (see
:func:`glidekit.pipelines.sources.model_defaults`) > the class defaults below, which are
GLIDE's (the official notebooks').
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from glidekit.diffusion import check_sampler_options, get_sampler, space_timesteps
from glidekit.errors import OptionError, OptionTypeError
from glidekit.guidance import check_guidance_scale
from glidekit.pipelines.images import FITS

Opts = TypeVar("Opts", bound="RunOptions")

GUIDANCES = ("classifier-free", "clip")
_KARRAS = re.compile(r"^karras(\d+)$")

# --------------------------------------------------------------------------- value checks
# Each check takes (value, arg) and returns the normalised value or raises OptionError(arg).


def check_prompts(prompt: Any, arg: str = "prompt") -> list[str]:
    """A prompt or a list of prompts -> a non-empty list of str."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, Iterable):
        raise OptionTypeError(arg, f"expected a str or a list of str, got {type(prompt).__name__}")
    prompts = list(prompt)
    if not prompts:
        raise OptionError(arg, "empty list of prompts; pass at least one")
    if any(not isinstance(p, str) for p in prompts):
        raise OptionTypeError(arg, "expected only str in the list of prompts")
    return prompts


def check_count(value: Any, arg: str) -> int:
    """An int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionTypeError(arg, f"expected an int, got {type(value).__name__}")
    if value < 1:
        raise OptionError(arg, f"must be >= 1, got {value}")
    return value


def check_number(value: Any, arg: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:  # fmt: skip
    """A finite real number, optionally in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionTypeError(arg, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(arg, f"must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise OptionError(arg, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    if high is not None and value > high:
        raise OptionError(arg, f"must be at most {high}, got {value}")
    return value


def check_seed(seed: Any, arg: str = "seed") -> int:
    """The seed to use: ``None`` draws a fresh random one (recorded in the params)."""
    if seed is None:
        return secrets.randbits(31)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionTypeError(arg, f"expected an int or None, got {type(seed).__name__}")
    if seed < 0:
        raise OptionError(arg, f"must be >= 0, got {seed} (a {arg} must be in [0, 2**63))")
    if seed >= 2**63:
        raise OptionError(arg, f"must be < 2**63, got {seed}")
    return seed


def step_count(spelling: str) -> int:
    """How many model evaluations a respacing spelling asks for: "50" -> 50, "ddim50" -> 50,
    "karras25" -> 25, "fast27" -> 27, "10,10,3,2,2" -> 27. Raises ValueError if unreadable."""
    match = _KARRAS.match(spelling)
    if match:  # karrasN needs the model's schedule to place its steps, not to count them
        return int(match.group(1))
    return len(space_timesteps(1000, spelling))


def check_steps(value: Any, arg: str) -> str:
    """A step count or a respacing spelling ("100", "ddim50", "fast27", "karras25",
    "10,10,3,2,2") -> its canonical string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise OptionTypeError(arg, f"expected a step count or a respacing, got {value!r}")
    spelling = str(value).strip().lower()
    if len(spelling) > 200:
        raise OptionError(arg, f"{spelling[:20]!r}... is too long")
    hint = "use a count (100) or ddim50, karras25, fast27, 10,10,3,2,2"
    if re.fullmatch(r"-?\d+", spelling) and int(spelling) < 1:
        n = int(spelling)
        raise OptionError(arg, f"cannot take {n} steps" if n < 0 else "must be >= 1, got 0")
    try:
        count = step_count(spelling) if spelling else 0
    except ValueError as exc:  # the schedule's own reason, without its argument name
        reason = str(exc).removeprefix("timestep_respacing: ").split(";")[0]
        raise OptionError(arg, f"cannot read {value!r} ({reason}); {hint}") from None
    if count < 1:
        raise OptionError(arg, f"cannot read {value!r}; {hint}")
    return spelling


def check_sampler(value: Any, arg: str) -> str:
    """A sampler name (see :data:`glidekit.diffusion.SAMPLERS`) -> its canonical name."""
    return get_sampler(value, arg).name


def check_bool(value: Any, arg: str) -> bool:
    if not isinstance(value, bool):
        raise OptionTypeError(arg, f"expected True or False, got {value!r}")
    return value


def check_choice(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def check(value: Any, arg: str) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise OptionError(arg, f"unknown {arg} {value!r}; expected one of {', '.join(choices)}")
        return value.strip().lower()

    return check


def check_mapping(value: Any, arg: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OptionTypeError(arg, f"expected a dict, got {type(value).__name__}")
    return dict(value)


def _opt(default: Any, check: Callable[[Any, str], Any] | None, doc: str) -> Any:
    """A field with its check and its one-line meaning (both read by ``__post_init__``/help)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


def _scale(value: Any, arg: str) -> float:
    return check_number(value, arg)


def _temp(value: Any, arg: str) -> float:
    return check_number(value, arg, low=0.0)


def _strength(value: Any, arg: str) -> float | None:
    return None if value is None else check_number(value, arg, low=0.0, high=1.0, low_open=True)


def _optional_count(value: Any, arg: str) -> int | None:
    return None if value is None else check_count(value, arg)


def check_interval(value: Any, arg: str) -> tuple[float, float] | None:
    """A guidance interval: None (guide every step), or (lo, hi) with 0 <= lo < hi <= 1, as
    fractions of the diffusion's timesteps (0 = clean, 1 = pure noise); "lo,hi" is read too."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
        try:
            value = [float(part) for part in value]
        except ValueError:
            raise OptionError(arg, f"expected two numbers 'lo,hi', got {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionTypeError(arg, f"expected (lo, hi) or None, got {value!r}")
    lo, hi = (check_number(v, arg, low=0.0, high=1.0) for v in value)
    if lo >= hi:
        raise OptionError(arg, f"must have lo < hi, got ({lo}, {hi})")
    return (lo, hi)


def _seed(value: Any, arg: str) -> int | list[int]:
    """One seed for the batch, or a list of seeds, one per prompt (each item then draws its
    noise from its own generator: its images do not depend on what it is batched with)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise OptionError(arg, "empty list of seeds; pass one per prompt")
        return [check_seed(v, arg) for v in value]
    return check_seed(value, arg)


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class RunOptions:
    """What every run takes. Build with :meth:`build`; the constructor checks every field."""

    kind: ClassVar[str] = "run"
    #: The guidance this kind of run uses whatever the model says (None: the model's own).
    fixed_guidance: ClassVar[str | None] = "classifier-free"

    num_images: int = _opt(1, check_count, "images per prompt")
    seed: int | list[int] | None = _opt(
        None, _seed, "random seed (None: a fresh one, recorded), or one per prompt"
    )
    steps: str = _opt("100", check_steps, "sampling steps: a count or a respacing")
    sampler: str = _opt("ancestral", check_sampler, "sampler: ancestral, ddim, dpm++2m")
    sampler_options: dict[str, Any] = _opt({}, check_mapping, "sampler options, e.g. eta")

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(getattr(self, f.name), f.name))
        self._check_together()

    def _check_together(self) -> None:
        """Checks across fields (subclasses extend)."""
        object.__setattr__(
            self,
            "sampler_options",
            check_sampler_options(self.sampler, self.sampler_options, "sampler_options"),
        )

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def build(
        cls: type[Opts],
        given: Mapping[str, Any] = (),
        model: Mapping[str, Any] = (),
        preset: Mapping[str, Any] = (),
    ) -> Opts:
        """Options from ``given`` (keyword arguments, flags or fields: these win), then
        ``preset`` (a named preset's, :mod:`glidekit.pipelines.presets`), then ``model`` (the
        model file's own defaults), then the class defaults. The model's defaults are a set made
        for one guidance (``model["guidance"]``, classifier-free if absent), the preset's for
        classifier-free guidance: a run with another guidance ignores that set. An unknown key
        in ``given`` is an error naming it."""
        given = dict(given)
        names = cls.option_names()
        for key in given:
            if key not in names:
                raise OptionError(
                    key, f"not an option of a {cls.kind} run; expected one of {', '.join(names)}"
                )
        model = dict(model)
        own = model.get("guidance", "classifier-free")
        wanted = cls.fixed_guidance or given.get("guidance", own)
        merged = {k: v for k, v in model.items() if k in names} if wanted == own else {}
        if wanted == "classifier-free":
            merged.update({k: v for k, v in dict(preset).items() if k in names})
        merged.update(given)
        return cls(**merged)

    def replace(self: Opts, **changes: Any) -> Opts:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, Any]:
        """The options as JSON-able params (recorded in results and PNGs)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_params(cls: type[Opts], params: Mapping[str, Any]) -> dict[str, Any]:
        """The options a result's params (a PNG's) record, as keyword arguments for
        :meth:`build`; also reads PNGs written before options were objects."""
        out = {k: params[k] for k in cls.option_names() if params.get(k) is not None}
        if "upsample" in cls.option_names() and "upsample" not in params:
            out["upsample"] = bool(params.get("upsampled", True))
        if "guidance" in cls.option_names() and params.get("pipeline") == "clip-guided":
            out["guidance"] = "clip"
        if "guidance" in out and out["guidance"] not in GUIDANCES:  # "classifier-free+clip"
            out["guidance"] = "classifier-free"
        return out


@dataclass(frozen=True)
class CascadeOptions(RunOptions):
    """A base stage, then (``upsample``) the upsampler stage."""

    guidance_scale: float = _opt(3.0, _scale, "guidance scale")
    guidance_interval: tuple[float, float] | None = _opt(
        None, check_interval, "classifier-free guidance only for t/T in [lo, hi] (None: all)"
    )
    upsample: bool = _opt(True, check_bool, "run the upsampler after the base")
    upsample_steps: str = _opt("fast27", check_steps, "upsampler steps")
    upsample_sampler: str = _opt("ddim", check_sampler, "upsampler sampler")
    upsample_temp: float = _opt(0.997, _temp, "upsampler start-noise scale")
    upsample_sampler_options: dict[str, Any] = _opt({}, check_mapping, "upsampler options")

    def _check_together(self) -> None:
        super()._check_together()
        object.__setattr__(
            self,
            "upsample_sampler_options",
            check_sampler_options(
                self.upsample_sampler, self.upsample_sampler_options, "upsample_sampler_options"
            ),
        )


@dataclass(frozen=True)
class Text2ImageOptions(CascadeOptions):
    """Text to image: classifier-free guidance (GLIDE's) or CLIP guidance of the base stage."""

    kind: ClassVar[str] = "text-to-image"
    fixed_guidance: ClassVar[str | None] = None

    guidance: str = _opt("classifier-free", check_choice(GUIDANCES), "classifier-free or clip")

    def _check_together(self) -> None:
        super()._check_together()
        if self.guidance == "classifier-free":  # CLIP's scale is any finite number
            check_guidance_scale(self.guidance_scale, "guidance_scale")


@dataclass(frozen=True)
class ClipGuidedOptions(Text2ImageOptions):
    """Text to image guided by the noise-aware CLIP (the official clip_guided notebook)."""

    fixed_guidance: ClassVar[str | None] = "clip"

    guidance: str = _opt("clip", check_choice(("clip",)), "clip")


@dataclass(frozen=True)
class InpaintOptions(CascadeOptions):
    """Inpainting: classifier-free guidance 5.0, optionally with the CLIP's gradient added."""

    kind: ClassVar[str] = "inpainting"

    guidance_scale: float = _opt(5.0, _scale, "classifier-free guidance scale")
    clip_guidance_scale: float = _opt(0.0, _temp, "CLIP gradient scale added (0: off)")
    fit: str = _opt("crop", check_choice(FITS), "non-square input: crop or pad")

    def _check_together(self) -> None:
        super()._check_together()
        check_guidance_scale(self.guidance_scale, "guidance_scale")


@dataclass(frozen=True)
class EditOptions(CascadeOptions):
    """SDEdit: noise the picture to ``strength`` and denoise with the prompt."""

    kind: ClassVar[str] = "edit"

    strength: float = _opt(0.6, _strength, "noise level to start from, in (0, 1]")
    upsample_strength: float | None = _opt(None, _strength, "the upsampler's (None: strength)")
    fit: str = _opt("crop", check_choice(FITS), "non-square input: crop or pad")

    def _check_together(self) -> None:
        super()._check_together()
        check_guidance_scale(self.guidance_scale, "guidance_scale")
        if self.upsample_strength is None:
            object.__setattr__(self, "upsample_strength", self.strength)


@dataclass(frozen=True)
class UpsampleOptions(RunOptions):
    """The upsampler alone on a user's picture."""

    kind: ClassVar[str] = "upsampling"

    steps: str = _opt("fast27", check_steps, "upsampler steps")
    sampler: str = _opt("ddim", check_sampler, "upsampler sampler")
    temperature: float = _opt(0.997, _temp, "start-noise scale")
    low_res_size: int | None = _opt(None, _optional_count, "side the picture is resized to")
    fit: str = _opt("crop", check_choice(FITS), "non-square input: crop or pad")
