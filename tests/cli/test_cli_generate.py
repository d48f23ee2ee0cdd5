"""``glidekit generate | inpaint | upsample | edit | info`` on tiny model files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import (
    BASE_SIZE,
    UP_SIZE,
    random_picture,
    square_mask,
)
from PIL import Image

from glidekit.cli.main import main
from glidekit.pipelines import read_png_params

FAST = ["--steps", "4", "--upsample-steps", "ddim4"]


@pytest.fixture()
def run(bundles, capsys, tmp_path):  # noqa: F811
    """run(*argv) -> (exit code, stdout, stderr), with the tiny models and an output folder."""

    def go(*argv: str, models: str = "text2im", outdir=None):
        extra = []
        if argv[0] in ("generate", "edit"):
            extra = ["--base", str(bundles["base"]), "--upsampler", str(bundles["upsample"])]
        elif argv[0] == "inpaint":
            extra = [
                "--base",
                str(bundles["base-inpaint"]),
                "--upsampler",
                str(bundles["upsample-inpaint"]),
            ]
        elif argv[0] == "upsample":
            extra = ["--upsampler", str(bundles["upsample"])]
        if models is None:
            extra = []
        out = ["-o", str(outdir or tmp_path / "out")] if argv[0] != "info" else []
        code = main([*argv, *extra, *out, "-q"] if argv[0] != "info" else list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return go


def px(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def test_generate_json_metadata_and_from(run, tmp_path):
    code, out, err = run(
        "generate", "a red circle", "a cat", "-n", "2", "--seed", "5", "--grid", "--json", *FAST
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["command"] == "generate" and len(data["images"]) == 4
    assert [i["prompt"] for i in data["images"]] == ["a red circle"] * 2 + ["a cat"] * 2
    assert len(data["grids"]) == 1 and len(data["runs"]) == 1
    third = data["images"][2]
    params = read_png_params(third["path"])
    assert params["prompt"] == "a cat" and params["seed"] == 5 and params["index"] == 2
    assert params["steps"] == "4" and params["upsample_steps"] == "ddim4"
    assert params["base"].endswith("base.safetensors")
    with Image.open(third["path"]) as img:
        assert img.size == (UP_SIZE, UP_SIZE)
        assert img.text["prompt"] == "a cat" and img.text["seed"] == "5"
        assert img.text["model"].endswith("base.safetensors")
        assert img.text["sampler"] == "ancestral" and img.text["guidance_scale"] == "3.0"
    # --from repeats the run (models from the file too) and writes that one image again.
    code, out, err = run("generate", "--from", third["path"], "--json", models=None,
                         outdir=tmp_path / "again")  # fmt: skip
    assert code == 0, err
    again = json.loads(out)["images"]
    assert len(again) == 1 and again[0]["prompt"] == "a cat"
    assert np.array_equal(px(again[0]["path"]), px(third["path"]))
    assert read_png_params(again[0]["path"]) == params
    # Overriding the seed changes the picture.
    code, out, _ = run("generate", "--from", third["path"], "--seed", "6", "--json", models=None)
    other = json.loads(out)["images"]
    assert len(other) == 4 and not np.array_equal(px(other[2]["path"]), px(third["path"]))


def test_no_overwrite_and_plain_output(run, tmp_path):
    argv = ("generate", "a red circle", "--seed", "1", "--no-upsample", "--steps", "3")
    code, out, _ = run(*argv, "--name", "pic")
    first = tmp_path / "out" / "pic.png"
    assert code == 0 and out.strip() == str(first)
    before = first.read_bytes()
    code, out, _ = run(*argv, "--name", "pic")
    assert out.strip() == str(tmp_path / "out" / "pic-1.png")
    assert first.read_bytes() == before
    with Image.open(first) as img:
        assert img.size == (BASE_SIZE, BASE_SIZE)
    assert read_png_params(first)["upsampler"] is None


def test_prompts_file_job(run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "# shapes\na red circle\n\n"
        '{"prompt": "a blue square", "num_images": 2, "guidance_scale": 4, "name": "sq"}\n'
        '{"prompt": "a cat", "seed": 3, "steps": "ddim2"}\n'
    )
    code, out, err = run("generate", "--prompts-file", str(prompts), "--seed", "10",
                         "--no-upsample", "--steps", "2", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert [i["prompt"] for i in data["images"]] == ["a red circle"] + ["a blue square"] * 2 + [
        "a cat"
    ]
    assert [i["seed"] for i in data["images"]] == [10, 11, 11, 3]
    names = [i["path"].rsplit("/", 1)[1] for i in data["images"]]
    assert names == ["00000-a-red-circle-s10.png", "sq-0.png", "sq-1.png", "00002-a-cat-s3.png"]
    assert read_png_params(data["images"][1]["path"])["guidance_scale"] == 4
    assert read_png_params(data["images"][3]["path"])["steps"] == "ddim2"
    assert data["job"]["written_items"] == 3 and data["job"]["world_size"] == 1


def test_inpaint_edit_upsample_commands(run, tmp_path):
    src = random_picture((UP_SIZE, UP_SIZE), seed=2)
    mask = square_mask((UP_SIZE, UP_SIZE), (4, 4, 20, 20))
    src_path, mask_path = tmp_path / "src.png", tmp_path / "mask.png"
    src.save(src_path)
    mask.save(mask_path)
    keep = np.asarray(mask) < 128

    code, out, err = run("inpaint", str(src_path), str(mask_path), "a cat", "--seed", "0",
                         "--json", *FAST)  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    assert np.abs(px(path) - np.asarray(src).astype(np.int16))[keep].max() <= 1
    params = read_png_params(path)
    assert params["pipeline"] == "inpaint" and params["guidance_scale"] == 5.0
    assert params["mask"] == str(mask_path)

    rgba = src.convert("RGBA")
    rgba.putalpha(Image.eval(mask, lambda v: 255 - v))
    rgba_path = tmp_path / "holes.png"
    rgba.save(rgba_path)
    code, out, err = run("inpaint", str(rgba_path), "alpha", "a cat", "--seed", "0",
                         "--json", "--low-memory", *FAST)  # fmt: skip
    assert code == 0, err  # the alpha mask, one model at a time: the same picture
    assert np.array_equal(px(json.loads(out)["images"][0]["path"]), px(path))

    code, out, err = run("edit", str(src_path), "a cat", "--strength", "0.3", "--mask",
                         str(mask_path), "--seed", "0", "--json", *FAST)  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    assert read_png_params(path)["strength"] == 0.3
    assert np.abs(px(path) - np.asarray(src).astype(np.int16))[keep].max() <= 1

    small = tmp_path / "small.png"
    random_picture((20, 30), seed=3).save(small)
    code, out, err = run("upsample", str(small), "a cat", "--steps", "ddim3", "--fit", "pad",
                         "--json")  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    with Image.open(path) as img:
        assert img.size == (UP_SIZE, UP_SIZE)
    assert read_png_params(path)["pipeline"] == "upsample"


def test_info(run, tmp_path):
    code, out, _ = run("info", "--json", "--cache-dir", str(tmp_path / "cache"))
    data = json.loads(out)
    assert code == 0 and data["cache_dir"] == str(tmp_path / "cache")
    assert set(data["models"]) >= {"base", "upsample", "base-inpaint", "clip/text-enc"}
    assert not data["models"]["base"]["cached"]
    assert data["device"] in ("cpu", "cuda", "mps") and "torch" in data["versions"]
    assert set(data["presets"]) == {"official", "fast"}
    if data["device"] == "cpu":  # GLIDE's own dtype on a CPU
        assert data["presets"]["official"].endswith("dtype here: fp32")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "base.pt").write_bytes(b"x")
    code, out, _ = run("info", "--cache-dir", str(tmp_path / "cache"))
    assert "base.pt" in out and "device:" in out and "presets (--preset):" in out


@pytest.fixture()
def files(tmp_path):
    src = tmp_path / "src.png"
    random_picture((UP_SIZE, UP_SIZE)).save(src)
    mask = tmp_path / "mask.png"
    square_mask((16, 16), (0, 0, 8, 8)).save(mask)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    paths = {"src": str(src), "mask": str(mask), "plain": str(plain)}
    masks = {
        "mask32": square_mask((UP_SIZE, UP_SIZE), (0, 0, 8, 8)),
        "wide": square_mask((UP_SIZE, UP_SIZE // 2), (0, 0, 8, 8)),
        "empty": square_mask((UP_SIZE, UP_SIZE), (0, 0, 0, 0)),
        "full": square_mask((UP_SIZE, UP_SIZE), (0, 0, UP_SIZE, UP_SIZE)),
        "opaque": random_picture((UP_SIZE, UP_SIZE), mode="RGBA"),
    }
    for name, img in masks.items():
        img.save(tmp_path / f"{name}.png")
        paths[name] = str(tmp_path / f"{name}.png")
    texts = {
        "text": "not an image\n",
        "badjson": 'a cat\n{"prompt": "a dog",\n',
        "badkey": '{"prompt": "a dog", "colour": "red"}\n',
        "badseed": '{"prompt": "a dog", "seed": -3}\n',
        "badcount": '{"prompt": "a dog", "num_images": 0}\n',
        "badname": '{"prompt": "a dog", "name": "../up"}\n',
    }
    for name, text in texts.items():
        (tmp_path / f"{name}.png").write_text(text)
        paths[name] = str(tmp_path / f"{name}.png")
    return paths


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["generate", "x", "-n", "0"], "--num-images must be >= 1"),
        (["generate", "x", "-g", "nan"], "--guidance-scale must be finite"),
        (["generate", "x", "-g", "inf"], "--guidance-scale must be finite"),
        (["generate", "x", "--sampler", "euler"], "--sampler: unknown sampler 'euler'"),
        (["generate", "x", "--upsample-sampler", "x"], "--upsample-sampler: unknown sampler"),
        (["generate", "x", "--steps", "fast99"], "--steps: "),
        (["generate", "x", "--upsample-steps", "ddimq"], "--upsample-steps: "),
        (["generate", "x", "--eta", "2"], "--eta"),
        (["generate"], "PROMPT: no prompt given"),
        (["generate", "--prompts-file", "{plain}"], "--prompts-file: "),
        (["generate", "--from", "{plain}"], "--from: .* carries no glidekit parameters"),
        (["generate", "--from", "missing.png"], "--from: 'missing.png' is not a file"),
        (["generate", "x", "-n", "-2"], "--num-images must be >= 1"),
        (["generate", "x", "--steps", "0"], "--steps must be >= 1"),
        (["generate", "x", "--steps", "-5"], "--steps: .*cannot take -5 steps"),
        (["generate", "x", "--steps", "banana"], "--steps: .*unknown spelling 'banana'"),
        (["generate", "x", "--upsample-steps", "0"], "--upsample-steps must be >= 1"),
        (["generate", "x", "--steps", "karras0"], "--steps"),
        (["generate", "x", "--sampler", "plms"], "--sampler: unknown sampler 'plms'"),
        (["generate", "x", "--seed", "-1"], "seed must be >= 0"),
        (["generate", "--prompts-file", "{badjson}"], "--prompts-file: line 2: not valid JSON"),
        (["generate", "--prompts-file", "{badkey}"], "--prompts-file: line 1: unknown keys"),
        (["generate", "--prompts-file", "{badseed}"], "--prompts-file: line 1: seed must be"),
        (["generate", "--prompts-file", "{badcount}"], "--prompts-file: line 1: .*must be >= 1"),
        (["generate", "--prompts-file", "{badname}"], '--prompts-file: line 1: "name" must'),
        (["generate", "--prompts-file", "missing.txt"], "--prompts-file: 'missing.txt' is not"),
        (["generate", "x", "y", "--prompts-file", "{plain}"], "PROMPT and --prompts-file"),
        (["generate", "x", "--clip-image-enc", "nope.pt"], "--clip-image-enc: "),
        (["inpaint", "nope.png", "{mask32}", "x"], "IMAGE: 'nope.png' is not a file"),
        (["inpaint", "{text}", "{mask32}", "x"], "IMAGE: cannot read .* as an image"),
        (["inpaint", "{src}", "{text}", "x"], "MASK: cannot read .* as an image"),
        (["inpaint", "{src}", "{wide}", "x"], "MASK: mask size 32x16 does not match IMAGE size"),
        (["inpaint", "{src}", "{empty}", "x"], "MASK: the mask is empty"),
        (["inpaint", "{src}", "{full}", "x"], "MASK: the mask covers the whole image"),
        (["inpaint", "{opaque}", "alpha", "x"], "MASK: the mask is empty"),
        (["inpaint", "{src}", "{mask32}", "x", "-n", "0"], "--num-images must be >= 1"),
        (["inpaint", "{src}", "{mask32}", "x", "--steps", "0"], "--steps must be >= 1"),
        (["edit", "{src}", "x", "--mask", "{empty}"], "--mask: the mask is empty"),
        (["edit", "{text}", "x"], "IMAGE: cannot read .* as an image"),
        (["upsample", "{text}", "x"], "IMAGE: cannot read .* as an image"),
        (["upsample", "nope.png", "x"], "IMAGE: 'nope.png' is not a file"),
        (["upsample", "{src}", "x", "--steps", "0"], "--steps must be >= 1"),
        (["upsample", "{src}", "x", "--sampler", "nope"], "--sampler: unknown sampler"),
        (["generate", "x", "--device", "tpu9"], "--device: "),
        (["generate", "x", "--dtype", "int4"], "--dtype: unknown dtype"),
        (["edit", "{src}", "x", "--strength", "0"], "--strength must be in"),
        (["edit", "{src}", "x", "--strength", "1.5"], "--strength must be"),
        (["edit", "{src}", "x", "--upsample-strength", "-1"], "--upsample-strength must be"),
        (["edit", "{src}", "x", "--mask", "{mask}"], "--mask: mask size 16x16 does not match"),
        (["edit", "nope.png", "x"], "IMAGE: 'nope.png' is not a file"),
        (["inpaint", "{src}", "{mask}", "x"], "MASK: mask size 16x16 does not match IMAGE"),
        (["inpaint", "{src}", "alpha", "x"], "MASK: no mask given and IMAGE has no alpha"),
        (["inpaint", "{src}", "missing.png", "x"], "MASK: 'missing.png' is not a file"),
        (["upsample", "{src}", "x", "--temperature", "nan"], "--temperature must be finite"),
    ],
)
def test_bad_input_exits_2_naming_the_argument(run, files, tmp_path, argv, named):
    argv = [a.format(**files) for a in argv]
    code, out, err = run(*argv)
    assert code == 2
    assert named in err or re.search(named, err), err
    assert "Traceback" not in err
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or not list(out_dir.iterdir())  # nothing written


@pytest.mark.parametrize("command", ["generate", "bulk", "inpaint", "upsample", "edit"])
def test_unwritable_outdir_exits_2_before_sampling(run, files, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = {
        "generate": ["generate", "x"],
        "bulk": ["generate", "--prompts-file", files["text"]],
        "inpaint": ["inpaint", files["src"], files["mask32"], "x"],
        "upsample": ["upsample", files["src"], "x"],
        "edit": ["edit", files["src"], "x"],
    }[command]
    for outdir, message in ((blocker / "sub", "cannot create"), (blocker, "is not a folder")):
        code, _, err = run(*argv, "--steps", "2", outdir=outdir)
        assert code == 2 and f"--outdir: {str(outdir)!r}" in err.replace("cannot create ", "")
        assert message in err and "Traceback" not in err
    assert blocker.read_text() == "x"


def test_bad_model_path_exits_2(run, files):
    code, _, err = run("generate", "x", "--base", "no/such.safetensors", "--no-upsample",
                       models=None)  # fmt: skip
    assert code == 2 and "--base: 'no/such.safetensors' is neither" in err
    code, _, err = run("generate", "x", "--base", files["plain"], "--no-upsample", models=None)
    assert code == 2 and "--base" in err


def _tiny_clip():
    from glidekit.clip import CLIPConfig, create_clip_model

    torch.manual_seed(0)
    config = CLIPConfig(image_size=BASE_SIZE, patch_size=4, n_vocab=49408, n_embd=32,
                        n_head_state_text=16, n_head_text=2, n_xf_blocks_text=1,
                        n_head_state_image=16, n_head_image=2, n_xf_blocks_image=1)  # fmt: skip
    clip = create_clip_model(config)
    with torch.no_grad():
        for p in clip.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.1)
    return clip


def test_clip_files_on_the_command_line(run, bundles, tmp_path):  # noqa: F811
    from safetensors.torch import save_file

    from glidekit.checkpoints.modelfile import save_clip
    from glidekit.pipelines import ClipGuidedPipeline

    clip = _tiny_clip()
    meta = {"glidekit.clip_config": json.dumps(clip.config.to_dict())}
    towers = {}
    for attr in ("image_encoder", "text_encoder"):
        towers[attr] = tmp_path / f"{attr}.safetensors"
        state = {k: v.contiguous() for k, v in getattr(clip, attr).state_dict().items()}
        save_file(state, str(towers[attr]), metadata=meta)
    args = ("generate", "a red circle", "--seed", "4", "--steps", "3", "-g", "2", "--no-upsample",
            "--json")  # fmt: skip
    code, out, err = run(*args, "--clip-image-enc", str(towers["image_encoder"]),
                         "--clip-text-enc", str(towers["text_encoder"]))  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    params = read_png_params(path)
    assert params["pipeline"] == "clip-guided" and params["guidance"] == "clip"
    assert params["clip"] == f"{towers['image_encoder']},{towers['text_encoder']}"
    # The same picture as the Python pipeline with the CLIP object itself.
    pipe = ClipGuidedPipeline(bundles["base"], None, clip=clip, device="cpu")
    expected = pipe("a red circle", seed=4, steps=3, guidance_scale=2.0, upsample=False)
    assert np.array_equal(px(path), np.asarray(expected.images[0]).astype(np.int16))
    # Not the same as classifier-free guidance.
    code, out, _ = run(*args, outdir=tmp_path / "cfg")
    assert not np.array_equal(px(json.loads(out)["images"][0]["path"]), px(path))
    # One glidekit CLIP file (both towers, as `glidekit train` exports it) for both flags.
    both = save_clip(tmp_path / "clip.safetensors", clip, tokenizer=None)
    code, out, err = run(*args, "--clip-image-enc", str(both), "--clip-text-enc", str(both),
                         outdir=tmp_path / "both")  # fmt: skip
    assert code == 0, err
    assert np.array_equal(px(json.loads(out)["images"][0]["path"]), px(path))
    # --from repeats it with the same CLIP files.
    code, out, err = run("generate", "--from", path, "--json", models=None,
                         outdir=tmp_path / "again")  # fmt: skip
    assert code == 0, err
    assert np.array_equal(px(json.loads(out)["images"][0]["path"]), px(path))
    # A tower file of another architecture: exit 2 naming the flag.
    code, _, err = run(*args, "--clip-image-enc", str(towers["text_encoder"]),
                       outdir=tmp_path / "bad")  # fmt: skip
    assert code == 2 and "--clip-image-enc: " in err, err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


def test_from_repeats_every_kind_of_png(run, tmp_path):
    """Issue 19 item 8: --from works for inpaint, edit and upsample PNGs too (the same bytes),
    and a PNG of another command names the command that repeats it."""
    picture, mask = tmp_path / "pic.png", tmp_path / "mask.png"
    random_picture((48, 48), seed=3).save(picture)
    square_mask((48, 48), (8, 8, 30, 30)).save(mask)
    made = {
        "inpaint": run("inpaint", str(picture), str(mask), "a cat", "--seed", "2", "--json", *FAST),
        "edit": run("edit", str(picture), "a cat", "--seed", "2", "--json", *FAST),
        "upsample": run(
            "upsample", str(picture), "a cat", "--seed", "2", "--json", "--steps", "ddim4"
        ),  # fmt: skip
    }
    for command, (code, out, err) in made.items():
        assert code == 0, err
        first = json.loads(out)["images"][0]["path"]
        again = tmp_path / f"again-{command}"
        code, out, err = run(command, "--from", first, "--json", outdir=again)
        assert code == 0, err
        (path,) = [item["path"] for item in json.loads(out)["images"]]
        assert open(path, "rb").read() == open(first, "rb").read(), command
    code, _, err = run("generate", "--from", first, outdir=tmp_path / "x")
    assert code == 2 and "glidekit upsample" in err


def test_from_reads_pngs_written_before_the_redesign(run, bundles, tmp_path):
    """PNGs of earlier versions (a "clip-guided" pipeline name, "upsampled", absolute model
    paths) still repeat: their options are read back into today's options."""
    from glidekit.pipelines.results import save_png

    old = {"pipeline": "text2image", "base": str(bundles["base"]), "upsampler": None,
           "prompts": ["a red circle"], "num_images": 1, "seed": 7, "steps": "4",
           "sampler": "ancestral", "sampler_options": {}, "guidance": "classifier-free",
           "guidance_scale": 2.5, "upsampled": False, "index": 0, "prompt": "a red circle"}  # fmt: skip
    png = save_png(Image.new("RGB", (BASE_SIZE, BASE_SIZE)), tmp_path / "old.png", old)
    code, out, err = main_json(run, "generate", "--from", str(png), outdir=tmp_path / "o")
    assert code == 0, err
    params = out["runs"][0]
    assert params["seed"] == 7 and params["guidance_scale"] == 2.5 and params["upsampler"] is None
    assert params["steps"] == "4" and out["images"][0]["prompt"] == "a red circle"


