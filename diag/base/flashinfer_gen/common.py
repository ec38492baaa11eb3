"""What every wrapper's plan() and run() share: the variant arguments, the instance lookup, the
device's capacity, the workspace layout, and the checks of q, the KV tensors, out and lse."""
from __future__ import annotations

import ctypes
import functools
import math
from typing import Mapping

import numpy as np
import torch

from generator import InstanceKey, why_invalid
from generator.abi import Struct, fill
from generator.keys import FP8_DTYPES

from .registry import Module, check_status, default_registry
from .validation import (KV_LAYOUTS, TORCH_DTYPES, check_cuda_tensor, check_scalar, device_arch, dtype_name, fail,
                         require_tensor, scale_arg)

_ALIGN = 256
INT32_MAX = 2**31 - 1


class Wrapper:
    """What every wrapper holds: the workspace (split-KV partials; wrappers may share one), the KV
    layout, the FP8 conversion asked for (None: the arch's preferred), whether to build a missing
    instance on demand, and its own plan and device work list."""

    def __init__(self, workspace_buffer: torch.Tensor, kv_layout: str, fp8_conversion: str | None, jit: bool | None):
        require_tensor(workspace_buffer, "workspace_buffer")
        if not workspace_buffer.is_cuda or workspace_buffer.element_size() != 1 or not workspace_buffer.is_contiguous():
            fail(f"workspace_buffer must be a contiguous CUDA tensor of a 1-byte dtype (uint8, int8), got "
                 f"{workspace_buffer.dtype} on {workspace_buffer.device}")
        workspace_buffer = workspace_buffer.view(torch.uint8)  # FlashInfer's examples pass int8
        if workspace_buffer.data_ptr() % 16:
            fail("workspace_buffer must be 16-byte aligned (the split-KV partials are read and written as float4); "
                 "a slice of a larger buffer may not be")
        if kv_layout not in KV_LAYOUTS:
            fail(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
        if fp8_conversion not in (None, "hardware", "software"):
            fail(f"fp8_conversion must be None, 'hardware' or 'software', got {fp8_conversion!r}")
        self._workspace = workspace_buffer
        self._layout = kv_layout
        self._fp8_conversion = fp8_conversion
        self._jit = jit
        self._plan: dict | None = None
        self._ints: torch.Tensor | None = None  # the plan's work list on the device
        from .ops import register
        self._op_id = register(self)  # how torch.compile'd code finds this wrapper (ops.py)

    @property
    def module(self) -> Module:
        if self._plan is None:
            fail("call plan() before run()")
        return self._plan["module"]


# run() sets these per call (set_run_fields); plan() fills the params with them zero.
UNSET_QUERY = dict(data=None, stride_row=0, stride_head=0)


def unset_output(num_heads: int) -> dict:
    return dict(data=None, stride_row=0, stride_head=0, lse=None, num_heads=num_heads)


def plan_kv_fields(ptr: Mapping[str, int], page_size: int, num_kv_heads: int) -> dict:
    """FigPagedKv with the plan's page table; the caches and their strides come per call."""
    return dict(k_cache=None, v_cache=None, stride_page=0, stride_slot=0, stride_head=0, indptr=ptr["page_indptr"],
                indices=ptr["page_indices"], page_size=page_size, num_kv_heads=num_kv_heads)


def merge_fields(ptr: Mapping[str, int], num_items: int) -> dict:
    """FigSplitMerge from the plan's int buffer (merge_row, merge_indptr, merge_count) and the
    workspace's partials; num_items is the grid (the live count is merge_count on the device)."""
    return dict(row=ptr["merge_row"], indptr=ptr["merge_indptr"], num_items=num_items, live_items=ptr["merge_count"],
                partial_out=ptr["partial_out"], partial_lse=ptr["partial_lse"])


def check_variant(head_dim: int, pos_encoding_mode: str, window_left, logits_soft_cap, sm_scale) -> tuple:
    """(window_left, soft cap (0: off), sm_scale) after checking FlashInfer's variant arguments."""
    if pos_encoding_mode != "NONE":
        fail(f"pos_encoding_mode={pos_encoding_mode!r} is not supported; apply RoPE to q and k before "
             "writing the cache and pass 'NONE'")
    if not isinstance(window_left, int) or isinstance(window_left, bool) or window_left < -1:
        fail(f"window_left must be -1 (no window) or >= 0, got {window_left!r}")
    window_left = min(window_left, INT32_MAX)  # a window past any key count is no window; it travels as int32
    soft_cap = 0.0 if logits_soft_cap is None else check_scalar(logits_soft_cap, "logits_soft_cap")
    if soft_cap < 0:
        fail(f"logits_soft_cap must be > 0 (or None), got {soft_cap}")
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else check_scalar(sm_scale, "sm_scale", positive=True)
    return window_left, soft_cap, scale


def flashinfer_extras(head_dim_qk: int, head_dim_vo=None, custom_mask=None, packed_custom_mask=None,
                      use_fp16_qk_reduction: bool = False, rope_scale=None, rope_theta=None,
                      non_blocking: bool = True) -> None:
    """FlashInfer's plan() arguments this library takes for compatibility. rope_scale / rope_theta
    only matter with a RoPE pos_encoding_mode, which check_variant refuses; non_blocking: plan()
    copies its work list with one host-to-device copy either way."""
    if head_dim_vo is not None and head_dim_vo != head_dim_qk:
        fail(f"head_dim_vo ({head_dim_vo}) must equal head_dim_qk ({head_dim_qk}): one head dim for K and V")
    if custom_mask is not None or packed_custom_mask is not None:
        fail("custom_mask / packed_custom_mask are not supported; use causal=True and window_left")
    if use_fp16_qk_reduction:
        fail("use_fp16_qk_reduction=True is not supported: q.k accumulates in fp32")
    for value, what in ((rope_scale, "rope_scale"), (rope_theta, "rope_theta")):
        if value is not None:
            check_scalar(value, what)
    if not isinstance(non_blocking, bool):
        fail(f"non_blocking must be a bool, got {non_blocking!r}")


def positional_run_args(args: tuple, k_scale, v_scale, out, lse, return_lse):
    """run(q, cache, k_scale, v_scale, out, lse, return_lse) positionally, as this library's run()
    took them before FlashInfer's keyword-only form; a value given both ways is an error."""
    if not args:
        return k_scale, v_scale, out, lse, return_lse
    names = ("k_scale", "v_scale", "out", "lse", "return_lse")
    if len(args) > len(names):
        fail(f"run() takes at most {len(names)} arguments after the KV cache, got {len(args)}")
    values = dict(k_scale=k_scale, v_scale=v_scale, out=out, lse=lse, return_lse=return_lse)
    defaults = dict(k_scale=None, v_scale=None, out=None, lse=None, return_lse=False)
    for name, value in zip(names, args):
        if values[name] is not defaults[name]:
            fail(f"run() got {name} both positionally and by keyword")
        values[name] = value
    return values["k_scale"], values["v_scale"], values["out"], values["lse"], values["return_lse"]


def kv_dtype_alias(kv_data_type, data_type):
    """FlashInfer's older `data_type` is the KV dtype; both given must agree."""
    if data_type is None:
        return kv_data_type
    if kv_data_type is not None and dtype_name(kv_data_type, "kv_data_type") != dtype_name(data_type, "data_type"):
        fail(f"data_type ({data_type}) and kv_data_type ({kv_data_type}) disagree; data_type is the old name of "
             "kv_data_type")
    return data_type


def dtype_names(q_data_type, kv_data_type, fp8_q: tuple[str, ...] = ()) -> tuple[str, str]:
    """(q, kv) dtype names; q is 16-bit, or one of fp8_q (the FP8 q dtypes some kind of the caller's
    builds), which needs an FP8 cache."""
    q_name = dtype_name(q_data_type, "q_data_type")
    if q_name not in ("f16", "bf16") + fp8_q:
        also = "".join(f" or {TORCH_DTYPES[n]}" for n in fp8_q)
        fail(f"q_data_type must be float16 or bfloat16{also}, got {q_data_type!r}")
    kv_name = q_name if kv_data_type is None else dtype_name(kv_data_type, "kv_data_type")
    if q_name in FP8_DTYPES and kv_name not in FP8_DTYPES:
        fail(f"an FP8 q ({q_data_type}) needs an FP8 KV cache (kv_data_type float8_e4m3fn or float8_e5m2), got "
             f"{kv_data_type!r}")
    return q_name, kv_name


def o_dtype_name(q_name: str, o_data_type) -> str:
    """The key's o_dtype: "same" for a 16-bit q (whose output has its dtype; o_data_type may say
    so), f16 or bf16 for an FP8 q (bf16 unless o_data_type says)."""
    o_name = None if o_data_type is None else dtype_name(o_data_type, "o_data_type")
    if q_name not in FP8_DTYPES:
        if o_name not in (None, q_name):
            fail(f"o_data_type must be q's dtype ({TORCH_DTYPES[q_name]}) for a 16-bit q, got {o_data_type!r}")
        return "same"
    if o_name not in (None, "f16", "bf16"):
        fail(f"o_data_type must be float16 or bfloat16 for an FP8 q, got {o_data_type!r}")
    return o_name or "bf16"


def instance_key(kind: str, device: torch.device, q_name: str, kv_name: str, head_dim: int, soft_cap: float,
                 fp8_conversion: str | None, o_name: str = "same") -> InstanceKey:
    """The key of this call on `device`'s arch: the arch's preferred FP8 conversion (hardware
    where it has cvt) unless the caller forces one."""
    arch = device_arch(device)
    conversion = (fp8_conversion or arch.default_conversion) if kv_name in FP8_DTYPES else "none"
    return InstanceKey(kind, q_name, kv_name, head_dim, arch.name, conversion, "softcap" if soft_cap > 0 else "default",
                       o_name)


def lookup(kind: str, device: torch.device, q_name: str, kv_name: str, head_dim: int, soft_cap: float,
           fp8_conversion: str | None, jit: bool | None, o_name: str = "same") -> Module:
    """The instance for this call (instance_key), loaded, or built on demand with jit."""
    key = instance_key(kind, device, q_name, kv_name, head_dim, soft_cap, fp8_conversion, o_name)
    reason = why_invalid(key)
    if reason is not None:
        fail(f"unsupported combination {key.name}: {reason}")
    return default_registry().lookup(key, jit=jit)


def lookup_family(kinds: tuple[str, ...], device: torch.device, q_name: str, kv_name: str, head_dim: int,
                  soft_cap: float, fp8_conversion: str | None, jit: bool | None, o_name: str = "same") -> Module:
    """The first of `kinds` (kernel families of one ABI, preferred first) whose instance for this
    call is valid on the device's arch and built; the last is looked up as `lookup` does (built on
    demand with jit, else InstanceNotBuiltError), so a preferred family is never built implicitly."""
    built = set(default_registry().built_keys())
    for kind in kinds[:-1]:
        key = instance_key(kind, device, q_name, kv_name, head_dim, soft_cap, fp8_conversion, o_name)
        if why_invalid(key) is None and key in built:
            return default_registry().lookup(key, jit=False)
    return lookup(kinds[-1], device, q_name, kv_name, head_dim, soft_cap, fp8_conversion, jit, o_name)


def resident_ctas(module: Module, device: torch.device) -> int:
    """CTAs of the module's kernel the device runs at once (queried once per device)."""
    def query() -> tuple[int, int]:
        ctas, sms = ctypes.c_int(0), ctypes.c_int(0)
        with torch.cuda.device(device):
            module.call("occupancy", ctypes.byref(ctas), ctypes.byref(sms))
        return ctas.value, sms.value
    ctas_per_sm, num_sms = module.per_device("occupancy", device.index, query)
    return max(1, ctas_per_sm) * num_sms


@functools.lru_cache(maxsize=None)
def _l2_bytes(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).L2_cache_size)


