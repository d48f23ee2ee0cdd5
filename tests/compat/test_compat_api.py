"""glidekit.compat serves the official ``glide_text2im`` API.

* Every call the three official notebooks make, in their argument forms, through the flat
  (``from glidekit.compat import X``) and the mirrored (``from glidekit.compat.download import
  X``: the notebooks' own import lines with the package renamed) paths, in process, with the
  golden tiny models served as the released checkpoints by a loopback server; where the
  reference recorded the same loop (``golden/sampling_loops``), the numbers match it.
* The tokenizers give the official ids (``tokenizer_golden.json``); the diffusion functions
  and methods give the official results (``golden/diffusion``); signatures are the official
  ones; every official public name imports from both paths, and those not served raise
  ``NotServedError`` naming the glidekit way.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
from ckpt_server import CheckpointServer
from conftest import REFERENCE, load_golden, strip_prefix
from notebook_runner import pt_bytes

import glidekit.compat as compat
from glidekit.checkpoints import CheckpointError
from glidekit.clip import CLIPConfig, NoisedCLIP
from glidekit.diffusion import sample as glidekit_sample
from glidekit.guidance import clip_cond_fn
from glidekit.tokenizer import GPT2Tokenizer

ATOL_LOOP = 1e-3  # the reference's tolerance for whole float32 loops (see its README)
ATOL_STEP = 1e-5

# ------------------------------------------------------------------------------- import paths

# The official notebooks' import cells (glide_text2im lines only), verbatim.
NOTEBOOK_IMPORTS = {
    "text2im": """
from glide_text2im.download import load_checkpoint
from glide_text2im.model_creation import (
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler
)
""",
    "clip_guided": """
