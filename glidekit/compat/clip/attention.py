"""``glide_text2im.clip.attention``: the official block-sparse attention masks, not served.

glidekit's CLIP attends densely through ``torch.nn.functional.scaled_dot_product_attention``
(causal for the text tower), which computes what these masks describe; each name raises
:class:`~glidekit.compat._unserved.NotServedError` when used.
"""

from __future__ import annotations

from glidekit.compat._unserved import unserved_class, unserved_function

_WAY = (
    "glidekit's CLIP attends densely with torch's scaled_dot_product_attention "
    "(is_causal for text); see glidekit.clip.model.Attention"
)

AttentionMask = unserved_class("clip.attention.AttentionMask", _WAY)
DenseAttentionMask = unserved_class("clip.attention.DenseAttentionMask", _WAY)
DenseCausalAttentionMask = unserved_class("clip.attention.DenseCausalAttentionMask", _WAY)
AttentionInfo = unserved_class("clip.attention.AttentionInfo", _WAY)
to_attention_info = unserved_function("clip.attention.to_attention_info", _WAY)
make_full_layout = unserved_function("clip.attention.make_full_layout", _WAY)

__all__ = [
    "AttentionInfo",
    "AttentionMask",
    "DenseAttentionMask",
    "DenseCausalAttentionMask",
    "make_full_layout",
    "to_attention_info",
]