def l2_bytes(device: torch.device) -> int:
    """The device's L2 cache size in bytes (queried once per device)."""
    return _l2_bytes(device.index if device.index is not None else torch.cuda.current_device())


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def lay_out_plan(workspace: torch.Tensor, int_buffer: torch.Tensor | None, ints: Mapping[str, np.ndarray],
                 num_partial: int, num_heads: int, head_dim: int,
                 capacity: Mapping[str, int] | None = None) -> tuple[torch.Tensor, dict]:
    """The plan's int32 arrays go to a device buffer the wrapper owns (`int_buffer`, reused when
    large enough, else replaced), by one host-to-device copy; the split-KV partials (fp32 lse, then
    out) to the user's workspace. So several wrappers may share one workspace, as serving engines
    share FlashInfer's: the partials live only within one run() on the stream, while each plan's
    work list stays its own.

    capacity (CUDA-graph plans): entries reserved for each array, and "partial_slots" for the
    split-KV partial slots. Every array then sits at the same offset for every plan, the buffer is allocated once
    and never replaced, and a plan that needs more than its capacity is refused, so a graph
    captured after one plan reads the next plan's work list at the same addresses.
    Returns (the int buffer, the device address of each array and of partial_lse / partial_out)."""
    names = list(ints)
    used = {n: np.asarray(ints[n]).size for n in names}
    if capacity is None:
        sizes, partial_slots = used, num_partial
    else:
        for n in names:
            if used[n] > capacity[n]:
                fail(f"this plan needs {used[n]} entries of {n}, more than the {capacity[n]} its CUDA-graph "
                     "buffers were sized for at the first plan()")
        if num_partial > capacity["partial_slots"]:
            fail(f"this plan needs {num_partial} split-KV partial slots, more than the CUDA-graph capacity "
                 f"{capacity['partial_slots']}")
        sizes, partial_slots = {n: capacity[n] for n in names}, capacity["partial_slots"]
    offsets = dict(zip(names, np.cumsum([0] + [sizes[n] for n in names])[:-1].tolist()))
    total = sum(sizes.values())
    flat = np.zeros(max(total, 1), dtype=np.int32)
    for n in names:
        flat[offsets[n]: offsets[n] + used[n]] = np.asarray(ints[n], dtype=np.int32).ravel()
    lse_bytes = _align(partial_slots * num_heads * 4)
    need = lse_bytes + partial_slots * num_heads * head_dim * 4
    if need > workspace.numel():
        fail(f"workspace_buffer holds {workspace.numel()} bytes; this plan's split-KV partials need {need}")
    fits = int_buffer is not None and int_buffer.numel() >= flat.size and int_buffer.device == workspace.device
    if not fits:
        if capacity is not None and int_buffer is not None:
            fail("a CUDA-graph plan's buffers cannot move: plan() with the sizes of the first plan()")
        int_buffer = torch.empty(max(flat.size, 1024), dtype=torch.int32, device=workspace.device)
    with torch.cuda.device(workspace.device):
        int_buffer[: flat.size].copy_(torch.from_numpy(flat))
    ptr = {n: int_buffer.data_ptr() + 4 * int(offsets[n]) for n in names}
    ptr["partial_lse"] = workspace.data_ptr()
    ptr["partial_out"] = workspace.data_ptr() + lse_bytes
    return int_buffer, ptr


