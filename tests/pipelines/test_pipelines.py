"""Pipelines on tiny models: seeds, batches, samplers, inpainting, SDEdit, CLIP guidance, inputs,
PNG metadata and argument checks."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from helpers import (
    BASE_SIZE,
    FAST,
    UP_SIZE,
    random_picture,
    square_mask,
    tiny_models,
)
from PIL import Image

from glidekit.data.transforms import to_tensor
from glidekit.pipelines import (
    ClipGuidedPipeline,
    EditPipeline,
    InpaintPipeline,
    Text2ImagePipeline,
    UpsamplePipeline,
    available_samplers,
    read_png_params,
)
from glidekit.pipelines.images import (
    keep_tensors,
    load_replace_mask,
    load_source,
    prepare_keep_masks,
)


def px(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def t2i():
    m = tiny_models()
    return Text2ImagePipeline(base=m["base"], upsampler=m["upsample"], device="cpu")


@pytest.fixture(scope="module")
def inpaint():
    m = tiny_models()
    return InpaintPipeline(m["base-inpaint"], m["upsample-inpaint"], device="cpu")


@pytest.fixture(scope="module")
def edit():
    m = tiny_models()
    return EditPipeline(m["base"], m["upsample"], device="cpu")


# --------------------------------------------------------------------------- text to image


def test_seed_reproducibility_and_batch_layout(t2i):
    a = t2i(["a red circle", "a blue square"], num_images=2, seed=7, **FAST)
    b = t2i(["a red circle", "a blue square"], num_images=2, seed=7, **FAST)
    c = t2i(["a red circle", "a blue square"], num_images=2, seed=8, **FAST)
    assert len(a.images) == 4 and all(im.size == (UP_SIZE, UP_SIZE) for im in a.images)
    assert all(im.size == (BASE_SIZE, BASE_SIZE) for im in a.low_res)
    for x, y in zip(a.images, b.images, strict=True):
        assert np.array_equal(px(x), px(y))
    assert all(not np.array_equal(px(x), px(y)) for x, y in zip(a.images, c.images, strict=True))
    assert not np.array_equal(px(a.images[0]), px(a.images[1]))  # rows differ within a batch
    p = a.params
    assert p["prompts"] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert p["seed"] == 7 and p["num_images"] == 2 and p["guidance_scale"] == 3.0
    assert p["steps"] == "4" and p["sampler"] == "ancestral"
    assert p["upsample_steps"] == "ddim4" and p["upsample_sampler"] == "ddim"
    assert p["upsample_temp"] == 0.997 and p["pipeline"] == "text2image"
    assert a.image_params(3)["prompt"] == "a blue square" and a.image_params(3)["index"] == 3
    assert a.samples.shape == (4, 3, UP_SIZE, UP_SIZE)


def test_random_seed_is_recorded_and_reproduces(t2i):
    a = t2i("a cat", upsample=False, steps=3)
    b = t2i("a cat", upsample=False, steps=3, seed=a.params["seed"])
    assert isinstance(a.params["seed"], int)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))


def test_defaults_follow_the_notebook(t2i, monkeypatch):
    seen = []
    import glidekit.pipelines.engine as engine

    real = engine.GlidePipeline.sample_stage

    def spy(self, lm, prompts, stage, *a, **k):
        seen.append(stage)
        # Do not run 100 steps: just check what was asked, then run a short version.
        stage.steps = "2" if stage.low_res is None else "ddim2"
        return real(self, lm, prompts, stage, *a, **k)

    monkeypatch.setattr(engine.GlidePipeline, "sample_stage", spy)
    result = t2i("a corgi", seed=0)
    base, up = seen
    assert (base.guidance_scale, base.sampler, base.temperature) == (3.0, "ancestral", 1.0)
    assert (up.guidance_scale, up.sampler, up.temperature) == (None, "ddim", 0.997)
    assert result.params["steps"] == "100" and result.params["upsample_steps"] == "fast27"
    # The upsampler sees the base sample on the 8-bit grid.
    lr = up.low_res * 127.5 + 127.5
    assert torch.allclose(lr, lr.round(), atol=1e-3)


def test_upsample_off_and_guidance_changes_output(t2i):
    a = t2i("a red circle", seed=1, upsample=False, steps=4)
    b = t2i("a red circle", seed=1, upsample=False, steps=4, guidance_scale=0.0)
    assert a.images[0].size == (BASE_SIZE, BASE_SIZE) and a.low_res is None
    assert a.params["upsampler"] is None and "upsample_steps" not in a.params
    assert not np.array_equal(px(a.images[0]), px(b.images[0]))


def test_samplers_by_name(t2i):
    assert {"ancestral", "ddim", "dpm++2m"} <= set(available_samplers())
    ddim = t2i("x", seed=2, steps="ddim4", sampler="ddim", upsample=False)
    ddim_eta = t2i(
        "x", seed=2, steps="ddim4", sampler="ddim", sampler_options={"eta": 1.0}, upsample=False
    )
    dpm = t2i("x", seed=2, steps=4, sampler="dpm++2m", upsample=False)
    assert not np.array_equal(px(ddim.images[0]), px(ddim_eta.images[0]))
    assert dpm.params["sampler"] == "dpm++2m"
    with pytest.raises(ValueError, match="sampler_options"):
        t2i("x", sampler="ancestral", sampler_options={"eta": 1.0}, upsample=False, steps=2)


def test_callback_reports_every_step_and_cancels(t2i):
    seen = []
    t2i("x", seed=3, steps=4, upsample=True, upsample_steps=3,
        callback=lambda stage, k, n: seen.append((stage, k, n)))  # fmt: skip
    assert seen == [("base", k, 4) for k in range(1, 5)] + [("upsampler", k, 3) for k in (1, 2, 3)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(stage, k, n):
        if k == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        t2i("x", seed=3, steps=4, upsample=False, callback=cancel_at_two)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": []}, "prompt: empty list"),
        ({"num_images": 0}, "num_images must be >= 1"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be finite"),
        ({"guidance_scale": math.inf}, "guidance_scale must be finite"),
        ({"sampler": "euler"}, "sampler: unknown sampler 'euler'"),
        ({"upsample_sampler": "euler"}, "upsample_sampler: unknown sampler"),
        ({"steps": "fast99"}, "steps: .*fast99"),
        ({"upsample_steps": "ddimx"}, "upsample_steps: .*ddimx"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"upsample_temp": float("nan")}, "upsample_temp must be finite"),
        ({"seed": -1}, "seed must be in"),
    ],
)
def test_bad_arguments(t2i, kwargs, match):
    kwargs = {"prompt": "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        t2i(kwargs.pop("prompt"), **kwargs)


def test_type_errors(t2i):
    with pytest.raises(TypeError, match="num_images"):
        t2i("x", num_images=1.5)
    with pytest.raises(TypeError, match="prompt"):
        t2i(["x", 3])


# --------------------------------------------------------------------------- inpainting


def _inpaint_inputs(size=UP_SIZE):
    source = random_picture((size, size), seed=3)
    # White box = replace; aligned to the 4x low-res grid.
    mask = square_mask((size, size), (8, 4, 20, 24))
    return source, mask


def test_inpainting_keeps_the_known_region_after_the_upsampler(inpaint):
    source, mask = _inpaint_inputs()
    result = inpaint(["a corgi", "a cat"], source, mask, seed=0, num_images=1, **FAST)
    keep = np.asarray(mask) < 128
    src = px(source)
    for img in result.images:
        out = px(img)
        assert img.size == (UP_SIZE, UP_SIZE)
        assert np.abs(out - src)[keep].max() <= 1  # 8-bit rounding at most
        assert np.abs(out - src)[~keep].mean() > 10  # the hole was repainted
    # The low-res stage kept its (min-pooled) known region too.
    (keep_lo,) = keep_tensors(load_replace_mask(source, mask), [BASE_SIZE])
    src_lo = px(source.resize((BASE_SIZE, BASE_SIZE), Image.BICUBIC))
    k = keep_lo[0, 0].numpy() > 0.5
    assert k.any() and (~k).any()
    assert np.abs(px(result.low_res[0]) - src_lo)[k].max() <= 1
    assert (
        result.params["guidance_scale"] == 5.0
        and result.params["mask"] == f"<PIL image {UP_SIZE}x{UP_SIZE}>"
    )


def test_inpainting_without_upsampler_and_mask_from_alpha(inpaint):
    source, mask = _inpaint_inputs()
    rgba = source.convert("RGBA")
    alpha = Image.eval(mask, lambda v: 255 - v)  # transparent where the mask is white
    rgba.putalpha(alpha)
    a = inpaint("a corgi", source, mask, seed=4, **FAST)
    b = inpaint("a corgi", rgba, None, seed=4, **FAST)
    assert b.params["mask"] == "alpha"
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    c = inpaint("a corgi", source, mask, seed=4, upsample=False, steps=4)
    assert c.images[0].size == (BASE_SIZE, BASE_SIZE)
    with pytest.raises(ValueError, match="mask: no mask given and image has no alpha"):
        inpaint("a corgi", source, None, steps=2)


def test_inpainting_input_errors(inpaint):
    source, mask = _inpaint_inputs()
    with pytest.raises(ValueError, match="mask: mask size 16x16 does not match image size 32x32"):
        inpaint("x", source, mask.resize((16, 16)), steps=2)
    with pytest.raises(ValueError, match="fit: unknown fit"):
        inpaint("x", source, mask, fit="stretch", steps=2)
    with pytest.raises(FileNotFoundError, match="image: 'nope.png' is not a file"):
        inpaint("x", "nope.png", mask, steps=2)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        inpaint("x", source, mask, guidance_scale=float("inf"))


def test_inpainting_non_square_crop_and_pad(inpaint):
    wide = random_picture((48, 32), seed=5)
    mask = square_mask((48, 32), (20, 8, 28, 20))
    crop = inpaint("x", wide, mask, seed=0, fit="crop", **FAST)
    pad = inpaint("x", wide, mask, seed=0, fit="pad", **FAST)
    # crop: the centre 32x32 square; its known part is the source's.
    centre = px(wide.crop((8, 0, 40, 32)))
    keep = np.asarray(mask.crop((8, 0, 40, 32))) < 128
    assert np.abs(px(crop.images[0]) - centre)[keep].max() <= 1
    # pad: grey borders top and bottom (kept), the picture squeezed in between.
    out = px(pad.images[0])
    assert np.abs(out[:3] - 128).max() <= 2 and np.abs(out[-3:] - 128).max() <= 2


# --------------------------------------------------------------------------- SDEdit


def test_sdedit_small_strength_stays_close(edit):
    source = random_picture((UP_SIZE, UP_SIZE), seed=9)
    src = px(source)
    light = edit("a red circle", source, strength=0.05, seed=0, steps=20, upsample_steps="ddim20")
    heavy = edit("a red circle", source, strength=1.0, seed=0, steps=20, upsample_steps="ddim20")
    d_light = np.abs(px(light.images[0]) - src).mean()
    d_heavy = np.abs(px(heavy.images[0]) - src).mean()
    assert d_light < 6 and d_heavy > 4 * d_light
    assert light.params["strength"] == 0.05 and light.params["upsample_strength"] == 0.05
    # The base result alone is close too.
    src_lo = px(source.resize((BASE_SIZE, BASE_SIZE), Image.BICUBIC))
    assert np.abs(px(light.low_res[0]) - src_lo).mean() < 6
    again = edit("a red circle", source, strength=0.05, seed=0, steps=20, upsample_steps="ddim20")
    assert np.array_equal(px(again.images[0]), px(light.images[0]))


def test_sdedit_inside_a_mask(edit):
    source = random_picture((UP_SIZE, UP_SIZE), seed=10)
    mask = square_mask((UP_SIZE, UP_SIZE), (0, 0, 16, 32))  # edit the left half
    out = edit("a cat", source, strength=0.9, mask=mask, seed=1, **FAST)
    diff = np.abs(px(out.images[0]) - px(source))
    keep = np.asarray(mask) < 128
    assert diff[keep].max() <= 1 and diff[~keep].mean() > 5
    # With the inpainting models as well.
    m = tiny_models()
    pipe = EditPipeline(m["base-inpaint"], m["upsample-inpaint"], device="cpu")
    out = pipe("a cat", source, strength=0.9, mask=mask, seed=1, **FAST)
    assert np.abs(px(out.images[0]) - px(source))[keep].max() <= 1


@pytest.mark.parametrize("strength", [0, -0.5, 1.5, float("nan")])
def test_sdedit_strength_range(edit, strength):
    with pytest.raises(ValueError, match="strength must be"):
        edit("x", random_picture((16, 16)), strength=strength)


# --------------------------------------------------------------------------- inputs


def _exif_rotated_jpeg() -> bytes:
    """A 32x16 JPEG, left half red, right half blue, tagged "rotate 90 CW to display"."""
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    img.paste((0, 0, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_inputs_as_users_have_them(tmp_path, edit):
    # EXIF: displayed 16 wide, 32 tall; red on top after the rotation.
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_exif_rotated_jpeg())
    sq = load_source(path, "pad")
    assert sq.size == (32, 32)
    arr = np.asarray(sq).astype(int)
    assert arr[4, 16, 0] > 200 and arr[4, 16, 2] < 60  # red on top
    assert arr[28, 16, 2] > 200 and arr[28, 16, 0] < 60  # blue below
    assert np.abs(arr[:, :4] - 128).max() <= 2  # grey padding at the sides
    # Grayscale, palette, 16-bit, RGBA: all become RGB pictures.
    gray = random_picture((40, 40), mode="L")
    assert load_source(gray).mode == "RGB"
    assert np.array_equal(np.asarray(load_source(gray))[..., 0], np.asarray(gray))
    pal = random_picture((40, 40)).convert("P")
    assert load_source(pal).mode == "RGB"
    sixteen = Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert np.asarray(load_source(sixteen)).max() > 200
    rgba = random_picture((40, 40)).convert("RGBA")
    for source in (path, gray, pal, sixteen, rgba, path.read_bytes()):
        out = edit("x", source, strength=0.3, seed=0, **FAST)
        assert out.images[0].size == (UP_SIZE, UP_SIZE)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="image: cannot read"):
        load_source(tmp_path / "bad.png")


def test_mask_conventions():
    img = random_picture((32, 32))
    white_left = square_mask((32, 32), (0, 0, 16, 32))
    (keep,) = prepare_keep_masks(img, white_left, [32])
    assert keep[0, 0, :, :16].sum() == 0 and keep[0, 0, :, 16:].min() == 1  # white = replace
    as_tensor = torch.zeros(32, 32)
    as_tensor[:, :16] = 1  # 1 = replace
    (keep_t,) = prepare_keep_masks(img, as_tensor, [32])
    assert torch.equal(keep, keep_t)
    rgb_mask = white_left.convert("RGB")
    assert torch.equal(prepare_keep_masks(img, rgb_mask, [32])[0], keep)
    # A low-res pixel is known only if all the pixels it covers are.
    odd = square_mask((32, 32), (0, 0, 17, 32))
    k32, k8 = prepare_keep_masks(img, odd, [32, 8])
    assert k8[0, 0, 0, :5].sum() == 0 and k8[0, 0, 0, 5:].min() == 1
    assert k32.shape == (1, 1, 32, 32)


# --------------------------------------------------------------------------- upsampler, CLIP


def test_upsample_pipeline():
    pipe = UpsamplePipeline(upsampler=tiny_models()["upsample"], device="cpu")
    small = random_picture((24, 24), seed=1)
    a = pipe("a red circle", small, seed=3, steps="ddim4", num_images=2)
    b = pipe("a red circle", small, seed=3, steps="ddim4", num_images=2)
    assert [im.size for im in a.images] == [(UP_SIZE, UP_SIZE)] * 2
    assert np.array_equal(px(a.images[1]), px(b.images[1]))
    assert a.params["low_res_size"] == UP_SIZE // 4 and a.params["base"] is None
    with pytest.raises(ValueError, match="sampler: unknown"):
        pipe("x", small, sampler="nope")


@pytest.fixture(scope="module")
def tiny_clip():
    from glidekit.clip import CLIPConfig, create_clip_model

    torch.manual_seed(0)
    config = CLIPConfig(
        image_size=BASE_SIZE,
        patch_size=4,
        n_vocab=49408,
        n_embd=32,
        n_head_state_text=16,
        n_head_text=2,
        n_xf_blocks_text=1,
        n_head_state_image=16,
        n_head_image=2,
        n_xf_blocks_image=1,
    )
    clip = create_clip_model(config)
    with torch.no_grad():
        for p in clip.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.1)
    return clip


def test_clip_guided(tiny_clip):
    m = tiny_models()
    pipe = ClipGuidedPipeline(m["base"], m["upsample"], clip=tiny_clip, device="cpu")
    a = pipe(["a red circle", "a cat"], seed=5, **FAST)
    b = pipe(["a red circle", "a cat"], seed=5, **FAST)
    off = pipe(["a red circle", "a cat"], seed=5, guidance_scale=0.0, **FAST)
    assert [im.size for im in a.images] == [(UP_SIZE, UP_SIZE)] * 2
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    assert not np.array_equal(px(a.low_res[0]), px(off.low_res[0]))  # the gradient acts
    assert a.params["guidance"] == "clip" and a.params["clip"] == "custom"
    ddim = pipe("a cat", seed=5, sampler="ddim", steps="ddim4", upsample=False)
    assert ddim.images[0].size == (BASE_SIZE, BASE_SIZE)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        pipe("x", guidance_scale=float("nan"))
    other = ClipGuidedPipeline(m["base-inpaint"], None, clip=tiny_clip, device="cpu")
    assert other("x", seed=0, steps=2).images[0].size == (BASE_SIZE, BASE_SIZE)
    wrong = ClipGuidedPipeline(m["upsample"], None, clip=tiny_clip, device="cpu")
    with pytest.raises(ValueError, match="base: .*super-resolution"):
        wrong("x", steps=2)


# --------------------------------------------------------------------------- saving


def test_png_metadata_round_trip_and_no_overwrite(t2i, tmp_path):
    result = t2i(["a red circle", "a cat"], seed=11, upsample=False, steps=3)
    paths = result.save(tmp_path, grid=True)
    assert [p.name for p in paths] == [
        "a-red-circle-s11-0.png",
        "a-cat-s11-1.png",
        "a-red-circle-s11-grid.png",
    ]
    for i, path in enumerate(paths[:2]):
        params = read_png_params(path)
        assert params == {**result.params, "index": i, "prompt": result.params["prompts"][i]}
        with Image.open(path) as img:
            assert img.text["prompt"] == params["prompt"] and img.text["seed"] == "11"
            assert img.text["sampler"] == "ancestral" and img.text["steps"] == "3"
            assert img.text["guidance_scale"] == "3.0" and img.text["model"] == "custom"
            assert np.array_equal(px(img.convert("RGB")), px(result.images[i]))
    before = paths[0].read_bytes()
    again = result.save(tmp_path)
    assert [p.name for p in again] == ["a-red-circle-s11-0-1.png", "a-cat-s11-1-1.png"]
    assert paths[0].read_bytes() == before
    assert Image.open(paths[2]).size == (2 * BASE_SIZE, BASE_SIZE)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(ValueError, match="no glidekit parameters"):
        read_png_params(plain)


def test_tensor_source_matches_pil(edit):
    source = random_picture((UP_SIZE, UP_SIZE), seed=12)
    a = edit("x", source, strength=0.5, seed=0, **FAST)
    b = edit("x", to_tensor(source), strength=0.5, seed=0, **FAST)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))


def test_same_numbers_as_the_notebook_flow(t2i):
    """The pipeline equals the official notebook's code path (via glidekit.compat) for a seed."""
    from glidekit.compat import create_gaussian_diffusion
    from glidekit.guidance import ClassifierFreeGuidance
    from glidekit.tokenizer import GPT2Tokenizer, tokenize_batch

    m = tiny_models()
    base, up = m["base"], m["upsample"]
    prompt, ctx = "an oil painting of a corgi", base.config.text_ctx
    torch.manual_seed(21)
    diffusion = create_gaussian_diffusion(1000, "squaredcos_cap_v2", "4")
    tokens, mask = tokenize_batch(GPT2Tokenizer(ctx), [prompt, ""], ctx)
    samples = diffusion.p_sample_loop(
        ClassifierFreeGuidance(base, 3.0),
        (2, 3, BASE_SIZE, BASE_SIZE),
        device="cpu",
        clip_denoised=True,
        model_kwargs={"tokens": tokens, "mask": mask},
    )[:1]
    diffusion_up = create_gaussian_diffusion(1000, "linear", "ddim4")
    up_shape = (1, 3, UP_SIZE, UP_SIZE)
    up_samples = diffusion_up.ddim_sample_loop(
        up,
        up_shape,
        noise=torch.randn(up_shape) * 0.997,
        device="cpu",
        clip_denoised=True,
        model_kwargs={
            "low_res": ((samples + 1) * 127.5).round() / 127.5 - 1,
            "tokens": tokens[:1],
            "mask": mask[:1],
        },
    )
    result = t2i(prompt, seed=21, **FAST)
    assert torch.allclose(result.samples, up_samples.clamp(-1, 1), atol=1e-5)
    expected_low = ((samples.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(px(result.low_res[0]), expected_low.astype(np.int16))


def test_bf16_cpu_fast_path_stays_close_to_fp32():
    m = tiny_models()
    fp32 = Text2ImagePipeline(base=m["base"], upsampler=m["upsample"], device="cpu")
    bf16 = Text2ImagePipeline(
        base=tiny_models()["base"], upsampler=tiny_models()["upsample"], device="cpu", dtype="bf16"
    )
    kw = {"seed": 4, "steps": 4, "sampler": "dpm++2m", "upsample_steps": "ddim4"}
    a, b = fp32("a red circle", **kw), bf16("a red circle", **kw)
    assert b.params["dtype"] == "bf16" and a.params["dtype"] == "fp32"
    assert bf16.base.model.input_blocks[0][0].weight.dtype == torch.bfloat16
    diff = np.abs(px(a.images[0]).astype(int) - px(b.images[0]).astype(int))
    assert 0 < diff.mean() < 6.0, diff.mean()  # same picture, bf16 rounding only


def test_unknown_words_are_named_in_a_warning(tmp_path, monkeypatch, caplog):
    """Issue 19 item 2: a prompt the embedded (closed-vocabulary) base cannot read is said,
    in Python too; the params name the embedded models by package-relative names."""
    import logging

    from glidekit.pipelines import Text2ImagePipeline as Pipe

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty"))
    pipe = Pipe.from_pretrained(upsampler=None, device="cpu")
    with caplog.at_level(logging.WARNING, logger="glidekit.pipelines.engine"):
        result = pipe("an oil painting of a corgi", steps=2, seed=0)
    assert "'oil', 'painting', 'of', 'corgi'" in caplog.text and "'an'" in caplog.text
    assert result.params["base"] == "embedded:shapes-base.safetensors"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="glidekit.pipelines.engine"):
        pipe("a red circle in the top left", steps=2, seed=0)
    assert "does not know" not in caplog.text


def test_a_seed_per_prompt_keeps_each_item_as_it_is_alone(t2i):
    """Issue 18: with one seed per prompt each item's noise comes from its own generator, so
    its images do not depend on what it is batched with (within 1/255: the kernels of this CPU
    are not batch-invariant); its params are those of the item alone."""
    kw = {"steps": 4, "upsample": False}
    batch = t2i(["a red circle", "a blue square", "a cat"], seed=[5, 6, 7], num_images=2, **kw)
    alone = t2i("a blue square", seed=6, num_images=2, **kw)
    item = batch.items()[1]
    assert item.params["seed"] == 6 and item.params["prompts"] == alone.params["prompts"]
    for x, y in zip(item.images, alone.images, strict=True):
        assert np.abs(px(x) - px(y)).max() <= 1
    assert batch.image_params(3)["seed"] == 6  # row 3: the second prompt's second image
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        t2i(["a", "b", "c"], seed=[1, 2], **kw)
