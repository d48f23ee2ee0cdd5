"""The Gradio app: a Generate tab and a paint-to-inpaint tab over :class:`~glidekit.web.jobs.Jobs`.

:func:`build_app` makes the ``gr.Blocks`` (all state lives in it: no module globals);
:func:`launch` queues and serves it. Both jobs run in one concurrency group, one at a time
(one device), behind a bounded queue; a waiting browser sees its place in the queue, and a
request arriving when the queue is full is told the server is busy.

Programmatic use (``gradio_client``): ``api_name="generate"`` takes (prompt, num_images,
guidance_scale, steps, sampler, seed, random_seed, upsample) and ``api_name="inpaint"`` takes
(image, mask, prompt, num_images, guidance_scale, steps, sampler, seed, random_seed, upsample)
with the image and mask as uploaded files (``gradio_client.handle_file``).
"""

import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from glidekit.pipelines import available_samplers
from glidekit.web.jobs import SETTINGS as SETTING_NAMES
from glidekit.web.jobs import (
    CancelFlags,
    InputError,
    JobCancelled,
    JobResult,
    Jobs,
    WebConfig,
    binary_mask,
    mask_from_layers,
    open_image,
    step_callback,
    upload_path,
)

logger = logging.getLogger(__name__)

DEVICE_GROUP = "device"  # the concurrency group every sampling job runs in

#: The settings every job takes after its prompt, with their types: the page's controls and the
#: API endpoints' last arguments, in this order.
SETTINGS: dict[str, Any] = dict(
    zip(SETTING_NAMES, (float, float, str, str, float | None, bool, bool, str), strict=True)
)

#: A job's results on the page: the gallery ((PNG, caption) pairs), the seed used, the PNGs.
Outputs = tuple[list[tuple[str, str]], int | None, list[str]]

_CSS = """
#glidekit-models { font-size: 0.9em; }
"""


