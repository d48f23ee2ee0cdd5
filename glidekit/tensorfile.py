"""Reading and writing ``.safetensors`` files one tensor at a time, checked and deterministic.

``safetensors`` memory-maps the whole file, and every page it reads stays in the process's
resident memory until the file is closed: loading a float32 model file to hold it in bfloat16
costs the file's size *plus* the bfloat16 model. Reading each tensor with a plain ``readinto``
into its own buffer and casting it at once keeps the peak at the cast model plus one tensor,
which is what lets the full cascade run in about 2 GB.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
``n``, ``n`` bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` and an
optional ``"__metadata__"`` of strings), then the data. These files may come from anyone, so
everything in the header is checked against the file before a byte of data is read, as
safetensors itself does: only regular files are opened (a FIFO or a device would block or never
end); the header is a flat JSON object of at most :data:`MAX_HEADER_BYTES`; every shape is
bounded (:data:`MAX_RANK`, :data:`MAX_TENSOR_BYTES`); the tensors' byte ranges are in order,
never overlap and cover the data exactly (an aliased range would let a small file expand into
any amount of memory). Every fault raises ``ValueError`` with one line naming the file.

:func:`write_tensors` writes the same bytes for the same tensors and metadata, whatever the
order of the dicts and whichever process writes them (``safetensors.save_file`` orders the
metadata differently from one process to the next).

Imports: nothing from glidekit (this is a bottom-layer utility).
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: Largest header accepted. The format allows 100 MB; a GLIDE model's header is under 100 KB
#: and the largest glidekit writes (a model with its vocabulary) under 1 MB, and parsing a
#: hostile 100 MB header into Python objects would cost gigabytes.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Most dimensions a tensor may have.
MAX_RANK = 16
#: Most bytes a tensor's shape may describe, counting a zero dimension as one: no file holds
#: more, and torch's 64-bit sizes and strides overflow beyond it.
MAX_TENSOR_BYTES = 1 << 48
_METADATA = "__metadata__"
_ALIGN = 8  # the header is padded with spaces so the data starts 8-byte aligned


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: dtype, shape, and its byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A parsed, validated header.

    ``tensors``: the tensors in data order (by byte offset); ``metadata``: the string metadata;
    ``data_start``: byte offset of the data section; ``file_size``: the file's size in bytes
    when the header was read.
    """

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int

    @property
    def layout(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of every tensor."""
        return {name: entry.shape for name, entry in self.tensors.items()}


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for unbuffered binary reading if it is a regular file.

    FIFOs, sockets, devices and folders are refused from ``stat`` before they are opened (a
    FIFO with no writer blocks ``open`` forever), and again from the opened descriptor, which
    is opened non-blocking in case one was swapped in between.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming ``path``: not a regular file, a symlink loop, unreadable.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: {_file_kind(mode)}, not a file; pass a .safetensors file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symlink loop, no permission, a name too long, ...
        raise ValueError(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: {_file_kind(mode)}, not a file; pass a .safetensors file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and check the header of ``path`` (no tensor data is read).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file and the fault (see the module docstring).
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(
                f"{path}: not a safetensors file (shorter than its 8-byte header size)"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise ValueError(
                f"{path}: header of {n} bytes is over the {MAX_HEADER_BYTES}-byte limit; "
                "not a model file"
            )
        if 8 + n > size:
            raise ValueError(f"{path}: header size {n} does not fit the file ({size} bytes)")
        text = f.read(n)
    header = _parse_json(path, text)
    metadata = header.pop(_METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: {_METADATA} must map strings to strings")
    data_len = size - 8 - n
    entries = [_entry(path, name, info, data_len) for name, info in header.items()]
    tensors = _check_coverage(path, dict(zip(header, entries, strict=True)), data_len)
    return Header(tensors, metadata, 8 + n, size)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the key {dup!r} appears twice")
    return dict(pairs)


def _parse_json(path: Path, text: bytes) -> dict[str, Any]:
    """The header as a dict; JSON nested too deep for the parser is refused, not a crash."""
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except RecursionError:
        raise ValueError(
            f"{path}: the header nests deeper than a safetensors header can (it is flat)"
        ) from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, a duplicate key
        raise ValueError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    return header


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, name: str, info: object, data_len: int) -> TensorEntry:
    """One tensor's description, checked on its own (see :func:`_check_coverage` for the rest)."""
    if not isinstance(info, dict):
        raise ValueError(f"{path}: tensor {name!r} has no description")
    dtype = DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape[:MAX_RANK])):
        raise ValueError(f"{path}: tensor {name!r} has a bad shape {str(shape)[:80]}")
    itemsize = dtype.itemsize
    if len(shape) > MAX_RANK or math.prod(max(d, 1) for d in shape) * itemsize > MAX_TENSOR_BYTES:
        raise ValueError(
            f"{path}: tensor {name!r} has an impossible shape {str(shape)[:80]} "
            f"(at most {MAX_RANK} dimensions and {MAX_TENSOR_BYTES} bytes)"
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise ValueError(f"{path}: tensor {name!r} lies outside the file ({str(offsets)[:80]})")
    nbytes = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(
            f"{path}: tensor {name!r} of shape {shape} needs {nbytes} bytes, the file gives it "
            f"{offsets[1] - offsets[0]}"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _check_coverage(
    path: Path, tensors: dict[str, TensorEntry], data_len: int
) -> dict[str, TensorEntry]:
    """The tensors in data order, after checking their byte ranges tile the data exactly: no
    overlap (two names reading the same bytes), no gap, nothing after the last tensor."""
    ordered = sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end))
    at, previous = 0, None
    for name, entry in ordered:
        if entry.begin < at:
            raise ValueError(
                f"{path}: tensor {name!r} overlaps tensor {previous!r} (bytes {entry.begin}-"
                f"{entry.end} of the data); every tensor must have bytes of its own"
            )
        if entry.begin > at:
            raise ValueError(
                f"{path}: {entry.begin - at} bytes of data before tensor {name!r} belong to no "
                "tensor"
            )
        at, previous = entry.end, name
    if at != data_len:
        raise ValueError(
            f"{path}: {data_len - at} bytes at the end of the data belong to no tensor"
        )
    return dict(ordered)


