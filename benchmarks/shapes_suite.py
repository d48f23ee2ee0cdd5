"""Measurements of the shapes-world models (issue 8): agreement, guidance, CLIP, inpainting, speed.

    python benchmarks/shapes_suite.py agreement [--model BASE] [--upsampler UP] [--n 200]
        [--steps 100] [--sampler ancestral] [--guidance 3.0] [--seed 0] [--json out.json]
    python benchmarks/shapes_suite.py guidance-sweep [--scales 0,1,2,3,5,8] [--intervals all,0.3:1]
        [--n 200] [--k 8]
        [--samples 16] [--plot sweep.png] [...as agreement]
    python benchmarks/shapes_suite.py clip-vs-cfg --clip CLIP.safetensors [--cfg-scales 1,3,5]
        [--clip-scales 1,3,10] [--n 200] [...as agreement]
    python benchmarks/shapes_suite.py inpaint [--model BASE_INPAINT] [--upsampler UP_INPAINT]
        [--n 100] [--guidance 5.0] [...]
    python benchmarks/shapes_suite.py generate-time [--model BASE] [--rounds 5]
        [--num-images 4] [--caption TEXT] [...]

Every section prints a Markdown table on stdout (progress goes to the log on stderr) and, with
``--json PATH``, writes the numbers with the command line, versions, CPU, seeds and sampling
settings. ``agreement`` and ``inpaint`` sample as ``glidekit generate`` / ``glidekit inpaint``
do by default: for a model file that carries sampling defaults (the embedded shapes models:
classifier-free guidance with DPM-Solver++ since issue 17), those; for other models (or with
``--classifier-free``) the pipelines' own defaults (100 ancestral steps; classifier-free
guidance 3.0, inpainting 5.0); options given win. The other sections use the pipelines' defaults. ``--model`` defaults to
the embedded ``glidekit/models/shapes-base.safetensors`` (inpainting:
``shapes-base-inpaint.safetensors``). All runs are seeded: the same command gives the same
captions and pictures (for the same ``--batch``: one random generator serves each batch).

Sections:

* ``agreement``: the canonical captions (every attribute stated) of ``--n`` random scenes drawn
  with ``--seed``; each picture is judged (:func:`glidekit.data.shapes.check`) per attribute and
  all at once, at the base resolution and, with ``--upsampler``, after upsampling. A last row
  judges the rendered scenes themselves (the judge's own ceiling at that resolution).
* ``guidance-sweep``: for each classifier-free guidance scale, the agreement on the same
  captions, and the diversity: ``--k`` captions that state only some attributes (e.g. "a red
  shape", "a circle"), ``--samples`` pictures each; diversity is the number of distinct judged
  tuples of the *unstated* attributes among them, averaged over the captions ("unknown", the
  judge's answer for a picture with no object, counts as a value). Writes a PNG plot (agreement
  and diversity vs scale) when matplotlib is installed (``pip install 'glidekit[bench]'``).
  Base model only (no upsampler), as is ``clip-vs-cfg``.
* ``clip-vs-cfg``: classifier-free guidance against CLIP guidance (a shapes-world noise-aware
  CLIP file, as ``glidekit train configs/shapes-clip.yaml`` writes) at equal steps and sampler,
  on the agreement captions and seeds (the CLIP reads prompts with the vocabulary shipped in
  its file); without ``--clip``, or for a CLIP of another resolution than the base model, the
  section is skipped with the reason (exit code 0).
* ``inpaint``: ``--n`` cases: a random scene with its object in one quadrant is the source
  (rendered at the output resolution); the mask is another quadrant; the caption is the
  canonical caption of a new random object placed in that quadrant on the source's background.
  Measured: (a) the known region: max |result - source| outside the mask in 1/255 units at the
  output resolution (max over cases, and the fraction of cases <= 2/255); (b) whether the
  judge finds the requested object in the mask: the result's mask quadrant is pasted onto a
  plain canvas of the source's background and the canvas is judged against the caption. The
  canvas is a one-object shapes-world picture, so the judge and the caption's size and position
  words keep their meaning, and the untouched source object cannot be mistaken for the new
  one. "object" = colour, shape, size and position all right (target >= 0.85); position is
  nearly given by the mask (anything drawn there has its centre in that quadrant), so colour,
  shape and size carry the information. Skipped (exit code 0) when no inpainting model is given
  or embedded; a plain text-to-image ``--model`` also runs (known region replaced each step).
* ``generate-time``: wall time of ``glidekit generate CAPTION --num-images 4 ...`` as a
  subprocess, start to finish (imports, model load, sampling, PNG writing), median of
  ``--rounds``, and its ratio to ``../shared/bench/calibrate.py`` (timed in this process right
  before each round; found as :func:`glidekit.bench.find_calibrate` finds it). Only the options
  given are passed on (``--model`` as ``--base``); the rest are the CLI's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import glidekit
from glidekit.checkpoints.modelfile import is_clip_file
from glidekit.data.shapes import (
    COLORS,
    PALETTE,
    POSITIONS,
    QUADRANTS,
    SHAPES,
    SIZES,
    UNKNOWN,
    ShapeScene,
    canonical_caption,
    check,
    judge,
    parse_caption,
    quadrant_box,
    random_scene,
    render,
)
from glidekit.models import embedded_path
from glidekit.pipelines import (
    ClipGuidedPipeline,
    InpaintPipeline,
    PipelineResult,
    Text2ImagePipeline,
)
from glidekit.pipelines.presets import PRESETS, get_preset

logger = logging.getLogger("shapes_suite")

#: Attributes in table order; OBJECT_ATTRIBUTES leave out the background.
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position", "background")
OBJECT_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "background": COLORS,
}
#: Attributes the diversity captions state, in turn (the others are left open).
DIVERSITY_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color",),
    ("color", "shape"),
    ("size", "shape"),
    ("position",),
    ("color", "background"),
    ("shape", "position", "background"),
    ("background",),
)
INPAINT_TARGET = 0.85
KNOWN_REGION_TOLERANCE = 2  # /255


# --------------------------------------------------------------------------------------------
# Environment and records
# --------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD of the checkout this script is in, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    """What every result JSON records about the run and the machine."""
    device = str(args.device)
    gpu = None
    if torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        gpu = torch.cuda.get_device_name()
    return {
        "section": args.section,
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "glidekit": glidekit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "dtype": args.dtype,
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"
        },
    }


def pipeline_default(cls: type, name: str) -> Any:
    """GLIDE's default of option ``name`` for ``cls``'s kind of run (no model defaults)."""
    return getattr(cls.options_class.build({"seed": 0}), name)


def steps_value(text: str | None) -> int | str | None:
    """A --steps string as the pipelines take it: a count as int, a respacing as str."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text.strip()