from glide_text2im.clip.model_creation import create_clip_model
from glide_text2im.download import load_checkpoint
from glide_text2im.model_creation import (
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler,
)
from glide_text2im.tokenizer.simple_tokenizer import SimpleTokenizer
""",
}
NOTEBOOK_IMPORTS["inpaint"] = NOTEBOOK_IMPORTS["text2im"]


def imported(notebook: str, style: str) -> SimpleNamespace:
    """The names a notebook imports, by running its import lines with glide_text2im replaced:
    by ``glidekit.compat`` (mirrored) or with every module path dropped (flat)."""
    code = NOTEBOOK_IMPORTS[notebook]
    if style == "flat":
        code = re.sub(r"from glide_text2im(\.[\w.]+)? import", "from glidekit.compat import", code)
    else:
        code = code.replace("glide_text2im", "glidekit.compat")
    namespace: dict = {}
    exec(code, namespace)
    namespace.pop("__builtins__")
    return SimpleNamespace(**namespace)


STYLES = ["flat", "mirrored"]

# Every public name of every official module (read from the official package).
OFFICIAL_NAMES = {
    "model_creation": [
        "model_and_diffusion_defaults", "model_and_diffusion_defaults_upsampler",
        "create_model_and_diffusion", "create_model", "create_gaussian_diffusion",
    ],
    "download": ["MODEL_PATHS", "default_cache_dir", "fetch_file_cached", "load_checkpoint"],
    "clip.model_creation": ["default_config_path", "CLIPModel", "create_clip_model"],
    "tokenizer.simple_tokenizer": [
        "default_bpe", "bytes_to_unicode", "get_pairs", "basic_clean", "whitespace_clean",
        "SimpleTokenizer",
    ],
    "tokenizer.bpe": ["bytes_to_unicode", "get_pairs", "Encoder", "get_encoder"],
    "gaussian_diffusion": [
        "get_beta_schedule", "get_named_beta_schedule", "betas_for_alpha_bar",
        "GaussianDiffusion",
    ],
    "respace": ["space_timesteps", "SpacedDiffusion"],
    "text2im_model": [
        "Text2ImUNet", "SuperResText2ImUNet", "InpaintText2ImUNet", "SuperResInpaintText2ImUnet",
    ],
    "unet": [
        "TimestepBlock", "TimestepEmbedSequential", "Upsample", "Downsample", "ResBlock",
        "AttentionBlock", "QKVAttention", "UNetModel", "SuperResUNetModel", "InpaintUNetModel",
        "SuperResInpaintUNetModel",
    ],
    "xf": [
        "convert_module_to_f16", "LayerNorm", "MultiheadAttention", "MLP",
        "QKVMultiheadAttention", "ResidualAttentionBlock", "Transformer",
    ],
    "nn": [
        "GroupNorm32", "conv_nd", "linear", "avg_pool_nd", "zero_module", "scale_module",
        "normalization", "timestep_embedding",
    ],
    "fp16_util": ["convert_module_to_f16", "convert_module_to_f32"],
    "clip.encoders": [
        "TextEmbedding", "ImageEmbedding", "AttentionResblock", "FullyConnectedResblock",
        "TransformerBlock", "TextFeatureExtractor", "ImageFeatureExtractor", "TextEncoder",
        "ImageEncoder",
    ],
    "clip.attention": [
        "AttentionMask", "DenseAttentionMask", "DenseCausalAttentionMask", "AttentionInfo",
        "to_attention_info", "make_full_layout",
    ],
    "clip.utils": ["FilterFn", "ZeroKeyBiasGrad", "zero_key_bias_grad", "LayerNorm", "Affine"],
}  # fmt: skip
# Defined differently by two official modules: the flat name is this module's.
FLAT_OWNER = {"convert_module_to_f16": "fp16_util", "LayerNorm": "xf"}


def test_every_official_name_imports_flat_and_mirrored():
    for module, names in OFFICIAL_NAMES.items():
        mirrored = importlib.import_module(f"glidekit.compat.{module}")
        for name in names:
            assert hasattr(mirrored, name), f"glidekit.compat.{module}.{name}"
            assert name in compat.__all__, name
            if FLAT_OWNER.get(name, module) == module:
                assert getattr(compat, name) is getattr(mirrored, name), name
    # The packages import as the official ones do.
    for package in ("glidekit.compat.clip", "glidekit.compat.tokenizer"):
        importlib.import_module(package)
    # Names this package exported before keep working.
    for name in ("Diffusion", "OfficialCLIP", "OfficialUNet", "config_from_options"):
        assert hasattr(compat, name)


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_signatures_are_the_official_ones():
    loops = ["model", "shape", "noise", "clip_denoised", "denoised_fn", "cond_fn",
             "model_kwargs", "device", "progress"]  # fmt: skip
    steps = ["model", "x", "t", "clip_denoised", "denoised_fn", "cond_fn", "model_kwargs"]
    gd = compat.GaussianDiffusion
    expected = {
        compat.create_model_and_diffusion: list(compat.model_and_diffusion_defaults()),
        compat.create_model: [
            "image_size", "num_channels", "num_res_blocks", "channel_mult",
            "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
            "use_scale_shift_norm", "dropout", "text_ctx", "xf_width", "xf_layers", "xf_heads",
            "xf_final_ln", "xf_padding", "resblock_updown", "use_fp16", "cache_text_emb",
            "inpaint", "super_res",
        ],
        compat.create_gaussian_diffusion: ["steps", "noise_schedule", "timestep_respacing"],
        compat.load_checkpoint: ["checkpoint_name", "device", "progress", "cache_dir",
                                 "chunk_size"],
        compat.fetch_file_cached: ["url", "progress", "cache_dir", "chunk_size"],
        compat.create_clip_model: ["config_path", "device", "tokenizer"],
        compat.space_timesteps: ["num_timesteps", "section_counts"],
        compat.SpacedDiffusion.__init__: ["use_timesteps", "kwargs"],
        compat.GaussianDiffusion.__init__: ["betas"],
        compat.get_beta_schedule: ["beta_schedule", "beta_start", "beta_end",
                                   "num_diffusion_timesteps"],
        compat.get_named_beta_schedule: ["schedule_name", "num_diffusion_timesteps"],
        compat.betas_for_alpha_bar: ["num_diffusion_timesteps", "alpha_bar", "max_beta"],
        gd.p_sample_loop: loops,
        gd.p_sample_loop_progressive: loops,
        gd.ddim_sample_loop: [*loops, "eta"],
        gd.ddim_sample_loop_progressive: [*loops, "eta"],
        gd.p_sample: steps,
        gd.ddim_sample: [*steps, "eta"],
        gd.ddim_reverse_sample: [*steps, "eta"],
        gd.p_mean_variance: ["model", "x", "t", "clip_denoised", "denoised_fn", "model_kwargs"],
        gd.condition_mean: ["cond_fn", "p_mean_var", "x", "t", "model_kwargs"],
        gd.condition_score: ["cond_fn", "p_mean_var", "x", "t", "model_kwargs"],
        gd.q_sample: ["x_start", "t", "noise"],
        gd.q_mean_variance: ["x_start", "t"],
        gd.q_posterior_mean_variance: ["x_start", "x_t", "t"],
        compat.CLIPModel.cond_fn: ["prompts", "grad_scale"],
        compat.CLIPModel.encode_prompts: ["prompts"],
        compat.CLIPModel.text_embeddings: ["prompts", "lens"],  # lens: glidekit's addition
        compat.SimpleTokenizer.__init__: ["bpe_path"],
        compat.SimpleTokenizer.padded_tokens_and_len: ["tokens", "text_ctx"],
        compat.SimpleTokenizer.decode: ["tokens"],
        compat.Encoder.__init__: ["encoder", "bpe_merges", "errors"],
        compat.Encoder.padded_tokens_and_mask: ["tokens", "text_ctx"],
        compat.timestep_embedding: ["timesteps", "dim", "max_period"],
        compat.GroupNorm32.__init__: ["num_groups", "num_channels", "swish", "eps"],
        compat.Transformer.__init__: ["n_ctx", "width", "layers", "heads"],
    }  # fmt: skip
    for fn, names in expected.items():
        assert _params(fn) == names, fn.__qualname__
    assert compat.model_and_diffusion_defaults()["use_fp16"] is True  # as officially


# ------------------------------------------------------------------------------- served weights

TINY = {
    "base": "text2im_forward",
    "upsample": "super_res_forward",
    "base-inpaint": "inpaint_forward",
    "upsample-inpaint": "super_res_inpaint_forward",
}
FILES = {
    "base": "base.pt",
    "upsample": "upsample.pt",
    "base-inpaint": "base_inpaint.pt",
    "upsample-inpaint": "upsample_inpaint.pt",
    "clip/image-enc": "clip_image_enc.pt",
    "clip/text-enc": "clip_text_enc.pt",
}


def tiny_options(name: str) -> dict:
    """The golden fixture's model options (the notebook then sets respacing and use_fp16)."""
    options = load_golden(TINY[name])[0]["options"]
    return {k: v for k, v in options.items() if k not in ("timestep_respacing", "use_fp16")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The golden tiny weights served as the six released checkpoints; their layouts as the
    expected ones (GLIDEKIT_CHECKPOINT_SPECS)."""
    states = {name: strip_prefix(load_golden(f)[1], "model.") for name, f in TINY.items()}
    clip = load_golden("clip")[1]
    states["clip/image-enc"] = strip_prefix(clip, "clip_image_enc.")
    states["clip/text-enc"] = strip_prefix(clip, "clip_text_enc.")
    folder = tmp_path_factory.mktemp("served")
    specs = folder / "tiny_specs.json"
    layouts = {
        name: {"state_dict": [[k, list(v.shape), "float32"] for k, v in state.items()]}
        for name, state in states.items()
    }
    specs.write_text(json.dumps({"checkpoints": layouts}))
    server = CheckpointServer({f"/{FILES[n]}": pt_bytes(s) for n, s in states.items()}).start()
    try:
        yield SimpleNamespace(server=server, specs=specs, states=states, folder=folder)
    finally:
        server.stop()


@pytest.fixture
def released(served, tmp_path, monkeypatch):
    """Environment in which ``load_checkpoint`` downloads the served weights into a cache."""
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GLIDEKIT_BASE_URL", served.server.base_url)
    monkeypatch.setenv("GLIDEKIT_CHECKPOINT_SPECS", str(served.specs))
    return served


LOOPS = load_golden("sampling_loops")[1]
CPU = th.device("cpu")


def _cfg_model_fn(model, guidance_scale):
    """The notebooks' classifier-free guidance sampling function, verbatim."""

    def model_fn(x_t, ts, **kwargs):
        half = x_t[: len(x_t) // 2]
        combined = th.cat([half, half], dim=0)
        model_out = model(combined, ts, **kwargs)
        eps, rest = model_out[:, :3], model_out[:, 3:]
        cond_eps, uncond_eps = th.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
        eps = th.cat([half_eps, half_eps], dim=0)
        return th.cat([eps, rest], dim=1)

    return model_fn


def _create(ns, name: str, respacing: str, upsampler: bool = False, **extra):
    """The notebooks' "Create base/upsampler model" cell (has_cuda False: CPU)."""
    options = ns.model_and_diffusion_defaults_upsampler() if upsampler else (
        ns.model_and_diffusion_defaults()
    )  # fmt: skip
    options.update(tiny_options(name))
    options.update(extra)
    options["use_fp16"] = False
    options["timestep_respacing"] = respacing
    model, diffusion = ns.create_model_and_diffusion(**options)
    model.eval()
    model.to(CPU)
    model.load_state_dict(ns.load_checkpoint(name, CPU))
    assert sum(x.numel() for x in model.parameters()) > 0
    return options, model, diffusion


# ------------------------------------------------------------------------------- the notebooks


def test_notebook_imports_flat_are_the_mirrored_objects():
    """Each notebook's names imported flat are the very objects its own import lines give."""
    for notebook in NOTEBOOK_IMPORTS:
        flat, mirrored = vars(imported(notebook, "flat")), vars(imported(notebook, "mirrored"))
        assert flat.keys() == mirrored.keys()
        assert all(flat[name] is mirrored[name] for name in flat), notebook


# The notebooks' calls, each notebook through one import path (the objects are the same, see
# above). The clip_guided notebook's upsampling cell is the text2im one, run there.


def test_text2im_notebook_calls(released):
    ns = imported("text2im", "flat")
    options, model, diffusion = _create(ns, "base", "10")  # the notebook: '100'
    prompts = [
        "a corgi wearing a red bowtie",
        "a surrealist dream-like oil painting by salvador dali of a cat playing checkers",
    ]
    batch_size, guidance_scale = len(prompts), 3.0

    rows = [model.tokenizer.encode(p) for p in prompts]
    rows = [model.tokenizer.padded_tokens_and_mask(t, options["text_ctx"]) for t in rows]
    full_batch_size = batch_size * 2
    uncond_tokens, uncond_mask = model.tokenizer.padded_tokens_and_mask([], options["text_ctx"])
    model_kwargs = dict(
        tokens=th.tensor([t for t, _ in rows] + [uncond_tokens] * batch_size, device=CPU),
        mask=th.tensor([m for _, m in rows] + [uncond_mask] * batch_size, dtype=th.bool,
                       device=CPU),
    )  # fmt: skip
    assert th.equal(model_kwargs["tokens"], LOOPS["cfg.in.tokens"])
    assert th.equal(model_kwargs["mask"], LOOPS["cfg.in.mask"])
    model_fn = _cfg_model_fn(model, guidance_scale)
    shape = (full_batch_size, 3, options["image_size"], options["image_size"])

    # The notebook's call, from the reference's start noise and seed.
    model.del_cache()
    th.manual_seed(4242)
    samples = diffusion.p_sample_loop(model_fn, shape, noise=LOOPS["cfg.in.noise"], device=CPU,
                                      clip_denoised=True, progress=True,
                                      model_kwargs=model_kwargs, cond_fn=None)  # fmt: skip
    model.del_cache()
    th.testing.assert_close(samples, LOOPS["cfg.out.samples"], atol=ATOL_LOOP, rtol=0)
    samples = samples[:batch_size]

    # Upsampler: tokens of the first prompt, DDIM "fast27" from randn * upsample_temp.
    options_up, model_up, diffusion_up = _create(ns, "upsample", "fast27", upsampler=True)
    tokens = model_up.tokenizer.encode(prompts[0])
    tokens, mask = model_up.tokenizer.padded_tokens_and_mask(tokens, options_up["text_ctx"])
    model_kwargs = dict(
        low_res=((LOOPS["sr.in.low_res"] + 1) * 127.5).round() / 127.5 - 1,
        tokens=th.tensor([tokens] * 1, device=CPU),
        mask=th.tensor([mask] * 1, dtype=th.bool, device=CPU),
    )
    assert th.equal(model_kwargs["tokens"], LOOPS["sr.in.tokens"])
    model_up.del_cache()
    up_shape = (1, 3, options_up["image_size"], options_up["image_size"])
    th.manual_seed(6161)
    up_samples = diffusion_up.ddim_sample_loop(
        model_up, up_shape, noise=th.randn(up_shape, device=CPU) * 0.997, device=CPU,
        clip_denoised=True, progress=True, model_kwargs=model_kwargs, cond_fn=None,
    )[:1]  # fmt: skip
    model_up.del_cache()
    th.testing.assert_close(up_samples, LOOPS["sr.out.samples"], atol=ATOL_LOOP, rtol=0)

    # The notebook's convert_to_fp16 (taken when CUDA is there) holds the convs in half.
    model.convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == th.float16


def test_inpaint_notebook_calls(released):
    ns = imported("inpaint", "mirrored")
    options, model, diffusion = _create(ns, "base-inpaint", "10", inpaint=True)
    prompt, batch_size, guidance_scale = "a corgi in a field", 1, 5.0
    tokens = model.tokenizer.encode(prompt)
    tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])
    full_batch_size = batch_size * 2
    uncond_tokens, uncond_mask = model.tokenizer.padded_tokens_and_mask([], options["text_ctx"])
    image, keep = LOOPS["inpaint.in.inpaint_image"], LOOPS["inpaint.in.inpaint_mask"]
    model_kwargs = dict(
        tokens=th.tensor([tokens] * batch_size + [uncond_tokens] * batch_size, device=CPU),
        mask=th.tensor([mask] * batch_size + [uncond_mask] * batch_size, dtype=th.bool,
                       device=CPU),
        inpaint_image=(image[:1] * keep[:1]).repeat(full_batch_size, 1, 1, 1).to(CPU),
        inpaint_mask=keep[:1].repeat(full_batch_size, 1, 1, 1).to(CPU),
    )  # fmt: skip
    assert th.equal(model_kwargs["tokens"], LOOPS["inpaint.in.tokens"])
    assert th.equal(model_kwargs["inpaint_image"], image)

    def denoised_fn(x_start):
        return (x_start * (1 - model_kwargs["inpaint_mask"])
                + model_kwargs["inpaint_image"] * model_kwargs["inpaint_mask"])  # fmt: skip

    model.del_cache()
    th.manual_seed(5151)
    shape = (full_batch_size, 3, options["image_size"], options["image_size"])
    samples = diffusion.p_sample_loop(_cfg_model_fn(model, guidance_scale), shape,
                                      noise=LOOPS["inpaint.in.noise"], device=CPU,
                                      clip_denoised=True, progress=True,
                                      model_kwargs=model_kwargs, cond_fn=None,
                                      denoised_fn=denoised_fn)  # fmt: skip
    model.del_cache()
    th.testing.assert_close(samples, LOOPS["inpaint.out.samples"], atol=ATOL_LOOP, rtol=0)

    # Upsampler: p_sample_loop (5 steps; the notebook: "fast27") keeping the nearest-upsampled
    # mask's region.
    options_up, model_up, diffusion_up = _create(ns, "upsample-inpaint", "5", upsampler=True,
                                                 inpaint=True)  # fmt: skip
    size = options_up["image_size"]
    mask_up = F.interpolate(keep[:1], (size, size), mode="nearest")
    source_up = F.interpolate(image[:1], (size, size), mode="bilinear", align_corners=False)
    tokens = model_up.tokenizer.encode(prompt)
    tokens, mask = model_up.tokenizer.padded_tokens_and_mask(tokens, options_up["text_ctx"])
    model_kwargs = dict(
        low_res=((samples[:batch_size] + 1) * 127.5).round() / 127.5 - 1,
        tokens=th.tensor([tokens] * batch_size, device=CPU),
        mask=th.tensor([mask] * batch_size, dtype=th.bool, device=CPU),
        inpaint_image=(source_up * mask_up).repeat(batch_size, 1, 1, 1).to(CPU),
        inpaint_mask=mask_up.repeat(batch_size, 1, 1, 1).to(CPU),
    )
    model_up.del_cache()
    up_shape = (batch_size, 3, size, size)
    up_samples = diffusion_up.p_sample_loop(
        model_up, up_shape, noise=th.randn(up_shape, device=CPU) * 0.997, device=CPU,
        clip_denoised=True, progress=True, model_kwargs=model_kwargs, cond_fn=None,
        denoised_fn=denoised_fn,
    )[:batch_size]  # fmt: skip
    model_up.del_cache()
    known = mask_up.bool().expand_as(up_samples)
    th.testing.assert_close(up_samples[known], (source_up * mask_up)[known].clamp(-1, 1))
    assert up_samples[~known].std() > 0.05


