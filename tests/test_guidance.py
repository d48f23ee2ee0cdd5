"""CLIP guidance composes with classifier-free guidance and with inpainting, in every sampler."""

import pytest
import torch
from conftest import REFERENCE, load_golden, strip_prefix
from helpers import golden_model

from glidekit.clip import CLIPConfig, create_clip_model
from glidekit.diffusion import GaussianDiffusion, sample
from glidekit.guidance import ClassifierFreeGuidance, clip_cond_fn, known_region_replacer

VOCAB = REFERENCE / "vocab" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def clip():
    meta, tensors = load_golden("clip")
    model = create_clip_model(CLIPConfig.from_dict(meta["config_yaml"]), tokenizer=VOCAB)
    model.image_encoder.load_state_dict(strip_prefix(tensors, "clip_image_enc."))
    model.text_encoder.load_state_dict(strip_prefix(tensors, "clip_text_enc."))
    return model.eval()


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm++2m"])
def test_clip_with_cfg_and_inpainting(clip, sampler):
    model, t = golden_model("inpaint_forward")  # 32 px, as the fixture CLIP
    diffusion = GaussianDiffusion.from_config(timestep_respacing="6")
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 10:24, 10:24] = 0  # fill the middle
    kw = {
        "tokens": torch.stack([t["in.tokens"][0], torch.full_like(t["in.tokens"][0], 50256)]),
        "mask": torch.stack([t["in.mask"][0], torch.zeros_like(t["in.mask"][0])]),
        "inpaint_image": image.repeat(2, 1, 1, 1),
        "inpaint_mask": mask.repeat(2, 1, 1, 1),
    }
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def run(cond_fn):
        return sample(
            diffusion,
            ClassifierFreeGuidance(model, 3.0),
            (2, 3, 32, 32),
            sampler=sampler,
            noise=noise,
            model_kwargs=kw,
            cond_fn=cond_fn,
            denoised_fn=known_region_replacer(kw["inpaint_image"], kw["inpaint_mask"]),
            generator=torch.Generator().manual_seed(2),
        )

    plain = run(None)
    guided = run(clip_cond_fn(clip, ["a corgi in a field"], 30.0))
    hole = ~mask.bool().expand(2, 3, 32, 32)
    # CLIP's gradient moved the region being filled ...
    assert (guided - plain)[hole].abs().mean() > 1e-3
    # ... and the final image is a valid picture. Ancestral and DDIM move x_t after the x_0
    # replacement, so their known region is close; DPM-Solver++ returns the replaced x_0.
    assert guided.abs().max() <= 1.0 + 1e-3
    known = ~hole
    if sampler == "dpm++2m":
        torch.testing.assert_close(guided[known], kw["inpaint_image"][known])
