"""``glide_text2im.tokenizer``: :mod:`.bpe` (GPT-2, the diffusion models') and
:mod:`.simple_tokenizer` (CLIP's)."""
