"""``glidekit generate | inpaint | upsample | edit``: run the pipelines from the command line.

Every PNG written carries its parameters (see :mod:`glidekit.pipelines.images`), so
``glidekit generate --from picture.png`` makes the same picture again. Files are never
overwritten: a taken name gets a ``-1``, ``-2``, ... suffix; each is written to a temporary
name first, so no partial PNG ever has a final name. ``--json`` prints one JSON object
describing what was written. Bad input is an error naming the argument, exit code 2, checked
before any model is loaded or file written. ``generate --prompts-file`` runs a resumable,
shardable bulk job (see :mod:`glidekit.cli.bulk`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

GUIDANCES = ("auto", "classifier-free", "clip")

# Python argument names in pipeline errors -> how the command line spells them.
_ARG_NAMES = {
    "prompt": "PROMPT",
    "num_images": "--num-images",
    "guidance_scale": "--guidance-scale",
    "seed": "--seed",
    "steps": "--steps",
    "sampler": "--sampler",
    "sampler_options": "--eta",
    "upsample_steps": "--upsample-steps",
    "upsample_sampler": "--upsample-sampler",
    "upsample_temp": "--upsample-temp",
    "upsample_strength": "--upsample-strength",
    "strength": "--strength",
    "fit": "--fit",
    "device": "--device",
    "dtype": "--dtype",
    "base": "--base",
    "base_inpaint": "--base",
    "upsampler": "--upsampler",
    "upsampler_inpaint": "--upsampler",
    "low_res_size": "--low-res-size",
    "clip_guidance_scale": "--clip-guidance-scale",
}


def _usage_error(exc: Exception, names: dict[str, str]) -> Exception:
    """The pipeline's message with its argument name spelled as on the command line."""
    from glidekit.cli.main import UsageError

    message = str(exc)
    match = re.match(r"([A-Za-z_]+)\b", message)
    if match and match.group(1) in names:
        message = names[match.group(1)] + message[match.end() :]
    return UsageError(message)


# --------------------------------------------------------------------------- parsers


