"""The UNet family against the official forwards, and the released checkpoints' layouts."""

import pytest
import torch
from conftest import load_golden, strip_prefix
from helpers import golden_model, rel_err

from glidekit.compat import OfficialUNet, config_from_options
from glidekit.nn import RELEASED_CONFIGS, create_model

FORWARDS = ["text2im_forward", "super_res_forward", "inpaint_forward", "super_res_inpaint_forward"]


def forward_kwargs(t: dict) -> dict:
    return {
        k[3:]: v for k, v in t.items() if k.startswith("in.") and k not in ("in.x", "in.timesteps")
    }


@pytest.mark.parametrize("fixture", FORWARDS)
def test_forward_matches_reference(fixture):
    model, t = golden_model(fixture)
    with torch.no_grad():
        out = model(t["in.x"], t["in.timesteps"], **forward_kwargs(t))
        text = model.encode_text(t["in.tokens"], t["in.mask"])
    assert out.shape == t["out.model_output"].shape
    assert rel_err(out, t["out.model_output"]) < 1e-4
    assert rel_err(text.xf_proj, t["out.xf_proj"]) < 1e-4
    assert rel_err(text.xf_out, t["out.xf_out"]) < 1e-4


def test_text2im_block_activations():
    """Every UNet block's output, so a regression points at the block that broke."""
    from glidekit.nn.layers import timestep_embedding

    model, t = golden_model("text2im_forward")
    with torch.no_grad():
        temb = timestep_embedding(t["in.timesteps"], model.config.num_channels)
        assert rel_err(temb, t["debug.timestep_embedding"]) < 1e-6
        assert rel_err(model.time_embed(temb), t["debug.time_embed"]) < 1e-4
        text = model.encode_text(t["in.tokens"], t["in.mask"])
        emb = model.time_embed(temb) + text.xf_proj
        h, skips = t["in.x"], []
        for i, block in enumerate(model.input_blocks):
            h = block(h, emb, text)
            skips.append(h)
            assert rel_err(h, t[f"debug.input_blocks.{i}"]) < 1e-4, f"input block {i}"
        h = model.middle_block(h, emb, text)
        assert rel_err(h, t["debug.middle_block"]) < 1e-4
        for i, block in enumerate(model.output_blocks):
            h = block(torch.cat([h, skips.pop()], 1), emb, text)
            assert rel_err(h, t[f"debug.output_blocks.{i}"]) < 1e-4, f"output block {i}"


@pytest.mark.parametrize("name", ["base", "upsample", "base-inpaint", "upsample-inpaint"])
def test_full_size_layout_matches_release(name, checkpoint_specs):
    spec = checkpoint_specs["checkpoints"][name]
    model = create_model(RELEASED_CONFIGS[name], device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: shape for k, shape, _ in spec["state_dict"]}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == spec["n_parameters"]
    # The compat options path builds the same thing.
    assert config_from_options(spec["options"]) == RELEASED_CONFIGS[name]


def _count_text_encodings(model, monkeypatch) -> list:
    calls = []
    original = model.transformer.forward
    monkeypatch.setattr(model.transformer, "forward", lambda x: calls.append(1) or original(x))
    return calls


def test_model_holds_no_text_state(monkeypatch):
    """forward is a function of its inputs: tokens are encoded on every call; text= skips it."""
    model, t = golden_model("text2im_forward")
    calls = _count_text_encodings(model, monkeypatch)
    kw = forward_kwargs(t)
    with torch.no_grad():
        a = model(t["in.x"], t["in.timesteps"], **kw)
        b = model(t["in.x"], t["in.timesteps"], **kw)
        assert len(calls) == 2 and torch.equal(a, b)
        text = model.encode_text(kw.pop("tokens"), kw.pop("mask"))
        c = model(t["in.x"], t["in.timesteps"], text=text, **kw)
        d = model(t["in.x"] * 0.5, t["in.timesteps"] + 1, text=text, **kw)
    assert len(calls) == 3 and torch.equal(a, c) and not torch.equal(a, d)
    assert not hasattr(model, "del_cache")


