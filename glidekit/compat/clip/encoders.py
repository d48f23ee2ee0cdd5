"""``glide_text2im.clip.encoders``: the noise-aware CLIP's two towers.

:class:`TextEncoder` and :class:`ImageEncoder` take the official constructor arguments and call
conventions (images in [0, 255]) and are glidekit's towers (:mod:`glidekit.clip.model`; same
state-dict keys, so ``clip_text_enc.pt`` / ``clip_image_enc.pt`` load strictly). The official
building blocks (embeddings, resblocks, feature extractors) are not served: glidekit's are in
:mod:`glidekit.clip.model`.
"""

from __future__ import annotations

import torch
from torch import nn

from glidekit.clip import CLIPConfig
from glidekit.clip.model import ImageEncoder as _ImageTower
from glidekit.clip.model import TextEncoder as _TextTower
from glidekit.compat._unserved import NotServedError, unserved_class

_BLOCKS = (
    "use glidekit.clip.create_clip_model(CLIPConfig(...)) and its .text_encoder / "
    ".image_encoder (their blocks are in glidekit.clip.model)"
)


def _device(device: torch.device | str | None) -> torch.device:
    # Officially CUDA by default; here CUDA where there is one, else the CPU.
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoder(_TextTower):
    """CLIP text tower: ``forward(text, text_len)`` with ``text`` (B, L <= max_text_len) int64
    ids and ``text_len`` (B,) real lengths (start and end tokens included) -> (B, n_embd)
    unnormalised features; ``return_probe_features=True`` gives the (B, n_state) features
    before the output LayerNorm and projection."""

    def __init__(
        self,
        n_bpe_vocab: int,
        max_text_len: int,
        n_embd: int,
        n_head: int,
        n_xf_blocks: int,
        n_head_state: int = 64,
        device: torch.device | str | None = None,
    ) -> None:
        config = CLIPConfig(
            n_vocab=n_bpe_vocab, max_text_len=max_text_len, n_embd=n_embd, n_head_text=n_head,
            n_xf_blocks_text=n_xf_blocks, n_head_state_text=n_head_state,
        )  # fmt: skip
        super().__init__(config, device=_device(device))

    # The official attributes, from the config (also for towers built by create_clip_model).
    n_bpe_vocab = property(lambda self: self.config.n_vocab)
    max_text_len = property(lambda self: self.config.max_text_len)
    n_embd = property(lambda self: self.config.n_embd)
    n_head = property(lambda self: self.config.n_head_text)
    n_xf_blocks = property(lambda self: self.config.n_xf_blocks_text)
    n_head_state = property(lambda self: self.config.n_head_state_text)
    n_state = property(lambda self: self.config.n_state_text)

    def forward(  # type: ignore[override]
        self, text: torch.Tensor, text_len: torch.Tensor, return_probe_features: bool = False
    ) -> torch.Tensor:
        if not return_probe_features:
            return super().forward(text, text_len)
        self.check_inputs(text, text_len)
        device = self.blocks["input"].w_voc.device
        text, text_len = text.to(device), text_len.to(device)
        h = self.transform(self.blocks["input"](text))
        return h[torch.arange(h.shape[0], device=device), text_len - 1]


class ImageEncoder(_ImageTower):
    """Noise-aware CLIP image tower: ``forward(image, timesteps)`` with ``image`` (B, 3, S, S)
    in [0, 255] (the official convention: ``(x_t + 1) * 127.5``) and ``timesteps`` (B,) int64
    original diffusion steps -> (B, n_embd) unnormalised features;
    ``return_probe_features=True`` gives the (B, n_state) class-token features before the
    output LayerNorm and projection. glidekit's CLIP is always noise-aware: ``n_timestep`` must
    be positive (1000 for the released model)."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        n_embd: int,
        n_head: int,
        n_xf_blocks: int,
        n_head_state: int = 64,
        n_timestep: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if n_timestep <= 0:
            raise NotServedError(
                "glide_text2im.clip.encoders.ImageEncoder without timesteps (n_timestep=0) is "
                "not served by glidekit.compat; pass n_timestep=1000 (the noise-aware CLIP)"
            )
        config = CLIPConfig(
            image_size=image_size, patch_size=patch_size, n_embd=n_embd, n_head_image=n_head,
            n_xf_blocks_image=n_xf_blocks, n_head_state_image=n_head_state,
            n_timesteps=n_timestep,
        )  # fmt: skip
        super().__init__(config, device=_device(device))

    image_size = property(lambda self: self.config.image_size)
    patch_size = property(lambda self: self.config.patch_size)
    n_embd = property(lambda self: self.config.n_embd)
    n_head = property(lambda self: self.config.n_head_image)
    n_xf_blocks = property(lambda self: self.config.n_xf_blocks_image)
    n_head_state = property(lambda self: self.config.n_head_state_image)
    n_timestep = property(lambda self: self.config.n_timesteps)
    n_state = property(lambda self: self.config.n_state_image)
    n_context = property(lambda self: 1 + self.config.n_patches)

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        return_probe_features: bool = False,
    ) -> torch.Tensor:
        if timesteps is None:
            raise ValueError("timesteps: required (B,) int64 diffusion steps (noise-aware CLIP)")
        x = image / 127.5 - 1  # glidekit's towers read [-1, 1]
        if not return_probe_features:
            return super().forward(x, timesteps)
        self.check_inputs(x, timesteps, "image", "timesteps")
        param = self.blocks["input"].w_t
        h = self.blocks["input"](x.to(param.device, param.dtype), timesteps.to(param.device))
        return self.transform(h)[:, 0]


TextEmbedding = unserved_class("clip.encoders.TextEmbedding", _BLOCKS, nn.Module)
ImageEmbedding = unserved_class("clip.encoders.ImageEmbedding", _BLOCKS, nn.Module)
AttentionResblock = unserved_class("clip.encoders.AttentionResblock", _BLOCKS, nn.Module)
FullyConnectedResblock = unserved_class("clip.encoders.FullyConnectedResblock", _BLOCKS, nn.Module)
TransformerBlock = unserved_class("clip.encoders.TransformerBlock", _BLOCKS, nn.Module)
TextFeatureExtractor = unserved_class("clip.encoders.TextFeatureExtractor", _BLOCKS, nn.Module)
ImageFeatureExtractor = unserved_class("clip.encoders.ImageFeatureExtractor", _BLOCKS, nn.Module)

__all__ = [
    "AttentionResblock",
    "FullyConnectedResblock",
    "ImageEmbedding",
    "ImageEncoder",
    "ImageFeatureExtractor",
    "TextEmbedding",
    "TextEncoder",
    "TextFeatureExtractor",
    "TransformerBlock",
]