def main_json(run, *argv, outdir):
    code, out, err = run(*argv, "--json", models=None, outdir=outdir)
    return code, (json.loads(out) if code == 0 else None), err


def test_log_lines_name_what_they_say(run, caplog, monkeypatch, tmp_path):
    """Issue 19 item 6: the embedded upsampler is announced as the upsampler (not the base),
    a refused --steps is not logged as if used, and the respacing error lists karras25."""
    import logging

    monkeypatch.setenv("GLIDEKIT_CACHE", str(tmp_path / "empty"))
    with caplog.at_level(logging.INFO):
        code, _, err = run("generate", "a red circle", "--steps", "abc", models=None)
    assert code == 2 and "--steps" in err and "karras25" in err
    assert "steps=abc" not in caplog.text
    lines = [r.getMessage() for r in caplog.records if "embedded shapes-world model" in r.message]
    assert any("the upsampler is the embedded" in m and "shapes-upsample" in m for m in lines)
    assert any("the base is the embedded" in m and "shapes-base" in m for m in lines)
    assert not any("the base is" in m and "upsample" in m for m in lines)


def test_preset_fast_is_recorded_and_repeated(run, tmp_path, monkeypatch):
    import glidekit.pipelines.devices as devices

    flags = {"cpu": "test CPU", **dict.fromkeys(devices.BF16_FEATURES, False), "avx512_bf16": True}
    monkeypatch.setattr(devices, "cpu_info", lambda: dict(flags))
    code, out, err = run("generate", "a red circle", "--seed", "2", "--preset", "fast",
                         "--steps", "karras5", "--upsample-steps", "3", "--json")  # fmt: skip
    assert code == 0, err
    path = json.loads(out)["images"][0]["path"]
    params = read_png_params(path)
    assert params["preset"] == "fast" and params["dtype"] == "bf16"
    assert params["steps"] == "karras5"  # the flag given wins over the preset's karras25
    assert params["sampler"] == "dpm++2m" and params["upsample_sampler"] == "dpm++2m"
    assert params["guidance_interval"] == [0.3, 1.0]
    # --from takes the preset back (its dtype too) and makes the same picture.
    code, out, err = run("generate", "--from", path, "--json", models=None,
                         outdir=tmp_path / "again")  # fmt: skip
    assert code == 0, err
    again = json.loads(out)["images"][0]["path"]
    assert read_png_params(again) == params
    assert np.array_equal(px(again), px(path))
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: exit 2, one line
        run("generate", "a red circle", "--preset", "turbo")
    assert exit_info.value.code == 2


def test_fast_preset_memory_use_per_command(bundles, tmp_path):
    from glidekit.cli.generate import build_pipeline
    from glidekit.cli.main import build_parser

    def pipe(*argv: str):
        args = build_parser().parse_args(["generate", *argv, "--base", str(bundles["base"]),
                                          "--device", "cpu", "--preset", "fast"])  # fmt: skip
        return build_pipeline(args)

    assert pipe("a red circle").low_memory is True  # one run: one model at a time on a CPU
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert pipe("--prompts-file", str(prompts)).low_memory is False  # bulk keeps both loaded
    assert pipe("--prompts-file", str(prompts), "--low-memory").low_memory is True
