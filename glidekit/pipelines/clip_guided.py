"""CLIP-guided text to image: the base model steered by the noise-aware CLIP's gradient.

As in the official clip_guided notebook: no classifier-free guidance; at each base step the
gradient of the CLIP similarity between x_t and the prompt, times ``guidance_scale`` (3.0),
shifts the mean (ancestral) or the noise estimate (DDIM). The upsampler then runs as usual.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from glidekit.pipelines.common import (
    RELEASED_CLIP,
    ModelSource,
    PipelineResult,
    check_count,
    check_number,
    check_prompts,
    check_seed,
    get_sampler,
    respacing_spelling,
)
from glidekit.pipelines.engine import (
    _DEFAULT,
    GlidePipeline,
    Stage,
    StepCallback,
    upsample_stage_args,
)
from glidekit.pipelines.text2image import Text2ImagePipeline, expand_prompts

CLIP_FILE_FORMAT = "glide-clip/1"  # both towers in one file (glidekit.train.save_clip)
_TOWERS = (("image_encoder", "clip/image-enc", "clip_image_enc"),
           ("text_encoder", "clip/text-enc", "clip_text_enc"))  # fmt: skip


def _clip_file_metadata(source: Any) -> dict[str, str] | None:
    """The safetensors metadata of a local CLIP file, or None (a released name, a .pt, ...)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from glidekit.tensorfile import read_header

    try:
        return read_header(path).metadata
    except Exception:  # unreadable: load_into reports it properly
        return None


def load_clip_pair(sources: tuple[Any, Any], tokenizer: Any = None, cache_dir: Any = None):
    """A NoisedCLIP from (image encoder, text encoder) sources.

    Each source is a released name (``clip/image-enc``, ``clip/text-enc``), a checkpoint file
    of that tower (``.pt`` or ``.safetensors``), or a glidekit CLIP file: a ``.safetensors``
    carrying its :class:`~glidekit.clip.CLIPConfig` as JSON under the metadata key
    ``glidekit.clip_config`` (a tower, or both towers as ``glidekit.train.save_clip`` writes;
    passing such a file for both gives the whole model). Files without a config are of the
    released architecture.
    """
    from glidekit.checkpoints import load_into
    from glidekit.clip import CLIPConfig, create_clip_model

    metas = [_clip_file_metadata(s) for s in sources]
    configs = []
    for (_, _, arg), meta in zip(_TOWERS, metas, strict=True):
        raw = (meta or {}).get("glidekit.clip_config")
        if raw is None:
            configs.append(None)
            continue
        try:
            configs.append(CLIPConfig.from_dict(json.loads(raw)))
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{arg}: the file's glidekit.clip_config is not valid ({exc})"
            ) from None
        tok = json.loads((meta or {}).get("glidekit.tokenizer") or "{}")
        if tok.get("type", "clip") == "shapes" and tokenizer is None:
            # A shapes-world CLIP reads its own word vocabulary (shipped in the file).
            from glidekit.data.shapes import ShapesClipTokenizer, ShapesTokenizer

            tokenizer = ShapesClipTokenizer(ShapesTokenizer.from_dict(tok["data"]))
        elif tok.get("type", "clip") not in ("clip", "shapes"):
            raise ValueError(
                f"{arg}: this CLIP was trained with the {tok['type']!r} tokenizer, which "
                "glidekit cannot rebuild; CLIP guidance from prompts needs its tokenizer"
            )
    known = [c for c in configs if c is not None]
    if len(known) == 2 and known[0] != known[1]:
        raise ValueError("clip: the image and text encoder files are of different CLIP configs")
    model = create_clip_model(known[0] if known else None, tokenizer=tokenizer)
    for (attr, released, arg), src, meta in zip(_TOWERS, sources, metas, strict=True):
        tower = getattr(model, attr)
        if meta is not None and meta.get("glidekit.format") == CLIP_FILE_FORMAT:
            from glidekit.tensorfile import iter_tensors

            prefix = f"{attr}."
            state = {k[len(prefix) :]: v for k, v in iter_tensors(src) if k.startswith(prefix)}
            try:
                tower.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(
                    f"{arg}: {str(src)!r} does not fit its own config ({exc})"
                ) from None
            continue
        try:
            load_into(tower, src, checkpoint=None if meta is not None else released,
                      cache_dir=cache_dir)  # fmt: skip
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{arg}: {exc}") from None
        except Exception as exc:
            if isinstance(exc, (ValueError, TypeError)) or type(exc).__name__ == "CheckpointError":
                raise ValueError(f"{arg}: {exc}") from None
            raise
    return model


