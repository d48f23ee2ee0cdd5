"""Reading ``.safetensors`` files one tensor at a time, cast as they are read.

``safetensors`` memory-maps the whole file, and every page it reads stays in the process's
resident memory until the file is closed: loading a float32 model file to hold it in bfloat16
costs the file's size *plus* the bfloat16 model. Reading each tensor with a plain ``readinto``
into its own buffer and casting it at once keeps the peak at the cast model plus one tensor,
which is what lets the full cascade run in about 2 GB.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
``n``, ``n`` bytes of JSON (``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` and an
optional ``"__metadata__"`` of strings), then the data. Everything in the header is checked
against the file before a byte of data is read: these files may come from anyone.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: dtype, shape, and its byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A parsed, validated header: the tensors in file order, the metadata, where data starts."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and check the header of ``path``; raises ValueError naming the file and the fault."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(
                f"{path}: not a safetensors file (shorter than its 8-byte header size)"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{path}: header size {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        tensors[name] = _entry(path, name, info, data_len)
    return Header(tensors, metadata, 8 + n)


def _entry(path: Path, name: str, info: object, data_len: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise ValueError(f"{path}: tensor {name!r} has no description")
    dtype = DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise ValueError(f"{path}: tensor {name!r} lies outside the file ({offsets!r})")
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(
            f"{path}: tensor {name!r} of shape {shape} needs {nbytes} bytes, the file gives it "
            f"{offsets[1] - offsets[0]}"
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def iter_tensors(
    path: str | os.PathLike[str],
    dtypes: Mapping[str, torch.dtype] | None = None,
    header: Header | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` in file order, each a fresh CPU tensor. A floating tensor named in
    ``dtypes`` is read into one reused scratch buffer and cast from there, so loading a file
    into a lower precision holds the result plus one tensor of the file, never the file."""
    if sys.byteorder != "little":
        raise ValueError("reading safetensors needs a little-endian machine")
    path = Path(path)
    header = header or read_header(path)
    dtypes = dtypes or {}
    scratch = torch.empty(0, dtype=torch.uint8)  # reused for every tensor that gets cast
    with open(path, "rb", buffering=0) as f:
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
    """All tensors of ``path`` as a dict (see :func:`iter_tensors` for ``dtypes``)."""
    return dict(iter_tensors(path, dtypes))
