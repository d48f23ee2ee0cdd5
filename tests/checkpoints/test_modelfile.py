"""glidekit.checkpoints.modelfile: glidekit's own UNet and CLIP files, and hostile ones."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import golden_model

from glidekit.checkpoints import (
    CheckpointError,
    ModelFileError,
    is_clip_file,
    is_unet_file,
    load_clip,
    load_unet,
    read_metadata,
    read_sampling_defaults,
    read_unet_config,
    save_clip,
    save_unet,
    tokenizer_from_metadata,
    tokenizer_to_metadata,
)
from glidekit.checkpoints import modelfile as mf
from glidekit.clip import CLIPConfig, create_clip_model
from glidekit.diffusion import DiffusionConfig, GaussianDiffusion
from glidekit.diffusion.losses import training_losses
from glidekit.models import MODELS_DIR
from glidekit.nn import SuperResConfig, Text2ImConfig, create_model
from glidekit.tensorfile import read_header, read_tensors, write_tensors
from glidekit.tokenizer import ClipTokenizer, GPT2Tokenizer, ShapesClipTokenizer, ShapesTokenizer

TINY = Text2ImConfig(
    image_size=8,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(4,),
    num_head_channels=32,
    text_ctx=8,
    xf_width=32,
    xf_layers=1,
    xf_heads=2,
    n_vocab=64,
)
TINY_CLIP = CLIPConfig(
    n_timesteps=10,
    image_size=8,
    patch_size=4,
    n_vocab=40,
    max_text_len=8,
    n_embd=16,
    n_head_state_text=8,
    n_head_text=2,
    n_xf_blocks_text=1,
    n_head_state_image=8,
    n_head_image=2,
    n_xf_blocks_image=1,
)
SHAPES = ShapesTokenizer(["red", "blue", "circle", "square"], text_ctx=8)


def tiny_unet_file(path, **kwargs):
    torch.manual_seed(0)
    return save_unet(path, create_model(TINY), DiffusionConfig(), SHAPES, **kwargs)


def tiny_clip_file(path, tokenizer=SHAPES):
    torch.manual_seed(0)
    return save_clip(path, create_clip_model(TINY_CLIP), tokenizer)


def rewritten(src, dest, *, metadata=None, drop=(), tensors=None):
    """A copy of ``src`` with metadata entries replaced (None: removed) and tensors changed."""
    header = read_header(src)
    meta = dict(header.metadata)
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    state = {k: v for k, v in read_tensors(src).items() if k not in drop}
    state.update(tensors or {})
    write_tensors(dest, state, meta)
    return dest


# --------------------------------------------------------------------------------------------
# UNet files
# --------------------------------------------------------------------------------------------


def test_roundtrip_keeps_weights_config_and_tokenizer(tmp_path):
    model, t = golden_model("super_res_forward")
    tok = GPT2Tokenizer(model.config.text_ctx)
    path = save_unet(
        tmp_path / "m.safetensors", model, DiffusionConfig(noise_schedule="linear"), tok
    )
    assert is_unet_file(path) and not is_clip_file(path) and not list(tmp_path.glob("*.tmp"))
    loaded, diffusion, tokenizer = load_unet(path)
    assert loaded.config == model.config and isinstance(loaded.config, SuperResConfig)
    assert read_unet_config(path) == model.config
    assert diffusion.noise_schedule == "linear"
    assert isinstance(tokenizer, GPT2Tokenizer) and tokenizer.text_ctx == 16
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_half_precision_export_loads_as_float32_on_cpu(tmp_path):
    model, _ = golden_model("text2im_forward")
    tok = GPT2Tokenizer(model.config.text_ctx)
    path = save_unet(tmp_path / "m.safetensors", model, DiffusionConfig(), tok, dtype=torch.float16)
    assert path.stat().st_size < 0.6 * sum(v.numel() * 4 for v in model.state_dict().values())
    loaded, _, _ = load_unet(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # the golden weights are exact in float16
    assert torch.equal(loaded.state_dict()["out.2.weight"], model.state_dict()["out.2.weight"])


def test_loading_straight_into_bf16_matches_converting_after(tmp_path):
    model, _ = golden_model("text2im_forward")
    path = save_unet(tmp_path / "m.safetensors", model, DiffusionConfig(), GPT2Tokenizer(16))
    want, _, _ = load_unet(path)
    want.convert_to_fp16(torch.bfloat16)
    got, _, _ = load_unet(path, dtype=torch.bfloat16)
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


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    assert not is_unet_file(bad) and not is_unet_file("base") and not is_unet_file(None)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_unet(bad)
    with pytest.raises(FileNotFoundError):
        load_unet(tmp_path / "missing.safetensors")
    clip = tiny_clip_file(tmp_path / "clip.safetensors")
    with pytest.raises(ModelFileError, match="not a glidekit model file.*glide-clip/1"):
        load_unet(clip)


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
    path = tiny_unet_file(tmp_path / "m.safetensors")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")  # what the umask gives any new file
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(probe).st_mode)


def test_sampling_defaults_and_extra_metadata(tmp_path):
    sampling = {"guidance": "clip", "guidance_scale": 20.0, "steps": 250}
    path = tiny_unet_file(tmp_path / "m.safetensors", sampling=sampling, metadata={"who": "me"})
    assert read_sampling_defaults(path) == sampling
    assert read_metadata(path)["who"] == "me"
    assert read_sampling_defaults(tiny_unet_file(tmp_path / "plain.safetensors")) == {}
    # Not a glidekit UNet file: no defaults of its own (loading it says what is wrong).
    for other in ("base", tmp_path / "missing.safetensors", tiny_clip_file(tmp_path / "c.st")):
        assert read_sampling_defaults(other) == {}
    with pytest.raises(ValueError, match="metadata: .*glidekit.format"):
        tiny_unet_file(tmp_path / "x.safetensors", metadata={"glidekit.format": "mine"})
    with pytest.raises(ValueError, match="steps=nan"):
        tiny_unet_file(tmp_path / "x.safetensors", sampling={"steps": float("nan")})
    assert not (tmp_path / "x.safetensors").exists()
    bad = rewritten(path, tmp_path / "bad.safetensors", metadata={mf.SAMPLING_KEY: [1, 2]})
    with pytest.raises(ModelFileError, match="bad.safetensors: glidekit.sampling is not a JSON"):
        read_sampling_defaults(bad)


def test_the_embedded_models_carry_their_sampling_defaults():
    base = read_sampling_defaults(MODELS_DIR / "shapes-base.safetensors")
    fast = {"guidance_scale": 3.0, "steps": "karras25", "sampler": "dpm++2m",
            "upsample_steps": "6", "upsample_sampler": "dpm++2m"}  # fmt: skip
    assert base == {"guidance": "classifier-free", **fast}  # GLIDE's guidance (issue 17)
    inpaint = read_sampling_defaults(MODELS_DIR / "shapes-base-inpaint.safetensors")
    assert inpaint == fast
    assert read_sampling_defaults(MODELS_DIR / "shapes-upsample.safetensors") == {}
    assert is_clip_file(MODELS_DIR / "shapes-clip.safetensors")
    clip = load_clip(MODELS_DIR / "shapes-clip.safetensors")
    assert isinstance(clip.tokenizer, ShapesClipTokenizer)


_SAVE_IN_A_PROCESS = """
import json, sys, torch
from glidekit.checkpoints import save_unet
from glidekit.diffusion import DiffusionConfig
from glidekit.nn import create_model
from glidekit.nn.config import config_from_dict
from glidekit.tokenizer import ShapesTokenizer
torch.manual_seed(0)
tok = ShapesTokenizer(["red", "blue", "circle", "square"], text_ctx=8)
save_unet(sys.argv[1], create_model(config_from_dict(json.loads(sys.argv[2]))),
          DiffusionConfig(), tok, sampling={"steps": 250, "guidance_scale": 20.0,
          "guidance": "clip"}, metadata={"b": "2", "a": "1", "c": "3"})
