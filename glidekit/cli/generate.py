"""``glidekit generate | inpaint | upsample | edit``: run the pipelines from the command line.

A thin face: each command turns its flags into the options the pipeline takes (the fields of
:mod:`glidekit.pipelines.options`; only the flags given, so the model's own defaults and then
GLIDE's apply to the rest), lets the pipeline check them, and writes the PNGs. Bad input is an
:class:`~glidekit.errors.OptionError` that :mod:`glidekit.cli.main` prints with the flag's
spelling, exit code 2, before any model is loaded or file written. Every PNG carries its
parameters, so ``glidekit generate --from picture.png`` makes the same picture again.
``generate --prompts-file`` runs a resumable, shardable bulk job (:mod:`glidekit.cli.bulk`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

import torch

from glidekit.cli import bulk
from glidekit.cli.outputs import check_outdir, write_results
from glidekit.cli.types import positive
from glidekit.errors import UsageError
from glidekit.pipelines import (
    PRESETS,
    EditPipeline,
    GlidePipeline,
    InpaintPipeline,
    Text2ImagePipeline,
    UpsamplePipeline,
    read_png_params,
)
from glidekit.pipelines.images import (
    MAX_PIXELS,
    check_mask_coverage,
    load_replace_mask,
    load_source,
)
from glidekit.pipelines.options import check_prompts
from glidekit.pipelines.sources import RELEASED_CLIP, default_source

logger = logging.getLogger(__name__)

GUIDANCES = ("auto", "classifier-free", "clip")

# --------------------------------------------------------------------------- parsers


def _common(p: argparse.ArgumentParser, *, upsample: bool = True) -> None:
    p.add_argument("-n", "--num-images", type=int, metavar="N", help="images per prompt (1)")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded)")
    p.add_argument(
        "--steps",
        metavar="STEPS",
        help="sampling steps: a count or a respacing (100, ddim50, karras25, fast27)",
    )
    p.add_argument("--sampler", metavar="NAME", help="sampler (ancestral, ddim, dpm++2m)")
    p.add_argument("--eta", type=float, help="DDIM eta (0)")
    if upsample:
        p.add_argument(
            "-g",
            "--guidance-scale",
            type=float,
            metavar="G",
            help="guidance scale (default: the model file's own, else GLIDE's)",
        )
        p.add_argument(
            "--guidance-interval",
            metavar="LO,HI",
            help="classifier-free guidance only for t/T in [LO, HI] (default: all)",
        )
        p.add_argument("--upsample-steps", metavar="STEPS", help="upsampler steps (fast27)")
        p.add_argument("--upsample-sampler", metavar="NAME", help="upsampler sampler (ddim)")
        p.add_argument(
            "--upsample-temp", type=float, metavar="T", help="upsampler start-noise scale (0.997)"
        )
        p.add_argument("--no-upsample", action="store_true", help="stop at the base resolution")
        p.add_argument("--base", metavar="NAME_OR_PATH", help="base model: released name or file")
    p.add_argument(
        "--upsampler", metavar="NAME_OR_PATH", help="upsampler model: released name or file"
    )
    p.add_argument("-o", "--outdir", default=".", metavar="DIR", help="output folder (.)")
    p.add_argument("--name", metavar="STEM", help="file name stem (default: from the prompt)")
    p.add_argument("--grid", action="store_true", help="also write all images as one grid PNG")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1...")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="official (GLIDE's sampling, the default) or fast (bf16/fp16 where native, "
        "DPM-Solver++ 25 + 10 steps, guidance for t/T in [0.3, 1], one model at a time on CPU); "
        "flags given override it",
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (the preset's: fp16 on GPUs, fp32 on CPU), fp32, bf16"
    )
    p.add_argument("--cache-dir", metavar="DIR", help="checkpoint cache (default: glidekit's)")
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="hold one model at a time (peak memory of the larger model, not both)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the models (the first step compiles: minutes on a CPU)",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_PIXELS / 1e6,
        metavar="MP",
        help="refuse input pictures larger than this (16.8, as the web app)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _image_input(p: argparse.ArgumentParser, mask: str | None = None) -> None:
    """IMAGE [MASK] PROMPT...: optional on the command line when ``--from PNG`` gives them."""
    p.add_argument("image", nargs="?", metavar="IMAGE")
    if mask:
        p.add_argument("mask", nargs="?", metavar="MASK", help=mask)
    p.add_argument("prompts", nargs="*", metavar="PROMPT")
    p.add_argument(
        "--from",
        dest="from_png",
        metavar="PNG",
        help="repeat a glidekit PNG's run (its pictures, prompts and options)",
    )
    p.add_argument(
        "--fit",
        choices=("crop", "pad"),
        help="non-square inputs: centre-crop (default) or pad with grey",
    )


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate", help="text to image (base, then the upsampler: 32 -> 128 px with the "
        "embedded models, 64 -> 256 px with the released ones)",
        description="Generate images from prompts. Several prompts make one batch; "
        "--prompts-file runs many. Each PNG carries its parameters; --from PNG makes it again.",
    )  # fmt: skip
    gen.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompt(s)")
    gen.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="bulk job: one prompt (or JSON object) per line; resumable, shardable",
    )
    gen.add_argument(
        "--batch-size",
        type=positive(int),
        default=1,
        metavar="N",
        help="--prompts-file: items per model batch (1); each keeps its own seed",
    )
    gen.add_argument("--from", dest="from_png", metavar="PNG", help="repeat a glidekit PNG's run")
    gen.add_argument(
        "--guidance",
        choices=GUIDANCES,
        default="auto",
        help="auto (default): the base model file's own, else classifier-free (GLIDE's; "
        "also the embedded shapes models')",
    )
    gen.add_argument("--clip", action="store_true", help="the same as --guidance clip")
    for tower in ("image", "text"):
        gen.add_argument(
            f"--clip-{tower}-enc",
            metavar="NAME_OR_PATH",
            help=f"CLIP {tower} encoder: released name or file (implies --clip)",
        )
    _common(gen)
    gen.set_defaults(func=_generate, pipeline=Text2ImagePipeline)

    for name, (pipeline, func, text, about, mask, flags) in _PICTURE_COMMANDS.items():
        p = subparsers.add_parser(name, help=text, description=about)
        _image_input(p, mask=mask)
        for flag, spec in flags:
            p.add_argument(flag, **spec)
        _common(p, upsample=name != "upsample")
        p.set_defaults(func=func, pipeline=pipeline)


# --------------------------------------------------------------------------- options


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, by their Python names (the pipeline's options
    class decides what is valid; flags left out keep the model's and GLIDE's defaults)."""
    names = args.pipeline.options_class.option_names()
    given = {n: getattr(args, n) for n in names
             if getattr(args, n, None) is not None and n != "guidance"}  # fmt: skip
    if getattr(args, "eta", None) is not None:
        given["sampler_options"] = {"eta": args.eta}
    if getattr(args, "no_upsample", False):
        given["upsample"] = False
    if getattr(args, "guidance", "auto") != "auto":
        given["guidance"] = args.guidance
    return given