def _common(p: argparse.ArgumentParser, *, guidance: bool = True, upsample: bool = True) -> None:
    p.add_argument("-n", "--num-images", type=int, metavar="N", help="images per prompt (1)")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded)")
    if guidance:
        p.add_argument(
            "-g",
            "--guidance-scale",
            type=float,
            metavar="G",
            help="guidance scale (classifier-free: 3.0, inpainting 5.0; CLIP: 3.0; the "
            "embedded models: their own, see glidekit.models.EMBEDDED_SAMPLING)",
        )
    p.add_argument(
        "--steps",
        metavar="STEPS",
        help="base sampling steps: a count or a respacing (100, ddim50, karras25, ...)",
    )
    p.add_argument("--sampler", metavar="NAME", help="base sampler (ancestral; or ddim, dpm++2m)")
    p.add_argument("--eta", type=float, help="DDIM eta for the base sampler (0)")
    if upsample:
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
        "--dtype", default="auto", help="auto (fp16 on GPUs, fp32 on CPU), fp32, fp16, bf16"
    )
    p.add_argument(
        "--cache-dir", metavar="DIR", help="checkpoint cache (default: the glidekit cache)"
    )
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
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _fit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fit",
        choices=("crop", "pad"),
        default="crop",
        help="non-square inputs: centre-crop (default) or pad with grey",
    )


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="text to image (64x64 base, then 256x256 upsampler)",
        description=(
            "Generate images from prompts. Several prompts make one batch; --prompts-file runs "
            "many in batches. Each PNG carries its parameters; --from PNG makes it again."
        ),
    )
    gen.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompt(s)")
    gen.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="bulk job: one prompt (or JSON object) per line; resumable, torchrun-shardable",
    )
    gen.add_argument("--from", dest="from_png", metavar="PNG", help="repeat a glidekit PNG's run")
    gen.add_argument(
        "--guidance",
        choices=GUIDANCES,
        default="auto",
        help=(
            "auto (default): CLIP guidance with the embedded shapes models, which bind colour "
            "and position only with their CLIP; classifier-free (GLIDE's) otherwise"
        ),
    )
    gen.add_argument("--clip", action="store_true", help="the same as --guidance clip")
    gen.add_argument(
        "--clip-image-enc",
        metavar="NAME_OR_PATH",
        help="CLIP image encoder: released name (clip/image-enc) or file (implies --clip)",
    )
    gen.add_argument(
        "--clip-text-enc",
        metavar="NAME_OR_PATH",
        help="CLIP text encoder: released name (clip/text-enc) or file (implies --clip)",
    )
    _common(gen)
    gen.set_defaults(func=_generate)

    inp = subparsers.add_parser(
        "inpaint",
        help="repaint the masked region of an image",
        description=(
            "Inpaint IMAGE where MASK is white (black = keep; any image Pillow reads, the size "
            "of IMAGE). MASK 'alpha' uses IMAGE's transparency (transparent = repaint)."
        ),
    )
    inp.add_argument("image", metavar="IMAGE")
    inp.add_argument("mask", metavar="MASK", help="mask image (white = replace) or 'alpha'")
    inp.add_argument("prompts", nargs="+", metavar="PROMPT")
    inp.add_argument(
        "--clip-guidance-scale",
        type=float,
        metavar="G",
        help="add the noise-aware CLIP's gradient at this scale (0: off; embedded models: 30)",
    )
    _fit(inp)
    _common(inp)
    inp.set_defaults(func=_inpaint)

    ups = subparsers.add_parser(
        "upsample",
        help="upsample a small image 4x with the prompt",
        description="Upsample IMAGE (resized to the upsampler's low-res input, 64x64) to 256x256.",
    )
    ups.add_argument("image", metavar="IMAGE")
    ups.add_argument("prompts", nargs="+", metavar="PROMPT")
    ups.add_argument("--temperature", type=float, help="start-noise scale (0.997)")
    _fit(ups)
    _common(ups, guidance=False, upsample=False)
    ups.set_defaults(func=_upsample)

    edit = subparsers.add_parser(
        "edit",
        help="SDEdit: noise an image or sketch to --strength, denoise with the prompt",
        description=(
            "Edit IMAGE: noise it to --strength (0 < S <= 1; small = close to IMAGE) and "
            "denoise with PROMPT. --mask limits the change to its white region."
        ),
    )
    edit.add_argument("image", metavar="IMAGE")
    edit.add_argument("prompts", nargs="+", metavar="PROMPT")
    edit.add_argument("--strength", type=float, help="noise level to start from (0.6)")
    edit.add_argument("--upsample-strength", type=float, help="the upsampler's (= --strength)")
    edit.add_argument("--mask", metavar="MASK", help="edit only where MASK is white")
    _fit(edit)
    _common(edit)
    edit.set_defaults(func=_edit)


# --------------------------------------------------------------------------- running


def _kwargs(args: argparse.Namespace, *, guidance: bool = True, upsample: bool = True) -> dict:
    """Pipeline keyword arguments for the options given (others keep the pipeline defaults)."""
    kw: dict[str, Any] = {}
    if args.num_images is not None:
        kw["num_images"] = args.num_images
    if args.seed is not None:
        kw["seed"] = args.seed
    if guidance and args.guidance_scale is not None:
        kw["guidance_scale"] = args.guidance_scale
    if args.steps is not None:
        kw["steps"] = int(args.steps) if args.steps.strip().isdigit() else args.steps
    if args.sampler is not None:
        kw["sampler"] = args.sampler
    if args.eta is not None:
        kw["sampler_options"] = {"eta": args.eta}
    if upsample:
        if args.upsample_steps is not None:
            s = args.upsample_steps
            kw["upsample_steps"] = int(s) if s.strip().isdigit() else s
        if args.upsample_sampler is not None:
            kw["upsample_sampler"] = args.upsample_sampler
        if args.upsample_temp is not None:
            kw["upsample_temp"] = args.upsample_temp
        if args.no_upsample:
            kw["upsample"] = False
    kw["progress"] = not (args.quiet or args.json) and sys.stderr.isatty()
    return kw


def _check_early(kw: dict[str, Any]) -> None:
    """Cheap checks before any model is loaded (the pipelines check again, with models)."""
    from glidekit.diffusion.schedules import space_timesteps
    from glidekit.guidance import check_guidance_scale
    from glidekit.pipelines.common import check_count, get_sampler, respacing_spelling

    if "num_images" in kw:
        check_count(kw["num_images"], "num_images")
    if "guidance_scale" in kw:
        check_guidance_scale(kw["guidance_scale"], "guidance_scale")
    if kw.get("seed") is not None and kw["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {kw['seed']}")
    for key in ("sampler", "upsample_sampler"):
        if key in kw:
            get_sampler(kw[key], key)
    for key in ("steps", "upsample_steps"):
        if key in kw:
            spelling = respacing_spelling(kw[key], key)
            if not spelling.startswith("karras"):  # karrasN needs the model's schedule
                try:
                    space_timesteps(1000, spelling)
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None


