"""Noise-aware CLIP for CLIP-guided GLIDE sampling.

``create_clip_model()`` builds the released architecture; load ``clip_image_enc.pt`` /
``clip_text_enc.pt`` into ``.image_encoder`` / ``.text_encoder`` and pass
``model.cond_fn(prompts, grad_scale)`` to a sampler.
"""

from .config import CLIPConfig
from .model import (
    CondFn,
    ImageEncoder,
    NoisedCLIP,
    TextEncoder,
    create_clip_model,
)
from .tokenizer import ClipTokenizer, default_cache_dir, default_vocab_path

__all__ = [
    "CLIPConfig",
    "ClipTokenizer",
    "CondFn",
    "ImageEncoder",
    "NoisedCLIP",
    "TextEncoder",
    "create_clip_model",
    "default_cache_dir",
    "default_vocab_path",
]
