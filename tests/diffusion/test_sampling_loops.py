"""Whole sampling loops against the official ones: a seed gives the official image."""

import pytest
import torch
from conftest import load_golden
from helpers import golden_model

from glidekit.compat import create_model_and_diffusion, model_and_diffusion_defaults
from glidekit.diffusion import GaussianDiffusion, sample, sample_progressive
from glidekit.guidance import ClassifierFreeGuidance, known_region_replacer

META, L = load_golden("sampling_loops")
ATOL = 1e-3  # the fixture's float32 kernel-to-kernel spread is ~6e-5 after 10 steps


def diffusion_for(loop: str) -> GaussianDiffusion:
    opts = META["loops"][loop]["options"]
    return GaussianDiffusion.from_config(opts["noise_schedule"], 1000, opts["timestep_respacing"])


def test_cfg_ancestral_loop_every_step():
    model, _ = golden_model("text2im_forward")
    diffusion = diffusion_for("cfg")
    torch.manual_seed(META["loops"]["cfg"]["seed"])
    steps = list(
        sample_progressive(
            diffusion,
            ClassifierFreeGuidance(model, 3.0),
            (4, 3, 32, 32),
            noise=L["cfg.in.noise"],
            model_kwargs={"tokens": L["cfg.in.tokens"], "mask": L["cfg.in.mask"]},
        )
    )
    assert [s.t for s in steps] == list(range(9, -1, -1))
    samples = torch.stack([s.sample for s in steps])
    pred = torch.stack([s.pred_xstart for s in steps])
    torch.testing.assert_close(samples, L["cfg.steps.sample"], atol=ATOL, rtol=0)
    torch.testing.assert_close(pred, L["cfg.steps.pred_xstart"], atol=ATOL, rtol=0)
    torch.testing.assert_close(samples[-1], L["cfg.out.samples"], atol=ATOL, rtol=0)


def test_cfg_loop_with_generator_noise_equals_global_rng():
    """The RNG protocol: one randn of x's shape per step after the model call."""
    model, _ = golden_model("text2im_forward")
    diffusion = diffusion_for("cfg")
    kw = {"tokens": L["cfg.in.tokens"], "mask": L["cfg.in.mask"]}
    gen = torch.Generator().manual_seed(4242)
    out = sample(
        diffusion,
        ClassifierFreeGuidance(model, 3.0),
        (4, 3, 32, 32),
        noise=L["cfg.in.noise"],
        model_kwargs=kw,
        generator=gen,
    )
    torch.testing.assert_close(out, L["cfg.out.samples"], atol=ATOL, rtol=0)
    # and the draws are exactly the recorded ones
    gen = torch.Generator().manual_seed(4242)
    draws = torch.stack([torch.randn((4, 3, 32, 32), generator=gen) for _ in range(10)])
    assert torch.equal(draws, L["cfg.rng.noises"])


def test_ddim_loop_is_deterministic():
    model, _ = golden_model("text2im_forward")
    kw = {"tokens": L["ddim.in.tokens"], "mask": L["ddim.in.mask"]}
    steps = list(
        sample_progressive(
            diffusion_for("cfg"),
            model,
            (2, 3, 32, 32),
            sampler="ddim",
            noise=L["ddim.in.noise"],
            model_kwargs=kw,
        )
    )
    torch.testing.assert_close(
        torch.stack([s.sample for s in steps]), L["ddim.steps.sample"], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        torch.stack([s.pred_xstart for s in steps]), L["ddim.steps.pred_xstart"], atol=ATOL, rtol=0
    )


def test_inpainting_loop_with_cfg_and_known_region():
    model, _ = golden_model("inpaint_forward")
    kw = {
        "tokens": L["inpaint.in.tokens"],
        "mask": L["inpaint.in.mask"],
        "inpaint_image": L["inpaint.in.inpaint_image"],
        "inpaint_mask": L["inpaint.in.inpaint_mask"],
    }
    torch.manual_seed(META["loops"]["inpaint"]["seed"])
    steps = list(
        sample_progressive(
            diffusion_for("inpaint"),
            ClassifierFreeGuidance(model, 5.0),
            (2, 3, 32, 32),
            noise=L["inpaint.in.noise"],
            model_kwargs=kw,
            denoised_fn=known_region_replacer(kw["inpaint_image"], kw["inpaint_mask"]),
        )
    )
    torch.testing.assert_close(
        torch.stack([s.sample for s in steps]), L["inpaint.steps.sample"], atol=ATOL, rtol=0
    )
    final = steps[-1].sample
    torch.testing.assert_close(final, L["inpaint.out.samples"], atol=ATOL, rtol=0)
    # The known rows come back as the source (to float rounding).
    known = kw["inpaint_mask"].bool().expand_as(final)
    torch.testing.assert_close(final[known], kw["inpaint_image"][known], atol=1e-4, rtol=0)


def test_super_res_fast27_ddim_loop():
    model, _ = golden_model("super_res_forward")
    kw = {"tokens": L["sr.in.tokens"], "mask": L["sr.in.mask"], "low_res": L["sr.in.low_res"]}
    diffusion = diffusion_for("super_res")
    assert diffusion.timestep_map == META["loops"]["super_res"]["use_timesteps"]
    steps = list(
        sample_progressive(
            diffusion,
            model,
            (1, 3, 64, 64),
            sampler="ddim",
            noise=L["sr.in.noise"],
            model_kwargs=kw,
        )
    )
    assert len(steps) == 27
    torch.testing.assert_close(
        torch.stack([s.sample for s in steps]), L["sr.steps.sample"], atol=ATOL, rtol=0
    )
    # The fixture's start noise is the official upsample_temp recipe.
    torch.manual_seed(6161)
    torch.testing.assert_close(torch.randn(1, 3, 64, 64) * 0.997, L["sr.in.noise"])


def test_compat_loops_match_samplers():
    opts = model_and_diffusion_defaults()
    opts.update(META["loops"]["cfg"]["options"])
    model, diffusion = create_model_and_diffusion(**opts)
    golden, _ = golden_model("text2im_forward")
    model.load_state_dict(golden.state_dict())
    model.eval()
    kw = {"tokens": L["ddim.in.tokens"], "mask": L["ddim.in.mask"]}
    out = diffusion.ddim_sample_loop(
        model, (2, 3, 32, 32), noise=L["ddim.in.noise"], model_kwargs=kw
    )
    torch.testing.assert_close(out, L["ddim.out.samples"], atol=ATOL, rtol=0)


def test_guidance_errors():
    model, _ = golden_model("text2im_forward")
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="guidance_scale"):
            ClassifierFreeGuidance(model, bad)
    with pytest.raises(TypeError, match="guidance_scale"):
        ClassifierFreeGuidance(model, "3")
    cfg = ClassifierFreeGuidance(model, 3.0)
    with pytest.raises(ValueError, match="even batch"):
        cfg(torch.zeros(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="inpaint_mask"):
        known_region_replacer(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="agree"):
        known_region_replacer(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 4))


def test_sampler_errors():
    model, _ = golden_model("text2im_forward")
    d = diffusion_for("cfg")
    with pytest.raises(ValueError, match="sampler"):
        sample(d, model, (1, 3, 32, 32), sampler="euler-ish")
    with pytest.raises(ValueError, match="noise must have shape"):
        sample(d, model, (1, 3, 32, 32), noise=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="eta"):
        sample(d, model, (1, 3, 32, 32), sampler="ddim", eta=2.0)
