"""``glidekit serve``: the web app (Gradio) on http://127.0.0.1:7860 by default.

Everything the server writes (uploads, results) goes to a fresh temporary folder that is
removed when it exits. ``--host 0.0.0.0`` makes it reachable from other machines: do that only
behind something that limits who can reach it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from glidekit.cli.types import positive
from glidekit.errors import UsageError
from glidekit.pipelines.images import MAX_PIXELS
from glidekit.pipelines.presets import PRESETS
from glidekit.web.app import launch, prepare_environment
from glidekit.web.jobs import InputError, Jobs, Limits, WebConfig

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="web app: generate and paint-to-inpaint in the browser",
        description=(
            "Serve the GLIDE web app (needs the 'web' extra: pip install 'glidekit[web]'). "
            "Jobs run one at a time behind a bounded queue; per-request limits apply. "
            "Models: released names or glidekit model files; default: the package defaults."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (7860)")
    p.add_argument("--base", metavar="NAME_OR_PATH", help="text-to-image base model")
    p.add_argument(
        "--upsampler", metavar="NAME_OR_PATH", help="upsampler ('none': no second stage)"
    )
    p.add_argument("--inpaint", metavar="NAME_OR_PATH", help="inpainting base model")
    p.add_argument(
        "--inpaint-upsampler", metavar="NAME_OR_PATH", help="inpainting upsampler ('none': off)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1...")
    p.add_argument("--dtype", default="auto", help="auto (the preset's), fp32, fp16, bf16")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="official",
        help="every job's: official (GLIDE's sampling) or fast (see `glidekit generate --help`)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="checkpoint cache for released models")
    p.add_argument(
        "--steps", help="default base steps shown on the page (the preset's or model's, else 100)"
    )
    p.add_argument(
        "--upsample-steps", help="upsampler steps (the preset's or model's, else fast27)"
    )
    p.add_argument("--queue-size", type=positive(int), default=8, help="waiting jobs at most (8)")
    p.add_argument("--max-images", type=positive(int), default=4, help="images per request (4)")
    p.add_argument("--max-steps", type=positive(int), default=250, help="steps per request (250)")
    p.add_argument(
        "--max-prompt-chars", type=positive(int), default=300, help="prompt length (300)"
    )
    p.add_argument(
        "--max-upload-mb", type=positive(float), default=10.0, help="upload size in MB (10)"
    )
    p.add_argument(
        "--max-megapixels",
        type=positive(float),
        default=MAX_PIXELS / 1e6,
        help="upload pixels (16.8 M, as the command line)",
    )
    p.add_argument("--title", default="GLIDE", help="page title")
    p.add_argument(
        "--lazy", action="store_true", help="load the models on first use, not at start-up"
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    workdir = Path(tempfile.mkdtemp(prefix="glidekit-web-"))
    try:
        limits = Limits(
            max_images=args.max_images,
            max_steps=args.max_steps,
            max_prompt_chars=args.max_prompt_chars,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=int(args.max_megapixels * 1_000_000),
        )
        config = WebConfig(
            workdir=workdir,
            base=args.base,
            upsampler=args.upsampler,
            inpaint=args.inpaint,
            inpaint_upsampler=args.inpaint_upsampler,
            device=args.device,
            dtype=args.dtype,
            preset=args.preset,
            cache_dir=args.cache_dir,
            upsample_steps=args.upsample_steps,
            default_steps=args.steps,
            limits=limits,
            queue_size=args.queue_size,
            title=args.title,
        )
        prepare_environment(config)  # before gradio is imported
        try:  # gradio is an optional dependency, imported after prepare_environment
            import gradio  # noqa: F401
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"the web app needs {exc.name!r}: pip install 'glidekit[web]'"
            ) from None
        try:
            jobs = Jobs(config)
            if not args.lazy:
                logger.info("loading the models (--lazy skips this)")
                jobs.preload()
        except InputError as exc:
            raise UsageError(str(exc)) from None
        # SIGTERM ends the process like Ctrl-C does, so the work folder is removed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        demo = launch(config, args.host, args.port, block=False, jobs=jobs)
        logger.info("glidekit serve: running on http://%s:%d", args.host, args.port)
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        logger.info("removed the work folder %s", workdir)
