"""Fields of llama.cpp's model and context parameters that llama_cpp.Llama does not expose (use_extra_bufts for
strict loads, n_rs_seq for models with recurrent layers), set for the loads of one thread.

llama_cpp.Llama takes its parameters from llama_model_default_params() and llama_context_default_params() and then
sets the fields it knows. Each of the two is wrapped once per process: inside `overridden(...)` a call on this
thread returns llama.cpp's defaults with the given fields changed; every other call returns them unchanged, so a
load on another thread at the same moment is not affected."""
from __future__ import annotations

import contextlib
import threading

_fields = threading.local()  # function name -> {field: value} for this thread's calls
_install_lock = threading.Lock()
DEFAULT_PARAMS = ("llama_model_default_params", "llama_context_default_params")


def _install(lowlevel, name: str) -> None:
    with _install_lock:
        original = getattr(lowlevel, name)
        if getattr(original, "pyorthrus_hook", False):
            return

        def default_params():
            params = original()
            for field, value in getattr(_fields, "by_function", {}).get(name, {}).items():
                setattr(params, field, value)
            return params

        default_params.pyorthrus_hook = True
        setattr(lowlevel, name, default_params)


@contextlib.contextmanager
def overridden(model: dict | None = None, context: dict | None = None):
    """While active on this thread, llama_cpp.Llama loads with these model / context parameter fields."""
    import llama_cpp.llama_cpp as lowlevel

    for name in DEFAULT_PARAMS:
        _install(lowlevel, name)
    before = getattr(_fields, "by_function", {})
    _fields.by_function = {name: {**before.get(name, {}), **(fields or {})}
                           for name, fields in zip(DEFAULT_PARAMS, (model, context))}
    try:
        yield
    finally:
        _fields.by_function = before