def test_clip_guided_notebook_calls(released, tmp_path):
    ns = imported("clip_guided", "mirrored")
    assert ns.SimpleTokenizer().encode("an oil painting of a corgi")  # imported, and works

    # create_clip_model(device=device) as the notebook calls it: the released size (on the
    # meta device, so nothing is allocated), then the golden small one through config_path.
    full = ns.create_clip_model(device=th.device("meta"))
    n_image = sum(p.numel() for p in full.image_encoder.parameters())
    specs = json.loads((REFERENCE / "checkpoint_specs.json").read_text())["checkpoints"]
    assert n_image == specs["clip/image-enc"]["n_parameters"]
    meta, clip_tensors = load_golden("clip")
    config_path = tmp_path / "clip_config.yaml"
    config_path.write_text(json.dumps(meta["config_yaml"]))
    clip_model = ns.create_clip_model(config_path=str(config_path), device=CPU)
    clip_model.image_encoder.load_state_dict(ns.load_checkpoint("clip/image-enc", CPU))
    clip_model.text_encoder.load_state_dict(ns.load_checkpoint("clip/text-enc", CPU))

    options, model, diffusion = _create(ns, "base", "5")  # the notebook: '100'
    prompt, batch_size, guidance_scale = "an oil painting of a corgi", 1, 3.0
    tokens = model.tokenizer.encode(prompt)
    tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])
    model_kwargs = dict(
        tokens=th.tensor([tokens] * batch_size, device=CPU),
        mask=th.tensor([mask] * batch_size, dtype=th.bool, device=CPU),
    )
    cond_fn = clip_model.cond_fn([prompt] * batch_size, guidance_scale)
    # The guidance gradient is the official one (golden row 0 has this prompt).
    x, t = clip_tensors["in.images"][:1], clip_tensors["in.timesteps"][:1]
    th.testing.assert_close(cond_fn(x, t), clip_tensors["out.cond_fn_grad_scale3"][:1],
                            atol=1e-4 * clip_tensors["out.cond_fn_grad_scale3"].abs().max(),
                            rtol=0)  # fmt: skip

    plain = NoisedCLIP(clip_model.config).eval()
    plain.load_state_dict(clip_model.state_dict())

    model.del_cache()
    th.manual_seed(7)
    shape = (batch_size, 3, options["image_size"], options["image_size"])
    samples = diffusion.p_sample_loop(model, shape, device=CPU, clip_denoised=True,
                                      progress=True, model_kwargs=model_kwargs,
                                      cond_fn=cond_fn)  # fmt: skip
    model.del_cache()
    assert samples.shape == shape and th.isfinite(samples).all()
    # The same run through glidekit's own sampler and CLIP guidance.
    th.manual_seed(7)
    ours = glidekit_sample(diffusion.process, model, shape, model_kwargs=model_kwargs,
                           cond_fn=clip_cond_fn(plain, [prompt], guidance_scale))  # fmt: skip
    th.testing.assert_close(samples, ours, atol=ATOL_STEP, rtol=0)


