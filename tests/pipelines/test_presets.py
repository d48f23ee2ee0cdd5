"""Named presets (``preset="fast"``): the dtype and memory use they choose per device, the run
options they layer between the ones given and the model file's, and their record in params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glidekit.pipelines.devices as devices
from glidekit.errors import OptionError
from glidekit.pipelines import (
    PRESETS,
    EditOptions,
    InpaintPipeline,
    Text2ImageOptions,
    Text2ImagePipeline,
    UpsampleOptions,
    UpsamplePipeline,
)
from glidekit.pipelines.presets import get_preset

CPU = torch.device("cpu")


def _features(monkeypatch, **flags: bool) -> None:
    info = {"cpu": "test CPU", **dict.fromkeys(devices.BF16_FEATURES, False), **flags}
    monkeypatch.setattr(devices, "cpu_info", lambda: dict(info))


def test_names_and_unknown_preset(bundles):
    assert set(PRESETS) == {"official", "fast"}
    assert get_preset(None).name == "official" and get_preset(" Fast ").name == "fast"
    with pytest.raises(OptionError, match="unknown preset 'turbo'; expected one of official, fast"):
        get_preset("turbo")
    with pytest.raises(OptionError) as info:
        Text2ImagePipeline(bundles["base"], device="cpu", preset="turbo")
    assert info.value.arg == "preset"


@pytest.mark.parametrize(
    ("flags", "want"),
    [({"avx512_bf16": True}, torch.bfloat16), ({"amx_bf16": True}, torch.bfloat16),
     ({"avx512f": True}, torch.float32), ({}, torch.float32)],
)  # fmt: skip
def test_fast_dtype_on_the_cpu_follows_its_bf16_instructions(bundles, monkeypatch, flags, want):
    _features(monkeypatch, **flags)
    pipe = Text2ImagePipeline(bundles["base"], device="cpu", preset="fast")
    assert pipe.dtype == want and pipe.low_memory is True
    # What is asked for explicitly wins over the preset.
    pipe = Text2ImagePipeline(bundles["base"], device="cpu", preset="fast", dtype="fp32",
                              low_memory=False)  # fmt: skip
    assert pipe.dtype == torch.float32 and pipe.low_memory is False


def test_fast_dtype_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fast = PRESETS["fast"]
    assert fast.dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert fast.dtype(torch.device("cuda")) == torch.float16
    assert fast.dtype(torch.device("mps")) == torch.float16
    assert not fast.low_memory(torch.device("cuda")) and fast.low_memory(CPU)
    official = PRESETS["official"]
    assert official.dtype(torch.device("cuda")) == torch.float16
    assert official.dtype(CPU) == torch.float32 and not official.low_memory(CPU)


def test_official_is_todays_default(bundles):
    plain = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu")
    official = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu",
                                  preset="official")  # fmt: skip
    assert plain.preset.name == "official" and plain.low_memory is False
    assert plain.dtype == official.dtype == torch.float32
    assert plain.build_options({"seed": 1}) == Text2ImageOptions(seed=1)
    assert official.build_options({"seed": 1}) == Text2ImageOptions(seed=1)


def test_fast_options_sit_between_given_and_model_defaults(bundles):
    pipe = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu", preset="fast")
    opts = pipe.build_options({"seed": 1})
    assert (opts.steps, opts.sampler) == ("karras25", "dpm++2m")
    assert opts.guidance_interval == (0.3, 1.0)
    assert (opts.upsample_steps, opts.upsample_sampler) == ("10", "dpm++2m")
    assert opts.guidance_scale == 3.0  # not the preset's: GLIDE's
    given = pipe.build_options({"seed": 1, "steps": "ddim7", "guidance_interval": None})
    assert given.steps == "ddim7" and given.sampler == "dpm++2m"
    assert given.guidance_interval is None  # given explicitly: every step guided
    # The preset wins over a model file's own defaults; what it does not set, the model keeps.
    fast = PRESETS["fast"].options_for(Text2ImageOptions)
    model = {"guidance_scale": 4.0, "steps": "250", "upsample_temp": 0.9}
    built = Text2ImageOptions.build({}, model, fast)
    assert (built.guidance_scale, built.steps, built.upsample_temp) == (4.0, "karras25", 0.9)
    # Its options are made for classifier-free guidance: a CLIP-guided run keeps the model's.
    clip_model = {"guidance": "clip", "guidance_scale": 20.0, "steps": "250"}
    built = Text2ImageOptions.build({}, clip_model, fast)
    assert (built.guidance, built.steps, built.sampler) == ("clip", "250", "ancestral")
    assert built.guidance_interval is None
    built = Text2ImageOptions.build({"guidance": "classifier-free"}, clip_model, fast)
    assert (built.steps, built.guidance_scale) == ("karras25", 3.0)  # neither set is the model's


def test_each_pipeline_takes_the_fast_options_it_has(bundles):
    fast = PRESETS["fast"]
    assert fast.options_for(UpsampleOptions) == {"steps": "10", "sampler": "dpm++2m"}
    edit = fast.options_for(EditOptions)
    assert edit["steps"] == "karras25" and "guidance" not in edit
    for cls in (Text2ImageOptions, EditOptions, UpsampleOptions):
        cls.build({"seed": 0}, {}, fast.options_for(cls))  # every value passes its check
    assert UpsamplePipeline(None, bundles["upsample"], device="cpu",
                            preset="fast").build_options({}).steps == "10"  # fmt: skip


def test_a_fast_run_is_its_options_and_is_recorded(bundles, monkeypatch):
    _features(monkeypatch, avx512_bf16=True)
    fast = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu", preset="fast")
    got = fast("a red circle", seed=3, steps="karras6", upsample_steps="4")
    assert got.params["preset"] == "fast" and got.params["dtype"] == "bf16"
    assert got.params["sampler"] == "dpm++2m" and got.params["guidance_interval"] == [0.3, 1.0]
    # The same options spelled out on an official pipeline of the same dtype: the same pixels.
    plain = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu", dtype="bf16")
    want = plain("a red circle", seed=3, steps="karras6", sampler="dpm++2m",
                 guidance_interval=(0.3, 1.0), upsample_steps="4", upsample_sampler="dpm++2m")  # fmt: skip
    assert want.params["preset"] == "official"
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))


def test_inpainting_runs_with_the_fast_preset(bundles, monkeypatch):
    from helpers import random_picture, square_mask

    _features(monkeypatch)
    pipe = InpaintPipeline(bundles["base-inpaint"], bundles["upsample-inpaint"], device="cpu",
                           preset="fast")  # fmt: skip
    picture = random_picture((32, 32), seed=1)
    mask = square_mask((32, 32), (0, 0, 16, 16))
    out = pipe("a red circle", picture, mask, seed=0, steps="karras4", upsample_steps="3")
    assert out.params["preset"] == "fast" and out.params["sampler"] == "dpm++2m"
    kept = np.asarray(out.images[0], np.int16)[20:, 20:]
    source = np.asarray(picture.resize(out.images[0].size), np.int16)[20:, 20:]
    assert np.abs(kept - source).max() <= 2  # the known region is kept under the fast sampler
