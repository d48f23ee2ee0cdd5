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


def _text_guidance_inputs():
    model, _ = golden_model("text2im_forward")
    cfg = model.config
    tokens = torch.randint(
        0, cfg.n_vocab, (4, cfg.text_ctx), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones(4, cfg.text_ctx, dtype=torch.bool)
    mask[2:, 1:] = False  # the unconditional half: empty captions
    with torch.no_grad():
        text = model.encode_text(tokens, mask)
    x = torch.randn(
        2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1)
    )
    return model, text, torch.cat([x, x])


def test_guidance_interval_guides_only_inside_it():
    """Kynkaanniemi et al. 2024: inside [lo, hi] (as t / T) the guided mix; outside, the
    conditional prediction alone, from a model call on half the batch."""
    model, text, x = _text_guidance_inputs()
    calls = []

    def spy(x_t, ts, **kw):
        calls.append(len(x_t))
        return model(x_t, ts, **kw)

    inside, outside = torch.full((4,), 900), torch.full((4,), 300)
    full = ClassifierFreeGuidance(spy, 3.0)
    limited = ClassifierFreeGuidance(spy, 3.0, interval=(0.5, 1.0), num_timesteps=1000)
    with torch.no_grad():
        assert torch.equal(full(x, inside, text=text), limited(x, inside, text=text))
        assert calls == [4, 4]
        cond_only = limited(x, outside, text=text)
        assert calls[-1] == 2  # half the batch: the unconditional rows are not run
        plain = model(x[:2], outside[:2], text=type(text)(text.xf_proj[:2], text.xf_out[:2]))
    assert torch.equal(cond_only, torch.cat([plain, plain]))
    assert not torch.allclose(cond_only, full(x, outside, text=text))


def test_guidance_interval_option_in_the_pipelines(tmp_path, bundles):
    import numpy as np

    from glidekit.errors import OptionError
    from glidekit.pipelines import Text2ImagePipeline

    pipe = Text2ImagePipeline(bundles["base"], None, device="cpu")
    full = pipe("a red circle", seed=1, steps=6)
    everywhere = pipe("a red circle", seed=1, steps=6, guidance_interval="0,1")
    limited = pipe("a red circle", seed=1, steps=6, guidance_interval=(0.0, 0.5))
    assert everywhere.params["guidance_interval"] == [0.0, 1.0]
    assert np.array_equal(np.asarray(full.images[0]), np.asarray(everywhere.images[0]))
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(limited.images[0]))
    for bad in ((0.6, 0.2), (0.0, 1.5), "x,y", (0.1,)):
        with pytest.raises(OptionError, match="guidance_interval"):
            pipe("a red circle", seed=1, steps=2, guidance_interval=bad)