def test_script_imports_as_the_notebook():
    """tests/scripts/clip_guided_notebook.py has the notebook's import lines, renamed."""
    script = (Path(__file__).parents[1] / "scripts" / "clip_guided_notebook.py").read_text()
    lines = [ln.split("  #")[0].rstrip() for ln in script.splitlines()]
    expected = NOTEBOOK_IMPORTS["clip_guided"].replace("glide_text2im", "glidekit.compat")
    assert "\n".join(lines).count(expected.strip()) == 1
    assert "import torch.nn as nn" in lines


# ------------------------------------------------------------------------------- tokenizers

TOKENS = json.loads((REFERENCE / "tokenizer_golden.json").read_text())


@pytest.mark.parametrize("style", STYLES)
def test_simple_tokenizer_gives_the_official_clip_ids(style):
    module = compat if style == "flat" else compat.tokenizer.simple_tokenizer
    tok = module.SimpleTokenizer()
    assert (tok.start_token, tok.end_token) == (49406, 49407) and len(tok.encoder) == 49408
    for case in TOKENS["cases"]:
        ids = tok.encode(case["text"])
        assert ids == case["clip_ids"], case["text"]
        assert tok.padded_tokens_and_len(ids, 77) == (
            case["clip_padded_tokens_77"],
            case["clip_len_77"],
        )
    assert tok.decode(tok.encode("Hello  World! A cat")) == "hello world ! a cat "
    assert tok.bpe("hello") == "hello</w>" and tok.decoder[49406] == "<|startoftext|>"
    assert tok.decode([49406, *tok.encode("hi")]) == "<|startoftext|>hi "
    assert module.SimpleTokenizer(module.default_bpe()).encode("a b") == tok.encode("a b")
    assert module.basic_clean("  caf&amp;amp;\u00e9 ") == "caf&\u00e9"
    assert module.whitespace_clean(" a \n\t b ") == "a b"
    assert module.get_pairs(("a", "b", "c")) == {("a", "b"), ("b", "c")}
    table = module.bytes_to_unicode()
    assert len(table) == 256 and table[ord("!")] == "!" and table[ord(" ")] == "\u0120"