def test_official_unet_encodes_each_prompt_once(monkeypatch):
    """compat's model serves the notebooks' tokens-at-every-step pattern."""
    _, t = golden_model("text2im_forward")
    model = OfficialUNet(config_from_options(load_golden("text2im_forward")[0]["options"]))
    model.load_state_dict(strip_prefix(t, "model."), strict=True)
    calls = _count_text_encodings(model, monkeypatch)
    kw = forward_kwargs(t)
    with torch.no_grad():
        a = model(t["in.x"], t["in.timesteps"], **kw)
        b = model(t["in.x"] * 0.5, t["in.timesteps"] + 1, **kw)
        assert len(calls) == 1
        model(t["in.x"], t["in.timesteps"], tokens=kw["tokens"].flip(0), mask=kw["mask"].flip(0))
        assert len(calls) == 2
        model.del_cache()
        c = model(t["in.x"], t["in.timesteps"], **kw)
        assert len(calls) == 3
    assert torch.equal(a, c) and not torch.equal(a, b)
    assert rel_err(a, t["out.model_output"]) < 1e-4
    # Loading weights forgets the encoding; under autograd (training) nothing is kept.
    model.load_state_dict(model.state_dict())
    with torch.no_grad():
        model(t["in.x"], t["in.timesteps"], **kw)
    assert len(calls) == 4
    model(t["in.x"], t["in.timesteps"], **kw)
    model(t["in.x"], t["in.timesteps"], **kw)
    assert len(calls) == 6


def test_gradients_flow_through_text_without_cache():
    model, t = golden_model("text2im_forward")
    out = model(t["in.x"], t["in.timesteps"], **forward_kwargs(t))
    out.square().mean().backward()
    assert model.token_embedding.weight.grad is not None
    assert model.transformer.resblocks[0].attn.c_qkv.weight.grad.abs().sum() > 0


def test_half_precision_keeps_norms_in_fp32():
    model, t = golden_model("text2im_forward")
    model.convert_to_fp16(torch.bfloat16)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert dtypes["input_blocks.0.0.weight"] == torch.bfloat16
    assert dtypes["middle_block.1.qkv.weight"] == torch.bfloat16
    assert dtypes["transformer.resblocks.0.attn.c_qkv.weight"] == torch.bfloat16
    assert dtypes["token_embedding.weight"] == torch.bfloat16
    for key in (
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "transformer.resblocks.0.ln_1.weight",
        "final_ln.weight",
        "positional_embedding",
        "padding_embedding",
        "time_embed.0.weight",
        "out.2.weight",
    ):
        assert dtypes[key] == torch.float32, key
    with torch.no_grad():
        out = model(t["in.x"], t["in.timesteps"], **forward_kwargs(t))
    assert out.dtype == torch.float32
    assert rel_err(out, t["out.model_output"]) < 5e-2


def test_bad_inputs_name_the_argument():
    model, t = golden_model("inpaint_forward")
    kw = forward_kwargs(t)
    x, ts = t["in.x"], t["in.timesteps"]
    with pytest.raises(ValueError, match="inpaint_mask"):
        model(x, ts, **{**kw, "inpaint_mask": kw["inpaint_mask"][:, :, :16]})
    with pytest.raises(ValueError, match="inpaint_image"):
        model(x, ts, **{**kw, "inpaint_image": kw["inpaint_image"][..., :16, :16]})
    with pytest.raises(ValueError, match="tokens"):
        model(x, ts, tokens=kw["tokens"][:, :5], mask=kw["mask"][:, :5])
    with pytest.raises(ValueError, match="timesteps"):
        model(x, ts[:1], **kw)
    with pytest.raises(ValueError, match="low_res"):
        model(x, ts, low_res=x, **kw)
    sr, t2 = golden_model("super_res_forward")
    with pytest.raises(ValueError, match="low_res is required"):
        sr(t2["in.x"], t2["in.timesteps"], tokens=t2["in.tokens"], mask=t2["in.mask"])
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :2], ts, **kw)


def test_config_validation():
    from glidekit.nn import Text2ImConfig, config_from_dict

    with pytest.raises(ValueError, match="channel_mult"):
        Text2ImConfig(image_size=48)
    with pytest.raises(ValueError, match="attention_resolutions"):
        Text2ImConfig(attention_resolutions=(7,))
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({"kind": "text2im", "bogus": 1})
    cfg = RELEASED_CONFIGS["upsample-inpaint"]
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.in_channels == 10


