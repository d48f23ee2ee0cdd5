"""The web app's jobs without a server: limits, input checks, uploads, masks and the PNGs made."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import UP_SIZE, random_picture, save_tiny_models, square_mask
from PIL import Image

from glidekit.pipelines import read_png_params
from glidekit.pipelines.options import step_count
from glidekit.web.jobs import (
    InputError,
    Jobs,
    Limits,
    WebConfig,
    check_prompt,
    mask_from_layers,
    open_image,
    seed_field,
    upload_path,
)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Jobs:
    models = save_tiny_models(tmp_path_factory.mktemp("models"))
    config = WebConfig(
        workdir=tmp_path_factory.mktemp("work"),
        base=str(models["base"]),
        upsampler=str(models["upsample"]),
        inpaint=str(models["base-inpaint"]),
        inpaint_upsampler=str(models["upsample-inpaint"]),
        device="cpu",
        upsample_steps="ddim4",
    )
    return Jobs(config)


def test_step_counts_and_limits(jobs):
    assert step_count("50") == 50 and step_count("ddim25") == 25
    assert step_count("fast27") == 27 and step_count("10,10,3,2,2") == 27
    assert step_count("karras12") == 12

    def steps(value):
        return jobs.options("generate", "a cat", steps=value)[1].steps

    assert steps(4) == "4" and steps(" DDIM4 ") == "ddim4" and steps(8.0) == "8"
    high = jobs.limits.max_steps
    for bad, words in [
        ("99999", f"between 1 and {high}"),
        ("0", "Steps must be >= 1"),
        ("banana", "cannot read"),
        ("", "cannot read"),
        (True, "expected a step count"),
        ("9" * 300, "too long"),
    ]:
        with pytest.raises(InputError, match=words):
            steps(bad)


def test_prompt_and_seed_checks(jobs):
    lim = Limits(max_prompt_chars=10)
    assert check_prompt("  a   cat ", lim) == "a cat"
    for bad, words in [("", "empty"), ("   ", "empty"), (None, "type"), ("x" * 11, "too long")]:
        with pytest.raises(InputError, match=words):
            check_prompt(bad, lim)
    assert seed_field(5, False) == 5 and seed_field(5.0, False) == 5
    assert seed_field(5, True) is None  # random wins: the options draw a fresh seed
    assert 0 <= jobs.options("generate", "a cat", seed=None)[1].seed < 2**31
    for bad in (-1, 2**40, 1.5, "x", float("nan")):
        with pytest.raises(InputError):
            jobs.options("generate", "a cat", seed=seed_field(bad, False))


def test_uploads_only_from_the_apps_folders(tmp_path):
    inside = tmp_path / "uploads" / "a.png"
    inside.parent.mkdir()
    random_picture((20, 20)).save(inside)
    outside = tmp_path / "secret.png"
    random_picture((20, 20)).save(outside)
    roots = [tmp_path / "uploads"]
    assert upload_path(str(inside), roots, "Image") == inside.resolve()
    assert upload_path({"path": str(inside)}, roots, "Image") == inside.resolve()
    for bad in (str(outside), str(inside.parent / ".." / "secret.png"), "/etc/passwd", None, 3):
        with pytest.raises(InputError):
            upload_path(bad, roots, "Image")


def test_open_image_limits(tmp_path):
    lim = Limits(max_upload_bytes=50_000, max_pixels=100 * 100, min_side=8)
    ok = tmp_path / "ok.png"
    random_picture((64, 48)).save(ok)
    assert open_image(ok, lim, "Image").size == (64, 48)
    cases = {
        "tiny.png": (lambda p: Image.new("RGB", (1, 1)).save(p), "too small: 1x1"),
        "wide.png": (lambda p: Image.new("RGB", (200, 100)).save(p), "too many pixels"),
        "text.png": (lambda p: p.write_text("not an image"), "not an image"),
        "big.bin": (lambda p: p.write_bytes(b"\0" * 60_000), "too large"),
    }
    for name, (make, words) in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(InputError, match=words):
            open_image(path, lim, "Image")


def test_mask_from_painted_layers():
    layer = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (10, 5, 20, 15))
    mask = mask_from_layers([layer, Image.new("RGBA", (40, 30), (0, 0, 0, 0))], (40, 30))
    arr = np.asarray(mask)
    assert arr.shape == (30, 40) and arr[5:15, 10:20].all() and arr.sum() == 100 * 255
    assert mask_from_layers([Image.new("RGBA", (40, 30))], (40, 30)) is None  # nothing painted


def test_generate_writes_pngs_with_params(jobs):
    r = jobs.generate("a red circle", 2, 3.0, "4", "ddim", 11, False, True)
    assert r.seed == 11 and len(r.paths) == 2
    assert all(p.parent.parent == jobs.config.outputs_dir for p in r.paths)
    params = read_png_params(r.paths[1])
    assert params["prompt"] == "a red circle" and params["seed"] == 11 and params["index"] == 1
    assert params["base"] == "base.safetensors"  # no server paths in the files
    assert Image.open(r.paths[0]).size == (UP_SIZE, UP_SIZE)
    again = jobs.generate("a red circle", 2, 3.0, "4", "ddim", 11, False, True)
    assert np.array_equal(
        np.asarray(Image.open(r.paths[0])), np.asarray(Image.open(again.paths[0]))
    )
    random_run = jobs.generate("a red circle", 1, 3.0, "4", "ancestral", 11, True, False)
    assert read_png_params(random_run.paths[0])["seed"] == random_run.seed
    assert Image.open(random_run.paths[0]).size == (8, 8)  # upsampling off


def test_generate_refuses_bad_requests(jobs):
    with pytest.raises(InputError, match="between 1 and 4"):
        jobs.generate("x", 50, 3.0, "4", "ddim", 0, False, False)
    with pytest.raises(InputError, match="Sampler"):
        jobs.generate("x", 1, 3.0, "4", "nope", 0, False, False)
    with pytest.raises(InputError, match="Guidance"):
        jobs.generate("x", 1, 1e9, "4", "ddim", 0, False, False)
    with pytest.raises(InputError, match="steps"):  # the pipeline's own check, passed on
        jobs.generate("x", 1, 3.0, "karras1", "ddim", 0, False, False)


def test_inpaint_keeps_the_unmasked_region(jobs):
    picture = random_picture((48, 48), seed=3)
    mask = square_mask((48, 48), (12, 12, 30, 30))
    r = jobs.inpaint(picture, mask, "a dog", 1, 5.0, "4", "ddim", 2, False, True)
    result = np.asarray(Image.open(r.paths[0])).astype(int)
    source = np.asarray(Image.open(r.source)).astype(int)
    replaced = np.asarray(Image.open(r.mask)) > 0
    assert result.shape == source.shape == (UP_SIZE, UP_SIZE, 3)
    assert replaced.any() and not replaced.all()
    assert np.array_equal(result[~replaced], source[~replaced])
    assert np.abs(result[replaced] - source[replaced]).max() > 0
    with pytest.raises(InputError, match="paint"):
        jobs.inpaint(picture, None, "a dog")
    with pytest.raises(InputError, match="empty"):
        jobs.inpaint(picture, Image.new("L", (48, 48), 0), "a dog")
    with pytest.raises(InputError, match="does not match"):
        jobs.inpaint(picture, square_mask((40, 48), (1, 1, 5, 5)), "a dog")


def test_embedded_models_sample_with_their_own_defaults(tmp_path, monkeypatch):
    """No released weights and no models named: the app serves the embedded cascade with
    the defaults written in their files (classifier-free guidance), as the command line does;
    a base whose file asks for CLIP guidance gets it, and PNGs sent out name the CLIP without
    the server's path."""
    import glidekit.models as embedded
    from glidekit.checkpoints.modelfile import load_unet, read_sampling_defaults, save_unet

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty-cache"))
    app = Jobs(WebConfig(workdir=tmp_path / "work", device="cpu", upsampler="none",
                         inpaint_upsampler="none"))  # fmt: skip
    gen = read_sampling_defaults(embedded.embedded_path("base"))
    inp = read_sampling_defaults(embedded.embedded_path("base_inpaint"))
    assert app.default("generate", "guidance") == "classifier-free"
    assert app.default("generate", "guidance_scale") == gen["guidance_scale"]
    assert app.default("generate", "steps") == str(gen["steps"])
    assert app.default("generate", "sampler") == gen["sampler"]
    assert app.default("inpaint", "guidance_scale") == inp["guidance_scale"]
    out = app.generate("a large red square at the center", steps="3", seed=1, random_seed=False)
    assert out.params["guidance"] == "classifier-free"
    assert out.params["guidance_scale"] == gen["guidance_scale"] and "clip" not in out.params
    picture = Image.new("RGB", (32, 32), (245, 245, 245))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 16))
    out = app.inpaint(picture, mask, "a small red circle in the top left", steps="3", seed=1,
                      random_seed=False)  # fmt: skip
    assert out.params["guidance_scale"] == inp["guidance_scale"] and "clip" not in out.params

    model, diffusion, tokenizer = load_unet(embedded.embedded_path("base"))
    clip_base = tmp_path / "clip-guided-base.safetensors"
    save_unet(clip_base, model, diffusion, tokenizer,
              sampling={"guidance": "clip", "guidance_scale": 20.0, "steps": 250})  # fmt: skip
    app = Jobs(WebConfig(workdir=tmp_path / "work2", device="cpu", base=str(clip_base),
                         upsampler="none", inpaint_upsampler="none"))  # fmt: skip
    assert app.default("generate", "guidance") == "clip"
    out = app.generate("a large red square at the center", steps="3", seed=1, random_seed=False)
    assert out.params["guidance"] == "clip" and out.params["guidance_scale"] == 20.0
    clip = read_png_params(out.paths[0])["clip"]
    assert clip.endswith(embedded.EMBEDDED_FILES["clip"]) and "/" not in clip