@pytest.mark.parametrize("style", STYLES)
def test_bpe_encoder_gives_the_official_gpt2_ids(style):
    module = compat if style == "flat" else compat.tokenizer.bpe
    enc = module.get_encoder()
    assert (enc.n_vocab, enc.end_token) == (50257, 50256)
    for case in TOKENS["cases"]:
        ids = enc.encode(case["text"])
        assert ids == case["gpt2_ids"], case["text"]
        assert enc.padded_tokens_and_mask(ids, 128) == (
            case["gpt2_padded_tokens_128"],
            case["gpt2_mask_128"],
        )
        assert ids == GPT2Tokenizer().encode(case["text"])
    assert enc.padded_tokens_and_mask([], 4) == ([50256] * 4, [False] * 4)
    assert enc.decode(enc.encode("Hello World")) == "hello world"
    assert enc.bpe("\u0120hello") == "\u0120hello" and enc.encoder["!"] == 0
    # An Encoder built from tables (here GPT-2's with ids permuted) merges the same way.
    rng = np.random.default_rng(0)
    perm = rng.permutation(enc.n_vocab)
    shuffled = module.Encoder({k: int(perm[v]) for k, v in enc.encoder.items()},
                              list(enc.bpe_ranks))  # fmt: skip
    for case in TOKENS["cases"][:8]:
        assert shuffled.encode(case["text"]) == [int(perm[i]) for i in case["gpt2_ids"]]
    text = "a Corgi, 12 ways"
    assert shuffled.decode(shuffled.encode(text)) == text.lower()


def test_model_tokenizer_is_the_official_encoder():
    model, _ = compat.create_model_and_diffusion(
        **{**compat.model_and_diffusion_defaults(), **tiny_options("base"), "use_fp16": False}
    )
    assert isinstance(model.tokenizer, compat.Encoder)
    case = TOKENS["cases"][0]
    assert model.tokenizer.encode(case["text"]) == case["gpt2_ids"]


# ------------------------------------------------------------------------------- diffusion

DIFF_META, DIFF = load_golden("diffusion")
SCHEDULES = ("squaredcos_cap_v2", "linear")


@pytest.mark.parametrize("style", STYLES)
def test_schedules_and_respacing_are_the_official_ones(style):
    gd = compat if style == "flat" else compat.gaussian_diffusion
    rs = compat if style == "flat" else compat.respace
    mc = compat if style == "flat" else compat.model_creation
    for name in SCHEDULES:
        betas = gd.get_named_beta_schedule(name, 1000)
        assert betas.dtype == np.float64 and np.array_equal(
            betas, DIFF[f"betas.{name}.1000"].numpy()
        )
        for respacing, facts in DIFF_META["respacings"][name].items():
            use = rs.space_timesteps(1000, respacing)
            assert isinstance(use, set) and use == set(facts["use_timesteps_sorted"]), respacing
            spaced = rs.SpacedDiffusion(use_timesteps=use, betas=betas)
            assert spaced.timestep_map == facts["timestep_map"] and spaced.use_timesteps == use
            assert spaced.original_num_steps == 1000 and spaced.num_timesteps == len(use)
            np.testing.assert_allclose(spaced.betas, facts["betas"], rtol=1e-12, atol=0)
            made = mc.create_gaussian_diffusion(steps=1000, noise_schedule=name,
                                                timestep_respacing=respacing)  # fmt: skip
            assert made.timestep_map == facts["timestep_map"]
            assert np.array_equal(made.betas, spaced.betas)
    assert rs.space_timesteps(1000, [10, 10, 3, 2, 2]) == rs.space_timesteps(1000, "10,10,3,2,2")
    with pytest.raises(NotImplementedError):
        gd.get_named_beta_schedule("cosine", 10)
    cosine = gd.betas_for_alpha_bar(
        1000, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    )
    assert np.array_equal(cosine, DIFF["betas.squaredcos_cap_v2.1000"].numpy())
    linear = gd.get_beta_schedule(
        "linear", beta_start=0.0001, beta_end=0.02, num_diffusion_timesteps=1000
    )
    assert np.array_equal(linear, DIFF["betas.linear.1000"].numpy())
    kw = dict(beta_start=0.01, beta_end=0.04, num_diffusion_timesteps=10)
    assert np.allclose(gd.get_beta_schedule("quad", **kw)[[0, -1]], [0.01, 0.04])
    assert np.allclose(gd.get_beta_schedule("const", **kw), 0.04)
    assert np.allclose(gd.get_beta_schedule("jsd", **kw), 1 / np.arange(10, 0, -1))
    assert np.allclose(gd.get_beta_schedule("warmup50", **kw), [*np.linspace(0.01, 0.04, 5)]
                       + [0.04] * 5)  # fmt: skip
    with pytest.raises(NotImplementedError):
        gd.get_beta_schedule("cubic", **kw)


