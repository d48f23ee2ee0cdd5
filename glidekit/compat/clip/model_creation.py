"""``glide_text2im.clip.model_creation``: the noise-aware CLIP and its guidance function.

:class:`CLIPModel` is :class:`glidekit.clip.NoisedCLIP` with the official methods
(``encode_prompts``, ``text_embeddings``, ``image_embeddings``, ``cond_fn``), its towers taking
the official call conventions (:mod:`glidekit.compat.clip.encoders`) and a
:class:`~glidekit.compat.tokenizer.simple_tokenizer.SimpleTokenizer`. One difference: ``config``
is a :class:`glidekit.clip.CLIPConfig` (the config.yaml keys are its fields) rather than a dict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import yaml

from glidekit.clip import CLIPConfig, NoisedCLIP
from glidekit.compat.clip.encoders import ImageEncoder, TextEncoder, _device
from glidekit.compat.tokenizer.simple_tokenizer import SimpleTokenizer
from glidekit.fileio import atomic_path, cache_dir
from glidekit.guidance import ClipGuidance, check_guidance_scale


def default_config_path() -> str:
    """Path of a config.yaml holding the released CLIP's options (written into glidekit's
    cache directory, ``compat/clip_config.yaml``, the first time)."""
    path = cache_dir() / "compat" / "clip_config.yaml"
    text = yaml.safe_dump(CLIPConfig().to_dict(), sort_keys=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return str(path)


class _CondFn(ClipGuidance):
    """:class:`glidekit.guidance.ClipGuidance` taking the official per-call ``grad_scale``."""

    def __call__(  # type: ignore[override]
        self, x: torch.Tensor, t: torch.Tensor, grad_scale: float | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if grad_scale is None:
            return super().__call__(x, t, **kwargs)
        default = self.grad_scale
        self.grad_scale = check_guidance_scale(grad_scale, "grad_scale")
        try:
            return super().__call__(x, t, **kwargs)
        finally:
            self.grad_scale = default


class CLIPModel(NoisedCLIP):
    """The noise-aware CLIP (arguments as :class:`glidekit.clip.NoisedCLIP`): ``text_encoder``,
    ``image_encoder``, ``logit_scale``, ``device``, ``tokenizer``, ``config``."""

    def __init__(
        self,
        config: CLIPConfig | None = None,
        device: torch.device | str | None = None,
        tokenizer: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(config, device=device, tokenizer=tokenizer, dtype=dtype)
        # The same towers (parameters, keys and state) with the official call conventions.
        self.image_encoder.__class__ = ImageEncoder
        self.text_encoder.__class__ = TextEncoder

    @property
    def tokenizer(self) -> SimpleTokenizer:
        """The CLIP tokenizer (:class:`SimpleTokenizer`, loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = SimpleTokenizer()
        elif isinstance(self._tokenizer, (str, os.PathLike)):
            self._tokenizer = SimpleTokenizer(self._tokenizer)
        return self._tokenizer

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, max_text_len) int64, lens (B,) int64) on the model's device."""
        return self.tokenize(prompts)

    def cond_fn(self, prompts: Sequence[str], grad_scale: float) -> _CondFn:
        """CLIP guidance towards ``prompts`` for a sampler: ``cond_fn(x, t, grad_scale=...,
        **model_kwargs)`` -> grad_scale * d/dx of exp(logit_scale) * <z_text, z_image(x, t)>
        (x (B, 3, S, S) in [-1, 1], t (B,) original steps; text embedded once, here)."""
        return _CondFn(self, prompts, grad_scale)


#: glidekit.compat's earlier name for :class:`CLIPModel`.
OfficialCLIP = CLIPModel


def create_clip_model(
    config_path: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    tokenizer: SimpleTokenizer | None = None,
) -> CLIPModel:
    """The noise-aware CLIP, randomly initialised, in eval mode: load ``clip_image_enc.pt`` /
    ``clip_text_enc.pt`` into ``.image_encoder`` / ``.text_encoder``.

    ``config_path``: a config.yaml (or JSON) with the CLIP options; None gives the released
    model's. ``device``: default CUDA where available, else the CPU (``"meta"`` allocates
    nothing). ``tokenizer``: default a :class:`SimpleTokenizer`.
    """
    config = None
    if config_path is not None:
        with open(config_path, encoding="utf-8") as f:
            config = CLIPConfig.from_dict(yaml.safe_load(f))
    return CLIPModel(config, device=_device(device), tokenizer=tokenizer).eval()


__all__ = ["CLIPModel", "OfficialCLIP", "create_clip_model", "default_config_path"]
