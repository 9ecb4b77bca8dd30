"""NumPy .npy/.npz and safetensors artifacts, compared array by array without loading either
file whole: both are streamed side by side in blocks.

Both formats are read by their headers alone: an .npy header through numpy's own literal
reader (never `allow_pickle`: an object array is named, not loaded), a safetensors header as
JSON whose offsets are checked against the file before any data is read.
"""
from __future__ import annotations

import io
import json
import math
import mmap
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from orchestrator.compare.artifacts.figures import CHUNK_ELEMENTS, Figures
from orchestrator.compare.artifacts.findings import (
    PART_MISSING_A, PART_MISSING_B, PART_SHAPE, PART_UNREADABLE, CannotCompare,
    ContentFindings, PartFigures, part_from_figures, parts_detail, verdict_of_parts)
from orchestrator.compare.artifacts.policy import ArtifactPolicy

BLOCK_BYTES = 8 << 20            # read per step from each file
MAX_NPZ_MEMBERS = 10_000
MAX_HEADER_BYTES = 100 << 20     # a safetensors header; real ones are kilobytes
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


# --- one array, streamed --------------------------------------------------------------------

class _Array:
    """An array's declaration and a reader positioned at its first data byte."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | str, fortran: bool,
                 stream: BinaryIO, *, bfloat16: bool = False):
        self.shape, self.fortran, self.stream = shape, fortran, stream
        self.bfloat16 = bfloat16
        self.dtype = np.dtype("<u2") if bfloat16 else np.dtype(dtype)
        self.count = math.prod(shape)

    @property
    def dtype_text(self) -> str:
        return "bfloat16" if self.bfloat16 else self.dtype.str

    @property
    def layout(self) -> str:
        return "F" if self.fortran and len(self.shape) > 1 else "C"


def _figures_of(name: str, a: _Array, b: _Array, policy: ArtifactPolicy) -> PartFigures:
    shapes = dict(shape_a="x".join(map(str, a.shape)) or "scalar",
                  shape_b="x".join(map(str, b.shape)) or "scalar",
                  dtype_a=a.dtype_text, dtype_b=b.dtype_text)
    if a.shape != b.shape or a.dtype_text != b.dtype_text or a.layout != b.layout:
        return PartFigures(name, PART_SHAPE, **shapes)
    if a.dtype.hasobject or a.dtype.kind not in "biufc":
        return PartFigures(name, PART_UNREADABLE, **shapes)
    figures = Figures(policy.abs, policy.rel)
    for raw_a, raw_b in zip(_blocks(a), _blocks(b)):
        if raw_a == raw_b:
            figures.elements += len(raw_a) // a.dtype.itemsize
            continue
        block_a, block_b = np.frombuffer(raw_a, a.dtype), np.frombuffer(raw_b, b.dtype)
        if a.bfloat16:
            block_a, block_b = _widen_bfloat16(block_a), _widen_bfloat16(block_b)
        for start in range(0, block_a.size, CHUNK_ELEMENTS):
            end = start + CHUNK_ELEMENTS
            figures.add(block_a[start:end], block_b[start:end])
    found = {"shape_a": a.shape, "shape_b": b.shape, "dtype_a": shapes["dtype_a"],
             "dtype_b": shapes["dtype_b"], **figures.as_dict()}
    return part_from_figures(name, found, tolerant=policy.abs is not None or policy.rel is not None)


def _blocks(array: _Array) -> Iterator[bytes]:
    per_block = max(1, BLOCK_BYTES // max(1, array.dtype.itemsize))
    left = array.count
    while left > 0:
        take = min(per_block, left)
        yield _read_exactly(array.stream, take * array.dtype.itemsize)
        left -= take


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise CannotCompare("an array holds fewer bytes than its header declares (a truncated "
                            "or forged file)")
    return data


def _widen_bfloat16(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


# --- .npy and .npz --------------------------------------------------------------------------

def _npy_array(stream: BinaryIO, size: int, where: str) -> _Array:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise CannotCompare(f"{where} is an .npy file of version {version}, which reprun "
                                "does not read")
    except (ValueError, SyntaxError, TypeError, OSError, EOFError) as exc:
        raise CannotCompare(f"{where} is not a readable .npy file ({exc})") from None
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise CannotCompare(f"{where} declares the shape {shape!r}")
    array = _Array(tuple(shape), dtype, fortran, stream)
    if not array.dtype.hasobject and array.count * array.dtype.itemsize > size:
        raise CannotCompare(f"{where} declares {array.count:,} elements of {array.dtype}, more "
                            f"than its {size:,} bytes hold")
    return array


def compare_npy(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        a = _npy_array(fa, path_a.stat().st_size, "run a's file")
        b = _npy_array(fb, path_b.stat().st_size, "run b's file")
        parts = [_figures_of("array", a, b, policy)]
    return ContentFindings("numpy", verdict_of_parts(parts), parts_detail(parts, "array"),
                           tuple(parts))


def _npz_members(archive: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_NPZ_MEMBERS:
        raise CannotCompare(f"{where} holds {len(infos):,} members, more than the "
                            f"{MAX_NPZ_MEMBERS:,} an .npz comparison reads")
    return {info.filename.removesuffix(".npy"): info for info in infos if not info.is_dir()}


def compare_npz(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    try:
        with zipfile.ZipFile(path_a) as za, zipfile.ZipFile(path_b) as zb:
            members_a = _npz_members(za, "run a's file")
            members_b = _npz_members(zb, "run b's file")
            parts = []
            for name in sorted(set(members_a) | set(members_b)):
                if name not in members_a or name not in members_b:
                    parts.append(PartFigures(name, PART_MISSING_A if name not in members_a
                                             else PART_MISSING_B))
                    continue
                info_a, info_b = members_a[name], members_b[name]
                with za.open(info_a) as sa, zb.open(info_b) as sb:
                    a = _npy_array(sa, info_a.file_size, f"{name} of run a")
                    b = _npy_array(sb, info_b.file_size, f"{name} of run b")
                    parts.append(_figures_of(name, a, b, policy))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            OSError) as exc:
        # zipfile checks each member's CRC at its end, which catches forged data too.
        raise CannotCompare(f"the .npz archive cannot be read ({exc})") from None
    return ContentFindings("numpy", verdict_of_parts(parts), parts_detail(parts, "array"),
                           tuple(parts))


# --- safetensors ----------------------------------------------------------------------------

def _safetensors_header(data: mmap.mmap | bytes, where: str) -> tuple[dict, int]:
    if len(data) < 8:
        raise CannotCompare(f"{where} is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CannotCompare(f"{where} declares a header of {length:,} bytes, more than the file "
                            "holds (or than reprun reads)")
    try:
        header = json.loads(bytes(data[8:8 + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CannotCompare(f"{where} has a header that is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CannotCompare(f"{where} has a header that is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def _safetensors_array(name: str, entry: object, data: mmap.mmap | bytes, start: int,
                       where: str) -> _Array:
    if not isinstance(entry, dict):
        raise CannotCompare(f"{where}: the entry of tensor {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CannotCompare(f"{where}: tensor {name!r} has the dtype {dtype!r}, which reprun "
                            "does not read")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise CannotCompare(f"{where}: tensor {name!r} declares the shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1]
            and start + offsets[1] <= len(data)):
        raise CannotCompare(f"{where}: tensor {name!r} has data offsets {offsets!r} outside the "
                            f"file's {len(data) - start:,} data bytes")
    bfloat16 = dtype == "BF16"
    array = _Array(tuple(shape), "<u2" if bfloat16 else SAFETENSORS_DTYPES[dtype], False,
                   io.BytesIO(b""), bfloat16=bfloat16)
    if array.count * array.dtype.itemsize != offsets[1] - offsets[0]:
        raise CannotCompare(f"{where}: tensor {name!r} declares {array.count:,} elements of "
                            f"{dtype} in {offsets[1] - offsets[0]:,} bytes")
    array.stream = _Window(data, start + offsets[0], start + offsets[1])
    return array


class _Window:
    """Reads one tensor's bytes out of a mapped file, as a stream would."""

    def __init__(self, data: mmap.mmap | bytes, begin: int, end: int):
        self.data, self.position, self.end = data, begin, end

    def read(self, size: int) -> bytes:
        chunk = self.data[self.position:min(self.end, self.position + size)]
        self.position += len(chunk)
        return chunk


def _mapped(handle: BinaryIO) -> mmap.mmap | bytes:
    try:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:      # an empty file cannot be mapped
        return b""


def compare_safetensors(path_a: Path, path_b: Path, policy: ArtifactPolicy) -> ContentFindings:
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        data_a, data_b = _mapped(fa), _mapped(fb)
        header_a, start_a = _safetensors_header(data_a, "run a's file")
        header_b, start_b = _safetensors_header(data_b, "run b's file")
        parts = []
        for name in sorted(set(header_a) | set(header_b)):
            if name not in header_a or name not in header_b:
                parts.append(PartFigures(name, PART_MISSING_A if name not in header_a
                                         else PART_MISSING_B))
                continue
            a = _safetensors_array(name, header_a[name], data_a, start_a, "run a's file")
            b = _safetensors_array(name, header_b[name], data_b, start_b, "run b's file")
            parts.append(_figures_of(name, a, b, policy))
    return ContentFindings("safetensors", verdict_of_parts(parts), parts_detail(parts, "tensor"),
                           tuple(parts))
