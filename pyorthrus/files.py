"""Writing files so that a failure never leaves a partial one: write beside the target, then rename over it."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, writer) -> None:
    """writer(tmp) writes the whole file to tmp, a sibling of path; it then replaces path in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