def test_released_style_models_keep_glide_defaults(jobs):
    assert type(jobs.text2image).__name__ == "Text2ImagePipeline"
    assert jobs.default("generate", "guidance_scale") == 3.0
    assert jobs.default("inpaint", "guidance_scale") == 5.0
    assert jobs.default("generate", "steps") == "100"  # GLIDE's, the server setting none


def test_guidance_interval_from_the_page(jobs):
    """Issue 18: the guidance interval is a setting of the page too (empty: every step)."""
    out = jobs.generate("a red circle", 1, 3.0, "4", "ancestral", 1, False, False, "0.3,1")
    assert out.params["guidance_interval"] == [0.3, 1.0]
    out = jobs.generate("a red circle", steps="4", seed=1, random_seed=False, upsample=False,
                        guidance_interval="")  # fmt: skip
    assert out.params["guidance_interval"] is None
    with pytest.raises(InputError, match="Guidance interval"):
        jobs.generate("a red circle", steps="4", guidance_interval="0.9,0.1")


def test_a_fast_server_shows_and_runs_the_presets_options(jobs, tmp_path):
    config = dataclasses.replace(jobs.config, preset="fast", upsample_steps=None,
                                 workdir=tmp_path)  # fmt: skip
    fast = Jobs(config)
    assert fast.text2image.preset.name == fast.inpainter.preset.name == "fast"
    assert not fast.text2image.low_memory  # a server keeps its models loaded
    assert fast.default("generate", "steps") == "karras25"
    assert fast.default("generate", "sampler") == "dpm++2m"
    assert fast.default("inpaint", "guidance_interval") == (0.3, 1.0)
    assert fast.upsample_steps == "10"
    assert "preset `fast`" in fast.describe()
    _, opts = fast.options("generate", "a red circle", steps="karras4")
    assert (opts.steps, opts.sampler, opts.upsample_steps) == ("karras4", "dpm++2m", "10")