# The reference's three single-step configurations.
STEP_CONFIGS = {"cos1000": ("squaredcos_cap_v2", ""), "cos100": ("squaredcos_cap_v2", "100"),
                "linfast27": ("linear", "fast27")}  # fmt: skip


class _Stub:
    """The reference's stub: a model returning a fixed output (or a cond_fn returning a fixed
    gradient) whatever the input, recording the timesteps it was called with."""

    def __init__(self, out):
        self.out, self.t = out, None

    def __call__(self, x, t, **kwargs):
        self.t = t
        return self.out


@pytest.mark.parametrize("config", list(STEP_CONFIGS))
def test_single_steps_are_the_official_ones(config):
    schedule, respacing = STEP_CONFIGS[config]
    diffusion = compat.create_gaussian_diffusion(1000, schedule, respacing)
    x, t = DIFF["pmv.x_t"], DIFF[f"pmv.{config}.t"]
    model = _Stub(DIFF["pmv.model_output"])

    def close(a, key):
        th.testing.assert_close(a, DIFF[key], atol=ATOL_STEP, rtol=1e-5)

    for clip in (1, 0):
        out = diffusion.p_mean_variance(model, x, t, clip_denoised=bool(clip))
        for key in ("mean", "variance", "log_variance", "pred_xstart"):
            close(out[key], f"pmv.{config}.clip{clip}.{key}")
        assert out["extra"] is None
    assert th.equal(model.t, DIFF[f"pmv.{config}.model_received_t"])

    th.manual_seed(1234)
    close(diffusion.p_sample(model, x, t, clip_denoised=True)["sample"],
          f"p_sample.{config}.sample")  # fmt: skip
    cond = _Stub(DIFF["pmv.cond_grad"])
    th.manual_seed(1234)
    close(diffusion.p_sample(model, x, t, clip_denoised=True, cond_fn=cond)["sample"],
          f"p_sample_cond.{config}.sample")  # fmt: skip
    assert th.equal(cond.t, DIFF[f"p_sample_cond.{config}.cond_fn_received_t"])
    for eta in (0.0, 0.5, 1.0):
        th.manual_seed(1234)
        out = diffusion.ddim_sample(model, x, t, clip_denoised=True, eta=eta)
        close(out["sample"], f"ddim_sample.{config}.eta{eta}.sample")
        close(out["pred_xstart"], f"ddim_sample.{config}.eta{eta}.pred_xstart")
    th.manual_seed(1234)
    out = diffusion.ddim_sample(model, x, t, clip_denoised=True, cond_fn=cond, eta=0.0)
    close(out["sample"], f"ddim_sample_cond.{config}.eta0.0.sample")

    # condition_mean / condition_score on a p_mean_variance dict, as officially.
    pmv = diffusion.p_mean_variance(model, x, t)
    mean = diffusion.condition_mean(cond, pmv, x, t, model_kwargs={})
    th.testing.assert_close(mean, pmv["mean"] + pmv["variance"] * DIFF["pmv.cond_grad"])
    scored = diffusion.condition_score(cond, pmv, x, t, model_kwargs={})
    assert set(scored) == set(pmv) and scored["variance"] is pmv["variance"]
    close(diffusion.ddim_sample(model, x, t, cond_fn=cond)["pred_xstart"],
          f"ddim_sample_cond.{config}.eta0.0.pred_xstart")  # fmt: skip
    th.testing.assert_close(scored["pred_xstart"],
                            DIFF[f"ddim_sample_cond.{config}.eta0.0.pred_xstart"],
                            atol=ATOL_STEP, rtol=1e-5)  # fmt: skip


