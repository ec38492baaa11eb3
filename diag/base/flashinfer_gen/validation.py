"""Argument checks, all on the host and before any launch. Messages name the argument, what was
expected and what was given. None of these checks synchronises with the GPU."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from generator.arches import Arch, arch_for_capability, capability_error

DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16",
               torch.float8_e4m3fn: "e4m3", torch.float8_e5m2: "e5m2"}
_ALIASES = {"float16": "f16", "half": "f16", "fp16": "f16", "f16": "f16",
            "bfloat16": "bf16", "bf16": "bf16",
            "float8_e4m3fn": "e4m3", "fp8_e4m3": "e4m3", "e4m3": "e4m3",
            "float8_e5m2": "e5m2", "fp8_e5m2": "e5m2", "e5m2": "e5m2"}
TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
KV_LAYOUTS = ("NHD", "HND")


class ArgumentError(ValueError):
    pass


def fail(message: str) -> None:
    raise ArgumentError(message)


def dtype_name(dtype: Any, what: str) -> str:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPE_NAMES:
            return DTYPE_NAMES[dtype]
    elif isinstance(dtype, str):
        name = _ALIASES.get(dtype.replace("torch.", ""))
        if name:
            return name
    fail(f"{what}: unsupported dtype {dtype!r}; expected one of float16, bfloat16, "
         f"float8_e4m3fn, float8_e5m2")


def require_tensor(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        fail(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_int_index(x: Any, what: str, ndim: int = 1) -> torch.Tensor:
    require_tensor(x, what)
    if x.dtype not in (torch.int32, torch.int64):
        fail(f"{what} must be an int32 tensor, got {x.dtype}")
    if x.dim() != ndim:
        fail(f"{what} must be {ndim}-D, got shape {tuple(x.shape)}")
    return x


def check_head_config(num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                      head_dims: Sequence[int]) -> None:
    for value, what in ((num_qo_heads, "num_qo_heads"), (num_kv_heads, "num_kv_heads"),
                        (page_size, "page_size")):
        if not isinstance(value, int) or value < 1:
            fail(f"{what} must be a positive int, got {value!r}")
    if num_qo_heads % num_kv_heads != 0:
        fail(f"num_qo_heads ({num_qo_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if head_dim not in head_dims:
        fail(f"head_dim {head_dim} is not supported; supported head dims: {list(head_dims)}")


def device_arch(device: torch.device) -> Arch:
    """The arch whose kernels run on `device` (a CUDA device), or a clear error."""
    if device.type != "cuda":
        fail(f"the workspace must be on a CUDA device, got {device}")
    capability = torch.cuda.get_device_capability(device)
    arch = arch_for_capability(capability)
    if arch is None:
        fail(capability_error(capability))
    return arch


def check_indptr(indptr, what: str, batch: int | None = None) -> torch.Tensor:
    """A CSR offsets tensor on the host (int64), checked: batch + 1 >= 2 entries, first 0,
    non-decreasing."""
    require_int_index(indptr, what)
    h = indptr.detach().to("cpu", torch.int64)
    if h.numel() < 2:
        fail(f"{what} must have batch + 1 >= 2 entries, got {h.numel()}")
    if batch is not None and h.numel() != batch + 1:
        fail(f"{what} has {h.numel()} entries, expected batch + 1 = {batch + 1} (from the KV description)")
    if h[0].item() != 0:
        fail(f"{what}[0] must be 0, got {h[0].item()}")
    steps = h[1:] - h[:-1]
    if (steps < 0).any():
        b = int(torch.nonzero(steps < 0)[0])
        fail(f"{what} must be non-decreasing; {what}[{b + 1}] = {h[b + 1].item()} < {what}[{b}] = {h[b].item()}")
    return h


def check_page_table(indptr, indices, last_page_len, page_size: int):
    """Host copies of the page table, checked. Returns (indptr, last_page_len, max index)."""
    indptr_h = indptr.detach().to("cpu", torch.int64)
    last_h = last_page_len.detach().to("cpu", torch.int64)
    batch = indptr_h.numel() - 1
    if batch < 1:
        fail(f"indptr must have batch + 1 >= 2 entries, got {indptr_h.numel()}")
    if last_h.numel() != batch:
        fail(f"last_page_len has {last_h.numel()} entries, expected batch = {batch} (len(indptr) - 1)")
    if indptr_h[0].item() != 0:
        fail(f"indptr[0] must be 0, got {indptr_h[0].item()}")
    pages = indptr_h[1:] - indptr_h[:-1]
    if (pages < 0).any():
        b = int(torch.nonzero(pages < 0)[0])
        fail(f"indptr must be non-decreasing; indptr[{b + 1}] = {indptr_h[b + 1].item()} < "
             f"indptr[{b}] = {indptr_h[b].item()}")
    if (pages == 0).any():
        b = int(torch.nonzero(pages == 0)[0])
        fail(f"request {b} has no pages (indptr[{b}] == indptr[{b + 1}]); decode needs at least one KV token")
    if indptr_h[-1].item() > indices.numel():
        fail(f"indptr[-1] = {indptr_h[-1].item()} exceeds len(indices) = {indices.numel()}")
    bad = (last_h < 1) | (last_h > page_size)
    if bad.any():
        b = int(torch.nonzero(bad)[0])
        fail(f"last_page_len[{b}] = {last_h[b].item()} is outside [1, page_size = {page_size}]")
    used = indices.detach()[: int(indptr_h[-1].item())].to("cpu", torch.int64)
    if used.numel() and used.min().item() < 0:
        fail(f"indices holds a negative page index ({used.min().item()})")
    max_index = int(used.max().item()) if used.numel() else -1
    return indptr_h, last_h, max_index


def check_scalar(value: Any, what: str, positive: bool = False) -> float:
    """A finite Python float (None: 1.0). positive: also > 0, as the logit scales must be: the
    kernels take a row's largest logit from the unscaled products (softmax.cuh)."""
    if value is None:
        return 1.0
    if isinstance(value, torch.Tensor):
        fail(f"{what} must be a Python float (a tensor would need a device sync to read); got a tensor")
    try:
        v = float(value)
    except (TypeError, ValueError):
        fail(f"{what} must be a float, got {value!r}")
    if not (v == v) or v in (float("inf"), float("-inf")):
        fail(f"{what} must be finite, got {v}")
    if positive and not v > 0:
        fail(f"{what} must be > 0, got {v}")
    return v


