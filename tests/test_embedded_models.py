"""The embedded default models are used when no released checkpoint is cached, and say so."""

import logging

import glidekit.models as embedded
from glidekit.pipelines.common import RELEASED_CLIP, default_source


def test_embedded_until_the_released_weights_are_cached(tmp_path, monkeypatch, caplog):
    models = tmp_path / "models"
    models.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(embedded, "MODELS_DIR", models)
    monkeypatch.setenv("GLIDEKIT_CACHE", str(cache))

    # Nothing embedded, nothing cached: the released names (downloaded on first use).
    assert default_source("base") == "base" and default_source("upsampler") == "upsample"

    (models / "shapes-base.safetensors").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="glidekit.models"):
        assert default_source("base") == str(models / "shapes-base.safetensors")
    assert "embedded shapes-world model" in caplog.text
    assert default_source("upsampler") is None  # no embedded upsampler: base images only
    (models / "shapes-upsample.safetensors").write_bytes(b"x")
    assert default_source("upsampler") == str(models / "shapes-upsample.safetensors")
    # The inpainting family has no embedded model here: released names.
    assert default_source("base_inpaint") == "base-inpaint"
    assert default_source("clip") == RELEASED_CLIP  # no embedded CLIP yet
    (models / embedded.CLIP_FILE).write_bytes(b"x")
    assert default_source("clip") == str(models / embedded.CLIP_FILE)

    # Once the released base is in the cache, the whole cascade is the released one.
    (cache / "base.pt").write_bytes(b"x")
    assert default_source("base") == "base" and default_source("upsampler") == "upsample"
    assert default_source("clip") == RELEASED_CLIP


def test_the_shipped_cascade_loads_and_runs(tmp_path, monkeypatch):
    """The files in glidekit/models: small enough, strict loads, and the default pipelines
    (no released checkpoint cached) run them end to end."""
    from glidekit.nn.bundle import load_model
    from glidekit.pipelines import InpaintPipeline, Text2ImagePipeline

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    files = {role: embedded.embedded_path(role) for role in embedded.ROLES}
    assert all(files.values()), files  # the whole cascade, inpainting upsampler included
    clip_file = embedded.MODELS_DIR / embedded.CLIP_FILE
    assert clip_file.is_file()
    total = sum(f.stat().st_size for f in files.values() if f) + clip_file.stat().st_size
    assert total <= 40 * 2**20
    kinds = {}
    for role, path in files.items():
        if path is not None:
            model, diffusion, tokenizer = load_model(path)  # strict
            kinds[role] = (model.config.kind, model.config.image_size, diffusion.prediction)
            assert tokenizer.n_vocab <= model.config.n_vocab
    assert kinds["base"] == ("text2im", 32, "v")
    assert kinds["upsampler"] == ("super_res", 128, "v")
    assert kinds["base_inpaint"] == ("inpaint", 32, "v")
    assert kinds["upsampler_inpaint"] == ("super_res_inpaint", 128, "v")

    pipe = Text2ImagePipeline.from_pretrained(device="cpu")
    result = pipe("a large red square at the center", steps=8, upsample_steps=4, seed=0)
    assert result.images[0].size == (128, 128) and result.low_res[0].size == (32, 32)
    inpaint = InpaintPipeline.from_pretrained(device="cpu")
    assert inpaint.base.model.config.kind == "inpaint"
    assert inpaint.upsampler.model.config.kind == "super_res_inpaint"


def test_the_shipped_clip_guides_the_shipped_base(tmp_path, monkeypatch):
    """--clip with nothing cached: the embedded CLIP (its own vocabulary, 32 px) guides the
    embedded base, and its gradient changes the picture."""
    from glidekit.pipelines import ClipGuidedPipeline

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    pipe = ClipGuidedPipeline.from_pretrained(device="cpu", upsampler=None)
    assert pipe.clip_label.endswith(embedded.CLIP_FILE)
    assert pipe.clip.config.image_size == pipe.base.model.config.image_size == 32
    caption = "a large red square at the center on a white background"
    weak = pipe(caption, steps=6, guidance_scale=0.0, seed=3, upsample=False).images[0]
    strong = pipe(caption, steps=6, guidance_scale=30.0, seed=3, upsample=False).images[0]
    assert weak.size == (32, 32)
    assert weak.tobytes() != strong.tobytes()