def iter_tensors(
    path: str | os.PathLike[str],
    dtypes: Mapping[str, torch.dtype] | None = None,
    header: Header | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in data order, each a fresh CPU tensor.

    A floating tensor named in ``dtypes`` is read into one reused scratch buffer and cast from
    there, so loading a file into a lower precision holds the result plus one tensor of the
    file, never the file. ``header``: from :func:`read_header` (read again if omitted).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file: a bad header, or a file that changed since its
            header was read (truncated, replaced).
    """
    if sys.byteorder != "little":
        raise ValueError("reading safetensors needs a little-endian machine")
    path = Path(path)
    header = header or read_header(path)
    dtypes = dtypes or {}
    scratch = torch.empty(0, dtype=torch.uint8)  # reused for every tensor that gets cast
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size != header.file_size:
            raise ValueError(
                f"{path}: the file has {size} bytes, its header was read from "
                f"{header.file_size} (truncated or replaced since)"
            )
        for name, entry in header.tensors.items():
            want = dtypes.get(name)
            cast = want is not None and want != entry.dtype and entry.dtype.is_floating_point
            nbytes = entry.end - entry.begin
            if cast:
                if scratch.numel() < nbytes:
                    scratch = torch.empty(nbytes, dtype=torch.uint8)
                raw = scratch[:nbytes]
            else:
                raw = torch.empty(nbytes, dtype=torch.uint8)
            f.seek(header.data_start + entry.begin)
            _read_exactly(f, raw, path, name)
            tensor = raw.view(entry.dtype).reshape(entry.shape)
            yield name, (tensor.to(want) if cast else tensor)


def _read_exactly(f: BinaryIO, buf: torch.Tensor, path: Path, name: str) -> None:
    view = memoryview(buf.numpy())
    got = 0
    while got < len(view):  # readinto may return less than asked for
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"{path}: tensor {name!r} ends early (file truncated)")
        got += n


def read_tensors(
    path: str | os.PathLike[str], dtypes: Mapping[str, torch.dtype] | None = None
) -> dict[str, torch.Tensor]:
    """All tensors of ``path`` as a dict (see :func:`iter_tensors` for ``dtypes`` and errors)."""
    return dict(iter_tensors(path, dtypes))


def write_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``tensors`` (any device; copied to the CPU one at a time) as a safetensors file.

    ``dtype``: store the floating tensors in this dtype, each cast as it is written (no copy of
    the whole set is made). Tensors sharing storage (tied weights) are each written from their
    own bytes.

    Deterministic: the data is ordered by element size (largest first, so every tensor is
    aligned to it), then name; the metadata by key; the JSON has no spaces. The same tensors
    and metadata give the same bytes whatever the dicts' order. Not atomic: write to a temporary
    path and rename (``glidekit.fileio.atomic_path``) when replacing a file.

    Raises:
        ValueError: a dtype safetensors cannot hold, a non-string name or metadata entry.
    """
    if sys.byteorder != "little":
        raise ValueError("writing safetensors needs a little-endian machine")
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path}: metadata must map strings to strings")
    stored: dict[str, torch.dtype] = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == _METADATA:
            raise ValueError(f"{path}: {name!r} cannot name a tensor")
        cast = dtype is not None and tensor.is_floating_point()
        stored[name] = dtype if cast else tensor.dtype  # type: ignore[assignment]
        if stored[name] not in _DTYPE_NAMES:
            raise ValueError(f"{path}: tensor {name!r} is {stored[name]}, which safetensors lacks")
    names = sorted(tensors, key=lambda k: (-stored[k].itemsize, k))
    header: dict[str, Any] = {_METADATA: dict(sorted(meta.items()))} if meta else {}
    at = 0
    for name in names:
        nbytes = tensors[name].numel() * stored[name].itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[stored[name]],
            "shape": list(tensors[name].shape),
            "data_offsets": [at, at + nbytes],
        }
        at += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            t = tensors[name].detach().to("cpu", stored[name]).contiguous()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy())


__all__ = [
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSOR_BYTES",
    "Header",
    "TensorEntry",
    "iter_tensors",
    "open_regular",
    "read_header",
    "read_tensors",
    "write_tensors",
]
