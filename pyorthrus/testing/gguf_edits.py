"""In-place edits of a valid GGUF that keep its layout: how bench/fuzz.py makes mutants, and how the tests rebuild
the inputs it found from a valid file."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def offset_in_file(reader, part: np.ndarray) -> int:
    """Where one decoded part of a gguf.GGUFReader field (a count, a name, a value) starts in the file."""
    return part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]


def with_metadata_value(src: Path, dst: Path, key: str, value) -> None:
    """A copy of src whose scalar metadata `key` holds value (stored in the key's own type)."""
    import gguf

    reader = gguf.GGUFReader(src)
    part = reader.fields[key].parts[reader.fields[key].data[0]]
    raw = np.array([value], part.dtype).tobytes()
    data = bytearray(src.read_bytes())
    offset = offset_in_file(reader, part)
    data[offset:offset + len(raw)] = raw
    dst.write_bytes(data)