def test_closed_forms_and_loops():
    betas = compat.get_named_beta_schedule("linear", 1000)
    diffusion = compat.GaussianDiffusion(betas=betas)
    x0, noise, t = DIFF["q_sample.x_start"], DIFF["q_sample.noise"], DIFF["q_sample.t"]
    th.testing.assert_close(diffusion.q_sample(x0, t, noise=noise), DIFF["q_sample.linear.x_t"])
    mean, var, log_var = diffusion.q_mean_variance(x0, t)
    assert mean.shape == var.shape == log_var.shape == x0.shape
    th.testing.assert_close(mean + var.sqrt() * noise, DIFF["q_sample.linear.x_t"])
    post_mean, post_var, post_log = diffusion.q_posterior_mean_variance(x0, noise, t)
    assert post_var.shape == post_log.shape == x0.shape
    for name in ("alphas_cumprod_prev", "alphas_cumprod_next", "posterior_mean_coef1",
                 "log_one_minus_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):  # fmt: skip
        assert getattr(diffusion, name).shape == (1000,)

    # A DDIM step reversed: with a model whose eps does not depend on x (no clamping),
    # ddim_reverse_sample(ddim_sample(x_t)) = x_t.
    eps = th.randn(2, 3, 4, 4, generator=th.Generator().manual_seed(0))
    model = _Stub(th.cat([eps, th.zeros_like(eps)], dim=1))
    x_t = th.randn(2, 3, 4, 4, generator=th.Generator().manual_seed(1))
    step = th.tensor([500, 500])
    prev = diffusion.ddim_sample(model, x_t, step, clip_denoised=False)["sample"]
    back = diffusion.ddim_reverse_sample(model, prev, step - 1, clip_denoised=False)
    th.testing.assert_close(back["sample"], x_t, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eta"):
        diffusion.ddim_reverse_sample(model, prev, step - 1, eta=0.5)

    # Loops yield one {"sample", "pred_xstart"} per step; a model may return (out, extra).
    spaced = compat.create_gaussian_diffusion(1000, "linear", "5")
    tuple_model = _Stub((model.out, "extra"))
    steps = list(spaced.p_sample_loop_progressive(tuple_model, (2, 3, 4, 4), progress=False))
    assert len(steps) == 5 and set(steps[-1]) == {"sample", "pred_xstart"}
    assert spaced.p_mean_variance(tuple_model, x_t, step // 200)["extra"] == "extra"
    steps = list(spaced.ddim_sample_loop_progressive(model, [2, 3, 4, 4], eta=0.0))
    th.manual_seed(3)
    final = spaced.ddim_sample_loop(model, (2, 3, 4, 4))
    th.manual_seed(3)
    assert th.equal(final, list(spaced.ddim_sample_loop_progressive(model, (2, 3, 4, 4)))[-1][
        "sample"])  # fmt: skip


# ------------------------------------------------------------------------------- download


def test_download_functions(released, tmp_path, monkeypatch):
    specs = json.loads((REFERENCE / "checkpoint_specs.json").read_text())
    assert compat.MODEL_PATHS == specs["urls"]
    assert compat.default_cache_dir() == str(tmp_path / "cache")
    base_url = released.server.base_url

    # A released file from any server (a mirror), into the given folder, once.
    path = compat.fetch_file_cached(base_url + "upsample.pt", progress=False,
                                    cache_dir=str(tmp_path / "dl"))  # fmt: skip
    assert path == str(tmp_path / "dl" / "upsample.pt")
    assert th.load(path, weights_only=True).keys() == released.states["upsample"].keys()
    n_gets = len(released.server.gets("/upsample.pt"))
    assert (
        compat.fetch_file_cached(base_url + "upsample.pt", cache_dir=str(tmp_path / "dl")) == path
    )
    assert len(released.server.gets("/upsample.pt")) == n_gets
    (tmp_path / "dl" / "notes.txt").write_text("mine")
    assert compat.fetch_file_cached("http://127.0.0.1:9/notes.txt", cache_dir=str(tmp_path / "dl"))
    with pytest.raises(ValueError, match="glidekit"):
        compat.fetch_file_cached("http://127.0.0.1:9/other.bin", cache_dir=str(tmp_path / "dl"))

    with pytest.raises(ValueError, match="known names"):
        compat.load_checkpoint("base.pth", CPU)
    # An edited MODEL_PATHS entry is where the file comes from.
    monkeypatch.delenv("GLIDEKIT_BASE_URL")
    monkeypatch.setitem(compat.MODEL_PATHS, "clip/text-enc", base_url + "clip_text_enc.pt")
    state = compat.download.load_checkpoint("clip/text-enc", "cpu", progress=False,
                                            cache_dir=str(tmp_path / "other"))  # fmt: skip
    assert all(th.equal(state[k], v) for k, v in released.states["clip/text-enc"].items())
    assert (tmp_path / "other" / "clip_text_enc.pt").is_file()


# ------------------------------------------------------------------------------- CLIP


def test_clip_model_and_encoders_are_the_official_ones(tmp_path, monkeypatch):
    meta, t = load_golden("clip")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(meta["config_yaml"]))
    clip_model = compat.clip.model_creation.create_clip_model(config_path=str(config_path),
                                                               device="cpu")  # fmt: skip
    clip_model.image_encoder.load_state_dict(strip_prefix(t, "clip_image_enc."))
    clip_model.text_encoder.load_state_dict(strip_prefix(t, "clip_text_enc."))
    assert isinstance(clip_model, compat.CLIPModel) and clip_model.device == CPU
    assert isinstance(clip_model.tokenizer, compat.SimpleTokenizer)

    def close(a, key):
        th.testing.assert_close(a, t[key], atol=1e-4 * t[key].abs().max(), rtol=0)

    tokens, lens = clip_model.encode_prompts(meta["prompts"])
    assert th.equal(tokens, t["in.tokens"]) and th.equal(lens, t["in.lens"])
    close(clip_model.text_embeddings(meta["prompts"]), "out.text_embeddings")
    close(clip_model.image_embeddings(t["in.images"], t["in.timesteps"]), "out.image_embeddings")
    # The towers take the official inputs: token ids and lengths; images in [0, 255].
    close(clip_model.text_encoder(t["in.tokens"], t["in.lens"]), "out.text_encoder_raw")
    pixels = (t["in.images"] + 1) * 127.5
    close(clip_model.image_encoder(pixels, t["in.timesteps"]), "out.image_encoder_raw")
    cond_fn = clip_model.cond_fn(meta["prompts"], 3.0)
    close(cond_fn(t["in.images"], t["in.timesteps"], grad_scale=1.0), "out.cond_fn_grad_scale1")
    close(cond_fn(t["in.images"], t["in.timesteps"]), "out.cond_fn_grad_scale3")

    # The encoders built from the official constructor arguments load the same weights.
    cfg = meta["config_yaml"]
    text = compat.TextEncoder(n_bpe_vocab=cfg["n_vocab"], max_text_len=cfg["max_text_len"],
                              n_embd=cfg["n_embd"], n_head=cfg["n_head_text"],
                              n_xf_blocks=cfg["n_xf_blocks_text"],
                              n_head_state=cfg["n_head_state_text"], device="cpu")  # fmt: skip
    image = compat.clip.encoders.ImageEncoder(
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], n_embd=cfg["n_embd"],
        n_head=cfg["n_head_image"], n_xf_blocks=cfg["n_xf_blocks_image"],
        n_head_state=cfg["n_head_state_image"], n_timestep=cfg["n_timesteps"], device="cpu",
    )  # fmt: skip
    text.load_state_dict(strip_prefix(t, "clip_text_enc."))
    image.load_state_dict(strip_prefix(t, "clip_image_enc."))
    close(text(t["in.tokens"], t["in.lens"]), "out.text_encoder_raw")
    close(image(pixels, t["in.timesteps"]), "out.image_encoder_raw")
    width = cfg["n_head_image"] * cfg["n_head_state_image"]
    assert image(pixels, t["in.timesteps"], return_probe_features=True).shape == (2, width)
    assert text(t["in.tokens"], t["in.lens"], return_probe_features=True).shape == (2, width)
    assert (text.n_bpe_vocab, image.n_timestep, image.n_context) == (65536, 1000, 65)
    with pytest.raises(compat.NotServedError, match="n_timestep=1000"):
        compat.ImageEncoder(32, 4, 64, 2, 2, 16, device="cpu")

    # default_config_path() is a config.yaml of the released model.
    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "cache"))
    path = compat.default_config_path()
    assert Path(path).is_file() and str(tmp_path / "cache") in path
    released = compat.create_clip_model(config_path=path, device="meta")
    assert released.config == CLIPConfig()


