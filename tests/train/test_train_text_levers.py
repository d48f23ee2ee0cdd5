"""The text-side training levers of issue 17: ``diffusion.pooled_bow_weight`` (the pooled text
token's bag-of-words loss) and ``optim.text_lr_mult`` (the text encoder's learning rate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_fixtures import (  # noqa: F401 (restore_threads: an autouse fixture)
    TINY_CLIP,
    TINY_UNET,
    restore_threads,
    tiny_config,
)

from glidekit.nn.config import UNetConfig
from glidekit.nn.unet import create_model
from glidekit.train import load_config, train
from glidekit.train.trainer import Trainer
from glidekit.train.unet import TEXT_ENCODER_PARAMS, is_text_encoder_param, pooled_bow_loss


def _tiny_model() -> torch.nn.Module:
    arch = {k: v for k, v in TINY_UNET.items() if k != "kind"}
    arch["channel_mult"] = tuple(arch["channel_mult"])
    arch["attention_resolutions"] = tuple(arch["attention_resolutions"])
    torch.manual_seed(0)
    return create_model(UNetConfig(**arch, n_vocab=40))


def test_pooled_bow_loss_targets_the_captions_words() -> None:
    model = _tiny_model()
    tokens = torch.zeros(3, 16, dtype=torch.long)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    tokens[0, :3] = torch.tensor([5, 6, 6])  # word 6 twice: twice the weight
    mask[0, :3] = True
    tokens[1, :2] = torch.tensor([7, 8])
    mask[1, :2] = True  # caption 2: empty (dropped), adds nothing
    text = model.encode_text(tokens, mask)
    loss = pooled_bow_loss(model, text, tokens, mask)
    logp = torch.log_softmax(text.xf_out[:, :, -1] @ model.token_embedding.weight.t(), dim=1)
    want = -((logp[0, 5] + 2 * logp[0, 6]) / 3 + (logp[1, 7] + logp[1, 8]) / 2) / 2
    assert torch.allclose(loss, want, atol=1e-6)
    loss.backward()
    assert model.token_embedding.weight.grad[5].abs().sum() > 0  # the tied output layer
    assert model.transformer_proj.weight.grad is None  # the projection is not asked anything
    empty = torch.zeros(2, 16, dtype=torch.bool)
    zero = pooled_bow_loss(model, model.encode_text(tokens[:2], empty), tokens[:2], empty)
    assert float(zero.detach()) == 0.0


def test_pooled_bow_weight_trains_and_is_validated(tmp_path: Path) -> None:
    cfg = load_config(tiny_config(tmp_path / "bow", diffusion={"pooled_bow_weight": 0.5}))
    with Trainer(cfg) as trainer:
        metrics = trainer.train_step()
    assert metrics["bow"] > 0 and metrics["loss"] > metrics["mse"]
    with pytest.raises(ValueError, match="diffusion.pooled_bow_weight"):
        load_config(tiny_config(tmp_path, diffusion={"pooled_bow_weight": -1.0}))
    clip = {**tiny_config(tmp_path, diffusion={"pooled_bow_weight": 0.1}), "model": TINY_CLIP}
    with pytest.raises(ValueError, match="diffusion.pooled_bow_weight"):
        load_config(clip)


def test_text_lr_mult_groups_and_default(tmp_path: Path) -> None:
    model = _tiny_model()
    text = {n for n, _ in model.named_parameters() if is_text_encoder_param(n)}
    assert "token_embedding.weight" in text and "transformer_proj.bias" in text
    assert not any(n.startswith(("input_blocks", "time_embed", "out.")) for n in text)
    assert all(any(n.startswith(p) for n in text) for p in TEXT_ENCODER_PARAMS if p != "final_ln.")
    base = load_config(tiny_config(tmp_path / "plain"))
    with Trainer(base) as trainer:  # the default: one group, as before the option existed
        assert len(trainer.optimizer.param_groups) == 1
    cfg = load_config(tiny_config(tmp_path / "mult", optim={"lr": 1e-3, "text_lr_mult": 10.0}))
    with Trainer(cfg) as trainer:
        rest, xf = trainer.optimizer.param_groups
        assert len(xf["params"]) == len(text)
        assert len(rest["params"]) + len(xf["params"]) == len(list(model.parameters()))
        trainer.train_step()  # the warm-up scales both groups: the ratio stays
        assert xf["lr"] == pytest.approx(10 * rest["lr"])
    with pytest.raises(ValueError, match="optim.text_lr_mult"):
        load_config(tiny_config(tmp_path, optim={"text_lr_mult": 0.0}))
    clip = {**tiny_config(tmp_path, optim={"text_lr_mult": 2.0}), "model": TINY_CLIP}
    with pytest.raises(ValueError, match="optim.text_lr_mult"):
        load_config(clip)
    assert train(load_config(tiny_config(tmp_path / "run", optim={"text_lr_mult": 3.0}))).step == 4


def test_init_text_attention_scale_softens_only_queries_and_keys(tmp_path: Path) -> None:
    from glidekit.train.unet import soften_text_attention

    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 40, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    attn = model.transformer.resblocks[0].attn
    x = model.token_embedding(tokens) + model.positional_embedding[None]
    y = model.transformer.resblocks[0].ln_1(x)
    q, k, _ = attn.c_qkv(y).view(2, 16, attn.heads, -1).transpose(1, 2).chunk(3, dim=-1)
    soften_text_attention(model, 0.5)
    q2, k2, v2 = attn.c_qkv(y).view(2, 16, attn.heads, -1).transpose(1, 2).chunk(3, dim=-1)
    assert torch.allclose(q2 @ k2.transpose(-1, -2), 0.25 * (q @ k.transpose(-1, -2)), atol=1e-5)
    after = model.state_dict()
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed == {f"transformer.resblocks.{i}.attn.c_qkv.{w}" for i in range(1) for w in (
        "weight", "bias")}  # fmt: skip
    d = attn.c_qkv.weight.shape[0] // 3
    assert torch.equal(after["transformer.resblocks.0.attn.c_qkv.weight"][2 * d :],
                       before["transformer.resblocks.0.attn.c_qkv.weight"][2 * d :])  # fmt: skip
    model.encode_text(tokens, mask)  # still a working model

    # Through the config: applied after model.init's weights are loaded, once.
    first = tiny_config(tmp_path / "a")
    train(load_config(first))
    init = str(tmp_path / "a" / "export.safetensors")
    cfg = load_config(
        tiny_config(tmp_path / "b", model={"init": init, "init_text_attention_scale": 0.5})
    )
    assert cfg.model.to_dict()["init_text_attention_scale"] == 0.5
    assert "init_text_attention_scale" not in load_config(first).model.to_dict()
    for bad in ({"init_text_attention_scale": 0.0}, {"init_text_attention_scale": 0.5}):
        with pytest.raises(ValueError, match="model.init_text_attention_scale"):
            load_config(tiny_config(tmp_path / "c", model=bad))  # 0: out of range; no init
    with Trainer(cfg) as trainer:
        plain = load_config(tiny_config(tmp_path / "d", model={"init": init}))
        with Trainer(plain) as reference:
            w = "transformer.resblocks.0.attn.c_qkv.weight"
            d = trainer.model.state_dict()[w].shape[0] // 3
            got, want = trainer.model.state_dict()[w], reference.model.state_dict()[w]
            assert torch.allclose(got[:d], 0.5 * want[:d])  # one head: q rows, then k
            assert torch.equal(got[2 * d :], want[2 * d :])