def test_attention_position_embedding_option():
    """glidekit's one architectural option: off in every released config; when on, zero
    embeddings compute exactly what the plain model does, and the size is fixed."""
    from glidekit.nn.layers import sincos_position_embedding

    table = sincos_position_embedding(64, 8)  # 8x8 grid, 8 channels
    assert table.shape == (64, 8) and table.abs().max() <= 1
    assert torch.equal(table[9, :4], table[10, :4])  # same row: the row half agrees
    assert not torch.equal(table[9, 4:], table[10, 4:])  # the column half does not
    assert torch.unique(table, dim=0).shape[0] == 64  # every pixel distinct
    from glidekit.nn import Text2ImConfig, config_from_dict

    assert not any(c.attention_pos_emb for c in RELEASED_CONFIGS.values())
    small = {
        "image_size": 16,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": (1, 2),
        "attention_resolutions": (8,),
        "num_head_channels": 32,
        "xf_width": 32,
        "xf_layers": 1,
        "xf_heads": 1,
        "text_ctx": 8,
        "n_vocab": 40,
    }
    plain = create_model(Text2ImConfig(**small)).eval()
    with_pos = create_model(Text2ImConfig(**small, attention_pos_emb=True)).eval()
    keys = [k for k in with_pos.state_dict() if k.endswith("pos_emb")]
    assert keys and with_pos.state_dict()[keys[0]].shape == (64, 64)  # 8x8 tokens, 64 channels
    assert config_from_dict(with_pos.config.to_dict()) == with_pos.config
    g = torch.Generator().manual_seed(0)
    state = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in plain.state_dict().items()}
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16, generator=g)
    kw = {"tokens": torch.randint(0, 40, (2, 8), generator=g), "mask": torch.ones(2, 8).bool()}
    ts = torch.tensor([3, 500])
    with torch.no_grad():
        want = plain(x, ts, **kw)
        with_pos.load_state_dict({**state, **{k: torch.randn(64, 64, generator=g) for k in keys}})
        assert not torch.allclose(with_pos(x, ts, **kw), want, atol=1e-4)
        with_pos.load_state_dict({**state, **{k: torch.zeros(64, 64) for k in keys}})
        assert torch.equal(with_pos(x, ts, **kw), want)
        with pytest.raises(ValueError, match="must be 16x16"):
            with_pos(
                torch.randn(1, 3, 32, 32), ts[:1], tokens=kw["tokens"][:1], mask=kw["mask"][:1]
            )
        plain(torch.randn(1, 3, 32, 32), ts[:1], tokens=kw["tokens"][:1], mask=kw["mask"][:1])


def test_text_spatial_maps_start_at_zero_and_place_by_text():
    from glidekit.nn import Text2ImConfig, config_from_dict
    from glidekit.nn.unet import cosine_maps

    maps = cosine_maps(4, 8)
    assert maps.shape == (4, 8, 8) and torch.allclose(maps[0], torch.ones(8, 8))
    assert torch.allclose(maps[1], -maps[1].flip(1), atol=1e-6)  # one half-wave across a side
    gram = maps.flatten(1) @ maps.flatten(1).t()
    assert torch.allclose(gram, torch.diag(torch.diag(gram)), atol=1e-4)  # orthogonal maps
    assert not any(c.text_spatial_maps for c in RELEASED_CONFIGS.values())
    small = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": (1, 2),
             "attention_resolutions": (8,), "num_head_channels": 32, "xf_width": 32,
             "xf_layers": 1, "xf_heads": 1, "text_ctx": 8, "n_vocab": 40}  # fmt: skip
    plain = create_model(Text2ImConfig(**small)).eval()
    spatial = create_model(Text2ImConfig(**small, text_spatial_maps=4)).eval()
    assert config_from_dict(spatial.config.to_dict()) == spatial.config
    added = set(spatial.state_dict()) - set(plain.state_dict())
    assert added == {"text_spatial.proj.weight", "text_spatial.proj.bias"}  # the maps: fixed
    g = torch.Generator().manual_seed(0)
    state = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in plain.state_dict().items()}
    plain.load_state_dict(state)
    spatial.load_state_dict(state, strict=False)  # the route stays at its zero start
    x = torch.randn(2, 3, 16, 16, generator=g)
    kw = {"tokens": torch.randint(0, 40, (2, 8), generator=g), "mask": torch.ones(2, 8).bool()}
    ts = torch.tensor([999, 999])
    with torch.no_grad():
        assert torch.equal(spatial(x, ts, **kw), plain(x, ts, **kw))
        spatial.text_spatial.proj.weight.normal_(0, 0.5, generator=g)
        text = spatial.encode_text(**kw)
        bias = spatial.text_spatial(text.xf_proj)
        assert bias.shape == (2, 64, 8, 8)  # the middle block's channels and side
        assert not torch.allclose(bias[0], bias[1])  # each caption its own picture of where
        assert not torch.allclose(spatial(x, ts, **kw), plain(x, ts, **kw), atol=1e-4)