def check_q(q, rows: int, num_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, what: str,
            padded: bool = False) -> None:
    """padded: q may have more than `rows` rows (a CUDA-graph plan's static q; the rest are not read)."""
    require_tensor(q, "q")
    check_cuda_tensor(q, "q", device)
    if q.dim() != 3 or tuple(q.shape[1:]) != (num_heads, head_dim) or not (
            q.shape[0] >= rows if padded else q.shape[0] == rows):
        fail(f"q must have shape [{what}{' or more' if padded else ''}, num_qo_heads, head_dim] = "
             f"{(rows, num_heads, head_dim)} from plan(), got {tuple(q.shape)}")
    if q.dtype != dtype:
        fail(f"q has dtype {q.dtype}, plan() was for {dtype}")
    if q.data_ptr() % 4 or any(s * q.element_size() % 4 for s in q.stride()[:2]):
        fail(f"q's rows must start 4-byte aligned (its address and its token and head strides in bytes), got "
             f"strides {q.stride()} of {q.element_size()}-byte elements")


def check_kv(k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """Device, contiguous head dim and dtype of K and V."""
    for t, what in ((k, "k cache"), (v, "v cache")):
        check_cuda_tensor(t, what, device)
    if k.dtype != dtype:
        fail(f"kv cache has dtype {k.dtype}, plan() was for {dtype}")


def check_kv_alignment(k: torch.Tensor, v: torch.Tensor, strides) -> None:
    """16-byte alignment of every K and V row (the kernels copy 16-byte chunks)."""
    elem = k.element_size()
    for ptr, what in ((k.data_ptr(), "k cache"), (v.data_ptr(), "v cache")):
        if ptr % 16 or any((s * elem) % 16 for s in strides):
            fail(f"{what} rows must be 16-byte aligned (data pointer and strides), got strides {k.stride()}")


def output_tensors(q: torch.Tensor, out, lse, return_lse: bool, device: torch.device,
                   out_dtype: torch.dtype | None = None):
    """`out` (allocated if None) and `lse` (allocated if asked for), checked against q; out_dtype:
    the output's dtype where it is not q's (an FP8 q)."""
    rows, hq, d = q.shape
    out_dtype = out_dtype or q.dtype
    if out is None:
        # q's strides where q is dense, else contiguous; the kernels take out's strides
        out = torch.empty_like(q, dtype=out_dtype)
    else:
        require_tensor(out, "out")
        check_cuda_tensor(out, "out", device)
        if tuple(out.shape) != (rows, hq, d) or out.dtype != out_dtype:
            fail(f"out must be {(rows, hq, d)} {out_dtype}, got {tuple(out.shape)} {out.dtype}")
    if lse is None and return_lse:
        lse = torch.empty((rows, hq), dtype=torch.float32, device=device)
    if lse is not None:
        require_tensor(lse, "lse")
        check_cuda_tensor(lse, "lse", device)
        if tuple(lse.shape) != (rows, hq) or lse.dtype != torch.float32 or not lse.is_contiguous():
            fail(f"lse must be a contiguous float32 tensor of shape {(rows, hq)}, got {tuple(lse.shape)} {lse.dtype}")
    return out, lse


def launch(module: Module, params: ctypes.Structure, device: torch.device) -> None:
    """Runs the module on the current stream of `device`, with `device` current (cudaFuncSetAttribute
    and the launch act on the current device); the device switch only where it is not already.
    The current device and stream come from torch's own bindings where it has them (its compiled
    code's path: no torch.cuda.Stream object per call), else from the public API."""
    index = device.index
    if _current_device() == index:
        code = module.entry("run")(ctypes.byref(params), _current_raw_stream(index))
    else:
        with torch.cuda.device(device):
            code = module.entry("run")(ctypes.byref(params), torch.cuda.current_stream(device).cuda_stream)
    if code:
        check_status(code, f"{module.key.name} run")


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_current_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


_current_raw_stream = _raw_stream or (lambda index: torch.cuda.current_stream(index).cuda_stream)


class CheckedInputs:
    """What run() has checked since plan(), by the metadata the checks depend on, so that only
    the first call with tensors of a kind pays for them: an engine calls run() once per layer with
    q of one shape and per-layer caches of one shape. q is known by (shape, strides, dtype,
    device), its address checked every call; a cache by the same of each of its tensors plus
    their addresses, mapped to what the launch needs of it. It also remembers what the params
    hold now (`last_*`), so that run() rewrites only the fields whose source changed.

    q_rows / q_rows_what / q_padded: the rows q must have (check_q's arguments)."""

    def __init__(self, q_rows: int, q_rows_what: str, q_padded: bool = False):
        self.q_rows, self.q_rows_what, self.q_padded = q_rows, q_rows_what, q_padded
        self.q: set = set()
        self.out: set = set()  # `out` tensors given without lse, by metadata and q's (finish_run)
        self.kv: dict = {}
        self.scales: dict = {}  # (q_scale, k_scale, v_scale) of Python numbers or None -> the fields
        self.last_q = self.last_out = self.last_kv = self.last_scales = self.last_lse = None

    @staticmethod
    def kv_key(paged_kv_cache) -> tuple | None:
        if isinstance(paged_kv_cache, torch.Tensor):  # the combined [pages, 2, ...] tensor
            t = paged_kv_cache
            return t.data_ptr(), t.shape, t.stride(), t.dtype, t.device
        if isinstance(paged_kv_cache, (tuple, list)) and len(paged_kv_cache) == 2:
            k, v = paged_kv_cache
            if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
                return (k.data_ptr(), k.shape, k.stride(), k.dtype, k.device, v.data_ptr(), v.shape, v.stride(),
                        v.dtype, v.device)
        return None  # checked (and refused) every call


def note_graph_run(graph: dict, **limits: int) -> None:
    """What a CUDA-graph wrapper's later plan() must fit, from run(): the sizes of the tensors a
    captured run() used (the smallest over every capture: a replay skips run() and reads the
    captured ones), or, before any capture, those of the last run()."""
    capturing = torch.cuda.is_current_stream_capturing()
    if capturing and graph["captured"]:
        graph["limits"] = {k: min(v, graph["limits"][k]) for k, v in limits.items()}
    elif capturing or not graph["captured"]:
        graph["limits"] = dict(limits)
    graph["captured"] = graph["captured"] or capturing


def launch_params(s, **values) -> tuple[ctypes.Structure, dict]:
    """A kind's params struct filled once per plan (abi.fill: every field named), and views of its
    sub-structs, whose per-call fields run() then sets in place. So one wrapper's run() is not to
    be called from two threads at once (nor are FlashInfer's); one wrapper per thread is."""
    params = fill(s, **values)
    return params, {f.name: getattr(params, f.name) for f in s.fields if isinstance(f.ctype, Struct)}


_PLAIN_SCALE = frozenset((float, int, type(None)))  # scales memoised by value (a tensor is read on the device)


def run_scales(plan: dict, q_scale, k_scale, v_scale) -> tuple:
    """The scales' fields (sm_scale · q_scale, k_scale, v_scale and the device tensors' addresses),
    checked once per value where all three are Python numbers or None, as an engine passes them."""
    checked = plan["checked"]
    key = (q_scale, k_scale, v_scale)
    # by value: -0.0 == 0.0 as keys, so a zero (a v_scale of -0.0 flips the zeros' sign) is not kept
    plain = type(q_scale) in _PLAIN_SCALE and type(k_scale) in _PLAIN_SCALE and type(v_scale) in _PLAIN_SCALE \
        and 0.0 not in key
    fields = checked.scales.get(key) if plain else None
    if fields is None:
        device = plan["device"]
        qs, qs_dev = scale_arg(q_scale, "q_scale", device, positive=True)
        ks, ks_dev = scale_arg(k_scale, "k_scale", device, positive=True)
        vs, vs_dev = scale_arg(v_scale, "v_scale", device)
        fields = (plan["sm_scale"] * qs, ks, vs, qs_dev, ks_dev, vs_dev)
        if plain:
            if len(checked.scales) >= 64:  # an engine has a few; a sweep of values must not grow it
                checked.scales.clear()
            checked.scales[key] = fields
    return fields


def finish_run(plan: dict, q: torch.Tensor, kv: Mapping, q_scale, k_scale, v_scale, out, lse, return_lse: bool,
               graph: dict | None = None):
    """The tail of every run(): q's checks (once per shape, strides, dtype and device; its address
    every call), the scales, out / lse (allocated, or checked once per kind of tensor, as q is),
    the params' per-call fields, the launch. kv (the cache as CheckedInputs holds it) is checked by
    the caller. A field group of the params is rewritten only where its source differs from the
    last run()'s: each ctypes store costs as much as a comparison, and most runs change only the
    addresses of q and out. graph: a CUDA-graph wrapper's state, told the sizes this run uses
    (note_graph_run) once its inputs passed their checks."""
    checked, views = plan["checked"], plan["views"]
    if not isinstance(q, torch.Tensor):
        require_tensor(q, "q")
    q_meta = (q.shape, q.stride(), q.dtype, q.device)
    if q_meta != checked.last_q:
        if q_meta not in checked.q:
            check_q(q, checked.q_rows, plan["num_qo_heads"], plan["head_dim"], plan["q_dtype"], plan["device"],
                    checked.q_rows_what, padded=checked.q_padded)
            checked.q.add(q_meta)
        pq = views["q"]
        pq.stride_row, pq.stride_head = q_meta[1][0], q_meta[1][1]
        checked.last_q = q_meta
    q_ptr = q.data_ptr()
    if q_ptr % 4:
        fail(f"q's rows must start 4-byte aligned, got address {q_ptr:#x}")
    views["q"].data = q_ptr
    if q_scale is None and k_scale is None and v_scale is None:
        scales = plan["unit_scales"]  # as an engine's bf16 layers pass them
    else:
        scales = run_scales(plan, q_scale, k_scale, v_scale)
    if scales is not checked.last_scales:
        psc = views["scales"]
        psc.sm_scale, psc.k_scale, psc.v_scale, psc.q_scale_device, psc.k_scale_device, psc.v_scale_device = scales
        checked.last_scales = scales
    out_dtype = plan.get("out_dtype")  # where it is not q's (an FP8 q)
    if lse is None and not return_lse:
        if out is None:
            # q's strides where q is dense, else contiguous; the kernels take out's strides
            out = torch.empty_like(q) if out_dtype is None else torch.empty_like(q, dtype=out_dtype)
        elif isinstance(out, torch.Tensor):  # out's checks compare it with q: q's metadata is in its key
            out_key = (out.shape, out.stride(), out.dtype, out.device, q_meta)
            if out_key not in checked.out:
                output_tensors(q, out, None, False, plan["device"], out_dtype)
                checked.out.add(out_key)
        else:
            output_tensors(q, out, None, False, plan["device"], out_dtype)  # refuses it
    else:
        out, lse = output_tensors(q, out, lse, return_lse, plan["device"], out_dtype)
    out_stride = out.stride()
    pout = views["out"]
    if out_stride != checked.last_out:
        pout.stride_row, pout.stride_head = out_stride[0], out_stride[1]
        checked.last_out = out_stride
    pout.data = out.data_ptr()
    lse_ptr = lse.data_ptr() if lse is not None else None
    if lse_ptr != checked.last_lse:
        pout.lse = checked.last_lse = lse_ptr
    if graph is not None:  # what a later plan() must fit (a replay skips run()); a padded q's rows too
        note_graph_run(graph, **({"q_rows": q_meta[0][0]} if checked.q_padded else {}), kv_extent=kv["pages"])
    if kv is not checked.last_kv:
        pkv = views["kv"]
        pkv.k_cache, pkv.v_cache = kv["k_cache"], kv["v_cache"]
        pkv.stride_page, pkv.stride_slot, pkv.stride_head = kv["strides"]
        checked.last_kv = kv
    # launch()'s same-device path inlined (the hot path: one Python call fewer per run())
    entry = plan.get("entry")
    if entry is None:  # the run entry point and a reference to the params, made once per plan
        entry = plan["entry"] = (plan["module"].entry("run"), ctypes.byref(plan["params"]))
    index = plan["device"].index
    if _current_device() == index:
        code = entry[0](entry[1], _current_raw_stream(index))
        if code:
            check_status(code, f"{plan['module'].key.name} run")
    else:
        launch(plan["module"], plan["params"], plan["device"])
    return (out, lse) if return_lse else out
