"""The embedded default models are used when no released checkpoint is cached, and say so."""

import logging

import glidekit.models as embedded
from glidekit.checkpoints.modelfile import read_sampling_defaults
from glidekit.pipelines.sources import RELEASED_CLIP, default_source, model_defaults

CLIP_FILE = embedded.EMBEDDED_FILES["clip"]
BASE_DEFAULTS = read_sampling_defaults(embedded.embedded_path("base"))
INPAINT_DEFAULTS = read_sampling_defaults(embedded.embedded_path("base_inpaint"))


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
    with caplog.at_level(logging.INFO, logger="glidekit.pipelines.sources"):
        assert default_source("base") == str(models / "shapes-base.safetensors")
    assert "embedded shapes-world model" in caplog.text
    assert default_source("upsampler") is None  # no embedded upsampler: base images only
    (models / "shapes-upsample.safetensors").write_bytes(b"x")
    assert default_source("upsampler") == str(models / "shapes-upsample.safetensors")
    # The inpainting family has no embedded model here: released names.
    assert default_source("base_inpaint") == "base-inpaint"
    assert default_source("clip") == RELEASED_CLIP  # no embedded CLIP yet
    (models / CLIP_FILE).write_bytes(b"x")
    assert default_source("clip") == str(models / CLIP_FILE)

    # Once the released base is in the cache, the whole cascade is the released one.
    (cache / "base.pt").write_bytes(b"x")
    assert default_source("base") == "base" and default_source("upsampler") == "upsample"
    assert default_source("clip") == RELEASED_CLIP


def test_the_shipped_cascade_loads_and_runs(tmp_path, monkeypatch):
    """The files in glidekit/models: small enough, strict loads, and the default pipelines
    (no released checkpoint cached) run them end to end."""
    from glidekit.checkpoints import load_unet as load_model
    from glidekit.pipelines import InpaintPipeline, Text2ImagePipeline

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    files = {
        role: embedded.embedded_path(role) for role in embedded.EMBEDDED_FILES if role != "clip"
    }
    assert all(files.values()), files  # the whole cascade, inpainting upsampler included
    clip_file = embedded.MODELS_DIR / CLIP_FILE
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
    assert pipe.clip_label.endswith(CLIP_FILE)
    assert pipe.clip.config.image_size == pipe.base.model.config.image_size == 32
    caption = "a large red square at the center on a white background"
    weak = pipe(caption, steps=6, guidance_scale=0.0, seed=3, upsample=False).images[0]
    strong = pipe(caption, steps=6, guidance_scale=30.0, seed=3, upsample=False).images[0]
    assert weak.size == (32, 32)
    assert weak.tobytes() != strong.tobytes()


def test_sampling_defaults_belong_to_the_embedded_files(tmp_path):
    """The defaults are written in each model file: they travel with the file (a copy keeps
    them); released names and files without them keep GLIDE's defaults."""
    base = embedded.embedded_path("base")
    defaults = model_defaults(base)
    # GLIDE's own method (classifier-free guidance) with a fast sampler (issue 17)
    assert defaults["guidance"] == "classifier-free" and defaults == BASE_DEFAULTS
    assert defaults["sampler"] == "dpm++2m" and defaults["guidance_scale"] > 1
    defaults = model_defaults(str(embedded.embedded_path("base_inpaint")))
    assert "clip_guidance_scale" not in defaults and defaults["guidance_scale"] > 1
    defaults["steps"] = 1  # a copy: the file's defaults are not changed
    assert model_defaults(embedded.embedded_path("base_inpaint"))["steps"] != 1
    copy = tmp_path / base.name
    copy.write_bytes(base.read_bytes())
    assert model_defaults(copy) == BASE_DEFAULTS
    assert model_defaults("base") == {}
    assert model_defaults(embedded.embedded_path("upsampler")) == {}


