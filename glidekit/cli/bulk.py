"""Bulk jobs: ``glidekit generate --prompts-file FILE -o DIR``, resumable and shardable.

Items: each non-empty, non-``#`` line of FILE is one item, either a plain prompt or a JSON
object ``{"prompt": ..., "seed": 7, "num_images": 2, "guidance_scale": 4, "steps": 50,
"sampler": "ddim", "name": "corgi"}`` (every key but ``prompt`` optional). Item ``i``
(0-based, in file order) uses seed ``base + i`` unless its line sets one; the base seed is
``--seed``, or else derived from the file's contents, so a re-run makes the same pictures.
``--batch-size N`` samples up to N consecutive items with the same options in one model batch,
each with its own seed's generator (start and per-step noise), so an image depends only on its
item, never on batching, order or the number of processes (bit-exact where the kernels are
batch-invariant; within 1/255 on this CPU's, measured).

Outputs (in DIR): ``{i:05d}-{prompt-slug}-s{seed}.png`` (``-k`` per image when the item makes
several), each written to a temporary name and moved into place with ``os.replace``; then one
JSON line per finished item is appended (and fsynced) to ``manifest.rank{r}.jsonl``. A re-run
of the same command reads every ``manifest*.jsonl`` and skips the items recorded there, so a
job killed at any point and run again writes every image exactly once (an item whose images
were written but not yet recorded is redone, byte-identically). ``job.json`` records the
job's settings; a different job in the same folder is refused.

Distributed: under ``torchrun --nproc_per_node N`` (env ``RANK`` / ``WORLD_SIZE``) rank ``r``
takes the items with ``i % N == r`` and appends to its own manifest shard; no process group
is needed. A job resumed with another number of processes still skips everything finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from glidekit.cli.outputs import check_outdir
from glidekit.errors import OptionError, UsageError
from glidekit.fileio import cache_dir, fsync_dir
from glidekit.pipelines import GlidePipeline, read_png_params
from glidekit.pipelines.results import output_stem, png_bytes, write_atomic

MANIFEST_GLOB = "manifest*.jsonl"
JOB_FILE = "job.json"
#: What a JSON line may set besides ``prompt``, and the pipeline argument each one maps to.
ITEM_KEYS = ("seed", "num_images", "guidance_scale", "steps", "sampler", "name")


@dataclass
class Item:
    index: int
    prompt: str
    line: int
    overrides: dict[str, Any] = field(default_factory=dict)


def _error(message: str) -> Exception:
    return UsageError(message)


def read_items(path: str) -> tuple[list[Item], str]:
    """The items of a prompts file and the sha256 of its bytes."""
    p = Path(path)
    if not p.is_file():
        raise _error(f"--prompts-file: {path!r} is not a file")
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise _error(f"--prompts-file: cannot read {path!r} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise _error(f"--prompts-file: {path!r} is not UTF-8 text ({exc.reason})") from None
    items: list[Item] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--prompts-file: line {lineno}"
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _error(f"{where}: not valid JSON ({exc.msg})") from None
            prompt = obj.pop("prompt", None)
            if not isinstance(prompt, str):
                raise _error(f'{where}: a JSON line needs a "prompt" string')
            unknown = sorted(set(obj) - set(ITEM_KEYS))
            if unknown:
                raise _error(
                    f"{where}: unknown keys {unknown}; allowed: prompt, {', '.join(ITEM_KEYS)}"
                )
            name = obj.get("name")
            if name is not None and (
                not isinstance(name, str)
                or not name
                or "/" in name
                or "\\" in name
                or name[0] == "."
            ):
                raise _error(f'{where}: "name" must be a plain file name stem, got {name!r}')
            items.append(Item(len(items), prompt, lineno, obj))
        else:
            items.append(Item(len(items), line, lineno))
    if not items:
        raise _error(f"--prompts-file: {path!r} holds no prompts")
    return items, hashlib.sha256(raw).hexdigest()


def item_kwargs(item: Item, kw: dict[str, Any], base_seed: int) -> dict[str, Any]:
    """Pipeline keyword arguments of one item: the command's, its line's overrides, its seed."""
    out = dict(kw)
    for key, value in item.overrides.items():
        if key == "name":
            continue
        if key == "steps" and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        out[key] = value
    out.setdefault("seed", base_seed + item.index)
    return out


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise _error(f"environment variable {name}={value!r} is not an integer") from None

    world = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise _error(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def finished_items(outdir: Path) -> dict[int, dict[str, Any]]:
    """Every item recorded in any manifest shard of ``outdir``: {index: record}.

    A line that does not parse (a run killed while writing it) does not count.
    """
    done: dict[int, dict[str, Any]] = {}
    for shard in sorted(outdir.glob(MANIFEST_GLOB)):
        try:
            lines = shard.read_bytes().split(b"\n")
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                done[record["index"]] = record
    return done


class ManifestShard:
    """One rank's manifest: records appended with a single write each, then fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            os.write(self.fd, b"\n")  # end a torn line so it cannot join the next record
        if created:
            fsync_dir(path.parent)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self.fd, line)
        if written != len(line):  # pragma: no cover - regular files write whole small buffers
            raise OSError(f"short write to {self.path}")
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def check_job_file(outdir: Path, job: dict[str, Any]) -> None:
    """Record the job's settings in ``outdir``, or refuse if it holds a different job."""
    path = outdir / JOB_FILE
    data = json.dumps(job, sort_keys=True, indent=1) + "\n"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old == json.loads(data):
            return
        if old is not None:
            diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise _error(
                f"--outdir: {str(outdir)!r} holds another bulk job (different {', '.join(diff)}); "
                "re-run it with the same prompts file and options, or use a new --outdir"
            )
    write_atomic(data.encode("utf-8"), path)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _file_names(item: Item, seed: int, count: int, prefix: str | None) -> list[str]:
    stem = item.overrides.get("name")
    if stem is None:
        stem = (
            f"{prefix}-{item.index:05d}"
            if prefix
            else f"{item.index:05d}-{output_stem(item.prompt, seed)}"
        )
    if count == 1:
        return [f"{stem}.png"]
    return [f"{stem}-{k}.png" for k in range(count)]


