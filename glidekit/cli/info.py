"""``glidekit info``: the cache and the models in it, the device, and library versions."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

import numpy
import PIL
import torch

import glidekit
from glidekit.checkpoints import CHECKPOINTS
from glidekit.checkpoints import cache_dir as resolve_cache
from glidekit.checkpoints.download import preferred_files
from glidekit.models import VOCABULARY_NOTE
from glidekit.pipelines import PRESETS, available_samplers, resolve_device
from glidekit.pipelines.devices import dtype_name
from glidekit.pipelines.sources import default_source


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "info",
        help="cache path, models found, device and versions",
        description="Show the checkpoint cache and which models are in it, the device "
        "'auto' picks, the samplers available and library versions.",
    )
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory to inspect")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)


def collect(cache_dir: str | None = None) -> dict[str, Any]:
    cache = resolve_cache(cache_dir)
    models = {}
    for name, info in CHECKPOINTS.items():
        found = [str(f) for f in preferred_files(cache, info.stem) if f.is_file()]
        models[name] = {"file": info.filename, "cached": bool(found), "paths": found}
    device = resolve_device("auto")
    defaults = {}
    for role in ("base", "upsampler", "base_inpaint", "upsampler_inpaint"):
        try:
            src = default_source(role)
        except Exception as exc:  # a broken embedded-models module should not break info
            src = f"error: {exc}"
        defaults[role] = src if isinstance(src, (str, type(None))) else str(src)
    return {
        "cache_dir": str(cache),
        "models": models,
        "default_models": defaults,
        "device": str(device),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "samplers": available_samplers(),
        # What --preset fast chooses here (its dtype depends on this device's bf16 support).
        "presets": {
            name: f"{preset.description}; dtype here: {dtype_name(preset.dtype(device))}"
            for name, preset in PRESETS.items()
        },
        "embedded_models": VOCABULARY_NOTE,
        "versions": {
            "glidekit": glidekit.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "Pillow": PIL.__version__,
        },
    }


def _info(args: argparse.Namespace) -> int:
    data = collect(args.cache_dir)
    if args.json:
        print(json.dumps(data))
        return 0
    print(f"cache: {data['cache_dir']}")
    print("models:")
    for name, m in data["models"].items():
        where = m["paths"][0] if m["cached"] else "not downloaded"
        print(f"  {name:18s} {where}")
    print("defaults: " + ", ".join(f"{k}={v}" for k, v in data["default_models"].items()))
    gpus = ", ".join(data["cuda_devices"])
    print(f"device: {data['device']}" + (f" ({gpus})" if gpus else ""))
    print(f"samplers: {', '.join(data['samplers'])}")
    print("presets (--preset):")
    for name, text in data["presets"].items():
        print(f"  {name:9s} {text}")
    print(f"embedded models: {data['embedded_models']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    return 0
