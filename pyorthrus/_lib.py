"""ctypes bindings for the Orthrus C API added by the pyorthrus patch series (patches/*.patch): the
llama_orthrus_* loop, llama_adapter_orthrus_* adapters, llama_set_adapter_orthrus, llama_model_has_orthrus, ...

A thin mirror of include/llama.h in llama-cpp-python's style: the functions are bound from the very shared
library llama-cpp-python loaded (``llama_cpp.llama_cpp._lib``), never a second copy of llama.cpp. No logic lives
here; ``pyorthrus.Orthrus`` builds on it.

Cache convention of ``llama_orthrus_cycle`` (see llama.h): the newest committed token is known but not cached,
so ``llama_memory_seq_pos_max(mem, seq) == committed tokens (prompt included) - 2`` between cycles.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Optional

from .errors import PyorthrusError

try:
    import llama_cpp.llama_cpp as _llama_cpp
    from llama_cpp._ctypes_extensions import ctypes_function_for_shared_library
except Exception as exc:  # pragma: no cover - depends on the installation
    raise PyorthrusError(
        f"cannot load llama-cpp-python ({exc}); install it with `pyorthrus build`"
    ) from exc

if TYPE_CHECKING:
    from llama_cpp._ctypes_extensions import CtypesArray, CtypesPointerOrRef

# the API version this module mirrors; llama_orthrus_api_version() of the library must equal it
LLAMA_ORTHRUS_API_VERSION = 8

_lib = _llama_cpp._lib

if not hasattr(_lib, "llama_orthrus_api_version"):
    raise PyorthrusError(
        f"the llama.cpp library loaded by llama-cpp-python ({getattr(_lib, '_name', '?')}) "
        "was built without the pyorthrus patches; run `pyorthrus build`"
    )

ctypes_function = ctypes_function_for_shared_library(_lib)

llama_token = _llama_cpp.llama_token
llama_token_p = _llama_cpp.llama_token_p
llama_seq_id = _llama_cpp.llama_seq_id
llama_model_p_ctypes = _llama_cpp.llama_model_p_ctypes
llama_context_p_ctypes = _llama_cpp.llama_context_p_ctypes

LLAMA_TOKEN_NULL = -1

# struct llama_adapter_orthrus; (opaque)
llama_adapter_orthrus_p = ctypes.c_void_p
llama_adapter_orthrus_p_ctypes = ctypes.c_void_p


# int32_t llama_orthrus_api_version(void);
@ctypes_function("llama_orthrus_api_version", [], ctypes.c_int32)
def llama_orthrus_api_version() -> int:
    """Version of the Orthrus C API of the loaded library."""
    ...


_found = llama_orthrus_api_version()
if _found != LLAMA_ORTHRUS_API_VERSION:
    raise PyorthrusError(
        f"the llama.cpp library carries Orthrus API version {_found}, this pyorthrus expects "
        f"{LLAMA_ORTHRUS_API_VERSION}; run `pyorthrus build` to rebuild it"
    )


# struct llama_orthrus_params {
#     int32_t  block_size;     // K: 2 ... trained K; 0 = trained K
#     int32_t  verify_len;     // 2 ... K; 0 = K
#     float    temperature;    // <= 0: greedy
#     int32_t  top_k;          // <= 0: off
#     float    top_p;          // >= 1: off
#     float    min_p;          // <= 0: off
#     uint32_t seed;
#     llama_token mask_token;  // LLAMA_TOKEN_NULL: from the adapter / vocab
#     const llama_token * stop_tokens;
#     int32_t  n_stop_tokens;
#     bool     fused;          // verify block n and draft block n+1 in one pass
#     int32_t  tree_nodes;     // 0: chain; >= 1: tree verify of this many nodes besides the root
#     int32_t  tree_width;     // candidates per position; 0 = 8
#     int32_t  tree_depth;     // longest path; 0 = verify_len - 1
#     bool     tree_relayout;  // re-decode an accepted off-chain path so the cache equals AR bit for bit
# };
class llama_orthrus_params(ctypes.Structure):
    _fields_ = [
        ("block_size", ctypes.c_int32),
        ("verify_len", ctypes.c_int32),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("seed", ctypes.c_uint32),
        ("mask_token", llama_token),
        ("stop_tokens", llama_token_p),
        ("n_stop_tokens", ctypes.c_int32),
        ("fused", ctypes.c_bool),
        ("tree_nodes", ctypes.c_int32),
        ("tree_width", ctypes.c_int32),
        ("tree_depth", ctypes.c_int32),
        ("tree_relayout", ctypes.c_bool),
    ]

    if TYPE_CHECKING:
        block_size: int
        verify_len: int
        temperature: float
        top_k: int
        top_p: float
        min_p: float
        seed: int
        mask_token: int
        stop_tokens: CtypesArray[ctypes.c_int32]
        n_stop_tokens: int
        fused: bool
        tree_nodes: int
        tree_width: int
        tree_depth: int
        tree_relayout: bool


# struct llama_orthrus_stats {
#     int32_t n_drafted; int32_t n_accepted; int32_t n_committed;
#     int64_t t_draft_us; int64_t t_verify_us; bool stopped;
#     int32_t n_passes; bool carried; bool fused;
#     int32_t n_tree_nodes; int32_t n_offchain; int32_t n_redecoded; int64_t t_redecode_us;
# };
class llama_orthrus_stats(ctypes.Structure):
    _fields_ = [
        ("n_drafted", ctypes.c_int32),
        ("n_accepted", ctypes.c_int32),
        ("n_committed", ctypes.c_int32),
        ("t_draft_us", ctypes.c_int64),
        ("t_verify_us", ctypes.c_int64),
        ("stopped", ctypes.c_bool),
        ("n_passes", ctypes.c_int32),
        ("carried", ctypes.c_bool),
        ("fused", ctypes.c_bool),
        ("n_tree_nodes", ctypes.c_int32),
        ("n_offchain", ctypes.c_int32),
        ("n_redecoded", ctypes.c_int32),
        ("t_redecode_us", ctypes.c_int64),
    ]

    if TYPE_CHECKING:
        n_drafted: int
        n_accepted: int
        n_committed: int
        t_draft_us: int
        t_verify_us: int
        stopped: bool
        n_passes: int
        carried: bool
        fused: bool
        n_tree_nodes: int
        n_offchain: int
        n_redecoded: int
        t_redecode_us: int


llama_orthrus_params_p = ctypes.POINTER(llama_orthrus_params)
llama_orthrus_stats_p = ctypes.POINTER(llama_orthrus_stats)


# bool llama_model_has_orthrus(const struct llama_model * model);
@ctypes_function("llama_model_has_orthrus", [llama_model_p_ctypes], ctypes.c_bool)
def llama_model_has_orthrus(model: Optional[int], /) -> bool:
    """True if every layer of the model carries diff attention tensors (merged file)."""
    ...


# int32_t llama_model_orthrus_block_size(const struct llama_model * model);
@ctypes_function("llama_model_orthrus_block_size", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_orthrus_block_size(model: Optional[int], /) -> int:
    """{arch}.diffusion.block_size of a merged file, 0 if absent."""
    ...


# const char * llama_orthrus_last_error(void);
@ctypes_function("llama_orthrus_last_error", [], ctypes.c_char_p)
def llama_orthrus_last_error() -> bytes:
    """One-line message of the last failed llama_orthrus_* call on this thread (b"" if none)."""
    ...


# struct llama_adapter_orthrus * llama_adapter_orthrus_init(struct llama_model * model, const char * path);
@ctypes_function(
    "llama_adapter_orthrus_init",
    [llama_model_p_ctypes, ctypes.c_char_p],
    llama_adapter_orthrus_p_ctypes,
)
def llama_adapter_orthrus_init(model: Optional[int], path: bytes, /) -> Optional[int]:
    """Load an adapter-only Orthrus GGUF onto a loaded model; None on error (see llama_orthrus_last_error)."""
    ...


# void llama_adapter_orthrus_free(struct llama_adapter_orthrus * adapter);
@ctypes_function("llama_adapter_orthrus_free", [llama_adapter_orthrus_p_ctypes], None)
def llama_adapter_orthrus_free(adapter: Optional[int], /) -> None:
    """Free an adapter now (else its model frees it); every context it is attached to lets go of it."""
    ...


# int32_t llama_adapter_orthrus_block_size(const struct llama_adapter_orthrus * adapter);
@ctypes_function("llama_adapter_orthrus_block_size", [llama_adapter_orthrus_p_ctypes], ctypes.c_int32)
def llama_adapter_orthrus_block_size(adapter: Optional[int], /) -> int:
    ...


# llama_token llama_adapter_orthrus_mask_token(const struct llama_adapter_orthrus * adapter);
@ctypes_function("llama_adapter_orthrus_mask_token", [llama_adapter_orthrus_p_ctypes], llama_token)
def llama_adapter_orthrus_mask_token(adapter: Optional[int], /) -> int:
    ...


# int32_t llama_set_adapter_orthrus(struct llama_context * ctx, struct llama_adapter_orthrus * adapter);
@ctypes_function(
    "llama_set_adapter_orthrus",
    [llama_context_p_ctypes, llama_adapter_orthrus_p_ctypes],
    ctypes.c_int32,
)
def llama_set_adapter_orthrus(ctx: Optional[int], adapter: Optional[int], /) -> int:
    """Attach (None: detach) an adapter; 0 or -1."""
    ...


# struct llama_adapter_orthrus * llama_get_adapter_orthrus(const struct llama_context * ctx);
@ctypes_function("llama_get_adapter_orthrus", [llama_context_p_ctypes], llama_adapter_orthrus_p_ctypes)
def llama_get_adapter_orthrus(ctx: Optional[int], /) -> Optional[int]:
    ...


# int32_t llama_orthrus_set_diffusion(struct llama_context * ctx, bool diffusion);
@ctypes_function("llama_orthrus_set_diffusion", [llama_context_p_ctypes, ctypes.c_bool], ctypes.c_int32)
def llama_orthrus_set_diffusion(ctx: Optional[int], diffusion: bool, /) -> int:
    """Switch the next decodes to the diffusion view (True) or back to the AR view; 0 or -1."""
    ...


# bool llama_orthrus_get_diffusion(const struct llama_context * ctx);
@ctypes_function("llama_orthrus_get_diffusion", [llama_context_p_ctypes], ctypes.c_bool)
def llama_orthrus_get_diffusion(ctx: Optional[int], /) -> bool:
    ...


# struct llama_orthrus_params llama_orthrus_default_params(void);
@ctypes_function("llama_orthrus_default_params", [], llama_orthrus_params)
def llama_orthrus_default_params() -> llama_orthrus_params:
    ...


# int32_t llama_orthrus_cycle(struct llama_context * ctx, llama_seq_id seq_id, llama_token last,
#         const struct llama_orthrus_params * params, llama_token * out, int32_t n_out_max,
#         struct llama_orthrus_stats * stats);
@ctypes_function(
    "llama_orthrus_cycle",
    [
        llama_context_p_ctypes,
        llama_seq_id,
        llama_token,
        llama_orthrus_params_p,
        llama_token_p,
        ctypes.c_int32,
        llama_orthrus_stats_p,
    ],
    ctypes.c_int32,
)
def llama_orthrus_cycle(
    ctx: Optional[int],
    seq_id: int,
    last: int,
    params: "CtypesPointerOrRef[llama_orthrus_params]",
    out: "CtypesArray[ctypes.c_int32]",
    n_out_max: int,
    stats: "Optional[CtypesPointerOrRef[llama_orthrus_stats]]",
    /,
) -> int:
    """One draft/verify/commit cycle; number of committed tokens written to out (>= 1), < 0 on error."""
    ...


# int32_t llama_orthrus_step(struct llama_context * ctx, llama_seq_id seq_id, llama_token last,
#         const struct llama_orthrus_params * params, llama_token * out, struct llama_orthrus_stats * stats);
@ctypes_function(
    "llama_orthrus_step",
    [llama_context_p_ctypes, llama_seq_id, llama_token, llama_orthrus_params_p, llama_token_p, llama_orthrus_stats_p],
    ctypes.c_int32,
)
def llama_orthrus_step(
    ctx: Optional[int],
    seq_id: int,
    last: int,
    params: "CtypesPointerOrRef[llama_orthrus_params]",
    out: "CtypesArray[ctypes.c_int32]",
    stats: "Optional[CtypesPointerOrRef[llama_orthrus_stats]]",
    /,
) -> int:
    """One AR step under the cycle's cache convention: the next token in out[0]; 1, or < 0 on error."""
    ...


