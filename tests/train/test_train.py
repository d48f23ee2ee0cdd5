"""Training: config handling, a shapes-world run end to end, exact resume, every model kind."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import struct
import tarfile
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_fixtures import (  # noqa: F401 (restore_threads: an autouse fixture)
    TINY_CLIP,
    TINY_UNET,
    restore_threads,
    shapes_folder,
    tiny_config,
)

from glidekit.checkpoints import load_unet as load_model
from glidekit.checkpoints.modelfile import TOKENIZER_KEY, load_clip, read_metadata
from glidekit.cli.main import main
from glidekit.diffusion import GaussianDiffusion, create_diffusion, sample
from glidekit.nn.layers import sincos_position_embedding
from glidekit.tokenizer import tokenize_batch
from glidekit.train import load_checkpoint, load_config, train
from glidekit.train.config import TrainConfig
from glidekit.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ config
def test_config_defaults_overrides_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  kind: inpaint\n  num_channels: 32\noptim:\n  lr: 1e-4\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.channel_mult=[1,2]", "train.steps=7"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.steps == 7
    assert cfg.model.kind == "inpaint"
    assert cfg.model.arch == {"num_channels": 32, "channel_mult": [1, 2]}
    assert cfg.model.unet_config().channel_mult == (1, 2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # YAML 1.1 reads 1e-4 as a string: numbers still come out as floats.
    assert load_config({"optim": {"lr": "1e-4"}}).optim.lr == pytest.approx(1e-4)
    # JSON configs work too.
    jpath = tmp_path / "c.json"
    jpath.write_text(json.dumps({"train": {"batch_size": 3}}))
    assert load_config(jpath).train.batch_size == 3


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["optim.lrr=1"], "did you mean 'lr'"),
        (["model.num_channel=64"], "model.num_channel"),
        (["model.num_channels=48"], "model.num_channels"),
        (["train.batch_size=abc"], "train.batch_size"),
        (["train.precision=fp8"], "train.precision"),
        (["data.kind=folder"], "data.root"),
        (["model.kind=vae"], "model.kind"),
        (["optim.grad_clip=-1"], "optim.grad_clip"),
        (["trian.steps=3"], "trian"),
        (["steps=3"], "section.key=value"),
        (["train.steps"], "section.key=value"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        cfg = load_config({"model": {"kind": "text2im"}}, overrides)
        cfg.model.unet_config()
    assert needle in str(info.value)


def test_cli_bad_key_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  steps: 2\n")
    for argv in (
        ["train", str(cfg), "optim.lrr=1e-4"],
        ["train", str(cfg), "train.steps=-1"],
        ["train", str(tmp_path / "missing.yaml")],
    ):
        err = io.StringIO()
        with redirect_stderr(err):
            assert main(argv) == 2
        assert "glidekit train: error:" in err.getvalue()
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["train", str(cfg), "optim.lrr=1e-4"]) == 2
    assert "optim.lrr" in err.getvalue()


def test_cli_print_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(REPO / "configs/shapes-base-32.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_channels: 64" in out and "precision: bf16" in out


def test_example_configs_validate() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        if cfg.model.kind != "clip":
            cfg.model.unet_config()
        else:
            cfg.model.clip_config()


# ------------------------------------------------------------------------------------ runs
def test_shapes_run_learns_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_config(
        tiny_config(
            out,
            train={"steps": 100, "batch_size": 8, "log_every": 10, "checkpoint_every": 50},
            sample={"every": 50, "count": 2},
            optim={"lr": 2e-3, "warmup_steps": 10, "ema_decay": 0.9},
        )
    )
    result = train(cfg)
    assert result.step == 100 and not result.stopped
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 101, 10))
    assert {"loss", "mse", "vb", "lr", "grad_norm", "images_per_s"} <= set(records[0])
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    for name in ("checkpoint.pt", "loss.png", "export.safetensors"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step-000050.png",
        "step-000100.png",
    ]
    assert Image.open(out / "loss.png").size == (640, 400)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 100

    model, diffusion_cfg, tokenizer = load_model(out / "export.safetensors")
    assert model.config.image_size == 16
    assert tokenizer.n_vocab <= model.config.n_vocab
    for name, value in model.state_dict().items():  # the export holds the EMA weights
        assert torch.equal(value, ckpt["ema"][name]), name
    diffusion = GaussianDiffusion.from_config(diffusion_cfg.noise_schedule, 1000, "4")
    tokens, mask = tokenize_batch(tokenizer, ["a large red circle"], model.config.text_ctx)
    x = sample(
        diffusion,
        model,
        (1, 3, 16, 16),
        model_kwargs={"tokens": tokens, "mask": mask},
        generator=torch.Generator().manual_seed(0),
    )
    assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()


def _states_equal(a: dict, b: dict) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a["step"] == b["step"]
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]


@pytest.mark.parametrize("data_kind", ["shapes", "shards"])
def test_resume_is_bit_exact(tmp_path: Path, data_kind: str) -> None:
    """6 steps straight == 3 steps, stop, resume for 3 (with dropout, accumulation, samples)."""
    sections = {
        "model": {"dropout": 0.1},
        "train": {"steps": 6, "batch_size": 3, "grad_accum": 2},
        "data": {"kind": "shapes", "length": 10},
        "sample": {"every": 2, "count": 2},
    }
    if data_kind == "shards":
        sections["data"] = {"kind": "shards", "shards": str(_make_shards(tmp_path, 2, 7))}
    straight = load_config(tiny_config(tmp_path / "a", **sections))
    split = load_config(tiny_config(tmp_path / "b", **sections))
    train(straight)
    first = train(split, stop_at=3)
    assert first.stopped and first.step == 3 and first.export is None
    assert not (tmp_path / "b" / "export.safetensors").exists()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(split)  # refuses to overwrite a run without --resume
    second = train(split, resume=True)
    assert second.step == 6 and not second.stopped
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    _states_equal(a, b)
    # The metrics log has each step once, as if never interrupted.
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_export_only_writes_the_checkpoints_ema(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", train={"steps": 10})
    first = train(load_config(cfg), stop_at=2)
    assert first.stopped and first.export is None
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["train", str(path), "--export-only"]) == 2
    assert "--export-only needs --resume" in err.getvalue()
    assert main(["train", str(path), "--export-only", "--resume"]) == 0
    model, _, _ = load_model(tmp_path / "run" / "export.safetensors")
    ema = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["ema"]
    for k, v in model.state_dict().items():
        assert torch.allclose(v, ema[k].float(), rtol=1e-3, atol=1e-3), k  # fp16 export
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2  # not trained on


def test_resume_refuses_other_architecture(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "r", train={"steps": 1})
    train(load_config(cfg))
    other = copy.deepcopy(cfg)
    other["model"]["num_channels"] = 64
    with pytest.raises(ValueError, match="another model configuration"):
        Trainer(load_config(other), resume=True)
    with pytest.raises(FileNotFoundError, match="--resume"):
        Trainer(load_config(tiny_config(tmp_path / "none")), resume=True)


@pytest.mark.parametrize("kind", ["super_res", "inpaint", "super_res_inpaint"])
def test_other_unet_kinds_train_and_export(tmp_path: Path, kind: str) -> None:
    out = tmp_path / kind
    cfg = load_config(
        tiny_config(out, model={"kind": kind}, data={"low_res_size": 8}, train={"steps": 3})
    )
    result = train(cfg)
    assert result.last_loss is not None and result.last_loss == result.last_loss
    model, diffusion_cfg, _ = load_model(result.export)
    assert model.config.kind == kind
    assert diffusion_cfg.noise_schedule == (
        "linear" if "super_res" in kind else "squaredcos_cap_v2"
    )
    grid = Image.open(out / "samples" / "step-000003.png")
    rows = 1 + ("super_res" in kind) + ("inpaint" in kind)
    assert grid.size == (2 * 18 + 2, rows * 18 + 2)


def test_clip_trains_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "clip"
    cfg = load_config(
        tiny_config(out, train={"steps": 30, "batch_size": 8, "log_every": 5}, optim={"lr": 2e-3})
        | {"model": dict(TINY_CLIP)}
    )
    result = train(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "acc" in records[0]
    assert records[-1]["loss"] < records[0]["loss"]
    clip = load_clip(result.export)
    tok = json.loads(read_metadata(result.export)[TOKENIZER_KEY])
    assert tok["type"] == "shapes" and clip.config.image_size == 16
    from glidekit.data import ShapesTokenizer
    from glidekit.train.data import tokenize_shapes_for_clip

    tokens, _ = tokenize_shapes_for_clip(
        ShapesTokenizer.from_dict(tok["data"]), ["a red circle"], 32
    )
    z = clip.text_embeddings(tokens)
    assert z.shape == (1, 32) and torch.allclose(z.norm(dim=-1), torch.ones(1), atol=1e-4)
    from glidekit.guidance import clip_cond_fn

    grad = clip_cond_fn(clip, tokens, 1.0)(torch.zeros(1, 3, 16, 16), torch.tensor([10]))
    assert grad.shape == (1, 3, 16, 16)

    # The file guides a pipeline from prompts: its shipped vocabulary is used, in CLIP's form.
    from glidekit.pipelines import ClipGuidedPipeline

    base = train(load_config(tiny_config(tmp_path / "base", train={"steps": 1})))
    pipe = ClipGuidedPipeline(str(base.export), None, clip=str(result.export), device="cpu")
    prompted = pipe.clip.text_embeddings(["a red circle"])
    assert torch.allclose(prompted, z, atol=1e-6)
    image = pipe("a red circle", steps="3", guidance_scale=2.0, seed=0).images[0]
    assert image.size == (16, 16)


def test_bf16_autocast_and_fine_tune_from_bundle(tmp_path: Path) -> None:
    first = train(load_config(tiny_config(tmp_path / "a", train={"steps": 2, "precision": "bf16"})))
    assert first.last_loss is not None and torch.isfinite(torch.tensor(first.last_loss))
    # Start a second run from the exported bundle: the weights are loaded, the arch follows it.
    cfg = tiny_config(tmp_path / "b", train={"steps": 1})
    cfg["model"] = {"kind": "text2im", "init": str(first.export), "dropout": 0.0}
    trainer = Trainer(load_config(cfg))
    exported, _, _ = load_model(first.export)
    for name, value in exported.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    trainer.close()
    with pytest.raises(ValueError, match="model.init"):
        Trainer(load_config(tiny_config(tmp_path / "c", model={"init": str(tmp_path / "no")})))
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Trainer(load_config(tiny_config(tmp_path / "d", train={"precision": "fp16"})))


def _make_shards(tmp_path: Path, n_shards: int, per_shard: int) -> Path:
    import random

    from glidekit.data.shapes import generate

    folder = tmp_path / "shards"
    folder.mkdir(exist_ok=True)
    rng = random.Random(0)
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                img, scene = generate(rng, 16)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", scene.color.encode())):
                    info = tarfile.TarInfo(f"{s:04d}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_folder_data_trains(tmp_path: Path) -> None:
    root = tmp_path / "images"
    shapes_folder(root, 5, 24, seed=1)
    cfg = tiny_config(
        tmp_path / "f",
        data={"kind": "folder", "root": str(root), "tokenizer": "shapes"},
        train={"steps": 3},
    )
    result = train(load_config(cfg))
    assert result.step == 3 and result.export.is_file()


def test_overfits_a_handful_of_images(tmp_path: Path) -> None:
    """Four captioned pictures, seen again and again: the loss falls well below its start."""
    root = tmp_path / "few"
    shapes_folder(root, 4, 16, seed=3)
    out = tmp_path / "overfit"
    cfg = tiny_config(
        out,
        data={"kind": "folder", "root": str(root), "tokenizer": "shapes", "caption_dropout": 0.0},
        optim={"lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9},
        train={"steps": 80, "batch_size": 4, "log_every": 10},
    )
    train(load_config(cfg))
    losses = [json.loads(line)["mse"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------ bad data
def test_folder_with_corrupt_and_uncaptioned_images_trains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Corrupt JPEGs are skipped (and counted), an image without caption trains on "" and the
    run goes on to the end."""
    from glidekit.data.shapes import generate

    root = tmp_path / "images"
    rng = shapes_folder(root, 5, 24, seed=2, uncaptioned={3})  # 3.png has no caption
    buf = io.BytesIO()
    generate(rng, 24)[0].save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "truncated.txt").write_text("a cut-off picture")
    (root / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny_config(tmp_path / "run", train={"steps": 3})))
    caplog.set_level(logging.INFO)
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        code = main(
            ["train", str(cfg), "data.kind=folder", f"data.root={root}", "data.tokenizer=shapes"]
        )
    assert code == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    assert (tmp_path / "run" / "export.safetensors").is_file()
    log = caplog.text
    assert "5 images under" in log and "(2 unreadable skipped)" in log, log
    assert "1 of 5 images" in log and "no .txt caption" in log, log


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_missing_data_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny_config(tmp_path / "run")))
    missing = tmp_path / "no-such-folder"
    key = "data.root" if kind == "folder" else "data.shards"
    assert main(["train", str(cfg), f"data.kind={kind}", f"{key}={missing}"]) == 2
    err = capsys.readouterr().err
    assert f"glidekit train: error: {key}:" in err and str(missing) in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run").exists()  # a run that could not start leaves no folder