def prepare_environment(config: WebConfig) -> None:
    """Point Gradio's upload folder into ``config.workdir`` and switch its analytics off.

    Gradio reads these from the environment; call this before ``import gradio`` (``glidekit
    serve`` does) so that every file it writes lands in the work folder.
    """
    config.uploads_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(config.uploads_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def build_app(config: WebConfig, jobs: Jobs | None = None) -> Any:
    """The web app (a ``gr.Blocks``) for ``config``; ``jobs``: reuse already built pipelines."""
    prepare_environment(config)
    # gradio is optional (the ``web`` extra) and reads GRADIO_TEMP_DIR when imported: so it is
    # imported here, after prepare_environment, never at module level.
    import gradio as gr

    return _App(config, jobs or Jobs(config), gr).build()


class _App:
    """Builds one ``gr.Blocks``: the page's parts, and the job handlers behind its buttons.

    ``gr`` is the gradio module (imported by :func:`build_app`); ``cancels`` holds one cancel
    flag per browser session, set by that session's Cancel buttons.
    """

    def __init__(self, config: WebConfig, jobs: Jobs, gr: Any) -> None:
        self.config = config
        self.jobs = jobs
        self.limits = config.limits
        self.gr = gr
        self.roots = [Path(config.workdir)]
        self.samplers = available_samplers()
        self.cancels = CancelFlags()

    # ------------------------------------------------------------------ the page
    def build(self) -> Any:
        """The ``gr.Blocks``: a header, the models and limits, then the two tabs."""
        gr, config = self.gr, self.config
        with gr.Blocks(title=config.title, delete_cache=(600, int(config.output_ttl_s))) as demo:
            gr.Markdown(
                f"# {config.title}\nText-guided diffusion (GLIDE, arXiv 2112.10741). "
                "Jobs run one at a time; when others are waiting you see your place in the queue."
            )
            gr.Markdown(self.jobs.describe(), elem_id="glidekit-models")
            with gr.Tabs():
                with gr.Tab("Generate", id="generate"):
                    self._generate_tab()
                with gr.Tab("Inpaint", id="inpaint"):
                    self._inpaint_tab()
        return demo

    def _generate_tab(self) -> None:
        """Prompt and settings on the left, results on the right; the ``generate`` endpoint."""
        gr = self.gr
        with gr.Row():
            with gr.Column():
                prompt = self._prompt("gen", "an oil painting of a corgi")
                controls = self._controls("generate")
                run, stop = self._buttons("gen", "Generate")
            with gr.Column():
                outputs = self._results("gen")
        event = self._on_click(run, self.generate, [prompt, *controls], outputs,
                               api_name="generate")  # fmt: skip
        self._cancel_on(stop, event)

    def _inpaint_tab(self) -> None:
        """An image editor (paint the region to replace) and/or an uploaded mask, settings on
        the left, the source and mask as the model saw them and the results on the right; a
        hidden row holds the ``inpaint`` endpoint's file inputs."""
        gr = self.gr
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    label="Image: upload, then paint the region to replace",
                    type="filepath",
                    sources=["upload"],
                    image_mode="RGBA",
                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                    transforms=(),
                    layers=False,
                    elem_id="inp-editor",
                )
                mask = gr.Image(
                    label="Or upload a mask (white = replace; same size as the image)",
                    type="filepath",
                    sources=["upload"],
                    elem_id="inp-mask",
                )
                prompt = self._prompt("inp", "a corgi wearing a hat")
                controls = self._controls("inpaint")
                run, stop = self._buttons("inp", "Inpaint")
            with gr.Column():
                with gr.Row():
                    source = gr.Image(label="Source", interactive=False, format="png", height=220,
                                      elem_id="inp-source")  # fmt: skip
                    mask_out = gr.Image(label="Mask", interactive=False, format="png", height=220,
                                        elem_id="inp-mask-out")  # fmt: skip
                outputs = [source, mask_out, *self._results("inp")]
        event = self._on_click(run, self.inpaint_page, [editor, mask, prompt, *controls],
                               outputs, api_visibility="private")  # fmt: skip
        self._cancel_on(stop, event)

        # The API endpoint: plain uploaded files instead of the editor's layers.
        with gr.Row(visible=False):
            image_file = gr.File(label="image", type="filepath", file_types=None)
            mask_file = gr.File(label="mask", type="filepath", file_types=None)
            api_run = gr.Button("inpaint (API)")
        self._on_click(api_run, self.inpaint_api, [image_file, mask_file, prompt, *controls],
                       outputs, api_name="inpaint")  # fmt: skip

    def _prompt(self, prefix: str, placeholder: str) -> Any:
        """The prompt box (at most ``max_prompt_chars``), elem_id ``<prefix>-prompt``."""
        return self.gr.Textbox(
            label="Prompt", placeholder=placeholder, max_lines=3,
            max_length=self.limits.max_prompt_chars, elem_id=f"{prefix}-prompt",
        )  # fmt: skip

    def _controls(self, job: str) -> list[Any]:
        """The :data:`SETTINGS` widgets for ``job`` (generate, inpaint), in that order."""
        gr, lim, jobs = self.gr, self.limits, self.jobs
        with gr.Row():
            num = gr.Slider(1, lim.max_images, value=1, step=1, label="Number of images")
            scale = gr.Slider(0.0, min(lim.max_guidance, 20.0),
                              value=jobs.default(job, "guidance_scale"), step=0.5,
                              label="Guidance scale")  # fmt: skip
        with gr.Row():
            steps = gr.Textbox(
                value=jobs.default(job, "steps"),
                label="Steps",
                info=f"a count or a respacing (50, ddim50, karras25); at most {lim.max_steps}",
                max_lines=1,
                max_length=64,
            )
            sampler = gr.Dropdown(self.samplers, value=jobs.default(job, "sampler"),
                                  label="Sampler")  # fmt: skip
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed")
            random_seed = gr.Checkbox(value=True, label="Random seed")
            upsample = gr.Checkbox(value=True, label="Upsample (second stage)")
        with gr.Accordion("More settings", open=False):  # the page keeps its height
            lo_hi = jobs.default(job, "guidance_interval")
            interval = gr.Textbox(value=",".join(f"{v:g}" for v in lo_hi) if lo_hi else "",
                                  label="Guidance interval", max_lines=1,
                                  max_length=32, info="classifier-free guidance only for t/T in "
                                  "LO,HI (e.g. 0.3,1); empty: every step")  # fmt: skip
        return [num, scale, steps, sampler, seed, random_seed, upsample, interval]

    def _buttons(self, prefix: str, label: str) -> tuple[Any, Any]:
        """The run and Cancel buttons, side by side."""
        gr = self.gr
        with gr.Row():
            run = gr.Button(label, variant="primary", elem_id=f"{prefix}-run")
            stop = gr.Button("Cancel", variant="stop", elem_id=f"{prefix}-cancel")
        return run, stop

    def _results(self, prefix: str) -> list[Any]:
        """The widgets for :data:`Outputs`: gallery, seed used, PNG files."""
        gr = self.gr
        gallery = gr.Gallery(label="Results", format="png", columns=2,
                             elem_id=f"{prefix}-gallery", interactive=False)  # fmt: skip
        seed = gr.Number(label="Seed used", precision=0, interactive=False,
                         elem_id=f"{prefix}-seed")  # fmt: skip
        files = gr.File(label="PNG files (with parameters)", file_count="multiple",
                        interactive=False, elem_id=f"{prefix}-files")  # fmt: skip
        return [gallery, seed, files]

    # ------------------------------------------------------------------ events
    def _on_click(self, button: Any, handler: Callable[..., Any], inputs: list[Any],
                  outputs: list[Any], **kwargs: Any) -> Any:  # fmt: skip
        """Run ``handler`` (as :meth:`_endpoint` makes it) on a click, in the device's
        concurrency group, with its progress shown on the results gallery."""
        gallery = next(o for o in outputs if isinstance(o, self.gr.Gallery))
        return button.click(
            self._endpoint(handler),
            inputs,
            outputs,
            **kwargs,
            show_progress_on=gallery,
            concurrency_id=DEVICE_GROUP,
            concurrency_limit=1,
        )

    def _endpoint(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler(*inputs, *settings, request=, progress=)`` as Gradio calls it, turning
        unexpected failures into a short message for the user (details in the log).

        Gradio reads the API's argument names from the function's signature (here the
        handler's own positional parameters, then the :data:`SETTINGS`), and passes the request
        and the progress tracker only to parameters annotated ``gr.Request`` and defaulting to
        ``gr.Progress()``: so the signature is made here, where gradio is imported.
        """
        gr = self.gr
        plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
        own = [p for p in inspect.signature(handler).parameters.values() if p.kind == plain]
        signature = inspect.Signature(
            [*own, *(inspect.Parameter(name, plain, annotation=kind)
                     for name, kind in SETTINGS.items()),
             inspect.Parameter("request", plain, annotation=gr.Request),
             inspect.Parameter("progress", plain, annotation=Any, default=gr.Progress())],
            return_annotation=inspect.signature(handler).return_annotation,
        )  # fmt: skip

        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            *inputs, request, progress = bound.arguments.values()
            try:
                return handler(*inputs, request=request, progress=progress)
            except gr.Error:
                raise
            except Exception as exc:
                logger.exception("job failed")
                raise gr.Error(
                    f"The server could not run this job ({type(exc).__name__}); "
                    "the details are in the server log.",
                    title="Server error",
                ) from None

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()
                               if p.annotation is not p.empty}  # fmt: skip
        run.__annotations__["return"] = signature.return_annotation
        return run

    def _cancel_on(self, button: Any, event: Any) -> None:
        """``button`` cancels ``event`` (queued or running) and stops the session's sampling."""
        button.click(self._cancel, cancels=[event], api_visibility="private")

    @functools.cached_property
    def _cancel(self) -> Callable[[Any], None]:
        """The Cancel buttons' handler: sets the session's cancel flag. One function for all the
        buttons (Gradio queues a handler's calls by the function's identity); made here, where
        gradio is imported, since Gradio passes the request by the ``gr.Request`` annotation."""
        gr = self.gr

        def cancel(request: gr.Request) -> None:
            if request and request.session_hash:
                self.cancels.cancel(request.session_hash)

        return cancel

    def _live(self, request: Any, progress: Any) -> Callable[[str, int, int], None]:
        """Per-step progress for the page, and the stop for this session's Cancel button."""
        session = request.session_hash if request else None
        flag = self.cancels.start(session) if session else None

        def report(stage: str, step: int, total: int) -> None:
            progress((step, total), desc=f"{stage}", unit="steps")

        return step_callback(flag, report)

    def _refuse(self, message: str) -> Exception:
        return self.gr.Error(message, title="Request refused")

    # ------------------------------------------------------------------ jobs
    def generate(self, prompt: str, *settings: Any, request: Any, progress: Any) -> Outputs:
        """Text to image: a gallery of PNGs (with their parameters), the seed used, the files."""
        progress(0, desc="Starting")
        try:
            result = self.jobs.generate(prompt, *settings,
                                        status=lambda text: progress(0, desc=text),
                                        callback=self._live(request, progress))  # fmt: skip
        except InputError as exc:
            raise self._refuse(str(exc)) from None
        except JobCancelled:
            return [], None, []
        return _outputs(result)

    def inpaint_page(self, editor: dict | None, mask: str | None, prompt: str, *settings: Any,
                     request: Any, progress: Any) -> tuple:  # fmt: skip
        """Inpainting from the editor: its background, the painted layers and/or a mask."""
        progress(0, desc="Starting")
        editor = editor or {}
        background = editor.get("background")
        if not background:
            raise self._refuse("Image: please upload a picture first.")
        painted = [p for p in (editor.get("layers") or []) if p]
        return self._inpaint(background, mask, painted, prompt, settings, request, progress)

    def inpaint_api(self, image: str | None, mask: str | None, prompt: str, *settings: Any,
                    request: Any, progress: Any) -> tuple:  # fmt: skip
        """Inpainting from files: the image and a mask (white = replace, same size)."""
        progress(0, desc="Starting")
        if not image:
            raise self._refuse("Image: please upload a picture.")
        if not mask:
            raise self._refuse("Mask: please upload a mask (white = replace).")
        return self._inpaint(image, mask, [], prompt, settings, request, progress)

    def _inpaint(self, image: Any, mask: Any, painted: list[Any], prompt: str,
                 settings: Sequence[Any], request: Any, progress: Any) -> tuple:  # fmt: skip
        """Inpaint ``image`` where the ``painted`` brush layers and/or the uploaded ``mask``
        are: (source as the model saw it, mask, *:data:`Outputs`)."""
        callback = self._live(request, progress)
        try:
            picture = self._open(image, "Image")
            layers = [self._open(p, "Brush layer") for p in painted]
            brush = mask_from_layers(layers, picture.size) if layers else None
            uploaded = self._open(mask, "Mask") if mask else None
            if uploaded is not None and uploaded.size != picture.size:
                raise InputError(
                    f"Mask size {uploaded.size[0]}x{uploaded.size[1]} does not match the image "
                    f"size {picture.size[0]}x{picture.size[1]}."
                )
            result = self.jobs.inpaint(picture, _union(brush, uploaded), prompt, *settings,
                                       status=lambda text: progress(0, desc=text),
                                       callback=callback)  # fmt: skip
        except InputError as exc:
            raise self._refuse(str(exc)) from None
        except JobCancelled:
            return None, None, [], None, []
        return str(result.source), str(result.mask), *_outputs(result)

    def _open(self, value: Any, name: str) -> Image.Image:
        """An uploaded picture (a path in the work folder), decoded and checked."""
        return open_image(upload_path(value, self.roots, name), self.limits, name)


def _outputs(result: JobResult) -> Outputs:
    """A finished job's :data:`Outputs` (each PNG captioned with its seed and index)."""
    gallery = [(str(p), f"seed {result.seed} #{i}") for i, p in enumerate(result.paths)]
    return gallery, result.seed, [str(p) for p in result.paths]


def _union(a: Image.Image | None, b: Image.Image | None) -> Image.Image | None:
    """Union of two "L" masks (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return ImageChops.lighter(binary_mask(a), binary_mask(b))


def launch(
    config: WebConfig,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    block: bool = True,
    jobs: Jobs | None = None,
) -> Any:
    """Build, queue and serve the app; returns the ``gr.Blocks`` (serving in the background
    when ``block`` is False; call ``.close()`` to stop)."""
    demo = build_app(config, jobs)
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    logger.info("serving on http://%s:%d (work folder %s)", host, port, config.workdir)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=config.limits.max_upload_bytes,
        show_error=False,  # gr.Error messages are shown; other failures are logged
        prevent_thread_lock=not block,
        allowed_paths=[str(config.outputs_dir)],
        quiet=True,
        css=_CSS,
        footer_links=["api"],
        ssr_mode=False,
        mcp_server=False,
    )
    return demo