def run_bulk(args: argparse.Namespace, pipe: Any, kw: dict[str, Any], items: list[Item],
             file_sha256: str, call: Any, job_settings: dict[str, Any]) -> int:  # fmt: skip
    """Run (or resume) the job; prints what this process wrote. Each rank holds a lock on
    the folder while it runs (a second identical job fails at once), and never replaces a file
    it did not write (a PNG of the same name from another job or the user is refused)."""
    rank, world = distributed_rank()
    path = lock_path(Path(args.outdir), rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _error(f"--outdir: another bulk job is running in {args.outdir!r} (rank {rank}); "
                     "wait for it to finish") from None  # fmt: skip
    try:
        return _run_locked(args, pipe, kw, items, file_sha256, call, job_settings, rank, world)
    finally:
        lock.release()


def lock_path(outdir: Path, rank: int, cache: Path | None = None) -> Path:
    """The lock a bulk job's rank holds on ``outdir``. It lives in glidekit's cache, keyed by
    the folder: nothing of ours in the user's folder but the job's own files, and a lock file
    that stays (deleting it would let a third job slip in) is harmless there."""
    folder = hashlib.sha256(str(outdir.resolve()).encode()).hexdigest()[:24]
    return (cache or cache_dir()) / "locks" / f"bulk-{folder}.rank{rank}.lock"


def _ours(path: Path, item: Item, seed: int) -> bool:
    """Whether ``path`` is free, or a PNG this job wrote for ``item`` (a killed run's)."""
    if not path.exists():
        return True
    try:
        params = read_png_params(path, "--outdir")
    except (ValueError, OSError):
        return False
    return params.get("item") == item.index and params.get("seed") == seed


def _check_free(outdir: Path, pipe: Any, kw: dict[str, Any], mine: list[Item], base_seed: int,
                args: argparse.Namespace) -> None:  # fmt: skip
    """Refuse the job if a file it would write exists and is not its own (the user's)."""
    for item in mine:
        ikw = item_kwargs(item, kw, base_seed)
        count = pipe.check_inputs(item.prompt, **ikw)[1].num_images
        names = _file_names(item, ikw["seed"], count, args.name)
        if args.grid:
            names.append(names[0].removesuffix(".png").removesuffix("-0") + "-grid.png")
        taken = [n for n in names if not _ours(outdir / n, item, ikw["seed"])]
        if taken:
            raise _error(f"--outdir: {str(outdir / taken[0])!r} exists and was not written by "
                         "this job; move it away or use another --outdir")  # fmt: skip


def batches(mine: list[Item], kw: dict[str, Any], base_seed: int,
            size: int) -> list[list[Item]]:  # fmt: skip
    """Consecutive items with the same options (but their seeds), ``size`` at most a batch:
    each is sampled with its own seed's generator, so its pictures do not depend on the batch."""
    out: list[list[Item]] = []
    last = None  # the options (but the seed) of the batch being filled
    for item in mine:
        options = {k: v for k, v in item_kwargs(item, kw, base_seed).items() if k != "seed"}
        if out and len(out[-1]) < size and options == last:
            out[-1].append(item)
        else:
            out.append([item])
            last = options
    return out


def _write_item(outdir: Path, item: Item, result: Any, args: argparse.Namespace,
                written: list[dict[str, Any]], grids: list[str]) -> list[str]:  # fmt: skip
    """Write one item's PNGs (and grid); returns their names."""
    seed = result.params["seed"]
    names = _file_names(item, seed, len(result.images), args.name)
    for name in names:  # temporaries left by a run killed while writing this item
        for stale in outdir.glob(f".{glob_escape(name)}.*.tmp"):
            stale.unlink(missing_ok=True)
    taken = [n for n in names if not _ours(outdir / n, item, seed)]
    if taken:
        raise _error(f"--outdir: {str(outdir / taken[0])!r} exists and was not written by this "
                     "job; move it away or use another --outdir")  # fmt: skip
    for k, (image, name) in enumerate(zip(result.images, names, strict=True)):
        params = result.image_params(k)
        params["item"] = item.index
        write_atomic(png_bytes(image, params), outdir / name)
        written.append({"path": str(outdir / name), "prompt": item.prompt, "seed": seed,
                        "index": k, "item": item.index})  # fmt: skip
    files = list(names)
    if args.grid:
        grid_name = names[0].removesuffix(".png").removesuffix("-0") + "-grid.png"
        grid_params = dict(result.params, grid=True, item=item.index)
        write_atomic(png_bytes(result.grid(), grid_params), outdir / grid_name)
        grids.append(str(outdir / grid_name))
        files.append(grid_name)
    return files


def _run_locked(args: argparse.Namespace, pipe: Any, kw: dict[str, Any], items: list[Item],
                file_sha256: str, call: Any, job_settings: dict[str, Any], rank: int,
                world: int) -> int:  # fmt: skip
    outdir = Path(args.outdir)
    kw = dict(kw)
    base_seed = kw.pop("seed", None)
    if base_seed is None:
        base_seed = int(file_sha256[:8], 16) & 0x7FFFFFFF
    done = finished_items(outdir)
    mine = [it for it in items if it.index % world == rank and it.index not in done]
    _check_free(outdir, pipe, kw, mine, base_seed, args)  # before anything is written
    check_job_file(outdir, {**job_settings, "prompts_sha256": file_sha256, "base_seed": base_seed})
    skipped = sum(1 for it in items if it.index % world == rank and it.index in done)

    written: list[dict[str, Any]] = []
    grids: list[str] = []
    shard = ManifestShard(outdir / f"manifest.rank{rank}.jsonl")
    try:
        for batch in batches(mine, kw, base_seed, getattr(args, "batch_size", 1) or 1):
            calls = [item_kwargs(item, kw, base_seed) for item in batch]
            batch_kw = {**calls[0], "seed": [c["seed"] for c in calls]}
            result = call(pipe, [item.prompt for item in batch], **batch_kw)
            for item, item_result in zip(batch, result.items(), strict=True):
                files = _write_item(outdir, item, item_result, args, written, grids)
                shard.append({"index": item.index, "prompt": item.prompt,
                              "seed": item_result.params["seed"], "files": files, "rank": rank,
                              "world_size": world})  # fmt: skip
                if not args.json:
                    for name in files:
                        print(outdir / name, flush=True)
    finally:
        shard.close()
    if args.json:
        print(json.dumps({
            "command": "generate",
            "images": written,
            "grids": grids,
            "job": {"outdir": str(outdir), "items": len(items), "rank": rank, "world_size": world,
                    "written_items": len(mine), "skipped_items": skipped, "base_seed": base_seed,
                    "manifest": str(shard.path)},
        }))  # fmt: skip
    return 0


def run(args: argparse.Namespace, pipe: GlidePipeline, given: dict[str, Any]) -> int:
    """``generate --prompts-file``: read the items, check every item's options against the
    pipeline (before any model loads or file is written), then run or resume the job."""
    items, file_sha = read_items(args.prompts_file)
    for item in items:
        try:
            pipe.check_inputs(item.prompt, **item_kwargs(item, given, 0))
        except OptionError as exc:
            raise _error(f"--prompts-file: line {item.line}: {exc}") from None
    check_outdir(args.outdir)
    settings = {
        "pipeline": pipe.pipeline_name,
        "base": pipe.base_slot.label if pipe.base_slot else None,
        "upsampler": pipe.upsampler_slot.label if pipe.upsampler_slot else None,
        "clip": pipe.clip_label if given.get("guidance") == "clip" else None,
        "options": {k: v for k, v in sorted(given.items()) if k != "seed"},
    }
    try:
        return run_bulk(args, pipe, given, items, file_sha, _call, settings)
    except OSError as exc:
        raise _error(f"--outdir: cannot write the job's files ({exc})") from None


def _call(pipe: Any, prompt: str, **kwargs: Any) -> Any:
    return pipe(prompt, **kwargs)