def build_pipeline(args: argparse.Namespace, **extra: Any) -> GlidePipeline:
    """The command's pipeline on the models named (or the package defaults); nothing loads."""
    cls = args.pipeline
    low_memory = True if args.low_memory else None  # None: the preset's choice
    if not args.low_memory and getattr(args, "prompts_file", None):
        # A bulk job calls the pipeline once a batch; one model at a time would load both
        # again for each, so it keeps them unless asked.
        low_memory = False
    opts = {"device": args.device, "dtype": args.dtype, "cache_dir": args.cache_dir,
            "low_memory": low_memory,
            "compile": args.compile, "preset": args.preset, **extra}  # fmt: skip
    base = None
    if cls.base_role is not None:
        base = getattr(args, "base", None) or default_source(cls.base_role)
    up = None if getattr(args, "no_upsample", False) else (
        args.upsampler or default_source(cls.upsampler_role))  # fmt: skip
    return cls(base, up, **opts)


def _progress(args: argparse.Namespace) -> bool:
    return not (args.quiet or args.json) and sys.stderr.isatty()


def _run(args: argparse.Namespace, pipe: GlidePipeline, prompts: Any, *inputs: Any,
         index: int | None = None, **kwargs: Any) -> int:  # fmt: skip
    """Check the options, the output folder, run the pipeline and write its PNGs."""
    prompt_list = check_prompts(prompts)
    opts = pipe.build_options(given_options(args))
    check_outdir(args.outdir)
    result = pipe(prompt_list, *inputs, options=opts, progress=_progress(args), **kwargs)
    if index is not None and 0 <= index < len(result):
        result = result.select(index)
    return write_results([result], args, args.command)