# ------------------------------------------------------------------------------- the rest


def test_served_building_blocks():
    th.manual_seed(0)
    steps = th.tensor([0, 17, 843])
    from glidekit.nn.layers import timestep_embedding

    assert th.equal(compat.nn.timestep_embedding(steps, 33), timestep_embedding(steps, 33))
    x = th.randn(2, 64, 4, 4)
    norm = compat.normalization(64, swish=1.0)
    assert norm.num_groups == 32
    th.testing.assert_close(norm(x), F.silu(F.group_norm(x, 32, eps=1e-5)))
    half_swish = compat.GroupNorm32(32, 64, swish=0.5)
    y = F.group_norm(x, 32, eps=1e-5)
    th.testing.assert_close(half_swish(x), y * th.sigmoid(0.5 * y))
    assert isinstance(compat.conv_nd(2, 3, 4, 3), th.nn.Conv2d)
    assert isinstance(compat.avg_pool_nd(1, 2), th.nn.AvgPool1d)
    assert isinstance(compat.linear(3, 4), th.nn.Linear)
    with pytest.raises(ValueError, match="dimensions"):
        compat.conv_nd(4, 3, 4, 3)
    conv = compat.zero_module(th.nn.Conv2d(3, 4, 3))
    assert not conv.weight.any() and not conv.bias.any()
    lin = th.nn.Linear(2, 2)
    before = lin.weight.clone()
    th.testing.assert_close(compat.scale_module(lin, 2.0).weight, before * 2)

    both = th.nn.Sequential(th.nn.Conv2d(3, 4, 1), th.nn.Linear(4, 4))
    both.apply(compat.fp16_util.convert_module_to_f16)
    assert both[0].weight.dtype == th.float16 and both[1].weight.dtype == th.float32
    both.apply(compat.xf.convert_module_to_f16)
    assert both[1].weight.dtype == th.float16
    both.apply(compat.convert_module_to_f32)
    assert both[0].weight.dtype == th.float32

    # xf: the official constructors over glidekit's transformer, same keys and outputs.
    meta, golden = load_golden("text2im_forward")
    opts = meta["options"]
    xf = compat.xf.Transformer(opts["text_ctx"], opts["xf_width"], opts["xf_layers"],
                               opts["xf_heads"])  # fmt: skip
    xf.load_state_dict(strip_prefix(golden, "model.transformer."), strict=True)
    h = th.randn(2, opts["text_ctx"], opts["xf_width"])
    block = xf.resblocks[0]
    attn = compat.MultiheadAttention(opts["text_ctx"], opts["xf_width"], opts["xf_heads"])
    attn.load_state_dict(block.attn.state_dict())
    qkv = compat.QKVMultiheadAttention(opts["xf_heads"], opts["text_ctx"])
    with th.no_grad():
        th.testing.assert_close(attn.c_proj(qkv(attn.c_qkv(h))), attn(h))
        out = h
        for i in range(opts["xf_layers"]):
            ref = compat.ResidualAttentionBlock(opts["text_ctx"], opts["xf_width"],
                                                opts["xf_heads"])  # fmt: skip
            ref.load_state_dict(xf.resblocks[i].state_dict())
            out = ref(out)
        th.testing.assert_close(xf(h), out)
    assert compat.MLP(8).c_fc.out_features == 32
    ln = compat.LayerNorm(8)
    assert ln(th.randn(2, 8).half()).dtype == th.float16


UNSERVED = [
    ("unet", name) for name in OFFICIAL_NAMES["unet"]
] + [("text2im_model", name) for name in OFFICIAL_NAMES["text2im_model"]] + [
    ("clip.encoders", name) for name in OFFICIAL_NAMES["clip.encoders"]
    if name not in ("TextEncoder", "ImageEncoder")
] + [("clip.attention", name) for name in OFFICIAL_NAMES["clip.attention"]] + [
    ("clip.utils", name) for name in ("ZeroKeyBiasGrad", "zero_key_bias_grad", "LayerNorm",
                                      "Affine")
]  # fmt: skip


@pytest.mark.parametrize(("module", "name"), UNSERVED)
def test_unserved_names_say_the_glidekit_way(module, name):
    obj = getattr(importlib.import_module(f"glidekit.compat.{module}"), name)
    with pytest.raises(compat.NotServedError) as info:
        obj(1, 2, 3)
    message = str(info.value)
    assert f"glide_text2im.{module}.{name} is not served" in message
    assert "glidekit." in message.split("; ", 1)[1]
    assert isinstance(info.value, NotImplementedError) and "\n" not in message


def test_checkpoint_errors_stay_checkpoint_errors(released):
    """A truncated download is refused with glidekit's CheckpointError (a ValueError)."""
    released.server.files["/base.pt"] = released.server.files["/base.pt"][:100]
    try:
        with pytest.raises(CheckpointError):
            compat.load_checkpoint("base", CPU, progress=False)
    finally:
        released.server.files["/base.pt"] = pt_bytes(released.states["base"])
