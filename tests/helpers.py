"""Shared pieces of the tests (a fixtures module; no test file imports another): the tiny
golden models built through glidekit's own configs, tiny GLIDE-shaped models saved as
glidekit model files, pictures and masks, the web server started for real, the official
notebooks' options."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from conftest import load_golden, strip_prefix
from PIL import Image

from glidekit.checkpoints.modelfile import save_unet
from glidekit.compat import config_from_options
from glidekit.diffusion import DiffusionConfig
from glidekit.nn import (
    GlideUNet,
    InpaintConfig,
    SuperResConfig,
    SuperResInpaintConfig,
    Text2ImConfig,
    create_model,
)
from glidekit.tokenizer import GPT2Tokenizer


def golden_model(fixture: str) -> tuple[GlideUNet, dict]:
    """The fixture's tiny model with its fixed weights loaded strictly, and all its tensors."""
    meta, tensors = load_golden(fixture)
    model = create_model(config_from_options(meta["options"])).eval()
    model.load_state_dict(strip_prefix(tensors, "model."), strict=True)
    return model, tensors


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the fixtures' tolerance measure."""
    return float((a - b).abs().max() / b.abs().max())


BASE_SIZE, UP_SIZE = 8, 32
_COMMON = dict(
    num_channels=32,
    num_res_blocks=1,
    num_head_channels=16,
    text_ctx=16,
    xf_width=32,
    xf_layers=1,
    xf_heads=2,
)
FAST = {"steps": 4, "upsample_steps": "ddim4"}  # few steps: fast tests


def _tiny(cls, size: int, attention: tuple[int, ...], mult: tuple[int, ...], seed: int):
    torch.manual_seed(seed)
    model = create_model(
        cls(image_size=size, attention_resolutions=attention, channel_mult=mult, **_COMMON)
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():  # the zero-initialised output convolutions
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


@functools.cache
def tiny_models() -> dict[str, torch.nn.Module]:
    return {
        "base": _tiny(Text2ImConfig, BASE_SIZE, (4,), (1, 2), 0),
        "upsample": _tiny(SuperResConfig, UP_SIZE, (8,), (1, 2, 2), 1),
        "base-inpaint": _tiny(InpaintConfig, BASE_SIZE, (4,), (1, 2), 2),
        "upsample-inpaint": _tiny(SuperResInpaintConfig, UP_SIZE, (8,), (1, 2, 2), 3),
    }


def save_tiny_models(folder: Path) -> dict[str, Path]:
    """The tiny models as glidekit model files in ``folder``: {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: save_unet(
            folder / f"{name}.safetensors",
            model,
            DiffusionConfig.for_model(model.config),
            GPT2Tokenizer(model.config.text_ctx),
        )
        for name, model in tiny_models().items()
    }


def random_picture(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random picture (so resizing does not turn it to mush)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.BILINEAR)
    return img.convert(mode) if mode != "RGB" else img


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """Black image (keep) with a white (replace) box."""
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


TIMEOUT = 60  # seconds any one request may take at most


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    tmp: Path  # the server's TMPDIR: its work folder is made in here
    log: Path

    def client(self, downloads: Path):
        from gradio_client import Client  # optional dependency: the web tests skip without it

        return Client(self.url, verbose=False, download_files=str(downloads))

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, *extra: str, queue_size: int = 4, tiny: bool = True) -> Server:
    """``glidekit serve`` on tiny models (``tiny=False``: the package's default models, with
    their own defaults) on a free loopback port; waits until it answers."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), GRADIO_ANALYTICS_ENABLED="False")
    env.pop("GRADIO_TEMP_DIR", None)
    cmd = [
        sys.executable, "-m", "glidekit.cli.main", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
        "--queue-size", str(queue_size),
    ]  # fmt: skip
    if tiny:
        models = save_tiny_models(folder / "models")
        cmd += ["--base", str(models["base"]), "--upsampler", str(models["upsample"]),
                "--inpaint", str(models["base-inpaint"]),
                "--inpaint-upsampler", str(models["upsample-inpaint"]),
                "--steps", "4", "--upsample-steps", "ddim4"]  # fmt: skip
    cmd += extra
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}/", process, tmp, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "config", timeout=5) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}")


def _options(fixture: str) -> dict:
    meta, _ = load_golden(fixture)
    return {k: v for k, v in meta["options"].items() if k not in ("timestep_respacing", "use_fp16")}


def _state(fixture: str, prefix: str = "model.") -> dict[str, torch.Tensor]:
    return strip_prefix(load_golden(fixture)[1], prefix)