# --------------------------------------------------------------------------- commands


#: The command that repeats a PNG, by the pipeline that made it.
COMMAND_OF = {"text2image": "generate", "clip-guided": "generate", "inpaint": "inpaint",
              "edit": "edit", "upsample": "upsample"}  # fmt: skip


def _from_png(args: argparse.Namespace) -> tuple[list[str], int | None]:
    """Fill in what the command line left open from a glidekit PNG: its options (as defaults
    the flags override), models, input pictures and prompts. Returns (prompts, index):
    ``index`` is the image's row in its batch when the batch is repeated as it was (only that
    image is written)."""
    params = read_png_params(args.from_png, "--from")
    made_by = COMMAND_OF.get(str(params.get("pipeline")), str(params.get("pipeline")))
    if made_by != args.command:
        raise UsageError(f"--from: {args.from_png!r} was made by `glidekit {made_by}`; "
                         "repeat it with that command")  # fmt: skip
    same_batch = not args.prompts and args.num_images is None and args.seed is None
    recorded = args.pipeline.options_class.from_params(params)
    for name, value in recorded.items():  # flags given win
        if name == "sampler_options" and args.eta is not None:
            continue
        if getattr(args, name, None) is None and not (name == "upsample" and args.no_upsample):
            setattr(args, name, value)
    if hasattr(args, "no_upsample"):
        args.no_upsample = args.no_upsample or not recorded.get("upsample", True)
    if args.preset is None and params.get("preset") in PRESETS:  # its dtype and memory use
        args.preset = params["preset"]
    if args.command == "generate":
        _from_png_guidance(args, params, recorded)
    for key in ("base", "upsampler", "image", "mask"):
        if hasattr(args, key) and getattr(args, key) is None and params.get(key):
            if params[key] == "custom" or str(params[key]).startswith("<"):
                flag = f"--{key}" if key in ("base", "upsampler") else key.upper()
                raise UsageError(f"--from: the {key} was given in Python; pass {flag}")
            setattr(args, key, params[key])
    num = int(params.get("num_images") or 1)
    prompts = args.prompts or (params.get("prompts") or [])[::num]
    index = params.get("index") if same_batch and not params.get("grid") else None
    return prompts, index


def _from_png_guidance(args: argparse.Namespace, params: dict[str, Any],
                       recorded: dict[str, Any]) -> None:  # fmt: skip
    """The PNG's guidance, and its CLIP, unless the command line says otherwise."""
    if args.guidance == "auto" and not args.clip:
        args.guidance = recorded.get("guidance", "classifier-free")
    if args.guidance == "clip" and not (args.clip_image_enc or args.clip_text_enc):
        towers = str(params.get("clip") or "").split(",")
        if len(towers) == 2:
            args.clip_image_enc, args.clip_text_enc = towers
        elif towers[0]:
            args.clip_image_enc = args.clip_text_enc = towers[0]


def _inputs(args: argparse.Namespace, *names: str) -> tuple[list[str], int | None]:
    """The prompts (and the row to keep) of a picture command, after ``--from``; IMAGE and the
    other ``names`` are required unless the PNG gave them."""
    prompts, index = _from_png(args) if args.from_png else (args.prompts, None)
    for name in names:
        if getattr(args, name, None) is None:
            raise UsageError(f"{name.upper()}: required (or --from PNG)")
    if not prompts:
        raise UsageError("PROMPT: no prompt given (pass one or --from PNG)")
    return prompts, None if index is None else int(index)


def _clip_source(args: argparse.Namespace) -> Any:
    if args.clip_image_enc and args.clip_image_enc == args.clip_text_enc:
        return args.clip_image_enc  # one glidekit CLIP file with both towers
    if args.clip_image_enc or args.clip_text_enc:
        return (args.clip_image_enc or RELEASED_CLIP[0], args.clip_text_enc or RELEASED_CLIP[1])
    return None


def _distributed_device(args: argparse.Namespace) -> None:
    """Under torchrun on GPUs, each process samples on its own card (recorded as "cuda")."""
    local = os.environ.get("LOCAL_RANK")
    if local and local.isdigit() and args.device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(local) % torch.cuda.device_count())
        args.device = "cuda"


