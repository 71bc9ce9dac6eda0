"""In-place edits of a valid GGUF that keep its layout: how bench/fuzz.py makes mutants, and how the tests rebuild
the inputs it found from a valid file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..gguf_meta import open_reader


def offset_in_file(reader, part: np.ndarray) -> int:
    """Where one decoded part of a gguf.GGUFReader field (a count, a name, a value) starts in the file."""
    return part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]


def with_metadata_value(src: Path, dst: Path, key: str, value) -> None:
    """A copy of src whose scalar metadata `key` holds value (stored in the key's own type)."""
    reader = open_reader(src)
    _write_part(src, dst, reader, reader.fields[key].parts[reader.fields[key].data[0]], value)


def with_metadata_type(src: Path, dst: Path, key: str, type_id: int) -> None:
    """A copy of src whose metadata `key` claims the GGUF value type type_id (parts: length, name, type, value)."""
    reader = open_reader(src)
    _write_part(src, dst, reader, reader.fields[key].parts[2], type_id)


def with_tensor_type(src: Path, dst: Path, name: str, type_id: int) -> None:
    """A copy of src whose tensor `name` claims the ggml type type_id (its info: name, n_dims, dims, type, offset)."""
    reader = open_reader(src)
    tensor = next(t for t in reader.tensors if t.name == name)
    _write_part(src, dst, reader, tensor.field.parts[-2], type_id)


def _write_part(src: Path, dst: Path, reader, part: np.ndarray, value) -> None:
    raw = np.array([value], part.dtype).tobytes()
    data = bytearray(src.read_bytes())
    offset = offset_in_file(reader, part)
    data[offset:offset + len(raw)] = raw
    dst.write_bytes(data)
