"""Schedules, respacing and single sampler steps against the official outputs."""

import numpy as np
import pytest
import torch
from conftest import load_golden
from helpers import rel_err

from glidekit.diffusion import (
    SAMPLERS,
    DiffusionConfig,
    GaussianDiffusion,
    check_sampler_options,
    create_diffusion,
    ddim_sample,
    get_sampler,
    named_beta_schedule,
    p_sample,
    respace_betas,
    space_timesteps,
)
from glidekit.errors import OptionError
from glidekit.nn import SuperResConfig, Text2ImConfig

META, T = load_golden("diffusion")
CONFIGS = {
    "cos1000": ("squaredcos_cap_v2", ""),
    "cos100": ("squaredcos_cap_v2", "100"),
    "linfast27": ("linear", "fast27"),
}
SCHEDULE_NAMES = ["squaredcos_cap_v2", "linear"]


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_betas_exact(schedule):
    assert np.array_equal(named_beta_schedule(schedule, 1000), T[f"betas.{schedule}.1000"].numpy())


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_every_respacing_spelling_exact(schedule):
    betas = named_beta_schedule(schedule, 1000)
    spellings = META["respacings"][schedule]
    assert {"100", "fast27", "ddim25", "27", "10,10,3,2,2"} <= set(spellings)
    for spelling, ref in spellings.items():
        use = space_timesteps(1000, spelling)
        assert use == ref["use_timesteps_sorted"], spelling
        diffusion = GaussianDiffusion.from_config(schedule, 1000, spelling)
        assert diffusion.timestep_map == ref["timestep_map"], spelling
        assert np.array_equal(diffusion.betas, np.array(ref["betas"])), spelling
        assert np.array_equal(respace_betas(betas, use), np.array(ref["betas"])), spelling


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_q_sample(schedule):
    d = GaussianDiffusion.from_config(schedule)
    x_t = d.q_sample(T["q_sample.x_start"], T["q_sample.t"], T["q_sample.noise"])
    assert torch.equal(x_t, T[f"q_sample.{schedule}.x_t"])


def stub_model(received: list):
    def model(x, ts, **kwargs):
        received.append(ts)
        return T["pmv.model_output"]

    return model


def cond_fn_stub(received: list):
    def cond_fn(x, ts, **kwargs):
        received.append(ts)
        return T["pmv.cond_grad"]

    return cond_fn


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_p_mean_variance(cfg):
    d = GaussianDiffusion.from_config(CONFIGS[cfg][0], timestep_respacing=CONFIGS[cfg][1])
    t = T[f"pmv.{cfg}.t"]
    for clip in (1, 0):
        received = []
        out = d.p_mean_variance(stub_model(received), T["pmv.x_t"], t, clip_denoised=bool(clip))
        assert torch.equal(received[0], T[f"pmv.{cfg}.model_received_t"])
        for key in ("mean", "variance", "log_variance", "pred_xstart"):
            assert rel_err(getattr(out, key), T[f"pmv.{cfg}.clip{clip}.{key}"]) < 1e-5, key


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_single_steps_under_the_rng_protocol(cfg):
    d = GaussianDiffusion.from_config(CONFIGS[cfg][0], timestep_respacing=CONFIGS[cfg][1])
    x, t = T["pmv.x_t"], T[f"pmv.{cfg}.t"]
    model = stub_model([])

    torch.manual_seed(1234)
    out = p_sample(d, model, x, t)
    assert rel_err(out.sample, T[f"p_sample.{cfg}.sample"]) < 1e-5

    received = []
    torch.manual_seed(1234)
    out = p_sample(d, model, x, t, cond_fn=cond_fn_stub(received))
    assert rel_err(out.sample, T[f"p_sample_cond.{cfg}.sample"]) < 1e-5
    assert torch.equal(received[0], T[f"p_sample_cond.{cfg}.cond_fn_received_t"])

    for eta in (0.0, 0.5, 1.0):
        torch.manual_seed(1234)
        out = ddim_sample(d, model, x, t, eta=eta)
        assert rel_err(out.sample, T[f"ddim_sample.{cfg}.eta{eta}.sample"]) < 1e-4, eta
        assert rel_err(out.pred_xstart, T[f"ddim_sample.{cfg}.eta{eta}.pred_xstart"]) < 1e-5

    torch.manual_seed(1234)
    out = ddim_sample(d, model, x, t, eta=0.0, cond_fn=cond_fn_stub([]))
    assert rel_err(out.sample, T[f"ddim_sample_cond.{cfg}.eta0.0.sample"]) < 1e-4
    assert rel_err(out.pred_xstart, T[f"ddim_sample_cond.{cfg}.eta0.0.pred_xstart"]) < 1e-5


def test_generator_gives_reproducible_noise():
    d = GaussianDiffusion.from_config(timestep_respacing="100")
    x, t = T["pmv.x_t"], T["pmv.cos100.t"]
    a = p_sample(d, stub_model([]), x, t, generator=torch.Generator().manual_seed(7)).sample
    b = p_sample(d, stub_model([]), x, t, generator=torch.Generator().manual_seed(7)).sample
    c = p_sample(d, stub_model([]), x, t, generator=torch.Generator().manual_seed(8)).sample
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "spelling", ["fast", "ddim", "ddimx", "ddim999", "10,x", "2000", "0", "1,1,1,0"]
)
def test_bad_respacing_is_a_clear_error(spelling):
    with pytest.raises(ValueError, match="timestep_respacing"):
        GaussianDiffusion.from_config(timestep_respacing=spelling)