def _generate(args: argparse.Namespace) -> int:
    if args.clip or args.clip_image_enc or args.clip_text_enc:
        if args.guidance == "classifier-free":
            raise UsageError("--guidance classifier-free: contradicts --clip / --clip-*-enc")
        args.guidance = "clip"
    index = None
    if args.from_png:
        if args.prompts_file:
            raise UsageError("--from and --prompts-file cannot be combined")
        prompts, index = _from_png(args)
    elif args.prompts_file:
        if args.prompts:
            raise UsageError("PROMPT and --prompts-file cannot be combined")
        _distributed_device(args)
        return bulk.run(args, build_pipeline(args, clip=_clip_source(args)), given_options(args))
    else:
        prompts = args.prompts
    if not prompts:
        raise UsageError("PROMPT: no prompt given (pass one, --prompts-file or --from)")
    _distributed_device(args)
    pipe = build_pipeline(args, clip=_clip_source(args))
    return _run(args, pipe, prompts, index=None if index is None else int(index))


def pixel_limit(args: argparse.Namespace) -> int:
    """``--max-megapixels`` as a pixel count (a finite number > 0)."""
    value = args.max_megapixels
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--max-megapixels: expected a positive number, got {value}")
    return int(value * 1e6)


def _check_pictures(args: argparse.Namespace, mask: Any, *, allow_full: bool = False) -> None:
    """Read IMAGE (and MASK) now: a bad picture is refused before any model loads."""
    limit = pixel_limit(args)
    fit = args.fit or "crop"
    load_source(args.image, fit, name="IMAGE", max_pixels=limit)
    if mask is not None or not allow_full:
        mask_name = "MASK" if not allow_full else "--mask"
        replace = load_replace_mask(args.image, mask, fit, image_name="IMAGE",
                                    mask_name=mask_name, max_pixels=limit)  # fmt: skip
        check_mask_coverage(replace, mask_name, allow_full=allow_full)


def _inpaint(args: argparse.Namespace) -> int:
    prompts, index = _inputs(args, "image", "mask")
    mask = None if args.mask.strip().lower() == "alpha" else args.mask
    _check_pictures(args, mask)
    return _run(args, build_pipeline(args), prompts, args.image, mask, index=index)


def _upsample(args: argparse.Namespace) -> int:
    prompts, index = _inputs(args, "image")
    load_source(args.image, args.fit or "crop", name="IMAGE", max_pixels=pixel_limit(args))
    return _run(args, build_pipeline(args), prompts, args.image, index=index)


def _edit(args: argparse.Namespace) -> int:
    prompts, index = _inputs(args, "image")
    _check_pictures(args, args.mask, allow_full=True)
    return _run(args, build_pipeline(args), prompts, args.image, mask=args.mask, index=index)


#: The commands that start from a picture: (pipeline, handler, help, description, MASK's help
#: or None, [(flag, add_argument keywords)]).
_PICTURE_COMMANDS: dict[str, tuple[Any, Any, str, str, str | None, list]] = {
    "inpaint": (
        InpaintPipeline, _inpaint, "repaint the masked region of an image",
        "Inpaint IMAGE where MASK is white (black = keep; any image Pillow reads, the size of "
        "IMAGE). MASK 'alpha' uses IMAGE's transparency (transparent = repaint).",
        "mask image (white = replace) or 'alpha'",
        [("--clip-guidance-scale", {"type": float, "metavar": "G",
          "help": "add the noise-aware CLIP's gradient at this scale (0: off)"})],
    ),
    "upsample": (
        UpsamplePipeline, _upsample, "upsample a small image 4x with the prompt",
        "Upsample IMAGE (resized to the upsampler's low-res input) 4x.", None,
        [("--temperature", {"type": float, "help": "start-noise scale (0.997)"}),
         ("--low-res-size", {"type": int, "help": "side IMAGE is resized to first"})],
    ),
    "edit": (
        EditPipeline, _edit,
        "SDEdit: noise an image or sketch to --strength, denoise with the prompt",
        "Edit IMAGE: noise it to --strength (0 < S <= 1; small = close to IMAGE) and denoise "
        "with PROMPT. --mask limits the change to its white region.", None,
        [("--strength", {"type": float, "help": "noise level to start from (0.6)"}),
         ("--upsample-strength", {"type": float, "help": "the upsampler's (= --strength)"}),
         ("--mask", {"metavar": "MASK", "help": "edit only where MASK is white"})],
    ),
}  # fmt: skip
