"""Noise-aware CLIP: golden embeddings and guidance gradients, released layouts, input errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import REFERENCE, load_golden, strip_prefix

from glidekit import compat
from glidekit.clip import (
    CLIPConfig,
    ImageEncoder,
    NoisedCLIP,
    TextEncoder,
    create_clip_model,
)
from glidekit.guidance import clip_cond_fn

VOCAB = REFERENCE / "vocab" / "bpe_simple_vocab_16e6.txt.gz"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    return load_golden("clip")


@pytest.fixture(scope="module")
def small_config(golden) -> CLIPConfig:
    return CLIPConfig.from_dict(golden[0]["config_yaml"])


@pytest.fixture(scope="module")
def clip(golden, small_config) -> NoisedCLIP:
    _, tensors = golden
    model = create_clip_model(small_config, tokenizer=VOCAB)
    model.image_encoder.load_state_dict(strip_prefix(tensors, "clip_image_enc."), strict=True)
    model.text_encoder.load_state_dict(strip_prefix(tensors, "clip_text_enc."), strict=True)
    return model


# --- golden fixture -----------------------------------------------------------------------------


def test_tokens_match_fixture(clip, golden) -> None:
    meta, tensors = golden
    tokens, lens = clip.tokenize(meta["prompts"])
    assert torch.equal(tokens, tensors["in.tokens"])
    assert torch.equal(lens, tensors["in.lens"])


def test_raw_encoders(clip, golden) -> None:
    _, tensors = golden
    with torch.no_grad():
        text = clip.text_encoder(tensors["in.tokens"], tensors["in.lens"])
        image = clip.image_encoder(tensors["in.images"], tensors["in.timesteps"])
    assert rel_err(text, tensors["out.text_encoder_raw"]) < 1e-4
    assert rel_err(image, tensors["out.image_encoder_raw"]) < 1e-4


def test_normalised_embeddings(clip, golden) -> None:
    meta, tensors = golden
    with torch.no_grad():
        from_text = clip.text_embeddings(meta["prompts"])
        from_tokens = clip.text_embeddings(tensors["in.tokens"])
        from_tokens_lens = clip.text_embeddings(tensors["in.tokens"], tensors["in.lens"])
        image = clip.image_embeddings(tensors["in.images"], tensors["in.timesteps"])
    for text in (from_text, from_tokens, from_tokens_lens):
        assert rel_err(text, tensors["out.text_embeddings"]) < 1e-4
    assert rel_err(image, tensors["out.image_embeddings"]) < 1e-4
    assert torch.allclose(clip.logit_scale, tensors["logit_scale"])


@pytest.mark.parametrize("scale", [1, 3])
def test_cond_fn_gradient(clip, golden, scale) -> None:
    meta, tensors = golden
    x, t = tensors["in.images"], tensors["in.timesteps"]
    cond_fn = clip_cond_fn(clip, meta["prompts"], float(scale))
    grad = cond_fn(x, t)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    assert not grad.requires_grad
    assert rel_err(grad, tensors[f"out.cond_fn_grad_scale{scale}"]) < 1e-4


def test_cond_fn_classifier_free_guidance_batch(clip, golden) -> None:
    """2B rows [cond; uncond] with B prompts: text embeddings tiled, row i -> prompt i % B."""
    meta, tensors = golden
    x, t = tensors["in.images"], tensors["in.timesteps"]
    cond_fn = clip_cond_fn(clip, meta["prompts"], 3.0)
    x2 = torch.cat([x, x.flip(0)])
    t2 = torch.cat([t, t.flip(0)])
    grad = cond_fn(x2, t2, tokens=None, mask=None)  # model kwargs are accepted and ignored
    expected = tensors["out.cond_fn_grad_scale3"]
    assert rel_err(grad[:2], expected) < 1e-4
    # The second half holds the images in swapped order, still guided to prompts 0, 1.
    swapped = cond_fn(x.flip(0), t.flip(0))
    assert torch.allclose(grad[2:], swapped, rtol=1e-4, atol=1e-6)


def test_cond_fn_text_encoded_once_and_inference_mode(clip, golden) -> None:
    meta, tensors = golden
    calls = []
    handle = clip.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.inference_mode():
            cond_fn = clip_cond_fn(clip, meta["prompts"], 1.0)
            grads = [cond_fn(tensors["in.images"], tensors["in.timesteps"]) for _ in range(3)]
    finally:
        handle.remove()
    assert len(calls) == 1
    assert rel_err(grads[-1], tensors["out.cond_fn_grad_scale1"]) < 1e-4


def test_encoders_built_standalone(small_config, golden) -> None:
    _, tensors = golden
    image = ImageEncoder(small_config)
    text = TextEncoder(small_config)
    image.load_state_dict(strip_prefix(tensors, "clip_image_enc."), strict=True)
    text.load_state_dict(strip_prefix(tensors, "clip_text_enc."), strict=True)


def test_fresh_image_tower_starts_with_sincos_patch_positions(small_config) -> None:
    """For training from scratch: the patch positions start as the 2D sine-cosine table (a
    small random start left the shapes CLIP blind to where the object is)."""
    from glidekit.nn.layers import sincos_position_embedding

    w_pos = ImageEncoder(small_config).state_dict()
    (key,) = [k for k in w_pos if k.endswith("w_pos")]
    table = sincos_position_embedding(small_config.n_patches, w_pos[key].shape[1])
    assert torch.equal(w_pos[key][1:], table)
    assert w_pos[key][0].abs().max() < 0.2  # the timestep token's slot: small random


# --- released layouts ---------------------------------------------------------------------------


def test_config_defaults_are_the_released_config(checkpoint_specs) -> None:
    for name in ("clip/image-enc", "clip/text-enc"):
        options = checkpoint_specs["checkpoints"][name]["options"]
        assert CLIPConfig().to_dict() == options
        assert CLIPConfig.from_dict(options) == CLIPConfig()
    assert CLIPConfig().n_state_image == 768 and CLIPConfig().n_state_text == 512


def test_full_size_on_meta_matches_spec(checkpoint_specs) -> None:
    model = create_clip_model(device=torch.device("meta"))
    assert model.logit_scale.device.type == "meta"
    for part, name in (("image_encoder", "clip/image-enc"), ("text_encoder", "clip/text-enc")):
        spec = checkpoint_specs["checkpoints"][name]
        encoder = getattr(model, part)
        state = encoder.state_dict()
        assert [(k, list(v.shape)) for k, v in state.items()] == [
            (k, shape) for k, shape, _ in spec["state_dict"]
        ]
        assert all(v.dtype == torch.float32 for v in state.values())
        n_params = sum(p.numel() for p in encoder.parameters())
        assert n_params == spec["n_parameters"]
        assert not list(encoder.buffers())
        released = {k: torch.empty(shape, device="meta") for k, shape, _ in spec["state_dict"]}
        encoder.load_state_dict(released, strict=True)
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 86_443_776
    assert sum(p.numel() for p in model.text_encoder.parameters()) == 71_679_488


# --- errors -------------------------------------------------------------------------------------


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown CLIP config keys.*n_layers"):
        CLIPConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="n_embd"):
        CLIPConfig(n_embd=0)
    with pytest.raises(ValueError, match="beta_schedule"):
        CLIPConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="logit_scale"):
        CLIPConfig(logit_scale=math.inf)
    with pytest.raises(TypeError, match="config"):
        create_clip_model(config="big")  # type: ignore[arg-type]


def test_bad_images_and_timesteps(clip, golden) -> None:
    meta, tensors = golden
    x, t = tensors["in.images"], tensors["in.timesteps"]
    with pytest.raises(ValueError, match=r"images.*\(B, 3, 32, 32\)"):
        clip.image_embeddings(x[:, :, :16, :16], t)
    with pytest.raises(ValueError, match="images"):
        clip.image_embeddings(x[0], t)
    with pytest.raises(ValueError, match=r"^t: expected shape \(2,\)"):
        clip.image_embeddings(x, t[:1])
    with pytest.raises(TypeError, match="^t must hold integer"):
        clip.image_embeddings(x, t.float())
    with pytest.raises(TypeError, match="^t must be a torch.Tensor"):
        clip.image_embeddings(x, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^t: .*\[0, 999\]"):
        clip.image_embeddings(x, torch.tensor([10, 1000]))
    cond_fn = clip_cond_fn(clip, meta["prompts"], 1.0)
    with pytest.raises(ValueError, match=r"^x: .*\(B, 3, 32, 32\)"):
        cond_fn(torch.zeros(2, 3, 64, 64), t)
    with pytest.raises(ValueError, match=r"^t: expected shape \(2,\)"):
        cond_fn(x, t[:1])
    with pytest.raises(ValueError, match="^x: 3 rows is not a multiple of the 2 prompt"):
        cond_fn(torch.zeros(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))


def test_bad_prompts_and_grad_scale(clip, golden) -> None:
    meta, tensors = golden
    with pytest.raises(ValueError, match="^prompts: empty list"):
        clip_cond_fn(clip, [], 1.0)
    with pytest.raises(TypeError, match="^prompts must be a list of strings, not a single str"):
        clip_cond_fn(clip, "a corgi", 1.0)
    with pytest.raises(TypeError, match="^prompts"):
        clip.text_embeddings([1, 2])  # type: ignore[list-item]
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="^grad_scale must be finite"):
            clip_cond_fn(clip, meta["prompts"], bad)
    with pytest.raises(TypeError, match="^grad_scale"):
        clip_cond_fn(clip, meta["prompts"], "3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^tokens: token ids"):
        clip.text_encoder(torch.full((1, 77), 70000), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"^lens: expected shape \(2,\)"):
        clip.text_encoder(tensors["in.tokens"], tensors["in.lens"][:1])
    with pytest.raises(ValueError, match="^lens: lengths"):
        clip.text_encoder(tensors["in.tokens"], torch.tensor([0, 5]))


def test_text_prompts_work_without_any_download(small_config, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setenv("GLIDEKIT_OFFLINE", "1")
    model = create_clip_model(small_config)
    emb = model.text_embeddings(["a corgi"])
    assert emb.shape == (1, small_config.n_embd) and not list(tmp_path.iterdir())


# --- official clip_guided notebook (CLIP part) --------------------------------------------------


def test_clip_guided_notebook_flow(golden, small_config, tmp_path, monkeypatch) -> None:
    meta, tensors = golden
    # The notebook relies on the default vocabulary location (the glidekit cache).
    (tmp_path / "vocab").mkdir()
    shutil.copy(VOCAB, tmp_path / "vocab" / VOCAB.name)
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path))

    device = torch.device("cpu")
    batch_size = 2
    guidance_scale = 3.0
    prompt = meta["prompts"][0]

    # Same calls as the notebook (the official signature); config_path because the fixture
    # weights are small-sized.
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(meta["config_yaml"]))  # JSON is YAML
    clip_model = compat.create_clip_model(config_path=str(config_path), device=device)
    assert isinstance(clip_model, compat.OfficialCLIP) and not hasattr(NoisedCLIP, "cond_fn")
    assert clip_model.config == small_config
    clip_model.image_encoder.load_state_dict(strip_prefix(tensors, "clip_image_enc."))
    clip_model.text_encoder.load_state_dict(strip_prefix(tensors, "clip_text_enc."))
    cond_fn = clip_model.cond_fn([prompt] * batch_size, guidance_scale)

    # Row 0 of the fixture has prompt 0, so its gradient matches the golden row 0.
    x = tensors["in.images"][:1].repeat(batch_size, 1, 1, 1)
    t = tensors["in.timesteps"][:1].repeat(batch_size)
    grad = cond_fn(x, t, tokens=torch.zeros(batch_size, 128, dtype=torch.long))
    expected = tensors["out.cond_fn_grad_scale3"][:1]
    for row in range(batch_size):
        assert rel_err(grad[row : row + 1], expected) < 1e-4


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_explicit_q_and_k_scaling(causal) -> None:
    """The SDPA path equals softmax((q d^-1/4)(k d^-1/4)^T) v at the released head width 64."""
    from glidekit.clip.model import Attention

    torch.manual_seed(0)
    attn = Attention(n_head=2, n_head_state=64, causal=causal)
    x = torch.randn(2, 21, 128)
    with torch.no_grad():
        h = attn.ln(x)
        s = 64**-0.25
        q = (attn.f_q(h) * s).view(2, 21, 2, 64).transpose(1, 2)
        k = (attn.f_k(h) * s).view(2, 21, 2, 64).transpose(1, 2)
        v = attn.f_v(h).view(2, 21, 2, 64).transpose(1, 2)
        w = q @ k.transpose(-1, -2)
        if causal:
            w = w.masked_fill(torch.ones(21, 21, dtype=torch.bool).triu(1), -1e10)
        out = (w.softmax(-1) @ v).transpose(1, 2).reshape(2, 21, 128)
        expected = attn.f_c(out)
        actual = attn(x)
    assert rel_err(actual, expected) < 1e-5


def test_cond_fn_keeps_input_dtype(clip, golden) -> None:
    meta, tensors = golden
    x = tensors["in.images"].double()
    grad = clip_cond_fn(clip, meta["prompts"], 1.0)(x, tensors["in.timesteps"])
    assert grad.dtype == torch.float64 and grad.shape == x.shape
    assert rel_err(grad.float(), tensors["out.cond_fn_grad_scale1"]) < 1e-4
