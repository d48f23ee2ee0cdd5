"""Noise-aware CLIP for CLIP-guided GLIDE sampling.

``create_clip_model()`` builds the released architecture; load ``clip_image_enc.pt`` /
``clip_text_enc.pt`` into ``.image_encoder`` / ``.text_encoder`` and pass
``glidekit.guidance.clip_cond_fn(model, prompts, grad_scale)`` to a sampler. The CLIP tokenizer
lives in :mod:`glidekit.tokenizer.clip` (re-exported here).

Layer: below ``glidekit.guidance``, ``glidekit.checkpoints`` and ``glidekit.pipelines``, beside
``glidekit.diffusion`` and ``glidekit.data``; imports only ``glidekit.nn`` (shared layers),
``glidekit.tokenizer`` and the utilities.
"""

from glidekit.clip.config import CLIPConfig
from glidekit.clip.model import ImageEncoder, NoisedCLIP, TextEncoder, create_clip_model
from glidekit.tokenizer.clip import ClipTokenizer, default_cache_dir, default_vocab_path

__all__ = [
    "CLIPConfig",
    "ClipTokenizer",
    "ImageEncoder",
    "NoisedCLIP",
    "TextEncoder",
    "create_clip_model",
    "default_cache_dir",
    "default_vocab_path",
]