def test_bad_schedule_and_arguments():
    with pytest.raises(ValueError, match="noise_schedule"):
        GaussianDiffusion.from_config("cosine-ish")
    d = GaussianDiffusion.from_config(timestep_respacing="10")
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="t must"):
        d.q_sample(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="noise"):
        d.q_sample(x, torch.tensor([0, 1]), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        d.p_mean_variance(lambda x, t: torch.zeros(2, 5, 8, 8), x, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="cond_fn must return"):
        p_sample(
            d,
            lambda x, t: torch.zeros(2, 6, 8, 8),
            x,
            torch.tensor([1, 1]),
            cond_fn=lambda x, t: torch.zeros(1),
        )


def test_v_prediction_is_converted_to_eps_everywhere():
    from glidekit.diffusion.losses import training_losses

    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for respacing in ("", "25"):
        eps_proc = GaussianDiffusion.from_config("squaredcos_cap_v2", 1000, respacing)
        v_proc = GaussianDiffusion.from_config("squaredcos_cap_v2", 1000, respacing, "v")
        assert v_proc.respaced("10").prediction == "v" if not respacing else True
        t = torch.tensor([0, 3, v_proc.num_timesteps // 2, v_proc.num_timesteps - 1])
        x_t = v_proc.q_sample(x0, t, noise)
        target = v_proc.training_target(x0, t, noise)
        abar = torch.from_numpy(v_proc.alphas_cumprod)[t].view(-1, 1, 1, 1)  # float64
        want = abar.sqrt() * noise.double() - (1 - abar).sqrt() * x0.double()
        assert torch.allclose(target.double(), want, atol=1e-6)
        assert torch.equal(eps_proc.training_target(x0, t, noise), noise)
        rng = torch.zeros(4, 3, 8, 8)

        v_out, eps_out = torch.cat([target, rng], 1), torch.cat([noise, rng], 1)

        def v_model(x, ts, _out=v_out, **_):
            return _out

        def eps_model(x, ts, _out=eps_out, **_):
            return _out

        # a perfect v model and a perfect eps model give the same step
        a = v_proc.p_mean_variance(v_model, x_t, t, clip_denoised=False)
        b = eps_proc.p_mean_variance(eps_model, x_t, t, clip_denoised=False)
        assert torch.allclose(a.eps, noise, atol=1e-5)
        assert torch.allclose(a.pred_xstart, x0, atol=1e-5)
        exact = v_proc.q_posterior(x0, x_t, t)[0]
        assert torch.allclose(a.mean, exact, atol=1e-5)
        assert torch.allclose(b.mean[:3], exact[:3], atol=1e-4)  # eps loses digits at the top
        assert torch.allclose(a.variance, b.variance)
        losses = training_losses(v_proc, v_model, x0, t, noise=noise) if not respacing else None
        if losses is not None:
            assert losses["mse"].abs().max() < 1e-10
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion.from_config("linear", 1000, "", "x0")


def test_sampler_table():
    assert list(SAMPLERS) == ["ancestral", "ddim", "dpm++2m"]
    assert {name: (s.options, s.cond_form, s.stochastic) for name, s in SAMPLERS.items()} == {
        "ancestral": ((), "mean", True),
        "ddim": (("eta",), "score", True),
        "dpm++2m": ((), "score", False),
    }
    assert get_sampler(" DDIM ") is SAMPLERS["ddim"]
    with pytest.raises(OptionError, match="^upsample_sampler: unknown sampler 'euler'") as info:
        get_sampler("euler", "upsample_sampler")
    assert info.value.arg == "upsample_sampler"
    assert check_sampler_options("ddim", {"eta": 1}) == {"eta": 1.0}
    assert check_sampler_options("ancestral", {}) == {}
    with pytest.raises(OptionError, match=r"^sampler_options: \['eta'\] not understood by the "):
        check_sampler_options("dpm++2m", {"eta": 0.5})
    with pytest.raises(OptionError, match="^opts: eta must be a number in") as info:
        check_sampler_options("ddim", {"eta": 2.0}, "opts")
    assert info.value.arg == "opts"


def test_create_diffusion_from_config():
    base = DiffusionConfig.for_model(Text2ImConfig())
    up = DiffusionConfig.for_model(SuperResConfig(), timestep_respacing="fast27")
    assert (base.noise_schedule, up.noise_schedule) == ("squaredcos_cap_v2", "linear")
    assert create_diffusion(base).num_timesteps == 1000
    assert create_diffusion(up).num_timesteps == 27
    d = create_diffusion(DiffusionConfig(prediction="v"), "10")
    assert d.num_timesteps == 10 and d.prediction == "v"
    assert create_diffusion(up, "").num_timesteps == 1000


def test_row_generators_draw_each_items_noise_from_its_own_generator():
    """An item's noise is the same whatever else is in the batch (bit-exact), and a single
    item draws exactly what its generator alone draws."""
    from glidekit.diffusion import RowGenerators

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    alone = RowGenerators(gens(2), [0, 0]).randn((2, 3, 4, 4))  # cond + uncond rows of item "2"
    assert torch.equal(alone, torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(2)))
    batch = RowGenerators(gens(1, 2, 3), [0, 1, 2, 0, 1, 2]).randn((6, 3, 4, 4))
    assert torch.equal(batch[[1, 4]], alone)
    with pytest.raises(ValueError, match="rows"):
        RowGenerators(gens(1), [0, 1])
