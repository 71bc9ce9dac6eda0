"""Where pyorthrus keeps its files (the cache directory), and output paths checked before any work: a run that ends
in "cannot write" after minutes loses its results."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PyorthrusError


def check_writable(path: Path | str) -> None:
    """Refuse (PyorthrusError naming the path) an output whose directory is missing, not a directory, or refuses new
    files. A missing directory is not created: a typo must not make directories (at the filesystem root, say)."""
    path = Path(path)
    directory = path.parent
    if directory.exists() and not directory.is_dir():
        raise PyorthrusError(f"{path}: {directory} is not a directory")
    if not directory.is_dir():
        raise PyorthrusError(f"{path}: directory {directory} does not exist")
    # Permissions alone do not tell (root may write anywhere by them, /proc takes no files at all): create one.
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise PyorthrusError(f"{path}: cannot create files in {directory} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def default_cache_dir() -> Path:
    if os.environ.get("PYORTHRUS_CACHE"):
        return Path(os.environ["PYORTHRUS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyorthrus"