class ClipSlot:
    """A noise-aware CLIP for guidance, loaded on first use (as the pipelines' model slots).

    ``source``: a :class:`glidekit.clip.NoisedCLIP` (used as is), a CLIP file written by
    ``glidekit train`` (both towers, its config and vocabulary: a shapes-world CLIP reads its
    own words), or an ``(image_encoder, text_encoder)`` pair of released names or checkpoint
    paths loaded into the released architecture (None: the released towers). ``tokenizer``:
    path of the CLIP BPE merges file if it is not in the glidekit cache.
    """

    def __init__(
        self,
        source: Any = None,
        tokenizer: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.source = source if source is not None else RELEASED_CLIP
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self._model = None

    @property
    def label(self) -> str:
        """How the CLIP is named in a result's params."""
        src = self.source
        if isinstance(src, tuple):
            return ",".join(str(s) for s in src)
        if isinstance(src, (str, os.PathLike)):
            return str(src)
        return "custom"

    def get(self, device: torch.device):
        """The noise-aware CLIP on ``device`` (float32, eval mode)."""
        if self._model is None:
            from glidekit.clip import NoisedCLIP

            src = self.source
            if isinstance(src, NoisedCLIP):
                model = src
            elif isinstance(src, tuple) and len(src) == 2:
                model = load_clip_pair(src, self.tokenizer, self.cache_dir)
            elif isinstance(src, (str, os.PathLike)):  # one file with both towers
                model = load_clip_pair((src, src), self.tokenizer, self.cache_dir)
            else:
                raise TypeError(
                    "clip must be a NoisedCLIP, a CLIP file written by glidekit train, or an "
                    "(image encoder, text encoder) pair of "
                    f"names/paths, got {type(src).__name__}"
                )
            self._model = model.to(device).float().eval()
        return self._model

    def cond_fn(self, device: torch.device, rows: list[str], scale: float, image_size: int):
        """The CLIP-guidance function for ``rows`` (see :meth:`NoisedCLIP.cond_fn`), after
        checking that the CLIP sees the base model's ``image_size``."""
        clip = self.get(device)
        if clip.config.image_size != image_size:
            raise ValueError(
                f"clip: the CLIP model sees {clip.config.image_size}x{clip.config.image_size} "
                f"images but the base model makes {image_size}x{image_size}"
            )
        return clip.cond_fn(rows, scale)  # the text embeddings are computed there, once


class ClipGuidable(GlidePipeline):
    """A pipeline whose base stage the noise-aware CLIP can steer (text to image, inpainting).

    ``clip``: anything :class:`ClipSlot` takes (default: the released towers), loaded on first
    use. ``clip_tokenizer``: path of the CLIP BPE merges file if it is not in the glidekit
    cache.
    """

    def __init__(
        self,
        base: ModelSource | None = None,
        upsampler: ModelSource | None = None,
        *,
        clip: Any = RELEASED_CLIP,
        clip_tokenizer: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base, upsampler, **kwargs)
        self.clip_slot = ClipSlot(clip, clip_tokenizer, kwargs.get("cache_dir"))

    @classmethod
    def from_pretrained(cls, base=None, upsampler=_DEFAULT, clip=None, **kwargs: Any):  # type: ignore[override]
        """As :meth:`GlidePipeline.from_pretrained`; ``clip`` defaults to the package's CLIP
        (``glidekit.models.default_clip()``) if it ships one, else the released towers."""
        from glidekit.pipelines.common import default_source

        clip = default_source("clip") if clip is None else clip
        return super().from_pretrained(base, upsampler, clip=clip, **kwargs)

    @property
    def clip_label(self) -> str:
        return self.clip_slot.label

    @property
    def clip(self):
        """The noise-aware CLIP, on the pipeline's device (float32)."""
        return self.clip_slot.get(self.device)


class ClipGuidedPipeline(ClipGuidable):
    """Text to image guided by GLIDE's noise-aware CLIP (see :class:`ClipGuidable` for
    ``clip``)."""

    pipeline_name = "clip-guided"

    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images: int = 1,
        guidance_scale: float = 3.0,
        seed: int | None = None,
        steps: int | str = 100,
        sampler: str = "ancestral",
        sampler_options: dict[str, Any] | None = None,
        upsample: bool = True,
        upsample_steps: int | str = "fast27",
        upsample_sampler: str = "ddim",
        upsample_temp: float = 0.997,
        upsample_sampler_options: dict[str, Any] | None = None,
        progress: bool = False,
        callback: StepCallback | None = None,
    ) -> PipelineResult:
        """Like :class:`Text2ImagePipeline`, with ``guidance_scale`` scaling the CLIP gradient."""
        prompts = check_prompts(prompt)
        num_images = check_count(num_images, "num_images")
        guidance_scale = check_number(guidance_scale, "guidance_scale")
        seed = check_seed(seed)
        steps = respacing_spelling(steps, "steps")
        get_sampler(sampler, "sampler")
        up = upsample_stage_args(
            upsample_steps, upsample_sampler, upsample_temp, upsample_sampler_options
        )
        upsample = bool(upsample) and self.upsampler_slot is not None
        rows = expand_prompts(prompts, num_images)
        base_size = self.base.model.config.image_size
        cond_fn = self.clip_slot.cond_fn(self.device, rows, guidance_scale, base_size)
        base_stage = Stage(steps, sampler, dict(sampler_options or {}), None, cond_fn=cond_fn)
        up_stage = Text2ImagePipeline._up_stage(up) if upsample else None
        return self._run(
            rows,
            seed=seed,
            base_stage=base_stage,
            up_stage=up_stage,
            progress=progress,
            callback=callback,
            num_images=num_images,
            guidance="clip",
            guidance_scale=guidance_scale,
            clip=self.clip_label,
            steps=steps,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            upsampled=upsample,
            **(up if upsample else {}),
        )