def scale_arg(value: Any, what: str, device: torch.device, positive: bool = False) -> tuple[float, int | None]:
    """A scale as run() takes it: a Python float, checked here, or a one-element float32 tensor on
    the device, which the kernel reads at launch (so a captured graph follows a new value; a
    logits scale that is not > 0 there makes the output NaN, as checking it here would need a
    sync). Returns (the float, or 1.0; the tensor's address, or None)."""
    if value is None:
        return 1.0, None
    if isinstance(value, torch.Tensor):
        if not value.is_cuda or value.device != device or value.dtype != torch.float32 or value.numel() != 1:
            fail(f"{what} as a tensor must be a one-element float32 tensor on {device}, got {value.dtype} "
                 f"{tuple(value.shape)} on {value.device} (or pass a Python float)")
        return 1.0, value.data_ptr()
    return check_scalar(value, what, positive), None


def check_cuda_tensor(x: torch.Tensor, what: str, device: torch.device) -> None:
    if not x.is_cuda:
        fail(f"{what} must be on a CUDA device, got {x.device}")
    if x.device != device:
        fail(f"{what} is on {x.device} but the other inputs are on {device}")
    if x.dim() > 0 and x.stride(-1) != 1:
        fail(f"{what} must be contiguous in its last dim (stride 1), got strides {tuple(x.stride())}")


def split_paged_kv(paged_kv_cache: Any, layout: str):
    """(k, v) from a (k, v) tuple or a combined [pages, 2, ...] tensor; checks their shapes."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            fail(f"paged_kv_cache as a tuple must be (k_cache, v_cache), got {len(paged_kv_cache)} items")
        k, v = paged_kv_cache
        require_tensor(k, "paged_kv_cache[0] (k)")
        require_tensor(v, "paged_kv_cache[1] (v)")
    else:
        require_tensor(paged_kv_cache, "paged_kv_cache")
        if paged_kv_cache.dim() != 5 or paged_kv_cache.shape[1] != 2:
            fail(f"paged_kv_cache as one tensor must be [num_pages, 2, ...] (5-D), got shape "
                 f"{tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    if k.dim() != 4:
        fail(f"k cache must be 4-D ({_layout_shape(layout)}), got shape {tuple(k.shape)}")
    if k.shape != v.shape or k.stride() != v.stride():
        fail(f"k and v caches must have the same shape and strides, got {tuple(k.shape)}/{k.stride()} "
             f"and {tuple(v.shape)}/{v.stride()}")
    if k.dtype != v.dtype:
        fail(f"k and v caches must have the same dtype, got {k.dtype} and {v.dtype}")
    return k, v


def _layout_shape(layout: str) -> str:
    return ("[num_pages, page_size, num_kv_heads, head_dim]" if layout == "NHD"
            else "[num_pages, num_kv_heads, page_size, head_dim]")


def kv_strides(k: torch.Tensor, layout: str, page_size: int, num_kv_heads: int, head_dim: int):
    """(page, slot, head) element strides of a 4-D cache in `layout`, after checking its shape."""
    if layout == "NHD":
        expected = (page_size, num_kv_heads, head_dim)
        got = tuple(k.shape[1:])
        strides = (k.stride(0), k.stride(1), k.stride(2))
    else:
        expected = (num_kv_heads, page_size, head_dim)
        got = tuple(k.shape[1:])
        strides = (k.stride(0), k.stride(2), k.stride(1))
    if got != expected:
        fail(f"kv cache shape {tuple(k.shape)} does not match layout {layout} {_layout_shape(layout)} "
             f"with page_size={page_size}, num_kv_heads={num_kv_heads}, head_dim={head_dim} from plan()")
    return strides
