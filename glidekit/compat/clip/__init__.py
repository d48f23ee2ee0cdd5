"""``glide_text2im.clip``: the noise-aware CLIP (:mod:`.model_creation`; :mod:`.encoders`,
:mod:`.attention` and :mod:`.utils` for the official building blocks)."""
