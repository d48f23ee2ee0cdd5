"""Where the image commands write: the output folder, checked before anything is computed,
and the PNGs of finished results (paths or one JSON object on stdout)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from glidekit.errors import UsageError
from glidekit.pipelines import PipelineResult


def check_outdir(outdir: str) -> Path:
    """Create the output folder (or refuse with exit code 2) before anything is computed."""
    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--outdir: {outdir!r} exists and is not a folder") from None
    except OSError as exc:
        raise UsageError(f"--outdir: cannot create {outdir!r} ({exc.strerror})") from None
    try:  # writable? (permission bits alone do not tell, e.g. for root or read-only mounts)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--outdir: cannot write in {outdir!r} ({exc.strerror})") from None
    return path


def write_results(results: list[PipelineResult], args: argparse.Namespace, command: str) -> int:
    """Save every result's images (and grids); print their paths or one JSON object."""
    written, grids = [], []
    try:
        for result in results:
            paths = result.save(Path(args.outdir), prefix=args.name, grid=args.grid)
            for i, path in enumerate(paths[: len(result.images)]):
                p = result.image_params(i)
                written.append({"path": str(path), "prompt": p["prompt"], "seed": p["seed"],
                                "index": p["index"]})  # fmt: skip
            grids += [str(paths[-1])] if args.grid else []
    except OSError as exc:
        raise UsageError(f"--outdir: cannot write the images ({exc})") from None
    if args.json:
        runs = [r.params for r in results]
        print(json.dumps({"command": command, "images": written, "grids": grids, "runs": runs}))
    else:
        print("\n".join([w["path"] for w in written] + grids))
    return 0