def _cli_json(capsys, *argv):
    import json

    from glidekit.cli.main import main

    code = main([*argv, "-q", "--json", "--no-upsample"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_generate_uses_the_embedded_models_defaults(tmp_path, monkeypatch, capsys):
    """No released weights: `glidekit generate` runs the embedded base with the defaults its
    file carries (classifier-free guidance, DPM-Solver++); options given win; --guidance clip
    adds the embedded CLIP; a PNG's own guidance is repeated by --from."""
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    prompt = "a small red circle in the top left on a white background"
    out = str(tmp_path / "out")
    code, data, err = _cli_json(capsys, "generate", prompt, "--steps", "3", "--seed", "0",
                                "-o", out)  # fmt: skip
    assert code == 0, err
    params = data["runs"][0]
    scale = BASE_DEFAULTS["guidance_scale"]
    assert params["pipeline"] == "text2image" and params["guidance"] == "classifier-free"
    assert params["guidance_scale"] == scale and params["steps"] == "3"
    assert params["sampler"] == BASE_DEFAULTS["sampler"] and "clip" not in params

    code, data, err = _cli_json(capsys, "generate", prompt, "--steps", "3", "--seed", "0",
                                "--guidance", "clip", "-o", out)  # fmt: skip
    assert code == 0, err
    params = data["runs"][0]
    assert params["pipeline"] == "clip-guided" and params["guidance"] == "clip"
    assert params["clip"].endswith(CLIP_FILE)
    png = data["images"][0]["path"]

    code, data, err = _cli_json(capsys, "generate", "--from", png, "-o", out)
    assert code == 0, err
    assert data["runs"][0]["pipeline"] == "clip-guided"  # not switched back to the default

    code, _, err = _cli_json(capsys, "generate", prompt, "--guidance", "classifier-free",
                             "--clip", "-o", out)  # fmt: skip
    assert code == 2 and "--guidance classifier-free" in err


def test_inpaint_uses_the_embedded_models_defaults(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from glidekit.data.shapes import canonical_caption, random_scene, render

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    scene = random_scene(0, position="top left")
    render(scene, 32).save(tmp_path / "src.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    caption = canonical_caption(
        random_scene(1, position="bottom right", background=scene.background)
    )
    args = ["inpaint", str(tmp_path / "src.png"), str(tmp_path / "mask.png"), caption,
            "--steps", "3", "--seed", "0", "-o", str(tmp_path / "out")]  # fmt: skip
    code, data, err = _cli_json(capsys, *args)
    assert code == 0, err
    params = data["runs"][0]
    defaults = INPAINT_DEFAULTS
    assert params["guidance_scale"] == defaults["guidance_scale"] and "clip" not in params
    assert params["sampler"] == defaults["sampler"]
    out = np.asarray(Image.open(data["images"][0]["path"]).convert("RGB"))
    assert (out[mask == 0] == np.asarray(render(scene, 32))[mask == 0]).all()

    code, data, err = _cli_json(capsys, *args, "--clip-guidance-scale", "30", "-g", "5")
    assert code == 0, err
    params = data["runs"][0]
    assert params["clip_guidance_scale"] == 30.0 and params["guidance_scale"] == 5.0
    assert params["clip"].endswith(CLIP_FILE)

    code, _, err = _cli_json(capsys, *args, "--clip-guidance-scale", "-1")
    assert code == 2 and err.count("--clip-guidance-scale") == 1


def test_inpaint_pipeline_composes_clip_guidance(tmp_path, monkeypatch):
    import pytest
    from PIL import Image

    from glidekit.data.shapes import random_scene, render
    from glidekit.pipelines import InpaintPipeline

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    pipe = InpaintPipeline.from_pretrained(device="cpu", upsampler=None)
    src = render(random_scene(2, position="top left"), 32)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 16, 32, 32))
    caption = "a large red circle in the bottom right"
    plain = pipe(caption, src, mask, steps=5, seed=1, clip_guidance_scale=0.0)
    guided = pipe(caption, src, mask, steps=5, seed=1, clip_guidance_scale=30.0)
    assert "clip" not in plain.params and guided.params["clip_guidance_scale"] == 30.0
    assert plain.images[0].tobytes() != guided.images[0].tobytes()
    box = (0, 0, 16, 32)  # part of the known region
    assert plain.images[0].crop(box).tobytes() == guided.images[0].crop(box).tobytes()
    with pytest.raises(ValueError, match="clip_guidance_scale"):
        pipe(caption, src, mask, steps=5, clip_guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="clip_guidance_scale"):
        pipe(caption, src, mask, steps=5, clip_guidance_scale="high")