def write_json(path: Path | None, record: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    logger.info("wrote %s", path)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


@dataclasses.dataclass
class Tally:
    """Judge verdicts counted per attribute, for all five at once and for the object's four."""

    n: int = 0
    hits: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    all_hits: int = 0
    object_hits: int = 0

    def add(self, verdict: Mapping[str, bool]) -> None:
        self.n += 1
        for a in ATTRIBUTES:
            self.hits[a] += bool(verdict.get(a, False))
        self.all_hits += all(verdict.get(a, False) for a in ATTRIBUTES)
        self.object_hits += all(verdict.get(a, False) for a in OBJECT_ATTRIBUTES)

    def add_images(self, images: Iterable[Any], captions: Iterable[str]) -> None:
        for image, text in zip(images, captions, strict=True):
            self.add(check(image, text))

    def fraction(self, key: str) -> float:
        count = {"all": self.all_hits, "object": self.object_hits}.get(key)
        count = self.hits[key] if count is None else count
        return count / self.n if self.n else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        keys = (*ATTRIBUTES, "object", "all")
        for key in keys:
            out[key] = self.fraction(key)
        counts = {**self.hits, "object": self.object_hits, "all": self.all_hits}
        out["ci95"] = {key: wilson(counts[key], self.n) for key in keys}
        return out


def canonical_captions(n: int, seed: int) -> list[str]:
    """Canonical captions of ``n`` random scenes (as ``benchmarks/eval_shapes.py`` draws them)."""
    rng = random.Random(seed)
    return [canonical_caption(random_scene(rng)) for _ in range(n)]


def rendered_scenes(n: int, seed: int, size: int) -> list[Image.Image]:
    """The scenes behind :func:`canonical_captions`, rendered at ``size``."""
    rng = random.Random(seed)
    return [render(random_scene(rng), size) for _ in range(n)]


def partial_caption(scene: ShapeScene, stated: Iterable[str]) -> str:
    """``scene``'s caption in canonical order, naming only the ``stated`` attributes (an
    unstated shape reads "shape"), as the world's :func:`~glidekit.data.shapes.caption` with
    those attributes dropped."""
    stated = set(stated)
    words = ["a"]
    if "size" in stated:
        words.append(scene.size)
    if "color" in stated:
        words.append(scene.color)
    words.append(scene.shape if "shape" in stated else "shape")
    if "position" in stated:
        words.append("at the center" if scene.position == "center" else f"in the {scene.position}")
    if "background" in stated:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def diversity_captions(k: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """``k`` (caption, unstated attributes): the patterns of :data:`DIVERSITY_PATTERNS` in turn
    on random scenes."""
    rng = random.Random(f"shapes-suite-diversity-{seed}")
    out = []
    for j in range(k):
        stated = DIVERSITY_PATTERNS[j % len(DIVERSITY_PATTERNS)]
        scene = random_scene(rng)
        out.append(
            (partial_caption(scene, stated), tuple(a for a in ATTRIBUTES if a not in stated))
        )
    return out


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sample_batches(
    pipe: Callable[..., PipelineResult],
    captions: Sequence[str],
    seed: int,
    batch: int,
    **kwargs: Any,
) -> tuple[list[Image.Image], list[Image.Image] | None, dict[str, Any], float]:
    """Sample one picture per caption, ``batch`` captions per call, call ``i`` seeded
    ``seed + i``; returns (final images, base images when upsampled, params of the first call,
    seconds)."""
    finals: list[Image.Image] = []
    lows: list[Image.Image] = []
    params: dict[str, Any] = {}
    start = time.perf_counter()
    for i in range(0, len(captions), batch):
        chunk = list(captions[i : i + batch])
        result = pipe(chunk, seed=seed + i, **kwargs)
        params = params or dict(result.params)
        finals.extend(result.images)
        if result.low_res is not None:
            lows.extend(result.low_res)
        logger.info(
            "  %d/%d pictures (%.0f s)", len(finals), len(captions), time.perf_counter() - start
        )
    return finals, (lows or None), params, time.perf_counter() - start


def sampling_kwargs(
    args: argparse.Namespace, cls: type, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Pipeline options from the common flags; what they leave unset comes from ``defaults``
    (the model's own, as :func:`default_pipeline` resolved them), else GLIDE's."""
    names = cls.options_class.option_names()
    preset = get_preset(getattr(args, "preset", None)).options_for(cls.options_class)
    chosen = cls.options_class.build({"seed": 0}, defaults or {}, preset)
    given = {"steps": steps_value(args.steps), "sampler": args.sampler,
             "guidance_scale": args.guidance,
             "clip_guidance_scale": getattr(args, "clip_guidance", None)}  # fmt: skip
    kw = {k: (v if v is not None else getattr(chosen, k)) for k, v in given.items() if k in names}
    if "guidance" in names:
        kw["guidance"] = chosen.guidance
    return kw


def default_pipeline(args: argparse.Namespace, role: str) -> tuple[Any, dict[str, Any]]:
    """The pipeline ``glidekit generate`` (role "base") or ``glidekit inpaint``
    ("base_inpaint") runs ``args.model`` with, and the sampling defaults it would use: the
    model file's own (the embedded shapes models: classifier-free guidance, DPM-Solver++), else
    GLIDE's. ``--classifier-free`` forces GLIDE's classifier-free guidance."""
    opts = {"device": args.device, "dtype": args.dtype, "preset": getattr(args, "preset", None)}
    up = getattr(args, "upsampler", None)
    cls = InpaintPipeline if role == "base_inpaint" else Text2ImagePipeline
    pipe = cls(args.model, up, **opts)
    given = {"guidance": "classifier-free"} if args.classifier_free and role == "base" else {}
    if args.classifier_free:
        return pipe, given
    return pipe, {**pipe.model_defaults(), **given}


def upsample_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"upsample": args.upsampler is not None}
    if args.upsampler is not None:
        if args.upsample_steps is not None:
            kw["upsample_steps"] = steps_value(args.upsample_steps)
        if args.upsample_sampler is not None:
            kw["upsample_sampler"] = args.upsample_sampler
    return kw


def recorded_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling settings a pipeline recorded (what actually ran)."""
    keys = (
        "base",
        "upsampler",
        "device",
        "dtype",
        "steps",
        "sampler",
        "sampler_options",
        "guidance",
        "guidance_scale",
        "clip",
        "clip_guidance_scale",
        "upsampled",
        "upsample_steps",
        "upsample_sampler",
        "upsample_temp",
        "guidance_interval",
        "preset",
    )
    return {k: params[k] for k in keys if k in params}


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def settings_line(settings: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)


def agreement_cells(summary: Mapping[str, Any]) -> list[Any]:
    return [summary[a] for a in ATTRIBUTES] + [summary["all"]]


def skip(args: argparse.Namespace, reason: str) -> int:
    """Report a section that cannot run here, in the table's place and in the JSON."""
    logger.warning("%s skipped: %s", args.section, reason)
    print(f"**{args.section}: skipped.** {reason}")
    write_json(args.json, {**run_info(args), "skipped": reason})
    return 0


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def section_agreement(args: argparse.Namespace) -> int:
    pipe, defaults = default_pipeline(args, "base")
    kw = {**sampling_kwargs(args, type(pipe), defaults), **upsample_kwargs(args)}
    captions = canonical_captions(args.n, args.seed)
    logger.info("agreement: %d captions, %s", args.n, kw)
    finals, lows, params, seconds = sample_batches(pipe, captions, args.seed, args.batch, **kw)
    base_images = lows if lows is not None else finals
    base_size = base_images[0].width
    results: dict[str, Any] = {}
    tally = Tally()
    tally.add_images(base_images, captions)
    results[f"base {base_size}px"] = tally.summary()
    if lows is not None:
        tally = Tally()
        tally.add_images(finals, captions)
        results[f"upsampled {finals[0].width}px"] = tally.summary()
    for size in sorted({base_size, finals[0].width}):
        tally = Tally()
        tally.add_images(rendered_scenes(args.n, args.seed, size), captions)
        results[f"rendered scenes {size}px (judge ceiling)"] = tally.summary()

    settings = {"n": args.n, "seed": args.seed, "batch": args.batch, **recorded_settings(params)}
    print(settings_line(settings) + "\n")
    rows = [[name, s["n"], *agreement_cells(s)] for name, s in results.items()]
    print(markdown_table(["images", "n", *ATTRIBUTES, "all"], rows))
    write_json(
        args.json,
        {
            **run_info(args),
            **settings,
            "captions_seed": args.seed,
            "seconds": seconds,
            "results": results,
        },
    )
    return 0


def diversity(
    pipe: Text2ImagePipeline,
    items: Sequence[tuple[str, tuple[str, ...]]],
    samples: int,
    seed: int,
    **kw: Any,
) -> dict[str, Any]:
    """Distinct judged tuples of the unstated attributes among ``samples`` pictures per caption;
    caption ``j`` is sampled as one batch seeded ``seed + j``."""
    per_caption = []
    stated_tally = Tally()
    no_object = 0
    for j, (text, unstated) in enumerate(items):
        result = pipe(text, num_images=samples, seed=seed + j, **kw)
        stated = parse_caption(text)
        seen = set()
        for image in result.images:
            scene = judge(image).attributes()
            seen.add(tuple(scene[a] for a in unstated))
            no_object += scene["shape"] == UNKNOWN
            stated_tally.add({a: stated.get(a, scene[a]) == scene[a] for a in ATTRIBUTES})
        possible = min(samples, math.prod(len(ATTRIBUTE_VALUES[a]) for a in unstated))
        per_caption.append(
            {
                "caption": text,
                "unstated": list(unstated),
                "distinct": len(seen),
                "possible": possible,
            }
        )
    distinct = [c["distinct"] for c in per_caption]
    return {
        "k": len(items),
        "samples": samples,
        "diversity": float(statistics.mean(distinct)),
        "diversity_fraction": statistics.mean(c["distinct"] / c["possible"] for c in per_caption),
        "stated_agreement": stated_tally.fraction("all"),
        "no_object_fraction": no_object / (samples * len(items)),
        "captions": per_caption,
    }


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    """Agreement and diversity vs guidance scale as a PNG; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "matplotlib is not installed: no plot written (pip install "
            "'glidekit[bench]' or pip install matplotlib); the table and JSON "
            "have the numbers"
        )
        return None
    scales = [r["scale"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for a in ATTRIBUTES:
        left.plot(scales, [r["agreement"][a] for r in rows], marker=".", alpha=0.6, label=a)
    left.plot(scales, [r["agreement"]["all"] for r in rows], "k-o", lw=2, label="all")
    left.set(
        xlabel="guidance scale",
        ylabel="agreement with the caption",
        ylim=(0, 1.02),
        title="Caption agreement",
    )
    left.legend(fontsize=8)
    right.plot(scales, [r["diversity"]["diversity"] for r in rows], "C3-o")
    samples = rows[0]["diversity"]["samples"]
    right.set(
        xlabel="guidance scale",
        ylabel=f"distinct unstated-attribute tuples of {samples}",
        title="Diversity (captions with unstated attributes)",
    )
    right.set_ylim(0, samples + 0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("wrote %s", path)
    return str(path)


def plot_samplers(rows: Sequence[Mapping[str, Any]], path: Path) -> str | None:
    """Agreement (mean over attributes; all at once) against steps, a line per sampler; None
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        counts = [r["count"] for r in mine]
        mean = [statistics.fmean(r["agreement"][a] for a in ATTRIBUTES) for r in mine]
        axes[0].plot(counts, mean, "-o", label=sampler)
        axes[1].plot(counts, [r["agreement"]["all"] for r in mine], "-o", label=sampler)
    for ax, label in zip(axes, ("mean of the 5 attributes", "all attributes at once"), strict=True):
        ax.set(xlabel="base steps", ylabel=label, ylim=(0, 1.02), xscale="log")
        ax.legend()
    fig.suptitle("Caption agreement against steps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def section_samplers(args: argparse.Namespace) -> int:
    """Agreement at the base resolution for every (sampler, step count): the same captions and
    seeds in every cell, so the cells differ only by the sampler and its steps."""
    pipe = Text2ImagePipeline(args.model, None, device=args.device, dtype=args.dtype)
    guidance = (
        args.guidance
        if args.guidance is not None
        else pipeline_default(Text2ImagePipeline, "guidance_scale")
    )
    captions = canonical_captions(args.n, args.seed)
    rows: list[dict[str, Any]] = []
    for sampler in args.samplers:
        for count in args.counts:
            steps = f"karras{count}" if sampler == "dpm++2m" and args.karras else str(count)
            images, _, _, seconds = sample_batches(
                pipe, captions, args.seed, args.batch, steps=steps, sampler=sampler,
                guidance_scale=guidance, upsample=False,
            )  # fmt: skip
            tally = Tally()
            tally.add_images(images, captions)
            rows.append({"sampler": sampler, "steps": steps, "count": count,
                         "seconds": seconds, "agreement": tally.summary()})  # fmt: skip
            logger.info("samplers: %s %s -> all %.3f", sampler, steps, rows[-1]["agreement"]["all"])
    settings = {"n": args.n, "seed": args.seed, "batch": args.batch, "guidance": guidance}
    print(settings_line(settings) + "\n")
    table = [[r["sampler"], r["steps"], *agreement_cells(r["agreement"]), fmt(r["seconds"], 1)]
             for r in rows]  # fmt: skip
    print(markdown_table(["sampler", "steps", *ATTRIBUTES, "all", "seconds"], table))
    plot = plot_samplers(rows, args.plot)
    if plot:
        print(f"\nplot: {plot}")
    write_json(args.json, {**run_info(args), **settings, "plot": plot, "results": rows})
    return 0


def section_guidance_sweep(args: argparse.Namespace) -> int:
    pipe = Text2ImagePipeline(args.model, None, device=args.device, dtype=args.dtype)
    base_kw = sampling_kwargs(args, Text2ImagePipeline)
    base_kw.pop("guidance_scale")
    captions = canonical_captions(args.n, args.seed)
    items = diversity_captions(args.k, args.seed)
    div_seed = args.seed + 1_000_000
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    for scale, interval in [(s, i) for s in args.scales for i in args.intervals]:
        logger.info("guidance-sweep: scale %g, interval %s", scale, interval or "all")
        kw = {**base_kw, "guidance_scale": scale, "upsample": False,
              "guidance_interval": interval}  # fmt: skip
        images, _, params, seconds = sample_batches(pipe, captions, args.seed, args.batch, **kw)
        tally = Tally()
        tally.add_images(images, captions)
        start = time.perf_counter()
        div = diversity(pipe, items, args.samples, div_seed, **kw)
        rows.append(
            {
                "scale": scale,
                "interval": interval,
                "agreement": tally.summary(),
                "diversity": div,
                "seconds": seconds + time.perf_counter() - start,
            }
        )
    plot = plot_sweep(rows, args.plot)

    settings = {
        "n": args.n,
        "k": args.k,
        "samples": args.samples,
        "seed": args.seed,
        "diversity_seed": div_seed,
        "batch": args.batch,
        **recorded_settings(params),
        "guidance_scale": list(args.scales),
    }
    print(settings_line(settings) + "\n")
    header = [
        "scale",
        "interval",
        *ATTRIBUTES,
        "all",
        f"diversity (of {args.samples})",
        "diversity / possible",
        "stated-attr agreement",
        "no object",
        "seconds",
    ]
    table = [
        [
            f"{r['scale']:g}",
            "all" if r["interval"] is None else "{:g}-{:g}".format(*r["interval"]),
            *agreement_cells(r["agreement"]),
            r["diversity"]["diversity"],
            r["diversity"]["diversity_fraction"],
            r["diversity"]["stated_agreement"],
            r["diversity"]["no_object_fraction"],
            r["seconds"],
        ]
        for r in rows
    ]
    print(markdown_table(header, table))
    if plot is None:
        print("\n(no plot: matplotlib is not installed; pip install 'glidekit[bench]')")
    else:
        print(f"\nplot: {plot}")
    write_json(args.json, {**run_info(args), **settings, "plot": plot, "results": rows})
    return 0


def check_clip_file(path: Path) -> None:
    """ValueError unless ``path`` is a CLIP file written by ``glidekit train`` (both towers,
    its config and vocabulary; the pipelines take it as ``clip``)."""
    if not is_clip_file(path):
        raise ValueError(
            f"--clip: {str(path)!r} is not a glidekit CLIP file (as `glidekit train "
            "configs/shapes-clip.yaml` exports); separate tower files are not supported here"
        )


def section_clip_vs_cfg(args: argparse.Namespace) -> int:
    if args.clip is None:
        return skip(
            args,
            "needs --clip PATH: a shapes-world noise-aware CLIP file (`glidekit "
            "train configs/shapes-clip.yaml` exports one); none was given and the "
            "package ships none.",
        )
    try:
        check_clip_file(args.clip)
    except ValueError as exc:
        return skip(args, str(exc))
    cfg_pipe = Text2ImagePipeline(args.model, None, device=args.device, dtype=args.dtype)
    clip_pipe = ClipGuidedPipeline(
        args.model, None, clip=str(args.clip), device=args.device, dtype=args.dtype
    )
    clip = clip_pipe.clip
    base_size = cfg_pipe.base.model.config.image_size
    if clip.config.image_size != base_size:
        return skip(
            args,
            f"the CLIP sees {clip.config.image_size}px images but the base model "
            f"makes {base_size}px ones; CLIP guidance needs them equal",
        )
    base_kw = sampling_kwargs(args, Text2ImagePipeline)
    base_kw.pop("guidance_scale")
    base_kw.pop("guidance", None)  # each pipeline runs its own kind of guidance
    captions = canonical_captions(args.n, args.seed)
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    runs = [("classifier-free", cfg_pipe, s) for s in args.cfg_scales]
    runs += [("clip", clip_pipe, s) for s in args.clip_scales]
    for guidance, pipe, scale in runs:
        logger.info("clip-vs-cfg: %s guidance %g", guidance, scale)
        kw = {**base_kw, "guidance_scale": scale, "upsample": False}
        try:
            images, _, params, seconds = sample_batches(pipe, captions, args.seed, args.batch, **kw)
        except (ValueError, TypeError, FileNotFoundError) as exc:
            return skip(args, f"{guidance} guidance failed: {exc}")
        tally = Tally()
        tally.add_images(images, captions)
        rows.append(
            {
                "guidance": guidance,
                "scale": scale,
                "agreement": tally.summary(),
                "seconds": seconds,
                "seconds_per_image": seconds / args.n,
            }
        )

    settings = {
        "n": args.n,
        "seed": args.seed,
        "batch": args.batch,
        "clip": str(args.clip),
        **recorded_settings(params),
    }
    settings.pop("guidance", None)
    settings.pop("guidance_scale", None)
    print(settings_line(settings) + "\n")
    header = ["guidance", "scale", *ATTRIBUTES, "all", "s / image"]
    table = [
        [r["guidance"], f"{r['scale']:g}", *agreement_cells(r["agreement"]), r["seconds_per_image"]]
        for r in rows
    ]
    print(markdown_table(header, table))
    print(f"\nCLIP: {args.clip}")
    write_json(
        args.json,
        {
            **run_info(args),
            **settings,
            "clip": str(args.clip),
            "cfg_scales": list(args.cfg_scales),
            "clip_scales": list(args.clip_scales),
            "results": rows,
        },
    )
    return 0


@dataclasses.dataclass
class InpaintCase:
    """One inpainting case: the source picture, the box to repaint and what to paint there."""

    source: Image.Image  # at the output resolution
    mask: Image.Image  # "L", 255 = replace
    box: tuple[int, int, int, int]  # the mask box (left, upper, right, lower)
    caption: str
    source_scene: ShapeScene
    target_scene: ShapeScene

    def truth(self) -> Image.Image:
        """The ideal answer: the new object rendered into the source's mask box."""
        size = self.source.width
        out = self.source.copy()
        out.paste(render(self.target_scene, size).crop(self.box), self.box)
        return out


def inpaint_case(seed: int, index: int, size: int) -> InpaintCase:
    """Case ``index``: the source's object in a random quadrant, a new random object (same
    background) in another quadrant, which is the mask. Objects in a quadrant stay inside it
    (the world's geometry), so the mask never cuts the source's object."""
    rng = random.Random(f"shapes-suite-inpaint-{seed}-{index}")
    src_pos, dst_pos = rng.sample(QUADRANTS, 2)
    source_scene = random_scene(rng, position=src_pos)
    target_scene = random_scene(rng, position=dst_pos, background=source_scene.background)
    box = quadrant_box(dst_pos, size)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return InpaintCase(
        render(source_scene, size),
        mask,
        box,
        canonical_caption(target_scene),
        source_scene,
        target_scene,
    )


def mask_canvas(image: Image.Image, case: InpaintCase) -> Image.Image:
    """``image``'s mask box on a plain canvas of the source's background (what is judged)."""
    size = image.width
    scale = size / case.source.width
    box = tuple(round(v * scale) for v in case.box)
    canvas = Image.new("RGB", (size, size), PALETTE[case.source_scene.background])
    canvas.paste(image.crop(box), box)
    return canvas


def section_inpaint(args: argparse.Namespace) -> int:
    if args.model is None:
        return skip(
            args,
            "needs an inpainting base model: pass --model PATH (e.g. from "
            "`glidekit train configs/shapes-inpaint-32.yaml`); the package ships no "
            "glidekit/models/shapes-base-inpaint.safetensors yet.",
        )
    pipe, defaults = default_pipeline(args, "base_inpaint")
    base_size = pipe.base.model.config.image_size
    out_size = pipe.upsampler.model.config.image_size if pipe.upsampler else base_size
    if not pipe.base.model.config.inpaint:
        logger.warning(
            "--model %s is not an inpainting model (%s): it only gets the known "
            "region replaced at every step",
            args.model,
            pipe.base.model.config.kind,
        )
    kw = {**sampling_kwargs(args, InpaintPipeline, defaults), **upsample_kwargs(args)}
    logger.info("inpaint: %d cases at %dpx (base %dpx), %s", args.n, out_size, base_size, kw)
    tallies = {"out": Tally(), "low": Tally(), "truth": Tally()}
    diffs: list[int] = []
    params: dict[str, Any] = {}
    per_case: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i in range(args.n):
        case = inpaint_case(args.seed, i, out_size)
        result = pipe(case.caption, case.source, case.mask, seed=args.seed + i, **kw)
        params = params or dict(result.params)
        out = result.images[0]
        keep = np.asarray(case.mask) == 0
        diff = np.abs(np.asarray(out, np.int16) - np.asarray(case.source, np.int16))
        diffs.append(int(diff[keep].max()))
        verdict = check(mask_canvas(out, case), case.caption)
        tallies["out"].add(verdict)
        if result.low_res is not None:
            tallies["low"].add(check(mask_canvas(result.low_res[0], case), case.caption))
        tallies["truth"].add(check(mask_canvas(case.truth(), case), case.caption))
        per_case.append(
            {
                "caption": case.caption,
                "source": canonical_caption(case.source_scene),
                "mask_box": list(case.box),
                "known_max_diff": diffs[-1],
                "verdict": verdict,
            }
        )
        if (i + 1) % 10 == 0 or i + 1 == args.n:
            logger.info("  %d/%d cases (%.0f s)", i + 1, args.n, time.perf_counter() - start)
    seconds = time.perf_counter() - start

    known = {
        "max_diff": max(diffs),
        "fraction_within": sum(d <= KNOWN_REGION_TOLERANCE for d in diffs) / len(diffs),
        "tolerance": KNOWN_REGION_TOLERANCE,
    }
    results = {f"result {out_size}px": tallies["out"].summary()}
    if tallies["low"].n:
        results[f"base {base_size}px (before upsampling)"] = tallies["low"].summary()
    results[f"rendered truth {out_size}px (judge ceiling)"] = tallies["truth"].summary()
    settings = {
        "n": args.n,
        "seed": args.seed,
        "output_size": out_size,
        **recorded_settings(params),
    }
    print(settings_line(settings) + "\n")
    header = [
        "images",
        "n",
        *ATTRIBUTES,
        "all",
        f"object (target {INPAINT_TARGET})",
        "known region max diff /255",
        f"cases <= {KNOWN_REGION_TOLERANCE}/255",
    ]
    table = []
    for name, s in results.items():
        measured = name.startswith("result")
        table.append(
            [
                name,
                s["n"],
                *agreement_cells(s),
                s["object"],
                known["max_diff"] if measured else None,
                known["fraction_within"] if measured else None,
            ]
        )
    print(markdown_table(header, table))
    print(
        "\nJudged: the result's mask quadrant pasted on a plain canvas of the source's "
        "background, against the new object's canonical caption."
    )
    write_json(
        args.json,
        {
            **run_info(args),
            **settings,
            "seconds": seconds,
            "known_region": known,
            "target_object": INPAINT_TARGET,
            "results": results,
            "cases": per_case,
        },
    )
    return 0


def glidekit_command() -> list[str]:
    """How to run the ``glidekit`` CLI of this interpreter's installation."""
    beside = Path(sys.executable).parent / "glidekit"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("glidekit")
    return [found] if found else [sys.executable, "-m", "glidekit.cli.main"]


def section_generate_time(args: argparse.Namespace) -> int:
    from glidekit.bench import find_calibrate

    caption = args.caption or canonical_captions(1, args.seed)[0]
    cmd = [
        *glidekit_command(),
        "generate",
        caption,
        "--num-images",
        str(args.num_images),
        "--seed",
        str(args.seed),
        "--quiet",
        "--json",
    ]
    options = {
        "--base": args.model,
        "--upsampler": args.upsampler,
        "--steps": args.steps,
        "--sampler": args.sampler,
        "--guidance-scale": args.guidance,
        "--upsample-steps": args.upsample_steps,
        "--upsample-sampler": args.upsample_sampler,
        "--device": args.device,
        "--dtype": args.dtype,
    }
    for flag, value in options.items():
        if value is not None:
            cmd += [flag, str(value)]
    calibrate = find_calibrate()
    if calibrate is None:
        logger.warning(
            "../shared/bench/calibrate.py not found (or $GLIDEKIT_CALIBRATE): "
            "seconds only, no ratio"
        )
    times: list[float] = []
    cals: list[float] = []
    run_params: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shapes-suite-") as tmp:
        for r in range(args.warmup + args.rounds):
            outdir = Path(tmp) / f"round{r}"
            full = [*cmd, "--outdir", str(outdir)]
            cal = calibrate(5) if calibrate is not None else None
            start = time.perf_counter()
            proc = subprocess.run(full, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                logger.error(
                    "the command failed (exit %d): %s\n%s",
                    proc.returncode,
                    shlex.join(full),
                    proc.stderr.strip(),
                )
                return 1
            if r < args.warmup:
                logger.info("  warm-up: %.2f s", elapsed)
                continue
            times.append(elapsed)
            if cal is not None:
                cals.append(cal)
            run_params = (json.loads(proc.stdout).get("runs") or [{}])[0]
            logger.info(
                "  round %d: %.2f s (calibrate %s s)", r - args.warmup + 1, elapsed, fmt(cal, 4)
            )
    median = statistics.median(times)
    cal_median = statistics.median(cals) if cals else None
    result = {
        "generate_command": shlex.join([*cmd, "--outdir", "DIR"]),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "seconds": times,
        "median_seconds": median,
        "min_seconds": min(times),
        "calibrate_seconds": cals,
        "calibrate_median_seconds": cal_median,
        "ratio": median / cal_median if cal_median else None,
    }
    settings = {
        "num_images": args.num_images,
        "seed": args.seed,
        "caption": caption,
        **recorded_settings(run_params),
    }
    print(settings_line(settings) + "\n")
    print(
        markdown_table(
            ["command", "rounds", "median s", "min s", "calibrate median s", "ratio to calibrate"],
            [
                [
                    f"`{result['generate_command']}`",
                    args.rounds,
                    median,
                    min(times),
                    cal_median,
                    result["ratio"],
                ]
            ],
        )
    )
    write_json(args.json, {**run_info(args), **settings, **result})
    return 0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist or is not a file")
    return path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def scale_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected finite numbers separated by commas, got {text!r}"
        )
    return values


def interval_list(text: str) -> list[tuple[float, float] | None]:
    """ "all,0.3:1" -> [None, (0.3, 1.0)] (checked by the options when sampling)."""
    out: list[tuple[float, float] | None] = []
    for part in text.split(","):
        if part.strip() == "all":
            out.append(None)
            continue
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected all or LO:HI, got {part!r}") from None
        out.append((lo, hi))
    return out


def embedded(role: str) -> Path | None:
    return embedded_path(role)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:13]),
    )
    sub = parser.add_subparsers(dest="section", required=True, metavar="SECTION")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        type=existing_file,
        metavar="PATH",
        help="base model file (default: the embedded shapes base; inpaint: the "
        "embedded shapes inpainting base)",
    )
    common.add_argument(
        "--steps",
        metavar="STEPS",
        help="base steps: a count or a respacing (default: the pipeline's, 100)",
    )
    common.add_argument(
        "--sampler",
        metavar="NAME",
        help="base sampler: ancestral, ddim, dpm++2m (default: the pipeline's)",
    )
    common.add_argument(
        "--guidance",
        type=float,
        metavar="G",
        help="guidance scale (default: the model's, see --classifier-free; else the "
        "pipeline's: 3.0, inpainting 5.0)",
    )
    common.add_argument(
        "--clip-guidance",
        type=float,
        metavar="G",
        help="inpaint: CLIP guidance scale added to classifier-free (default: the model's)",
    )
    common.add_argument(
        "--classifier-free",
        action="store_true",
        help="agreement, inpaint: GLIDE's classifier-free guidance even for the embedded "
        "models, ignoring a model file's own sampling defaults (default: how glidekit "
        "generate / inpaint run the model: with the file's defaults)",
    )
    common.add_argument("--seed", type=int, default=0, help="captions, cases and sampling (0)")
    common.add_argument(
        "--batch",
        type=positive_int,
        default=16,
        help="captions per pipeline call (16); part of what a seed means",
    )
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (auto)")
    common.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16 (auto)")
    common.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a glidekit preset (official, fast): its dtype, memory use and sampling options "
        "under the flags given (default: official)",
    )
    common.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    common.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    upsampling = argparse.ArgumentParser(add_help=False)
    upsampling.add_argument(
        "--upsampler",
        type=existing_file,
        metavar="PATH",
        help="upsampler model file: also judge the upsampled pictures",
    )
    upsampling.add_argument(
        "--upsample-steps",
        metavar="STEPS",
        help="upsampler steps (default: the pipeline's, fast27)",
    )
    upsampling.add_argument(
        "--upsample-sampler",
        metavar="NAME",
        help="upsampler sampler (default: the pipeline's, ddim)",
    )

    def add(
        name: str, help_text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )

    p = add("agreement", "caption agreement of text-to-image, per attribute", upsampling)
    p.add_argument("--n", type=positive_int, default=200, help="captions (200)")
    p.set_defaults(func=section_agreement)

    p = add("guidance-sweep", "agreement and diversity vs classifier-free guidance scale")
    p.add_argument(
        "--scales",
        type=scale_list,
        default=[0, 1, 2, 3, 5, 8],
        help="guidance scales, comma-separated (0,1,2,3,5,8)",
    )
    p.add_argument(
        "--intervals",
        type=interval_list,
        default=[None],
        help="guidance intervals as t/T, comma-separated: all, or LO:HI (e.g. all,0.3:1)",
    )
    p.add_argument("--n", type=positive_int, default=200, help="agreement captions (200)")
    p.add_argument("--k", type=positive_int, default=8, help="diversity captions (8)")
    p.add_argument(
        "--samples", type=positive_int, default=16, help="pictures per diversity caption (16)"
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=Path("guidance-sweep.png"),
        help="PNG plot path (guidance-sweep.png)",
    )
    p.set_defaults(
        func=section_guidance_sweep, upsampler=None, upsample_steps=None, upsample_sampler=None
    )

    p = add("samplers", "agreement against base steps for each sampler")
    p.add_argument("--samplers", nargs="+", default=["ancestral", "ddim", "dpm++2m"])
    p.add_argument(
        "--counts", type=int, nargs="+", default=[10, 25, 50, 100], help="base step counts"
    )
    p.add_argument(
        "--no-karras", dest="karras", action="store_false",
        help="dpm++2m on evenly spaced steps instead of karrasN",
    )  # fmt: skip
    p.add_argument("--n", type=positive_int, default=200, help="captions (200)")
    p.add_argument("--plot", type=Path, default=Path("samplers.png"), help="PNG plot path")
    p.set_defaults(func=section_samplers, upsampler=None, upsample_steps=None,
                   upsample_sampler=None)  # fmt: skip

    p = add("clip-vs-cfg", "classifier-free vs CLIP guidance at equal steps")
    p.add_argument(
        "--clip",
        type=existing_file,
        metavar="PATH",
        help="shapes-world noise-aware CLIP file (glidekit train's export)",
    )
    p.add_argument(
        "--cfg-scales",
        type=scale_list,
        default=[1, 3, 5],
        help="classifier-free guidance scales (1,3,5)",
    )
    p.add_argument(
        "--clip-scales", type=scale_list, default=[1, 3, 10], help="CLIP guidance scales (1,3,10)"
    )
    p.add_argument("--n", type=positive_int, default=200, help="captions (200)")
    p.set_defaults(
        func=section_clip_vs_cfg, upsampler=None, upsample_steps=None, upsample_sampler=None
    )

    p = add("inpaint", "inpainting: known-region preservation and the new object", upsampling)
    p.add_argument("--n", type=positive_int, default=100, help="cases (100)")
    p.set_defaults(func=section_inpaint)

    p = add("generate-time", "wall time of `glidekit generate` vs calibrate.py", upsampling)
    p.add_argument("--rounds", type=positive_int, default=5, help="timed runs (5)")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs first (0)")
    p.add_argument("--num-images", type=positive_int, default=4, help="--num-images (4)")
    p.add_argument("--caption", help="prompt (default: the first agreement caption)")
    p.set_defaults(func=section_generate_time)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.model is None and args.section != "generate-time":
        args.model = embedded("base_inpaint" if args.section == "inpaint" else "base")
        if args.model is None and args.section != "inpaint":
            parser.error(
                f"{args.section}: --model is required (the package ships no "
                "embedded shapes base model)"
            )
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        logger.error("%s: %s", args.section, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
