"""The embedded default models are used when no released checkpoint is cached, and say so."""

import logging

import glidekit.models as embedded
from glidekit.pipelines.common import default_source


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

    # Once the released base is in the cache, the whole cascade is the released one.
    (cache / "base.pt").write_bytes(b"x")
    assert default_source("base") == "base" and default_source("upsampler") == "upsample"