"""


def test_model_files_are_byte_reproducible(tmp_path):
    """Issue 16 item 10: the same model exported twice, from two processes (each with its own
    hash seed), gives the same bytes."""
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for i, path in enumerate(paths):
        env = {**os.environ, "PYTHONHASHSEED": str(i + 1)}
        subprocess.run(
            [sys.executable, "-c", _SAVE_IN_A_PROCESS, str(path), json.dumps(TINY.to_dict())],
            check=True,
            env=env,
            timeout=300,
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()
    # and in this process, with the metadata given in another order
    torch.manual_seed(0)
    again = save_unet(
        tmp_path / "c.safetensors",
        create_model(TINY),
        DiffusionConfig(),
        SHAPES,
        sampling={"guidance": "clip", "steps": 250, "guidance_scale": 20.0},
        metadata={"c": "3", "a": "1", "b": "2"},
    )
    assert again.read_bytes() == paths[0].read_bytes()


# --------------------------------------------------------------------------------------------
# The tokenizer codec: one written, every dialect read
# --------------------------------------------------------------------------------------------


def test_tokenizer_codec_roundtrips_and_reads_the_older_dialects():
    words = SHAPES.to_dict()
    for tok in (GPT2Tokenizer(77), SHAPES, ShapesClipTokenizer(SHAPES)):
        back = tokenizer_from_metadata(json.loads(json.dumps(tokenizer_to_metadata(tok))))
        assert type(back) is type(tok)
    assert tokenizer_from_metadata({"type": "gpt2", "text_ctx": 77}).text_ctx == 77
    assert isinstance(tokenizer_from_metadata({"type": "clip"}), ClipTokenizer)
    # UNet files before the codec: {"type": "ShapesTokenizer", "data": ...}
    assert tokenizer_from_metadata({"type": "ShapesTokenizer", "data": words}) == SHAPES
    # CLIP files before the codec: {"type": "shapes", "id_offset": 1, "data": ...}
    old_clip = tokenizer_from_metadata({"type": "shapes", "id_offset": 1, "data": words})
    assert isinstance(old_clip, ShapesClipTokenizer) and old_clip.words == SHAPES
    for bad, match in (
        ({"type": "sentencepiece"}, "unknown"),
        ({"type": "gpt2", "text_ctx": 10**9}, "text_ctx"),
        ({"type": "shapes", "id_offset": 7, "data": words}, "id_offset"),
        ({"type": "shapes", "data": {"kind": "x"}}, "words"),
        ([1], "JSON object"),
    ):
        with pytest.raises(ValueError, match=f"^tokenizer: .*{match}"):
            tokenizer_from_metadata(bad)
    with pytest.raises(TypeError, match="tokenizer"):
        tokenizer_to_metadata(object())


def test_files_written_before_the_codec_still_load(tmp_path):
    path = tiny_unet_file(tmp_path / "m.safetensors")
    old = {"type": "ShapesTokenizer", "data": SHAPES.to_dict()}
    old_file = rewritten(path, tmp_path / "old.safetensors", metadata={mf.TOKENIZER_KEY: old})
    assert load_unet(old_file)[2] == SHAPES


# --------------------------------------------------------------------------------------------
# CLIP files
# --------------------------------------------------------------------------------------------


def test_clip_roundtrip_with_its_words(tmp_path):
    path = tiny_clip_file(tmp_path / "clip.safetensors")
    assert is_clip_file(path) and not is_unet_file(path)
    meta = json.loads(read_metadata(path)[mf.TOKENIZER_KEY])
    assert meta["type"] == "shapes" and meta["id_offset"] == 1
    clip = load_clip(path)
    torch.manual_seed(0)
    want = create_clip_model(TINY_CLIP)
    for k, v in want.state_dict().items():
        assert torch.equal(v, clip.state_dict()[k]), k
    assert torch.equal(clip.logit_scale, want.logit_scale)
    assert isinstance(clip.tokenizer, ShapesClipTokenizer) and clip.tokenizer.words == SHAPES
    # both towers from the file given as a pair: the same model
    pair = load_clip((path, path))
    assert torch.equal(
        pair.text_encoder.state_dict()["blocks.input.w_voc"],
        want.text_encoder.state_dict()["blocks.input.w_voc"],
    )
    bpe = tiny_clip_file(tmp_path / "bpe.safetensors", tokenizer=None)
    assert json.loads(read_metadata(bpe)[mf.TOKENIZER_KEY]) == {"type": "clip"}
    assert load_clip(bpe)._tokenizer is None  # CLIP's BPE, loaded on first use


def test_clip_from_a_pair_of_tower_files_with_their_config(tmp_path):
    torch.manual_seed(0)
    want = create_clip_model(TINY_CLIP)
    meta = {mf.CLIP_CONFIG_KEY: json.dumps(TINY_CLIP.to_dict())}
    towers = []
    for attr in ("image_encoder", "text_encoder"):
        towers.append(tmp_path / f"{attr}.safetensors")
        write_tensors(towers[-1], getattr(want, attr).state_dict(), meta)
    got = load_clip(tuple(towers))
    for k, v in want.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    assert got._tokenizer is None  # no tokenizer recorded: CLIP's BPE, on first use


def test_clip_errors_name_the_argument(tmp_path):
    unet = tiny_unet_file(tmp_path / "unet.safetensors")
    with pytest.raises(ModelFileError, match="^clip: .*unet.safetensors: not a glidekit CLIP"):
        load_clip(unet)
    with pytest.raises(ModelFileError, match="^clip: .*model.pt is not a glidekit CLIP file"):
        load_clip(tmp_path / "model.pt")
    with pytest.raises(TypeError, match="^clip: "):
        load_clip(3)
    clip = tiny_clip_file(tmp_path / "clip.safetensors")
    with pytest.raises(CheckpointError, match="^clip_text_enc: .*missing.pt"):
        load_clip((clip, tmp_path / "missing.pt"))
    with pytest.raises(ModelFileError, match="^clip_image_enc: .*unet.safetensors: not a glidek"):
        load_clip((unet, clip))
    other = rewritten(
        clip, tmp_path / "other.safetensors",
        metadata={mf.CLIP_CONFIG_KEY: {**TINY_CLIP.to_dict(), "logit_scale": 50.0}},
    )  # fmt: skip
    with pytest.raises(ModelFileError, match="^clip: .*different CLIP configs"):
        load_clip((clip, other))


# --------------------------------------------------------------------------------------------
# Hostile files (issue 16 items 2, 4, 5): one line naming the file, before any allocation
# --------------------------------------------------------------------------------------------


def _hostile_unet(tmp_path, case):
    path = tiny_unet_file(tmp_path / "m.safetensors")
    dest = tmp_path / f"{case}.safetensors"
    config = TINY.to_dict()
    changes = {
        "no-config": {"metadata": {mf.CONFIG_KEY: None}},
        "config-not-json": {"metadata": {mf.CONFIG_KEY: "{"}},
        "config-mismatch": {"metadata": {mf.CONFIG_KEY: {**config, "num_channels": 64}}},
        "missing-tensor": {"drop": ("out.2.weight",)},
        "extra-tensor": {"tensors": {"spare": torch.zeros(3)}},
        "int-weights": {"tensors": {"out.2.bias": torch.zeros(6, dtype=torch.int32)}},
        "wide": {"metadata": {mf.CONFIG_KEY: {**config, "num_channels": 10**6}}},
        "deep": {"metadata": {mf.CONFIG_KEY: {**config, "xf_layers": 10**6}}},
        "vocab": {"metadata": {mf.CONFIG_KEY: {**config, "n_vocab": 10**8}}},
        "mults": {"metadata": {mf.CONFIG_KEY: {**config, "channel_mult": [1] * 100}}},
        "steps": {"metadata": {mf.DIFFUSION_KEY: {"steps": 10**12}}},
        "schedule": {"metadata": {mf.DIFFUSION_KEY: {"noise_schedule": "cubic"}}},
        "diffusion-key": {"metadata": {mf.DIFFUSION_KEY: {"steps": "many"}}},
        "vocab-beyond-model": {
            "metadata": {
                mf.TOKENIZER_KEY: {
                    "type": "shapes",
                    "data": {**SHAPES.to_dict(), "words": [f"w{i}" for i in range(100)]},
                }
            }
        },
    }[case]
    return rewritten(path, dest, **changes)


HOSTILE_UNETS = {
    "no-config": "no glidekit.config metadata",
    "config-not-json": "glidekit.config is not JSON",
    "config-mismatch": r"do not match its glidekit.config, which makes [\d,]+ parameters",
    "missing-tensor": r"missing out.2.weight \[6, 32, 3, 3\]",
    "extra-tensor": r"unexpected spare \[3\]",
    "int-weights": "tensor 'out.2.bias' is torch.int32",
    "wide": r"num_channels=1000000, beyond any glidekit model \(at most 1024\)",
    "deep": "xf_layers=1000000, beyond",
    "vocab": "n_vocab=100000000, beyond",
    "mults": r"channel_mult=\[1, 1,",
    "steps": "glidekit.diffusion asks for steps=1000000000000",
    "schedule": "schedule 'cubic'",
    "diffusion-key": "steps=many, not a field of DiffusionConfig of the right type",
    "vocab-beyond-model": "the tokenizer has 102 ids but the model reads only 64",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_UNETS))
def test_hostile_unet_files_are_refused_in_one_line(tmp_path, case):
    path = _hostile_unet(tmp_path, case)
    with pytest.raises(ModelFileError, match=HOSTILE_UNETS[case]) as info:
        load_unet(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
    if case in ("no-config", "config-not-json", "wide", "deep", "vocab", "mults"):
        with pytest.raises(ModelFileError, match=HOSTILE_UNETS[case]):
            read_unet_config(path)


def test_hostile_clip_files_are_refused_in_one_line(tmp_path):
    path = tiny_clip_file(tmp_path / "clip.safetensors")
    config = TINY_CLIP.to_dict()
    for name, change, match in (
        ("vocab", {"n_vocab": 10**8}, "n_vocab=100000000, beyond"),
        ("vocab2m", {"n_vocab": 2 * 10**6}, "n_vocab=2000000, beyond"),
        ("patches", {"patch_size": 1, "image_size": 1024}, "n_patches=1048576"),
        (
            "mismatch",
            {"n_vocab": 500_000},
            r"the text_encoder tensors .*w_voc \[40, 16\] \(expected \[500000, 16\]\)",
        ),
    ):
        bad = rewritten(
            path,
            tmp_path / f"{name}.safetensors",
            metadata={mf.CLIP_CONFIG_KEY: {**config, **change}},
        )
        with pytest.raises(ModelFileError, match=match) as info:
            load_clip(bad)
        assert str(info.value).startswith(f"clip: {bad}: ") and "\n" not in str(info.value)
    no_config = rewritten(path, tmp_path / "none.safetensors", metadata={mf.CLIP_CONFIG_KEY: None})
    with pytest.raises(ModelFileError, match="none.safetensors: no glidekit.clip_config"):
        load_clip(no_config)


def test_a_symlink_loop_is_one_line(tmp_path):
    """Issue 16 item 4 at this layer: no traceback while choosing sampling defaults."""
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    assert not is_unet_file(loop) and read_sampling_defaults(loop) == {}
    with pytest.raises(ModelFileError, match="loop.safetensors: cannot be opened"):
        load_unet(loop)
    with pytest.raises(ModelFileError, match="^clip: .*loop.safetensors: cannot be opened"):
        load_clip(loop)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    from glidekit.checkpoints import ModelFileError, load_clip, load_unet

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    load = load_clip if sys.argv[1] == "clip" else load_unet
    load(sys.argv[3])  # a valid small file first: what imports and first calls cost is not counted
    before = status("VmRSS:")
    try:
        load(sys.argv[2])
    except ModelFileError as exc:
        print(exc)
    print((status("VmHWM:") - before) / 1e6)
    """
)


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("clip", {"n_vocab": 10**8}),  # the 204 GB CLIP of issue 16 item 5
        ("clip", {"n_vocab": 500_000}),  # within bounds, refused by the tensors' check
        ("unet", {"num_channels": 10**6}),
        ("unet", {"xf_width": 4096, "xf_heads": 64, "n_vocab": 1 << 20}),  # 4.3 G parameters
    ],
)
def test_oversized_configs_allocate_nothing(tmp_path, kind, change):
    if kind == "clip":
        path = tiny_clip_file(tmp_path / "src.safetensors")
        key, config = mf.CLIP_CONFIG_KEY, TINY_CLIP.to_dict()
    else:
        path = tiny_unet_file(tmp_path / "src.safetensors")
        key, config = mf.CONFIG_KEY, TINY.to_dict()
    bad = rewritten(path, tmp_path / "bad.safetensors", metadata={key: {**config, **change}})
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, kind, str(bad), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    message, growth_mb = out.stdout.strip().splitlines()
    assert "bad.safetensors" in message and ("beyond" in message or "do not match" in message)
    assert float(growth_mb) < 50, f"peak grew by {growth_mb} MB before the refusal"