def test_high_noise_timestep_sampling(tmp_path: Path) -> None:
    from glidekit.train.unet import sample_timesteps

    gen = torch.Generator().manual_seed(0)
    plain = sample_timesteps(4000, 1000, gen, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(plain, torch.randint(0, 1000, (4000,), generator=gen))  # the default
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(4000, 1000, gen, torch.device("cpu"), 0.5, 900)
    share = (t >= 900).float().mean().item()
    assert 0.5 < share < 0.6  # half drawn from the top, plus uniform's 10% of the rest
    assert t.min() >= 0 and t.max() < 1000
    with pytest.raises(ValueError, match="diffusion.high_noise_fraction"):
        load_config(tiny_config(tmp_path, diffusion={"high_noise_fraction": 1.5}))
    with pytest.raises(ValueError, match="diffusion.high_noise_start"):
        load_config(tiny_config(tmp_path, diffusion={"high_noise_start": 1000}))
    cfg = tiny_config(tmp_path / "hn", diffusion={"high_noise_fraction": 0.3})
    assert train(load_config(cfg)).step == 4


def test_high_noise_loss_weight(tmp_path: Path) -> None:
    from glidekit.diffusion.losses import high_noise_weight, training_losses

    diffusion = GaussianDiffusion.from_config("squaredcos_cap_v2", 1000)
    t = torch.tensor([0, 300, 500, 900, 950, 999])
    w = high_noise_weight(diffusion, t, 50.0)
    abar = torch.from_numpy(diffusion.alphas_cumprod)[t].float()
    assert torch.equal(w[:2], torch.ones(2))  # low noise: GLIDE's plain eps loss
    assert torch.allclose(w[3], (1 - abar[3]) / abar[3])  # t=900: exactly an x0 loss
    assert w[3] > 30 and torch.all(w[4:] == 50.0)  # capped at the top
    assert torch.all(w[1:] >= w[:-1])  # more weight as noise grows
    with pytest.raises(ValueError, match="max_weight"):
        high_noise_weight(diffusion, t, 0.5)

    def model(x, ts, **_):
        return torch.cat([0.9 * x, torch.zeros_like(x)], dim=1)

    x0 = torch.rand(6, 3, 4, 4) * 2 - 1
    noise = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = training_losses(diffusion, model, x0, t, noise=noise)
    heavy = training_losses(diffusion, model, x0, t, noise=noise, mse_weight_max=50.0)
    assert torch.equal(plain["mse"], heavy["mse"]) and torch.equal(plain["vb"], heavy["vb"])
    assert torch.allclose(heavy["loss"], plain["mse"] * w + plain["vb"])
    assert torch.equal(plain["loss"], plain["mse"] + plain["vb"])

    with pytest.raises(ValueError, match="diffusion.mse_weight_max"):
        load_config(tiny_config(tmp_path, diffusion={"mse_weight_max": 0.0}))
    cfg = tiny_config(tmp_path / "w", diffusion={"mse_weight_max": 20.0})
    assert train(load_config(cfg)).step == 4


def test_upsampler_trains_on_aligned_patches(tmp_path: Path) -> None:
    from glidekit.train.data import random_patches

    gen = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    low = images[:, :, ::4, ::4].clone()  # low-res pixel (i, j) <- image pixel (4i, 4j)
    mask = torch.rand(2, 1, 16, 16)
    crops, cond = random_patches(images, {"low_res": low, "inpaint_mask": mask}, 8, gen)
    assert crops.shape == (2, 3, 8, 8) and cond["low_res"].shape == (2, 3, 2, 2)
    assert torch.equal(cond["low_res"], crops[:, :, ::4, ::4])  # patches line up
    for i in range(2):  # the mask is cropped exactly like the image
        y, x = (int(v) for v in torch.nonzero(images[i, 0] == crops[i, 0, 0, 0])[0])
        assert y % 4 == 0 and x % 4 == 0
        assert torch.equal(cond["inpaint_mask"][i], mask[i, :, y : y + 8, x : x + 8])
    with pytest.raises(ValueError, match="multiple of 4"):
        random_patches(images, {"low_res": low}, 6, gen)

    bad = {"model": {"kind": "text2im"}, "data": {"patch_size": 8}}
    with pytest.raises(ValueError, match="data.patch_size is for upsamplers"):
        load_config(tiny_config(tmp_path, **bad))
    bad = {"model": {"kind": "super_res"}, "data": {"patch_size": 6, "low_res_size": 4}}
    with pytest.raises(ValueError, match="data.patch_size=6 must be"):
        load_config(tiny_config(tmp_path, **bad))
    out = tmp_path / "sr"
    cfg = tiny_config(out, model={"kind": "super_res"}, data={"low_res_size": 4, "patch_size": 8})
    result = train(load_config(cfg))
    model, _, _ = load_model(result.export)
    assert model.config.image_size == 16  # samples whole images at the configured size
    grid = Image.open(out / "samples" / "step-000004.png")
    assert grid.size == (2 * 18 + 2, 2 * 18 + 2)


def test_inpaint_object_examples_reach_the_model_with_their_masks(tmp_path: Path) -> None:
    from glidekit.train.data import conditioning

    cfg = tiny_config(tmp_path / "i", train={"steps": 2})
    cfg["model"]["kind"] = "inpaint"
    cfg["data"] = {"kind": "shapes", "length": 8, "inpaint_object_prob": 1.0}
    assert train(load_config(cfg)).step == 2
    images = torch.zeros(2, 3, 16, 16)
    given = torch.ones(1, 16, 16)
    given[:, :8, :8] = 0
    cond = conditioning(images, super_res=False, inpaint=True, low_res_size=4,
                        mask_kind="box", generator=torch.Generator().manual_seed(0),
                        keeps=[given, None])  # fmt: skip
    assert torch.equal(cond["inpaint_mask"][0], given)  # the dataset's mask, as given
    assert not torch.equal(cond["inpaint_mask"][1], given)  # a random one where none was given
    cfg["model"]["kind"] = "text2im"
    with pytest.raises(ValueError, match="data.inpaint_object_prob is for inpainting models"):
        load_config(cfg)


def test_inpainting_fine_tune_starts_from_a_text2im_bundle(tmp_path: Path) -> None:
    first = train(load_config(tiny_config(tmp_path / "a", train={"steps": 2})))
    base, _, _ = load_model(first.export)
    cfg = tiny_config(tmp_path / "b", train={"steps": 1})
    cfg["model"] = {"kind": "inpaint", "init": str(first.export)}
    trainer = Trainer(load_config(cfg))
    trainer.close()  # releases the run folder for the run below
    widened = trainer.model
    assert widened.config.kind == "inpaint" and widened.config.in_channels == 7
    # Until fine-tuning, the widened model computes exactly what the base did, whatever the
    # masked image and mask say (their input weights start at zero).
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    tokens, mask = tokenize_batch(trainer.tokenizer, ["a red circle", ""], 16)
    with torch.no_grad():
        want = base(x, t, tokens, mask)
        got = widened.eval()(
            x,
            t,
            tokens,
            mask,
            inpaint_image=torch.rand_like(x),
            inpaint_mask=torch.ones(2, 1, 16, 16),
        )
    assert torch.allclose(got, want, atol=1e-6)
    assert train(load_config(cfg)).step == 1  # and it trains
    cfg = tiny_config(tmp_path / "c", train={"steps": 1})
    cfg["model"] = {"kind": "super_res", "init": str(first.export)}
    with pytest.raises(ValueError, match="set model.kind: text2im \\(or inpaint\\)"):
        Trainer(load_config(cfg))


def test_v_prediction_trains_exports_and_samples(tmp_path: Path) -> None:
    from glidekit.pipelines import Text2ImagePipeline

    with pytest.raises(ValueError, match="diffusion.prediction"):
        load_config(tiny_config(tmp_path, diffusion={"prediction": "x0"}))
    result = train(load_config(tiny_config(tmp_path / "v", diffusion={"prediction": "v"})))
    _, diffusion_cfg, _ = load_model(result.export)
    assert diffusion_cfg.prediction == "v"
    pipe = Text2ImagePipeline(str(result.export), None, device="cpu")
    assert create_diffusion(pipe.base.diffusion, "3").prediction == "v"
    image = pipe("a red circle", steps="3", seed=0).images[0]
    assert image.size == (16, 16)


def test_fine_tune_turns_on_attention_position_embeddings(tmp_path: Path) -> None:
    first = train(load_config(tiny_config(tmp_path / "a", train={"steps": 2})))
    base, _, _ = load_model(first.export)
    cfg = tiny_config(tmp_path / "b", train={"steps": 1})
    cfg["model"] = {"kind": "text2im", "init": str(first.export), "attention_pos_emb": True}
    trainer = Trainer(load_config(cfg))
    trainer.close()  # releases the run folder for the run below
    assert trainer.model.config.attention_pos_emb
    # Every bundle weight carries over; the new embeddings start as the sine-cosine table.
    tuned_state = trainer.model.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(tuned_state[key], value.float()), key
    added = {k: v for k, v in tuned_state.items() if k not in base.state_dict()}
    assert added and all(k.endswith("pos_emb") for k in added)
    for value in added.values():
        assert torch.equal(value, sincos_position_embedding(*value.shape))
    result = train(load_config(cfg))
    tuned, _, _ = load_model(result.export)
    assert tuned.config.attention_pos_emb
    assert any(k.endswith("pos_emb") for k in tuned.state_dict())


def test_fine_tune_turns_on_text_spatial_maps(tmp_path: Path) -> None:
    first = train(load_config(tiny_config(tmp_path / "a", train={"steps": 2})))
    base, _, _ = load_model(first.export)
    cfg = tiny_config(tmp_path / "b", train={"steps": 2})
    cfg["model"] = {"kind": "text2im", "init": str(first.export), "text_spatial_maps": 4}
    trainer = Trainer(load_config(cfg))
    trainer.close()
    state = trainer.model.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(state[key], value.float()), key
    assert torch.count_nonzero(state["text_spatial.proj.weight"]) == 0  # starts as without it
    tuned, _, _ = load_model(train(load_config(cfg)).export)
    assert tuned.config.text_spatial_maps == 4
    assert torch.count_nonzero(tuned.state_dict()["text_spatial.proj.weight"]) > 0  # it learnt


def test_clip_position_twins_are_hard_negatives(tmp_path: Path) -> None:
    from glidekit.data import ShapesDataset
    from glidekit.data.shapes import check, parse_caption
    from glidekit.train.data import add_position_twins

    data = ShapesDataset(8, 32, seed=1, include_scene=True)
    samples = [data[i] for i in range(8)]
    twins = add_position_twins(samples, 1.0, torch.Generator().manual_seed(0), 32)
    for a, b in zip(twins[0::2], twins[1::2], strict=True):
        pa, pb = parse_caption(a["caption"]), parse_caption(b["caption"])
        assert len(pa) == 5 and pa["position"] != pb["position"]  # canonical, every word
        assert {k: v for k, v in pa.items() if k != "position"} == {
            k: v for k, v in pb.items() if k != "position"
        }
        for s in (a, b):  # and each picture shows what its caption says
            pixels = ((s["image"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            assert all(check(pixels, s["caption"]).values())
    assert add_position_twins(samples, 0.0, torch.Generator(), 32) == samples
    with pytest.raises(ValueError, match="include_scene"):
        add_position_twins([{"image": None}] * 2, 1.0, torch.Generator(), 32)

    cfg = tiny_config(tmp_path / "clip", train={"steps": 2, "batch_size": 4})
    cfg["model"] = dict(TINY_CLIP)
    cfg["data"]["position_twins"] = 0.5
    assert train(load_config(cfg)).step == 2
    cfg["model"] = dict(TINY_UNET)
    with pytest.raises(ValueError, match="data.position_twins is for CLIP models"):
        load_config(cfg)


# ------------------------------------------------------------------------------------ integrity
def _config_file(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _error_lines(err: str) -> list[str]:
    """The CLI's error lines in ``err`` (log lines may sit beside them)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("glidekit train: error:")]


def _flip_tensor_bytes(path: Path, n: int = 256) -> None:
    """Flip ``n`` bytes in the middle of the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + (info.file_size - n) // 2
        f.seek(start)
        data = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def test_checkpoint_checksum_and_checkpoints_written_before_it(tmp_path: Path) -> None:
    """A checkpoint carries a checksum of its content that loading verifies; a checkpoint
    written before checksums (and recorded overrides) existed still resumes bit for bit."""
    from glidekit.checkpoints import CorruptCheckpointError
    from glidekit.train.state import payload_checksum

    sections = {"model": {"dropout": 0.1}, "train": {"steps": 4}}
    train(load_config(tiny_config(tmp_path / "a", **sections)))
    split = load_config(tiny_config(tmp_path / "b", **sections))
    train(split, stop_at=2)
    path = tmp_path / "b" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["checksum"].startswith("sha256:") and ckpt["checksum"] == payload_checksum(ckpt)
    name = next(iter(ckpt["model"]))
    changed = {**ckpt, "model": {**ckpt["model"], name: ckpt["model"][name] + 1}}
    torch.save(changed, tmp_path / "changed.pt")  # the old checksum over changed content
    with pytest.raises(CorruptCheckpointError, match="checksum does not match"):
        load_checkpoint(tmp_path / "changed.pt")
    old = {k: v for k, v in ckpt.items() if k not in ("checksum", "overrides")}
    torch.save(old, path)  # as glidekit wrote it before
    assert load_checkpoint(path)["step"] == 2
    assert train(split, resume=True).step == 4
    _states_equal(load_checkpoint(tmp_path / "a/checkpoint.pt"), load_checkpoint(path))


def test_corrupt_checkpoint_is_refused_and_the_previous_one_offered(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    cfg = _config_file(tmp_path, tiny_config(out, train={"steps": 4, "checkpoint_every": 2}))
    assert main(["train", str(cfg)]) == 0
    ckpt, prev = out / "checkpoint.pt", out / "checkpoint.prev.pt"
    assert load_checkpoint(prev)["step"] == 2  # the one before, kept
    good = load_checkpoint(ckpt)
    assert good["step"] == 4
    _flip_tensor_bytes(ckpt)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume"]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert str(ckpt) in errors[0] and "corrupt" in errors[0]
    assert f"intact (step 2): continue with --resume-from {prev}" in errors[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # all kept
    # The offered checkpoint continues the run to exactly where the intact one ended, and the
    # damaged file does not become the "previous good" one.
    assert main(["train", str(cfg), "--resume-from", str(prev)]) == 0
    _states_equal(good, load_checkpoint(ckpt))
    assert load_checkpoint(prev)["step"] == 2


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glidekit.train import NonFiniteLossError
    from glidekit.train import unet as unet_task

    out = tmp_path / "run"
    cfg = _config_file(tmp_path, tiny_config(out, train={"steps": 6, "checkpoint_every": 2}))
    assert train(load_config(cfg), stop_at=2).stopped
    ckpt = out / "checkpoint.pt"
    good = ckpt.read_bytes()
    real = unet_task.training_losses

    def poisoned(*args, **kwargs):  # the loss of every step from now on is NaN
        losses = real(*args, **kwargs)
        return {**losses, "loss": losses["loss"] * float("nan")}

    monkeypatch.setattr(unet_task, "training_losses", poisoned)
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1, errors
    assert "step 3: the training loss is nan" in errors[0]
    assert f"The last good checkpoint is {ckpt} (step 2)" in errors[0]
    assert ckpt.read_bytes() == good  # not replaced by NaN weights
    assert not (out / "export.safetensors").exists() and not (out / "checkpoint.prev.pt").exists()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
    with pytest.raises(NonFiniteLossError, match="step 3") as info:
        train(load_config(cfg), resume=True)
    assert info.value.step == 3 and ckpt.read_bytes() == good
    fresh = tmp_path / "fresh"
    with pytest.raises(NonFiniteLossError, match="No checkpoint of this run was written"):
        train(load_config(tiny_config(fresh)))
    assert not (fresh / "checkpoint.pt").exists()
    # Weights gone bad some other way are never checkpointed either.
    monkeypatch.setattr(unet_task, "training_losses", real)
    with Trainer(load_config(cfg), resume=True) as trainer:
        next(trainer.model.parameters()).data.fill_(float("inf"))
        with pytest.raises(NonFiniteLossError, match="weights hold NaN or infinite"):
            trainer.save_checkpoint()
    assert ckpt.read_bytes() == good


def test_a_run_folder_in_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from glidekit.train import RunFolderBusyError
    from glidekit.train.state import RunLock

    out = tmp_path / "run"
    cfg = _config_file(tmp_path, tiny_config(out, train={"steps": 4}))
    train(load_config(cfg), stop_at=2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    lock = RunLock(out)
    lock.acquire()  # as another training run does
    try:
        capsys.readouterr()
        assert main(["train", str(cfg), "--resume"]) == 2
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "in use by another training run" in errors[0], errors
        assert str(out) in errors[0]
        with pytest.raises(RunFolderBusyError):
            Trainer(load_config(cfg), resume=True)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        lock.release()
    assert main(["train", str(cfg), "--resume"]) == 0  # free again: the run goes on
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "checkpoint.prev.pt", "export.safetensors", "loss.png", "metrics.jsonl",
         "samples"]
    )  # fmt: skip


def test_resume_reapplies_the_runs_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from glidekit.train.config import merge_overrides

    out = tmp_path / "run"
    cfg = _config_file(tmp_path, tiny_config(out, train={"steps": 4}))
    assert main(["train", str(cfg), "train.steps=2", "optim.lr=2e-3"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert main(["train", str(cfg), "--resume"]) == 0  # train.steps=2 still: nothing to add
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["overrides"] == ["train.steps=2", "optim.lr=2e-3"]
    assert main(["train", str(cfg), "train.steps=3", "--resume"]) == 0  # given again: replaced
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["overrides"] == ["optim.lr=2e-3", "train.steps=3"]
    assert ckpt["config"]["optim"]["lr"] == pytest.approx(2e-3)
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 3" in printed and "lr: 0.002" in printed
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "applies again the overrides the run was started with" in " ".join(
        capsys.readouterr().out.split()
    )
    assert merge_overrides(
        ["train.steps=2", "export.sampling.steps=karras25", "optim.lr=1"],
        ["export.sampling={steps: '50'}", "train.steps=5"],
    ) == ["optim.lr=1", "export.sampling={steps: '50'}", "train.steps=5"]


def test_export_carries_the_models_sampling_defaults(tmp_path: Path) -> None:
    from glidekit.checkpoints.modelfile import read_sampling_defaults

    sampling = {"guidance_scale": 3.0, "steps": "karras25", "sampler": "dpm++2m"}
    cfg = tiny_config(tmp_path / "s", train={"steps": 1})
    result = train(load_config(cfg | {"export": {"sampling": sampling}}))
    assert read_sampling_defaults(result.export) == sampling
    assert read_sampling_defaults(train(load_config(tiny_config(tmp_path / "n"))).export) == {}
    one = load_config(cfg, ["export.sampling.steps=karras50", "export.sampling.guidance_scale=2"])
    assert one.export.sampling == {"steps": "karras50", "guidance_scale": 2}
    for overrides, needle in (
        (["export.sampling=3"], "export.sampling must be a mapping"),
        (["export.sampling.guidance_scale=.nan"], "export.sampling.guidance_scale"),
        (["export.sampling.sampler_options={eta: 1}"], "export.sampling.sampler_options"),
        (["export.sampling={1: 2}"], "export.sampling: 1 is not an option name"),
        (["train.steps.x=1"], "train.steps is not a mapping"),
    ):
        with pytest.raises(ValueError, match=re.escape(needle)):
            load_config(cfg, overrides)
    with pytest.raises(ValueError, match="export.sampling holds a diffusion model's"):
        load_config(cfg | {"model": dict(TINY_CLIP), "export": {"sampling": sampling}})
