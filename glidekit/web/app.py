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
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glidekit.web.jobs import (
    CancelFlags,
    InputError,
    JobCancelled,
    JobResult,
    Jobs,
    WebConfig,
    mask_from_layers,
    open_image,
    step_callback,
    upload_path,
)

logger = logging.getLogger(__name__)

DEVICE_GROUP = "device"  # the concurrency group every sampling job runs in

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
    import gradio as gr

    from glidekit.pipelines import available_samplers

    jobs = jobs or Jobs(config)
    lim = config.limits
    roots = [Path(config.workdir)]
    samplers = available_samplers()

    def refuse(exc: Exception) -> gr.Error:
        return gr.Error(str(exc), title="Request refused")

    def guarded(fn: Any) -> Any:
        """Turn unexpected failures into a short message for the user (details in the log)."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                logger.exception("job failed")
                raise gr.Error(
                    f"The server could not run this job ({type(exc).__name__}); "
                    "the details are in the server log.",
                    title="Server error",
                ) from None

        return run

    def image_upload(value: Any, name: str):
        return open_image(upload_path(value, roots, name), lim, name)

    def outputs(result: JobResult) -> tuple[list[tuple[str, str]], int, list[str]]:
        gallery = [(str(p), f"seed {result.seed} #{i}") for i, p in enumerate(result.paths)]
        return gallery, result.seed, [str(p) for p in result.paths]

    cancels = CancelFlags()

    def live(request: gr.Request | None, progress: Any) -> Callable[[str, int, int], None]:
        """Per-step progress for the page, and the stop for this session's Cancel button."""
        flag = cancels.start(request.session_hash) if request and request.session_hash else None

        def report(stage: str, step: int, total: int) -> None:
            progress((step, total), desc=f"{stage}", unit="steps")

        return step_callback(flag, report)

    def cancel(request: gr.Request) -> None:
        if request and request.session_hash:
            cancels.cancel(request.session_hash)

    def generate(
        prompt: str,
        num_images: float,
        guidance_scale: float,
        steps: str,
        sampler: str,
        seed: float | None,
        random_seed: bool,
        upsample: bool,
        request: gr.Request,
        progress: Any = gr.Progress(),  # noqa: B008 (gradio's idiom)
    ) -> tuple[list[tuple[str, str]], int, list[str]]:
        """Text to image: a gallery of PNGs (with their parameters), the seed used, the files."""
        progress(0, desc="Starting")
        try:
            result = jobs.generate(
                prompt, num_images, guidance_scale, steps, sampler, seed, random_seed, upsample,
                status=lambda text: progress(0, desc=text), callback=live(request, progress),
            )  # fmt: skip
        except InputError as exc:
            raise refuse(exc) from None
        except JobCancelled:
            return [], None, []
        return outputs(result)

    def run_inpaint(image: Any, mask: Any, painted: list[Any], prompt: str, *rest: Any,
                    status: Any = None, callback: Any = None) -> tuple:  # fmt: skip
        try:
            picture = image_upload(image, "Image")
            layers = [image_upload(p, "Brush layer") for p in painted]
            brush = mask_from_layers(layers, picture.size) if layers else None
            uploaded = image_upload(mask, "Mask") if mask else None
            if uploaded is not None and uploaded.size != picture.size:
                raise InputError(
                    f"Mask size {uploaded.size[0]}x{uploaded.size[1]} does not match the image "
                    f"size {picture.size[0]}x{picture.size[1]}."
                )
            combined = _union(brush, uploaded)
            result = jobs.inpaint(
                picture, combined, prompt, *rest, status=status, callback=callback
            )
        except InputError as exc:
            raise refuse(exc) from None
        except JobCancelled:
            return None, None, [], None, []
        gallery, seed, files = outputs(result)
        return str(result.source), str(result.mask), gallery, seed, files

    def inpaint_page(
        editor: dict | None,
        mask: str | None,
        prompt: str,
        num_images: float,
        guidance_scale: float,
        steps: str,
        sampler: str,
        seed: float | None,
        random_seed: bool,
        upsample: bool,
        request: gr.Request,
        progress: Any = gr.Progress(),  # noqa: B008
    ) -> tuple:
        """Inpainting from the editor: its background, the painted layers and/or a mask."""
        progress(0, desc="Starting")
        editor = editor or {}
        background = editor.get("background")
        if not background:
            raise gr.Error("Image: please upload a picture first.", title="Request refused")
        painted = [p for p in (editor.get("layers") or []) if p]
        return run_inpaint(background, mask, painted, prompt, num_images, guidance_scale, steps,
                           sampler, seed, random_seed, upsample,
                           status=lambda text: progress(0, desc=text),
                           callback=live(request, progress))  # fmt: skip

    def inpaint_api(
        image: str | None,
        mask: str | None,
        prompt: str,
        num_images: float,
        guidance_scale: float,
        steps: str,
        sampler: str,
        seed: float | None,
        random_seed: bool,
        upsample: bool,
        request: gr.Request,
        progress: Any = gr.Progress(),  # noqa: B008
    ) -> tuple:
        """Inpainting from files: the image and a mask (white = replace, same size)."""
        progress(0, desc="Starting")
        if not image:
            raise gr.Error("Image: please upload a picture.", title="Request refused")
        if not mask:
            raise gr.Error("Mask: please upload a mask (white = replace).", title="Request refused")
        return run_inpaint(image, mask, [], prompt, num_images, guidance_scale, steps, sampler,
                           seed, random_seed, upsample,
                           status=lambda text: progress(0, desc=text),
                           callback=live(request, progress))  # fmt: skip

    def controls(job: str) -> list[Any]:
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
            sampler = gr.Dropdown(samplers, value=config.default_sampler, label="Sampler")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed")
            random_seed = gr.Checkbox(value=True, label="Random seed")
            upsample = gr.Checkbox(value=True, label="Upsample (second stage)")
        return [num, scale, steps, sampler, seed, random_seed, upsample]

    with gr.Blocks(title=config.title, delete_cache=(600, int(config.output_ttl_s))) as demo:
        gr.Markdown(
            f"# {config.title}\nText-guided diffusion (GLIDE, arXiv 2112.10741). "
            "Jobs run one at a time; when others are waiting you see your place in the queue."
        )
        gr.Markdown(jobs.describe(), elem_id="glidekit-models")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column():
                        g_prompt = gr.Textbox(
                            label="Prompt", placeholder="an oil painting of a corgi",
                            max_lines=3, max_length=lim.max_prompt_chars, elem_id="gen-prompt",
                        )  # fmt: skip
                        g_controls = controls("generate")
                        with gr.Row():
                            g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                            g_stop = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
                    with gr.Column():
                        g_gallery = gr.Gallery(label="Results", format="png", columns=2,
                                               elem_id="gen-gallery", interactive=False)  # fmt: skip
                        g_seed = gr.Number(label="Seed used", precision=0, interactive=False,
                                           elem_id="gen-seed")  # fmt: skip
                        g_files = gr.File(label="PNG files (with parameters)", file_count="multiple",
                                          interactive=False, elem_id="gen-files")  # fmt: skip
                g_event = g_run.click(
                    guarded(generate),
                    [g_prompt, *g_controls],
                    [g_gallery, g_seed, g_files],
                    api_name="generate",
                    show_progress_on=g_gallery,
                    concurrency_id=DEVICE_GROUP,
                    concurrency_limit=1,
                )
                g_stop.click(cancel, cancels=[g_event], api_visibility="private")

            with gr.Tab("Inpaint", id="inpaint"):
                with gr.Row():
                    with gr.Column():
                        i_editor = gr.ImageEditor(
                            label="Image: upload, then paint the region to replace",
                            type="filepath",
                            sources=["upload"],
                            image_mode="RGBA",
                            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                            transforms=(),
                            layers=False,
                            elem_id="inp-editor",
                        )
                        i_mask = gr.Image(
                            label="Or upload a mask (white = replace; same size as the image)",
                            type="filepath",
                            sources=["upload"],
                            elem_id="inp-mask",
                        )
                        i_prompt = gr.Textbox(
                            label="Prompt", placeholder="a corgi wearing a hat", max_lines=3,
                            max_length=lim.max_prompt_chars, elem_id="inp-prompt",
                        )  # fmt: skip
                        i_controls = controls("inpaint")
                        with gr.Row():
                            i_run = gr.Button("Inpaint", variant="primary", elem_id="inp-run")
                            i_stop = gr.Button("Cancel", variant="stop", elem_id="inp-cancel")
                    with gr.Column():
                        with gr.Row():
                            i_source = gr.Image(label="Source", interactive=False, format="png", height=220,
                                                elem_id="inp-source")  # fmt: skip
                            i_mask_out = gr.Image(label="Mask", interactive=False, format="png", height=220,
                                                  elem_id="inp-mask-out")  # fmt: skip
                        i_gallery = gr.Gallery(label="Results", format="png", columns=2,
                                               elem_id="inp-gallery", interactive=False)  # fmt: skip
                        i_seed = gr.Number(label="Seed used", precision=0, interactive=False,
                                           elem_id="inp-seed")  # fmt: skip
                        i_files = gr.File(label="PNG files (with parameters)", file_count="multiple",
                                          interactive=False, elem_id="inp-files")  # fmt: skip
                i_outputs = [i_source, i_mask_out, i_gallery, i_seed, i_files]
                i_event = i_run.click(
                    guarded(inpaint_page),
                    [i_editor, i_mask, i_prompt, *i_controls],
                    i_outputs,
                    api_visibility="private",
                    show_progress_on=i_gallery,
                    concurrency_id=DEVICE_GROUP,
                    concurrency_limit=1,
                )
                i_stop.click(cancel, cancels=[i_event], api_visibility="private")

                # The API endpoint: plain uploaded files instead of the editor's layers.
                with gr.Row(visible=False):
                    a_image = gr.File(label="image", type="filepath", file_types=None)
                    a_mask = gr.File(label="mask", type="filepath", file_types=None)
                    a_run = gr.Button("inpaint (API)")
                a_run.click(
                    guarded(inpaint_api),
                    [a_image, a_mask, i_prompt, *i_controls],
                    i_outputs,
                    api_name="inpaint",
                    show_progress_on=i_gallery,
                    concurrency_id=DEVICE_GROUP,
                    concurrency_limit=1,
                )
    return demo


def _union(a: Any, b: Any) -> Any:
    """Union of two "L" masks (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    from PIL import ImageChops

    from glidekit.web.jobs import binary_mask

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
