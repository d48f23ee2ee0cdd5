"""Tiny models for the pipeline and CLI tests, and the model-loading side of the pipelines.

The models are GLIDE-shaped but small: an 8x8 base, an 8 -> 32 upsampler and their
inpainting variants, with the zero-initialised output layers perturbed so outputs are not
trivial. Saved as glidekit model files they load like trained ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (  # noqa: F401
    BASE_SIZE,
    FAST,
    UP_SIZE,
    random_picture,
    save_tiny_models,
    square_mask,
    tiny_models,
)

from glidekit.pipelines import Text2ImagePipeline, resolve_device, resolve_dtype
from glidekit.pipelines.slots import ModelSlot
from glidekit.pipelines.sources import default_source

# --------------------------------------------------------------------------- tests


def test_from_pretrained_paths_load_lazily_and_once(bundles, monkeypatch):
    import glidekit.pipelines.slots as slots_mod

    calls = []
    real = slots_mod.load_unet
    monkeypatch.setattr(slots_mod, "load_unet", lambda *a, **k: calls.append(a) or real(*a, **k))
    pipe = Text2ImagePipeline.from_pretrained(
        str(bundles["base"]), bundles["upsample"], device="cpu"
    )
    assert calls == []  # nothing loaded yet
    r1 = pipe("a red circle", seed=1, **FAST)
    r2 = pipe("a red circle", seed=1, **FAST)
    assert len(calls) == 2  # base and upsampler, once each
    assert r1.images[0].size == (UP_SIZE, UP_SIZE)
    assert np.array_equal(np.asarray(r1.images[0]), np.asarray(r2.images[0]))
    assert r1.params["base"] == str(bundles["base"].absolute())
    assert r1.params["upsampler"] == str(bundles["upsample"].absolute())


def test_compile_runs_the_compiled_model_and_matches_eager(bundles):
    # One real torch.compile (inductor, C++ on the CPU): about a minute on 2 cores.
    compiled = Text2ImagePipeline(bundles["base"], None, device="cpu", compile=True)
    eager = Text2ImagePipeline(bundles["base"], None, device="cpu")
    got = compiled("a red circle", seed=5, steps="ddim3")
    want = eager("a red circle", seed=5, steps="ddim3")
    model = compiled.base.model
    assert model._compiled_call_impl is not None  # nn.Module.compile() took
    assert eager.base.model._compiled_call_impl is None
    diff = np.abs(np.asarray(got.images[0], np.int16) - np.asarray(want.images[0], np.int16))
    assert diff.max() <= 2, diff.max()  # fused kernels round differently, by a hair
    with pytest.raises(TypeError, match="compile"):
        Text2ImagePipeline(bundles["base"], device="cpu", compile=1)


def test_low_memory_holds_one_model_at_a_time_and_gives_the_same_images(bundles, monkeypatch):
    import glidekit.pipelines.slots as bundle_mod

    pipe = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu", low_memory=True)
    loads, resident = [], []
    real = bundle_mod.load_unet

    def spy(*a, **k):
        resident.append([s.loaded for s in (pipe.base_slot, pipe.upsampler_slot)])
        loads.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(bundle_mod, "load_unet", spy)
    low = pipe("a red circle", seed=3, **FAST)
    assert [Path(p).name for p in loads] == [bundles["base"].name, bundles["upsample"].name]
    assert resident == [[False, False], [False, False]]  # the base went before the upsampler came
    assert pipe.upsampler_slot.loaded and not pipe.base_slot.loaded
    plain = Text2ImagePipeline(bundles["base"], bundles["upsample"], device="cpu")
    want = plain("a red circle", seed=3, **FAST)
    assert np.array_equal(np.asarray(low.images[0]), np.asarray(want.images[0]))
    with pytest.raises(TypeError, match="low_memory"):
        Text2ImagePipeline(bundles["base"], device="cpu", low_memory="yes")

    # Inpainting sizes its inputs from the model files' configs: still one load per model.
    from glidekit.pipelines import InpaintPipeline

    loads.clear()
    inpaint = InpaintPipeline(
        bundles["base-inpaint"], bundles["upsample-inpaint"], device="cpu", low_memory=True
    )
    picture = random_picture((UP_SIZE, UP_SIZE), seed=1)
    result = inpaint("a dog", picture, square_mask((UP_SIZE, UP_SIZE), (2, 2, 12, 12)), seed=0,
                     **FAST)  # fmt: skip
    assert result.images[0].size == (UP_SIZE, UP_SIZE)
    assert [Path(p).name for p in loads] == [
        bundles["base-inpaint"].name,
        bundles["upsample-inpaint"].name,
    ]


def test_built_models_and_tuples(bundles):
    from glidekit.checkpoints.modelfile import load_unet as load_model

    m = tiny_models()
    a = Text2ImagePipeline(base=m["base"], upsampler=None, device="cpu")("x", seed=0, steps=3)
    b = Text2ImagePipeline(base=load_model(bundles["base"]), upsampler=None, device="cpu")(
        "x", seed=0, steps=3
    )
    assert a.images[0].size == (BASE_SIZE, BASE_SIZE)
    assert a.params["base"] == "custom" and a.params["upsampler"] is None
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_wrong_model_kinds_are_reported(bundles):
    pipe = Text2ImagePipeline(bundles["upsample"], None, device="cpu")
    with pytest.raises(ValueError, match="base: .*super-resolution"):
        pipe("x", steps=2)
    pipe = Text2ImagePipeline(bundles["base"], bundles["base"], device="cpu")
    with pytest.raises(ValueError, match="upsampler: .*not a super-resolution"):
        pipe("x", **FAST)
    with pytest.raises(FileNotFoundError, match="base: .*neither a released model name"):
        Text2ImagePipeline("no/such/model.safetensors", None, device="cpu")("x")


def test_default_models_hook(bundles, monkeypatch, tmp_path):
    import glidekit.models as embedded

    # No embedded model files and nothing cached: the released names.
    monkeypatch.setattr(embedded, "MODELS_DIR", tmp_path)
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "cache"))
    assert default_source("base") == "base" and default_source("upsampler") == "upsample"
    pipe = Text2ImagePipeline.from_pretrained(device="cpu")
    assert pipe.base_slot.label == "base" and pipe.upsampler_slot.label == "upsample"
    assert not pipe.base_slot.loaded
    # An embedded base and no embedded upsampler: base images only.
    (tmp_path / embedded.EMBEDDED_FILES["base"]).write_bytes(bundles["base"].read_bytes())
    pipe = Text2ImagePipeline.from_pretrained(device="cpu")
    assert pipe.upsampler_slot is None
    result = pipe("a red circle", seed=0, steps=3)
    assert result.images[0].size == (BASE_SIZE, BASE_SIZE)
    assert default_source("base_inpaint") == "base-inpaint"  # no embedded inpainting base


def test_device_and_dtype_choice(caplog):
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    with caplog.at_level("WARNING"):
        assert resolve_dtype("fp16", cpu) == torch.float32
    assert "float32" in caplog.text
    assert resolve_dtype("bf16", cpu) == torch.bfloat16  # the CPU fast path
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ValueError, match="device"):
        resolve_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: .*CUDA"):
            resolve_device("cuda")


def test_slot_rejects_other_objects():
    with pytest.raises(TypeError, match="base"):
        ModelSlot(42, "base").get(torch.device("cpu"), torch.float32)