# void llama_orthrus_set_argmax(struct llama_context * ctx, bool argmax);
@ctypes_function("llama_orthrus_set_argmax", [llama_context_p_ctypes, ctypes.c_bool], None)
def llama_orthrus_set_argmax(ctx: Optional[int], argmax: bool, /) -> None:
    """Argmax mode: decodes return each output row's argmax (computed on the backend) instead of its logits."""
    ...


# llama_token llama_orthrus_get_argmax_ith(struct llama_context * ctx, int32_t i);
@ctypes_function("llama_orthrus_get_argmax_ith", [llama_context_p_ctypes, ctypes.c_int32], llama_token)
def llama_orthrus_get_argmax_ith(ctx: Optional[int], i: int, /) -> int:
    """Argmax of output row i of the last decode in argmax mode; LLAMA_TOKEN_NULL (-1) if none."""
    ...


# int32_t llama_orthrus_set_fused(struct llama_context * ctx, int32_t n_verify);
@ctypes_function("llama_orthrus_set_fused", [llama_context_p_ctypes, ctypes.c_int32], ctypes.c_int32)
def llama_orthrus_set_fused(ctx: Optional[int], n_verify: int, /) -> int:
    """Fused pass for the next decodes: rows [0, n_verify) verify in the AR view, the rest draft in the diffusion
    view (0: off); 0, or -1 on error."""
    ...


# int32_t llama_orthrus_set_tree(struct llama_context * ctx, const int32_t * parent, int32_t n);
@ctypes_function(
    "llama_orthrus_set_tree",
    [llama_context_p_ctypes, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32],
    ctypes.c_int32,
)
def llama_orthrus_set_tree(ctx: Optional[int], parent: "Optional[CtypesArray[ctypes.c_int32]]", n: int, /) -> int:
    """Tree mask for the next decodes (n tokens, parents in topological order; n = 0: off). 0, or -1."""
    ...


def last_error() -> str:
    """llama_orthrus_last_error() as str."""
    msg = llama_orthrus_last_error()
    return msg.decode("utf-8", "replace") if msg else ""