def _pipeline(cls, args: argparse.Namespace, base_default: Any, up_default: Any, **extra: Any):
    from glidekit.pipelines.common import default_source

    kwargs = {"device": args.device, "dtype": args.dtype, "cache_dir": args.cache_dir, **extra}
    kwargs["low_memory"] = bool(getattr(args, "low_memory", False))
    kwargs["compile"] = bool(getattr(args, "compile", False))
    up = getattr(args, "upsampler", None) or (default_source(up_default) if up_default else None)
    if getattr(args, "no_upsample", False):
        up = None
    if cls.base_role is None:
        return cls(None, up, **kwargs)
    base = getattr(args, "base", None) or default_source(base_default)
    return cls(base, up, **kwargs)


def _embedded_defaults(
    args: argparse.Namespace, role: str, kw: dict[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """With the embedded shapes model as the ``role`` model (by default or named with
    ``--base``), fill ``kw`` with its sampling defaults (options given on the command line win)
    and return (pipeline name, defaults); else None (the pipelines' GLIDE defaults)."""
    import logging

    from glidekit.pipelines.common import default_source, embedded_sampling

    found = embedded_sampling(role, getattr(args, "base", None) or default_source(role))
    if found is None:
        return None
    pipeline, defaults = found
    for key, value in defaults.items():
        kw.setdefault(key, value)
    logging.getLogger(__name__).info(
        "embedded shapes models: %s with %s (from glidekit.models.EMBEDDED_SAMPLING; options "
        "given here win)",
        "CLIP guidance" if pipeline == "clip-guided" else pipeline,
        ", ".join(f"{k}={kw[k]}" for k in defaults),
    )
    return found


def _check_outdir(outdir: str) -> Path:
    """Create the output folder (or refuse with exit code 2) before anything is computed."""
    import tempfile

    from glidekit.cli.main import UsageError

    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--outdir: {outdir!r} exists and is not a folder") from None
    except OSError as exc:
        raise UsageError(f"--outdir: cannot create {outdir!r} ({exc.strerror})") from None
    try:  # writable? (permission bits alone do not tell, e.g. for root or read-only mounts)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--outdir: cannot write in {outdir!r} ({exc.strerror})") from None
    return path


def _write(results: list, args: argparse.Namespace, command: str) -> int:
    """Save every result's images (and grids); print paths or one JSON object."""
    try:
        return _write_files(results, args, command)
    except OSError as exc:
        from glidekit.cli.main import UsageError

        raise UsageError(f"--outdir: cannot write the images ({exc})") from None


def _write_files(results: list, args: argparse.Namespace, command: str) -> int:
    written: list[dict[str, Any]] = []
    grids: list[str] = []
    runs: list[dict[str, Any]] = []
    outdir = Path(args.outdir)
    for result in results:
        paths = result.save(outdir, prefix=args.name, grid=args.grid)
        image_paths = paths[: len(result.images)]
        for i, path in enumerate(image_paths):
            p = result.image_params(i)
            written.append(
                {"path": str(path), "prompt": p["prompt"], "seed": p["seed"], "index": p["index"]}
            )
        if args.grid:
            grids.append(str(paths[-1]))
        runs.append(result.params)
    if args.json:
        print(json.dumps({"command": command, "images": written, "grids": grids, "runs": runs}))
    else:
        for item in written:
            print(item["path"])
        for grid in grids:
            print(grid)
    return 0


def _call(fn, *a: Any, **kw: Any):
    try:
        return fn(*a, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _usage_error(exc, _ARG_NAMES) from exc


def _from_png(args: argparse.Namespace, kw: dict[str, Any]) -> tuple[list[str], int | None]:
    """Fill in what the command line left open from a glidekit PNG; returns (prompts, index).

    ``index`` is the image's row in its batch when the batch is repeated as it was (so only
    that image is written), else None.
    """
    from glidekit.cli.main import UsageError
    from glidekit.pipelines.images import read_png_params

    params = read_png_params(args.from_png, "--from")
    pipeline = params.get("pipeline")
    if pipeline not in ("text2image", "clip-guided"):
        raise UsageError(
            f"--from: {args.from_png!r} was made by the {pipeline!r} pipeline; "
            "generate --from repeats text-to-image runs only"
        )
    if args.guidance == "auto" and not args.clip:  # as the picture was made
        args.guidance = "clip" if pipeline == "clip-guided" else "classifier-free"
    if pipeline == "clip-guided" and args.guidance != "classifier-free":
        args.clip = True
        towers = str(params.get("clip") or "").split(",")
        if len(towers) == 2 and not (args.clip_image_enc or args.clip_text_enc):
            args.clip_image_enc, args.clip_text_enc = towers
    rows = params.get("prompts") or []
    num = int(params.get("num_images") or 1)
    same_batch = not args.prompts and "num_images" not in kw and "seed" not in kw
    prompts = args.prompts or rows[::num]
    if "num_images" not in kw:
        kw["num_images"] = num
    for key in ("seed", "guidance_scale", "steps", "sampler", "sampler_options"):
        if key not in kw and params.get(key) is not None:
            kw[key] = params[key]
    if params.get("upsampled"):
        for key in ("upsample_steps", "upsample_sampler", "upsample_temp"):
            if key not in kw and params.get(key) is not None:
                kw[key] = params[key]
        if params.get("upsample_sampler_options"):
            kw.setdefault("upsample_sampler_options", params["upsample_sampler_options"])
    elif "upsample" not in kw:
        kw["upsample"] = False
        args.no_upsample = True
    for key in ("base", "upsampler"):
        if getattr(args, key, None) is None and params.get(key):
            if params[key] == "custom":
                raise UsageError(f"--from: the {key} model was built in Python; pass --{key}")
            setattr(args, key, params[key])
    index = params.get("index") if same_batch and not params.get("grid") else None
    return prompts, index


def _distributed_device(args: argparse.Namespace) -> None:
    """Under torchrun on GPUs, each process samples on its own card (recorded as "cuda")."""
    import os

    import torch

    local = os.environ.get("LOCAL_RANK")
    if local and local.isdigit() and args.device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(local) % torch.cuda.device_count())
        args.device = "cuda"


def _generate(args: argparse.Namespace) -> int:
    from glidekit.cli import bulk
    from glidekit.cli.main import UsageError
    from glidekit.pipelines import ClipGuidedPipeline, Text2ImagePipeline
    from glidekit.pipelines.common import check_seed

    kw = _call(_kwargs, args)
    index = None
    items = None
    if args.clip_image_enc or args.clip_text_enc:
        args.clip = True
    if args.from_png:
        if args.prompts_file:
            raise UsageError("--from and --prompts-file cannot be combined")
        prompts, index = _call(_from_png, args, kw)
    elif args.prompts_file:
        if args.prompts:
            raise UsageError("PROMPT and --prompts-file cannot be combined")
        items, file_sha = bulk.read_items(args.prompts_file)
        prompts = [item.prompt for item in items]
    else:
        prompts = args.prompts
    if not prompts:
        raise UsageError("PROMPT: no prompt given (pass one, --prompts-file or --from)")
    if args.guidance == "clip":
        args.clip = True
    elif args.guidance == "classifier-free" and args.clip:
        raise UsageError("--guidance classifier-free: contradicts --clip / --clip-*-enc")
    if args.guidance != "classifier-free":
        embedded = _embedded_defaults(args, "base", kw)
        args.clip = args.clip or (embedded is not None and embedded[0] == "clip-guided")
    _call(_check_early, kw)
    for item in items or []:
        if item.overrides:
            try:
                ikw = bulk.item_kwargs(item, kw, 0)
                check_seed(ikw["seed"])
                _check_early(ikw)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"--prompts-file: line {item.line}: {exc}") from None
    _check_outdir(args.outdir)
    _distributed_device(args)
    extra: dict[str, Any] = {}
    if args.clip_image_enc or args.clip_text_enc:
        from glidekit.pipelines.clip_guided import RELEASED_CLIP

        extra["clip"] = (
            args.clip_image_enc or RELEASED_CLIP[0],
            args.clip_text_enc or RELEASED_CLIP[1],
        )
    elif args.clip:
        from glidekit.pipelines.common import default_source

        extra["clip"] = default_source("clip")  # the embedded CLIP beside the embedded base
    cls = ClipGuidedPipeline if args.clip else Text2ImagePipeline
    pipe = _call(_pipeline, cls, args, "base", "upsampler", **extra)
    names = dict(_ARG_NAMES, clip_image_enc="--clip-image-enc", clip_text_enc="--clip-text-enc")
    if items is not None:
        settings = {
            "pipeline": cls.pipeline_name,
            "base": pipe.base_slot.label if pipe.base_slot else None,
            "upsampler": pipe.upsampler_slot.label if pipe.upsampler_slot else None,
            "clip": pipe.clip_label if args.clip else None,
            "options": _json_options(kw),
        }

        def call(fn, *a: Any, **k: Any):
            try:
                return fn(*a, **k)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise _usage_error(exc, names) from exc

        try:
            return bulk.run_bulk(args, pipe, kw, items, file_sha, call, settings)
        except OSError as exc:
            raise UsageError(f"--outdir: cannot write the job's files ({exc})") from None
    seed = kw.pop("seed", None)
    try:
        result = pipe(prompts, seed=seed, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _usage_error(exc, names) from exc
    if index is not None:
        result = result.select(int(index)) if 0 <= int(index) < len(result) else result
    return _write([result], args, "generate")


def _json_options(kw: dict[str, Any]) -> dict[str, Any]:
    """The options that decide a job's pictures (not how progress is shown)."""
    from glidekit.pipelines.common import jsonable

    return jsonable({k: v for k, v in sorted(kw.items()) if k not in ("progress", "seed")})


def _inpaint(args: argparse.Namespace) -> int:
    from glidekit.pipelines import InpaintPipeline
    from glidekit.pipelines.common import default_source
    from glidekit.pipelines.images import check_mask_coverage, load_replace_mask, load_source

    kw = _call(_kwargs, args)
    mask = None if args.mask.strip().lower() == "alpha" else args.mask
    names = {"image_name": "IMAGE", "mask_name": "MASK"}
    _call(load_source, args.image, args.fit, "IMAGE")
    _call(check_mask_coverage, _call(load_replace_mask, args.image, mask, args.fit, **names),
          "MASK")  # fmt: skip
    if args.clip_guidance_scale is not None:
        kw["clip_guidance_scale"] = args.clip_guidance_scale
    _call(_check_early, kw)
    _check_outdir(args.outdir)
    _embedded_defaults(args, "base_inpaint", kw)
    pipe = _call(_pipeline, InpaintPipeline, args, "base_inpaint", "upsampler_inpaint",
                 clip=default_source("clip"))  # fmt: skip
    result = _call(pipe, args.prompts, args.image, mask, fit=args.fit, **kw)
    return _write([result], args, "inpaint")


def _upsample(args: argparse.Namespace) -> int:
    from glidekit.pipelines import UpsamplePipeline
    from glidekit.pipelines.images import load_source

    kw = _call(_kwargs, args, guidance=False, upsample=False)
    if args.temperature is not None:
        kw["temperature"] = args.temperature
    _call(load_source, args.image, args.fit, "IMAGE")
    _call(_check_early, kw)
    _check_outdir(args.outdir)
    pipe = _call(_pipeline, UpsamplePipeline, args, None, "upsampler")
    names = dict(_ARG_NAMES, temperature="--temperature")
    names.update(upsample_steps="--steps", upsample_sampler="--sampler")
    try:
        result = pipe(args.prompts, args.image, fit=args.fit, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _usage_error(exc, names) from exc
    return _write([result], args, "upsample")


def _edit(args: argparse.Namespace) -> int:
    from glidekit.pipelines import EditPipeline
    from glidekit.pipelines.common import check_strength
    from glidekit.pipelines.images import check_mask_coverage, load_replace_mask, load_source

    kw = _call(_kwargs, args)
    if args.strength is not None:
        kw["strength"] = _call(check_strength, args.strength, "strength")
    if args.upsample_strength is not None:
        kw["upsample_strength"] = _call(check_strength, args.upsample_strength, "upsample_strength")
    _call(load_source, args.image, args.fit, "IMAGE")
    if args.mask is not None:
        names = {"image_name": "IMAGE", "mask_name": "--mask"}
        replace = _call(load_replace_mask, args.image, args.mask, args.fit, **names)
        _call(check_mask_coverage, replace, "--mask", allow_full=True)
    _call(_check_early, kw)
    _check_outdir(args.outdir)
    pipe = _call(_pipeline, EditPipeline, args, "base", "upsampler")
    names = dict(_ARG_NAMES, mask="--mask", image="IMAGE")
    try:
        result = pipe(args.prompts, args.image, mask=args.mask, fit=args.fit, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _usage_error(exc, names) from exc
    return _write([result], args, "edit")
