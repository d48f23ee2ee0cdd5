"""The official ``glide_text2im`` package's public API, served by glidekit.

Replace ``glide_text2im`` with ``glidekit.compat`` in any import line: every official module is
mirrored below this package (``glidekit.compat.model_creation``, ``.download``,
``.clip.model_creation``, ``.tokenizer.simple_tokenizer``, ``.tokenizer.bpe``,
``.gaussian_diffusion``, ``.respace``, ``.text2im_model``, ``.unet``, ``.xf``, ``.nn``,
``.fp16_util``, ``.clip.encoders``, ``.clip.attention``, ``.clip.utils``), and every public name
is also importable flat::

    from glidekit.compat import (
        create_model_and_diffusion, model_and_diffusion_defaults,
        model_and_diffusion_defaults_upsampler, load_checkpoint, create_clip_model,
        SimpleTokenizer,
    )

Names, call signatures and results are the official ones; everything runs on glidekit's
tokenizers, models, diffusion, samplers and checkpoint loading, so the numbers are the released
models' numbers. Names glidekit does not serve faithfully (the official UNet and CLIP building
blocks, the block-sparse attention masks) import, and raise :class:`NotServedError` naming the
glidekit way when used. Where two official modules define one name differently, the flat name
is the first module's: ``convert_module_to_f16`` is ``fp16_util``'s (``xf``'s converts linears
too), ``LayerNorm`` is ``xf``'s (``clip.utils``'s is not served).

Deliberate differences: checkpoints are cached in glidekit's cache (``$GLIDEKIT_CACHE``, else
``~/.cache/glidekit``), not ``./glide_model_cache``; ``CLIPModel.config`` is a
:class:`glidekit.clip.CLIPConfig`, not a dict; models take ``tokens``/``mask`` at every step and
encode each prompt once (``del_cache`` forgets it).

Layer: a face beside ``glidekit.web`` and ``glidekit.train``; nothing inside glidekit imports it.
"""

from __future__ import annotations

from glidekit.compat._unserved import NotServedError
from glidekit.compat.clip.attention import (
    AttentionInfo,
    AttentionMask,
    DenseAttentionMask,
    DenseCausalAttentionMask,
    make_full_layout,
    to_attention_info,
)
from glidekit.compat.clip.encoders import (
    AttentionResblock,
    FullyConnectedResblock,
    ImageEmbedding,
    ImageEncoder,
    ImageFeatureExtractor,
    TextEmbedding,
    TextEncoder,
    TextFeatureExtractor,
    TransformerBlock,
)
from glidekit.compat.clip.model_creation import (
    CLIPModel,
    OfficialCLIP,
    create_clip_model,
    default_config_path,
)
from glidekit.compat.clip.utils import Affine, FilterFn, ZeroKeyBiasGrad, zero_key_bias_grad
from glidekit.compat.download import (
    MODEL_PATHS,
    default_cache_dir,
    fetch_file_cached,
    load_checkpoint,
)
from glidekit.compat.fp16_util import convert_module_to_f16, convert_module_to_f32
from glidekit.compat.gaussian_diffusion import (
    GaussianDiffusion,
    betas_for_alpha_bar,
    get_beta_schedule,
    get_named_beta_schedule,
)
from glidekit.compat.model_creation import (
    OfficialUNet,
    config_from_options,
    create_gaussian_diffusion,
    create_model,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler,
)
from glidekit.compat.nn import (
    GroupNorm32,
    avg_pool_nd,
    conv_nd,
    linear,
    normalization,
    scale_module,
    timestep_embedding,
    zero_module,
)
from glidekit.compat.respace import SpacedDiffusion, space_timesteps
from glidekit.compat.text2im_model import (
    InpaintText2ImUNet,
    SuperResInpaintText2ImUnet,
    SuperResText2ImUNet,
    Text2ImUNet,
)
from glidekit.compat.tokenizer.bpe import Encoder, bytes_to_unicode, get_encoder, get_pairs
from glidekit.compat.tokenizer.simple_tokenizer import (
    SimpleTokenizer,
    basic_clean,
    default_bpe,
    whitespace_clean,
)
from glidekit.compat.unet import (
    AttentionBlock,
    Downsample,
    InpaintUNetModel,
    QKVAttention,
    ResBlock,
    SuperResInpaintUNetModel,
    SuperResUNetModel,
    TimestepBlock,
    TimestepEmbedSequential,
    UNetModel,
    Upsample,
)
from glidekit.compat.xf import (
    MLP,
    LayerNorm,
    MultiheadAttention,
    QKVMultiheadAttention,
    ResidualAttentionBlock,
    Transformer,
)

#: glidekit.compat's earlier name for the diffusion ``create_gaussian_diffusion`` returns.
Diffusion = SpacedDiffusion

__all__ = [
    "MLP",
    "MODEL_PATHS",
    "Affine",
    "AttentionBlock",
    "AttentionInfo",
    "AttentionMask",
    "AttentionResblock",
    "CLIPModel",
    "DenseAttentionMask",
    "DenseCausalAttentionMask",
    "Diffusion",
    "Downsample",
    "Encoder",
    "FilterFn",
    "FullyConnectedResblock",
    "GaussianDiffusion",
    "GroupNorm32",
    "ImageEmbedding",
    "ImageEncoder",
    "ImageFeatureExtractor",
    "InpaintText2ImUNet",
    "InpaintUNetModel",
    "LayerNorm",
    "MultiheadAttention",
    "NotServedError",
    "OfficialCLIP",
    "OfficialUNet",
    "QKVAttention",
    "QKVMultiheadAttention",
    "ResBlock",
    "ResidualAttentionBlock",
    "SimpleTokenizer",
    "SpacedDiffusion",
    "SuperResInpaintText2ImUnet",
    "SuperResInpaintUNetModel",
    "SuperResText2ImUNet",
    "SuperResUNetModel",
    "Text2ImUNet",
    "TextEmbedding",
    "TextEncoder",
    "TextFeatureExtractor",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Transformer",
    "TransformerBlock",
    "UNetModel",
    "Upsample",
    "ZeroKeyBiasGrad",
    "avg_pool_nd",
    "basic_clean",
    "betas_for_alpha_bar",
    "bytes_to_unicode",
    "config_from_options",
    "conv_nd",
    "convert_module_to_f16",
    "convert_module_to_f32",
    "create_clip_model",
    "create_gaussian_diffusion",
    "create_model",
    "create_model_and_diffusion",
    "default_bpe",
    "default_cache_dir",
    "default_config_path",
    "fetch_file_cached",
    "get_beta_schedule",
    "get_encoder",
    "get_named_beta_schedule",
    "get_pairs",
    "linear",
    "load_checkpoint",
    "make_full_layout",
    "model_and_diffusion_defaults",
    "model_and_diffusion_defaults_upsampler",
    "normalization",
    "scale_module",
    "space_timesteps",
    "timestep_embedding",
    "to_attention_info",
    "whitespace_clean",
    "zero_key_bias_grad",
    "zero_module",
]
