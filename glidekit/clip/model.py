"""GLIDE's noise-aware CLIP: a ViT image encoder that also sees the diffusion timestep, and a
causal text transformer (CLIP guidance itself is :func:`glidekit.guidance.clip_cond_fn`).

Module and parameter names reproduce the released ``clip_image_enc.pt`` / ``clip_text_enc.pt``
state dicts exactly (``blocks.input``, ``blocks.block_{i}``, ``blocks.output``; affine layers
``w`` (out, in) / ``b``; layer norms ``g`` / ``b``), so those files load with ``strict=True``.

Architecture (both encoders): pre-LN residual transformer blocks (LayerNorm eps 1e-5), attention
with separate q/k/v projections (the key projection has no bias), each head a contiguous slice of
width ``d``, q and k each scaled by ``d ** -0.25``, then an MLP 4x wide with exact (erf) GELU.
The image encoder's attention is dense, the text encoder's is causal. The reference pads the
context to a multiple of 32 with a -1e10 key bias; that changes no result and is skipped here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glidekit.clip.config import CLIPConfig
from glidekit.nn.layers import sincos_position_embedding
from glidekit.tokenizer.clip import ClipTokenizer

logger = logging.getLogger(__name__)

# CLIP's per-channel pixel statistics (for pixels scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5

DeviceLike = torch.device | str | None


# The building blocks take PyTorch's factory keywords (``device=``, ``dtype=``) as ``**factory``
# and hand them to every parameter they make.


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with gain ``g`` and bias ``b`` (eps 1e-5)."""

    def __init__(self, n_state: int, **factory: Any):
        super().__init__()
        self.g = nn.Parameter(torch.ones(n_state, **factory))
        self.b = nn.Parameter(torch.zeros(n_state, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.g, self.b, LN_EPS)


class Affine(nn.Module):
    """Linear map with weight ``w`` of shape (n_out, n_in) and optional bias ``b``."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True, **factory: Any):
        super().__init__()
        self.w = nn.Parameter(torch.empty(n_out, n_in, **factory))
        self.b = nn.Parameter(torch.zeros(n_out, **factory)) if bias else None
        nn.init.normal_(self.w, std=n_in**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w, self.b)


class Attention(nn.Module):
    """Pre-LN multi-head self-attention: ``f_c(attn(ln(x)))`` (the residual is added outside)."""

    def __init__(self, n_head: int, n_head_state: int, causal: bool, **factory: Any):
        super().__init__()
        n_state = n_head * n_head_state
        self.n_head = n_head
        self.n_head_state = n_head_state
        self.causal = causal
        self.ln = LayerNorm(n_state, **factory)
        self.f_q = Affine(n_state, n_state, True, **factory)
        self.f_k = Affine(n_state, n_state, False, **factory)
        self.f_v = Affine(n_state, n_state, True, **factory)
        self.f_c = Affine(n_state, n_state, True, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.ln(x)
        # Each head owns a contiguous slice of width d; q and k are each scaled by d^-1/4.
        scale = self.n_head_state**-0.25

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_head, self.n_head_state).transpose(1, 2)

        q = heads(self.f_q(h) * scale)
        k = heads(self.f_k(h) * scale)
        v = heads(self.f_v(h))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0)
        return self.f_c(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """Pre-LN MLP: ``f_2(gelu(f_1(ln(x))))``, hidden width 4x, exact erf GELU."""

    def __init__(self, n_state: int, **factory: Any):
        super().__init__()
        self.ln = LayerNorm(n_state, **factory)
        self.f_1 = Affine(n_state, 4 * n_state, True, **factory)
        self.f_2 = Affine(4 * n_state, n_state, True, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f_2(F.gelu(self.f_1(self.ln(x))))


class TransformerBlock(nn.Module):
    """``x + f_attn(x)`` then ``x + f_mlp(x)``."""

    def __init__(self, n_head: int, n_head_state: int, causal: bool, **factory: Any):
        super().__init__()
        self.f_attn = Attention(n_head, n_head_state, causal, **factory)
        self.f_mlp = MLP(n_head * n_head_state, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.f_attn(x)
        return x + self.f_mlp(x)


class ImageInput(nn.Module):
    """Patch embedding (bias-free strided conv), prepended timestep token, positions, LayerNorm."""

    def __init__(self, config: CLIPConfig, **factory: Any):
        super().__init__()
        n_state, p = config.n_state_image, config.patch_size
        self.patch_size = p
        self.w_t = nn.Parameter(torch.empty(config.n_timesteps, n_state, **factory))
        self.patch_proj = nn.Parameter(torch.empty(n_state, 3, p, p, **factory))
        self.w_pos = nn.Parameter(torch.empty(config.n_patches + 1, n_state, **factory))
        self.ln = LayerNorm(n_state, **factory)
        nn.init.normal_(self.w_t, std=0.02)
        nn.init.normal_(self.patch_proj, std=(3 * p * p) ** -0.5)
        # Patch positions start as a 2D sine-cosine table, comparable in size to the patch
        # features: with a small random start the tower began (and, trained contrastively,
        # stayed) blind to where things are in the picture.
        nn.init.normal_(self.w_pos[:1], std=0.02)
        with torch.no_grad():
            self.w_pos[1:].copy_(sincos_position_embedding(config.n_patches, n_state))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # [-1, 1] -> [0, 255] -> CLIP-normalised: (p - 255 * mean) / (255 * std).
        mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        pixels = (x + 1) * 127.5
        x = (pixels - 255 * mean) / (255 * std)
        x = F.conv2d(x, self.patch_proj, stride=self.patch_size)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, n_patches, C), row-major patch order
        x = torch.cat([self.w_t[t].unsqueeze(1), x], dim=1)
        return self.ln(x + self.w_pos)


class TextInput(nn.Module):
    """Token embedding plus learned positions (no input LayerNorm)."""

    def __init__(self, config: CLIPConfig, **factory: Any):
        super().__init__()
        self.w_voc = nn.Parameter(torch.empty(config.n_vocab, config.n_state_text, **factory))
        self.w_pos = nn.Parameter(torch.empty(config.max_text_len, config.n_state_text, **factory))
        nn.init.normal_(self.w_voc, std=0.02)
        nn.init.normal_(self.w_pos, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.w_voc[tokens] + self.w_pos[: tokens.shape[1]]


class Output(nn.Module):
    """LayerNorm then a bias-free projection to the joint embedding space."""

    def __init__(self, n_state: int, n_embd: int, **factory: Any):
        super().__init__()
        self.ln = LayerNorm(n_state, **factory)
        self.f = Affine(n_state, n_embd, False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(self.ln(x))


def _is_int_tensor(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _check_range(name: str, t: torch.Tensor, low: int, high: int, what: str) -> None:
    """Raise ValueError unless low <= t < high elementwise (skipped on the meta device)."""
    if t.numel() == 0 or t.device.type == "meta":
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < low or hi >= high:
        raise ValueError(
            f"{name}: {what} must lie in [{low}, {high - 1}], got values in [{lo}, {hi}]"
        )


class _Tower(nn.Module):
    """What both encoders are: an input layer, transformer blocks and the output projection,
    under the released names ``blocks.input``, ``blocks.block_{i}``, ``blocks.output``.

    ``sizes``: (blocks, heads, head width); ``causal``: whether attention looks only back.
    """

    def __init__(
        self,
        config: CLIPConfig,
        inp: nn.Module,
        sizes: tuple[int, int, int],
        causal: bool,
        **factory: Any,
    ):
        super().__init__()
        self.config = config
        n_blocks, n_head, n_head_state = sizes
        # The output layer is built before the blocks: the order their weights are drawn in.
        out = Output(n_head * n_head_state, config.n_embd, **factory)
        blocks: dict[str, nn.Module] = {"input": inp}
        for i in range(n_blocks):
            blocks[f"block_{i}"] = TransformerBlock(n_head, n_head_state, causal, **factory)
        blocks["output"] = out
        self.blocks = nn.ModuleDict(blocks)
        self.n_blocks = n_blocks

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """The transformer blocks over the input layer's output h (B, n, width)."""
        for i in range(self.n_blocks):
            h = self.blocks[f"block_{i}"](h)
        return h


class ImageEncoder(_Tower):
    """Noise-aware CLIP image encoder (ViT, ``clip_image_enc.pt``).

    ``forward(x, t)``: ``x`` (B, 3, image_size, image_size) noised images in [-1, 1] (the
    diffusion's x_t), ``t`` (B,) integer ORIGINAL (unspaced) diffusion timesteps in
    [0, n_timesteps). Returns the unnormalised image features (B, n_embd).
    """

    def __init__(self, config: CLIPConfig | None = None, **factory: Any):
        config = config if config is not None else CLIPConfig()
        sizes = (config.n_xf_blocks_image, config.n_head_image, config.n_head_state_image)
        super().__init__(config, ImageInput(config, **factory), sizes, False, **factory)

    def check_inputs(
        self, x: torch.Tensor, t: torch.Tensor, x_name: str = "x", t_name: str = "t"
    ) -> None:
        """Raise TypeError/ValueError naming the argument if ``x``/``t`` do not fit."""
        size = self.config.image_size
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{x_name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(
                f"{x_name}: expected images of shape (B, 3, {size}, {size}) in [-1, 1], "
                f"got {tuple(x.shape)}; resize to {size}x{size} (the CLIP model's image_size)"
            )
        if not x.dtype.is_floating_point:
            raise TypeError(f"{x_name} must be a floating-point tensor in [-1, 1], got {x.dtype}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{t_name} must be a torch.Tensor of shape (B,) with integer timesteps, "
                f"got {type(t).__name__}"
            )
        if not _is_int_tensor(t):
            raise TypeError(
                f"{t_name} must hold integer (int64) diffusion timesteps, got dtype {t.dtype}"
            )
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"{t_name}: expected shape ({x.shape[0]},) (one timestep per image in "
                f"{x_name}), got {tuple(t.shape)}"
            )
        _check_range(t_name, t, 0, self.config.n_timesteps, "original (unspaced) timesteps")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t)
        return self._encode(x, t)

    def _encode(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """forward without input checks (callers have checked)."""
        param = self.blocks["input"].w_t
        h = self.blocks["input"](x.to(param.device, param.dtype), t.to(param.device))
        return self.blocks["output"](self.transform(h)[:, 0])


class TextEncoder(_Tower):
    """CLIP text encoder (causal transformer, ``clip_text_enc.pt``).

    ``forward(tokens, lens)``: ``tokens`` (B, L) int64 ids with L <= max_text_len (77) as made
    by :meth:`ClipTokenizer.padded_tokens_and_len`; ``lens`` (B,) number of real tokens
    including start and end. The feature is read at position ``lens - 1`` (the end token).
    Returns the unnormalised text features (B, n_embd).
    """

    def __init__(self, config: CLIPConfig | None = None, **factory: Any):
        config = config if config is not None else CLIPConfig()
        sizes = (config.n_xf_blocks_text, config.n_head_text, config.n_head_state_text)
        super().__init__(config, TextInput(config, **factory), sizes, True, **factory)

    def check_inputs(self, tokens: torch.Tensor, lens: torch.Tensor) -> None:
        """Raise TypeError/ValueError naming the argument if ``tokens``/``lens`` do not fit."""
        ctx = self.config.max_text_len
        for name, value in (("tokens", tokens), ("lens", lens)):
            if not isinstance(value, torch.Tensor) or not _is_int_tensor(value):
                raise TypeError(f"{name} must be an integer (int64) torch.Tensor")
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= ctx or tokens.shape[0] == 0:
            raise ValueError(
                f"tokens: expected shape (B, {ctx}) with B >= 1, got {tuple(tokens.shape)}"
            )
        if lens.shape != (tokens.shape[0],):
            raise ValueError(
                f"lens: expected shape ({tokens.shape[0]},) (one length per row of tokens), "
                f"got {tuple(lens.shape)}"
            )
        _check_range("tokens", tokens, 0, self.config.n_vocab, "token ids")
        _check_range("lens", lens, 1, tokens.shape[1] + 1, "lengths (start + text + end)")

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        self.check_inputs(tokens, lens)
        device = self.blocks["input"].w_voc.device
        tokens, lens = tokens.to(device), lens.to(device)
        h = self.transform(self.blocks["input"](tokens))
        h = h[torch.arange(h.shape[0], device=device), lens - 1]
        return self.blocks["output"](h)


def _l2_normalize(z: torch.Tensor) -> torch.Tensor:
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisedCLIP(nn.Module):
    """Noise-aware CLIP: image and text encoders and ``logit_scale``.

    CLIP guidance (the gradient of the image-text similarity) is
    :func:`glidekit.guidance.clip_cond_fn`.

    Attributes: ``image_encoder`` (:class:`ImageEncoder`), ``text_encoder``
    (:class:`TextEncoder`), ``logit_scale`` (float32 scalar buffer, ``log(config.logit_scale)``,
    not part of any checkpoint), ``config``. The tokenizer is loaded on first use of a text
    prompt (from the default vocabulary location unless one was given).
    """

    def __init__(
        self,
        config: CLIPConfig | None = None,
        device: DeviceLike = None,
        tokenizer: ClipTokenizer | str | os.PathLike[str] | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if config is None:
            config = CLIPConfig()
        if not isinstance(config, CLIPConfig):
            raise TypeError(
                f"config must be a CLIPConfig (use CLIPConfig.from_dict for a dict), "
                f"got {type(config).__name__}"
            )
        if tokenizer is not None and not (
            isinstance(tokenizer, (str, os.PathLike))
            or callable(getattr(tokenizer, "tokenize", None))
        ):
            raise TypeError(
                "tokenizer must be a ClipTokenizer (or an object with its tokenize(texts, ctx)), "
                f"a path to bpe_simple_vocab_16e6.txt.gz or None, got {type(tokenizer).__name__}"
            )
        self.config = config
        self.image_encoder = ImageEncoder(config, device=device, dtype=dtype)
        self.text_encoder = TextEncoder(config, device=device, dtype=dtype)
        self.register_buffer(
            "logit_scale",
            torch.tensor(math.log(config.logit_scale), dtype=torch.float32, device=device),
            persistent=False,
        )
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> ClipTokenizer:
        """The CLIP tokenizer (loaded on first access; FileNotFoundError if the vocab is absent)."""
        if self._tokenizer is None or isinstance(self._tokenizer, (str, os.PathLike)):
            self._tokenizer = ClipTokenizer(self._tokenizer)
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self.image_encoder.blocks["input"].w_t.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (tokens (B, max_text_len) int64, lens (B,) int64) on the model's device."""
        if isinstance(prompts, str):
            raise TypeError(
                "prompts must be a list of strings, not a single str; wrap it: [prompt]"
            )
        if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts: empty list; pass at least one prompt")
        rows, lens = self.tokenizer.tokenize(prompts, self.config.max_text_len)
        return (
            torch.tensor(rows, dtype=torch.long, device=self.device),
            torch.tensor(lens, dtype=torch.long, device=self.device),
        )

    def text_embeddings(
        self, prompts: Sequence[str] | torch.Tensor, lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L2-normalised text embeddings (B, n_embd) (divided by norm + 1e-12).

        ``prompts``: a list of B strings, or a token tensor (B, max_text_len) int64 from
        :meth:`tokenize`. With tokens, ``lens`` (B,) gives the real lengths; when omitted it is
        taken as one past the last non-zero token (padding is 0 and the end token is non-zero).
        """
        if isinstance(prompts, torch.Tensor):
            tokens = prompts
            if lens is None:
                if not _is_int_tensor(tokens):
                    raise TypeError(f"prompts: token tensors must be int64, got {tokens.dtype}")
                if tokens.ndim != 2:
                    raise ValueError(
                        f"prompts: a token tensor must have shape (B, "
                        f"{self.config.max_text_len}), got {tuple(tokens.shape)}"
                    )
                positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
                lens = ((tokens != 0) * positions).amax(dim=1)
        else:
            if lens is not None:
                raise ValueError("lens: only valid with a token tensor; omit it for text prompts")
            tokens, lens = self.tokenize(prompts)
        return _l2_normalize(self.text_encoder(tokens, lens))

    def image_embeddings(
        self, images: torch.Tensor, t: torch.Tensor, names: tuple[str, str] = ("images", "t")
    ) -> torch.Tensor:
        """L2-normalised image embeddings (B, n_embd) (divided by norm + 1e-12).

        ``images``: (B, 3, image_size, image_size) noised images in [-1, 1]; ``t``: (B,) int64
        original (unspaced) diffusion timesteps. ``names``: how errors name the two arguments.
        """
        self.image_encoder.check_inputs(images, t, *names)
        return _l2_normalize(self.image_encoder._encode(images, t))


def create_clip_model(
    config: CLIPConfig | dict[str, Any] | None = None,
    device: DeviceLike = None,
    tokenizer: ClipTokenizer | str | os.PathLike[str] | None = None,
) -> NoisedCLIP:
    """Build a :class:`NoisedCLIP` (random weights; load the released state dicts into
    ``.image_encoder`` / ``.text_encoder`` with ``load_state_dict``).

    ``config``: a :class:`CLIPConfig`, a config.yaml-style dict, or ``None`` for the released
    model. ``device``: where to allocate the parameters (``"meta"`` builds without memory).
    ``tokenizer``: a :class:`ClipTokenizer`, a path to ``bpe_simple_vocab_16e6.txt.gz``, or
    ``None`` to load it from the glidekit cache on first use.
    """
    if isinstance(config, dict):
        config = CLIPConfig.from_dict(config)
    model = NoisedCLIP(config, device=device, tokenizer=tokenizer)
    logger.debug("built noised CLIP on %s", model.device)
    return model.eval()


__all__ = [
    "Affine",
    "Attention",
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageEncoder",
    "LayerNorm",
    "MLP",
    "NoisedCLIP",
    "TextEncoder",
    "TransformerBlock",
    "create_clip_model",
]
