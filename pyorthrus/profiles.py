"""block_size="auto"'s pass-cost profile, measured once per (device, model, build, settings) and kept on disk.

Measuring takes seconds (9 s for SmolLM2 on 2 cores), more than a short answer: a one-shot `generate -k auto` spent
most of its time on it. The costs depend on the machine, the model and adapter files, the llama.cpp build and the
settings that shape a pass (threads, offloaded layers, flash attention, strict kernels, context size), so those
name the record; any of them changing measures again, and `reprofile` always does.
"""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from .files import atomic_write
from .llama_source import cpu_features
from .paths import default_cache_dir

FORMAT = 1  # of the record; a record of another format is measured again


def _file_identity(path) -> list | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _library_identity() -> list:
    """The llama.cpp library llama_cpp loads: a rebuild changes its size or time."""
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*llama*"))
    return [_file_identity(lib) for lib in libs]


def profile_key(model, sizes) -> str:
    """The record name of `model`'s (an Orthrus) profile over `sizes`."""
    parts = {"format": FORMAT, "machine": [platform.node(), platform.machine(), cpu_features()],
             "library": _library_identity(), "model": _file_identity(model.model_path),
             "adapter": _file_identity(model.adapter_path), "settings": model.pass_settings,
             "sizes": sorted(sizes)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def profile_dir() -> Path:
    return default_cache_dir() / "profiles"


def pass_costs(model, sizes, reprofile: bool = False):
    """The PassCosts of `model` over `sizes`: read from the profile cache, or measured (and then kept there).
    A cache that cannot be written costs a measurement next time, nothing else."""
    from .pass_costs import PassCosts, measure_pass_costs

    path = profile_dir() / f"{profile_key(model, sizes)}.json"
    if not reprofile and path.is_file():
        try:
            return PassCosts.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged record: measure again and replace it
    costs = measure_pass_costs(model, sizes, statistic=min)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(costs.as_dict(), indent=1) + "\n"))
    except OSError:
        pass
    return costs
