import pytest
import torch
from helpers import golden_model

from glidekit.diffusion import GaussianDiffusion
from glidekit.diffusion.losses import training_losses
from glidekit.nn import DiffusionConfig, SuperResConfig
from glidekit.nn.bundle import is_bundle, load_model, save_model
from glidekit.tokenizer import GPT2Tokenizer


def test_roundtrip_keeps_weights_config_and_tokenizer(tmp_path):
    model, t = golden_model("super_res_forward")
    path = save_model(tmp_path / "m.safetensors", model, DiffusionConfig(noise_schedule="linear"))
    assert is_bundle(path) and not list(tmp_path.glob("*.tmp"))
    loaded, diffusion, tokenizer = load_model(path)
    assert loaded.config == model.config and isinstance(loaded.config, SuperResConfig)
    assert diffusion.noise_schedule == "linear"
    assert isinstance(tokenizer, GPT2Tokenizer) and tokenizer.text_ctx == 16
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_half_precision_export_loads_as_float32_on_cpu(tmp_path):
    model, _ = golden_model("text2im_forward")
    path = save_model(tmp_path / "m.safetensors", model, dtype=torch.float16)
    assert path.stat().st_size < 0.6 * sum(v.numel() * 4 for v in model.state_dict().values())
    loaded, _, _ = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # the golden weights are exact in float16
    assert torch.equal(loaded.state_dict()["out.2.weight"], model.state_dict()["out.2.weight"])


def test_loading_straight_into_bf16_matches_converting_after(tmp_path):
    model, _ = golden_model("text2im_forward")
    path = save_model(tmp_path / "m.safetensors", model)
    want, _, _ = load_model(path)
    want.convert_to_fp16(torch.bfloat16)
    got, _, _ = load_model(path, dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert got.input_blocks[0][0].weight.dtype == torch.bfloat16  # convolutions in bf16
    assert got.out[0].weight.dtype == torch.float32  # the norms and the head stay float32
    state = got.state_dict()
    for k, v in want.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    x = torch.randn(
        2, 3, *[model.config.image_size] * 2, generator=torch.Generator().manual_seed(0)
    )
    tokens = torch.randint(0, 100, (2, model.config.text_ctx))
    t = torch.tensor([3, 900])
    with torch.no_grad():
        mask = torch.ones_like(tokens, dtype=torch.bool)
        assert torch.equal(got(x, t, tokens, mask), want(x, t, tokens, mask))


def test_not_a_bundle(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    assert not is_bundle(bad)
    with pytest.raises(ValueError, match="safetensors"):
        load_model(bad)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_vb_term_trains_only_the_variance():
    model, t = golden_model("text2im_forward")
    d = GaussianDiffusion.from_config()
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    kw = {"tokens": t["in.tokens"], "mask": t["in.mask"]}
    captured = {}

    def spy(x, ts, **kwargs):
        out = model(x, ts, **kwargs)
        out.retain_grad()
        captured["out"] = out
        return out

    losses = training_losses(d, spy, x0, torch.tensor([3, 700]), model_kwargs=kw)
    assert set(losses) == {"loss", "mse", "vb"} and losses["loss"].shape == (2,)
    losses["vb"].sum().backward()
    grad = captured["out"].grad
    assert grad[:, :3].abs().sum() == 0 and grad[:, 3:].abs().sum() > 0


def test_saved_file_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    model, _ = golden_model("text2im_forward")
    path = save_model(tmp_path / "m.safetensors", model)
    probe = tmp_path / "probe"
    probe.write_bytes(b"")  # what the umask gives any new file
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(probe).st_mode)
