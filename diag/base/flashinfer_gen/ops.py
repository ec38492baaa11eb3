"""torch.library custom ops for the calls a model makes per layer (the wrappers' run() and the
cache append), so that torch.compile(fullgraph=True) sees each as one opaque op with a fake
(meta) implementation instead of tracing into ctypes and breaking the graph.

Eager calls do not go through the ops (no dispatcher cost per layer); under torch.compile the
wrappers' run() and append_paged_kv_cache() switch to them. The ops are for inference: they have
no backward, so compile them under torch.no_grad() / torch.inference_mode(), as serving does. A compiled graph names its wrapper
by an id (the plan stays on the wrapper, host side, as FlashInfer's does): plan() as usual
between steps, and the compiled code runs the current plan."""
from __future__ import annotations

import itertools
import weakref

import torch

_WRAPPERS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_ids = itertools.count(1)


def register(wrapper) -> int:
    """An id by which compiled code finds `wrapper` (held weakly)."""
    wrapper_id = next(_ids)
    _WRAPPERS[wrapper_id] = wrapper
    return wrapper_id


def _scale(x) -> float:
    """Scales under torch.compile are Python floats (a device-tensor scale works in eager and in
    CUDA graphs; here float() of it would break the graph)."""
    return 1.0 if x is None else float(x)


@torch.library.custom_op("flashinfer_gen::attention_run", mutates_args=())
def attention_run(wrapper_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_scale: float,
                  k_scale: float, v_scale: float, return_lse: bool,
                  out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """run() of the wrapper `wrapper_id`: k, v are its paged caches (4-D) or ragged K/V (3-D);
    out_dtype: what its plan writes (q's dtype, or an FP8 q's o_data_type), an argument so that a
    compiled graph is specialised on it rather than on the wrapper's state. Returns (out, lse);
    lse is empty unless return_lse."""
    wrapper = _WRAPPERS[wrapper_id]
    kv = (q, (k, v)) if k.dim() == 4 else (q, k, v)
    result = wrapper.run(*kv, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, return_lse=return_lse,
                         _eager=True)
    out = result[0] if return_lse else result
    if out.dtype != out_dtype:  # the plan changed under a compiled graph that was traced for another
        raise RuntimeError(f"flashinfer_gen: the compiled call was traced for an output of {out_dtype}, but the "
                           f"wrapper's plan now writes {out.dtype}; compile again after such a plan()")
    if return_lse:
        return result
    return result, torch.empty(0, dtype=torch.float32, device=q.device)


@attention_run.register_fake
def _(wrapper_id, q, k, v, q_scale, k_scale, v_scale, return_lse, out_dtype):
    lse_shape = q.shape[:-1] if return_lse else (0,)
    return torch.empty_like(q, dtype=out_dtype), q.new_empty(lse_shape, dtype=torch.float32)


def compiled_run(wrapper, q, k, v, args, q_scale, k_scale, v_scale, out, lse, return_lse):
    """What a wrapper's run() does under torch.compile: one attention_run op, then `out` / `lse`
    filled if the caller gave them (the op itself returns fresh tensors)."""
    from .common import positional_run_args
    from .validation import fail
    k_scale, v_scale, out, lse, return_lse = positional_run_args(args, k_scale, v_scale, out, lse, return_lse)
    want_lse = bool(return_lse or lse is not None)
    plan = wrapper._plan
    if plan is None:
        fail("call plan() before run()")
    out_dtype = plan.get("out_dtype") or plan["q_dtype"]  # read here, where Dynamo guards it
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != out_dtype or out.shape != q.shape):
        fail(f"out must be {tuple(q.shape)} {out_dtype}, got {getattr(out, 'shape', out)} "
             f"{getattr(out, 'dtype', '')}")
    result, result_lse = torch.ops.flashinfer_gen.attention_run(wrapper._op_id, q, k, v, _scale(q_scale),
                                                                _scale(k_scale), _scale(v_scale), want_lse, out_dtype)
    if out is not None:
        out.copy_(result)
        result = out
    if lse is not None:
        lse.copy_(result_lse)
        result_lse = lse
    return (result, result_lse) if return_lse else result


def split_cache(paged_kv_cache):
    """(k, v) of a (k, v) tuple or a combined [pages, 2, ...] tensor, without checks (run() checks
    them inside the op)."""
    if isinstance(paged_kv_cache, (tuple, list)):
        return paged_kv_cache[0], paged_kv_cache[1]
    return paged_kv_cache[:, 0], paged_kv_cache[:, 1]


@torch.library.custom_op("flashinfer_gen::append_paged_kv_cache", mutates_args=("k_cache", "v_cache"))
def append_op(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
              positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor | None, kv_indices: torch.Tensor,
              kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, kv_layout: str, k_scale: float | None,
              v_scale: float | None, fp8_conversion: str | None, jit: bool | None) -> None:
    """append_paged_kv_cache into (k_cache, v_cache), or into the combined cache k_cache when
    v_cache is None."""
    from .append import append_paged_kv_cache
    cache = k_cache if v_cache is None else (k_cache, v_cache)
    append_paged_kv_cache(append_key, append_value, batch_indices, positions, cache, kv_indices, kv_indptr,
                          kv_last_page_len, kv_layout, k_scale, v_scale, fp8_conversion, jit, _eager=True)


@append_op.register_fake
def _(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_last_page_len,
      kv_layout, k_scale, v_scale, fp8_conversion, jit):
    return None
