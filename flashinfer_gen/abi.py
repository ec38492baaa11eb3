"""ctypes mirror of templates/fig_abi.h. Field order and types must match the C struct; every
library reports its ABI version and sizeof(FigDecodeParams), which Module checks on load."""
from __future__ import annotations

import ctypes

ABI_VERSION = 1

_c_ptr = ctypes.c_void_p
_i32p = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32
_f32 = ctypes.c_float


class FigDecodeParams(ctypes.Structure):
    _fields_ = [
        ("q", _c_ptr), ("q_stride_batch", _i64), ("q_stride_head", _i64),
        ("k_cache", _c_ptr), ("v_cache", _c_ptr),
        ("kv_stride_page", _i64), ("kv_stride_slot", _i64), ("kv_stride_head", _i64),
        ("kv_indptr", _i32p), ("kv_indices", _i32p),
        ("work_request", _i32p), ("work_begin", _i32p), ("work_end", _i32p), ("work_partial", _i32p),
        ("num_work", _i32),
        ("merge_request", _i32p), ("merge_indptr", _i32p), ("num_merge", _i32),
        ("partial_out", _c_ptr), ("partial_lse", _c_ptr),
        ("out", _c_ptr), ("out_stride_batch", _i64), ("out_stride_head", _i64), ("lse", _c_ptr),
        ("batch", _i32), ("num_qo_heads", _i32), ("num_kv_heads", _i32), ("page_size", _i32),
        ("sm_scale", _f32), ("k_scale", _f32), ("v_scale", _f32), ("logits_soft_cap", _f32),
    ]


# The cudaError_t values a launch can plausibly return, for readable messages.
_CUDA_ERRORS = {1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation", 98: "cudaErrorInvalidDeviceFunction",
                100: "cudaErrorNoDevice", 101: "cudaErrorInvalidDevice", 209: "cudaErrorNoKernelImageForDevice",
                400: "cudaErrorInvalidResourceHandle", 700: "cudaErrorIllegalAddress",
                701: "cudaErrorLaunchOutOfResources", 801: "cudaErrorNotSupported"}


def check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what}: CUDA error {code} ({_CUDA_ERRORS.get(code, 'see cudaError_t')})")


def declare(lib: ctypes.CDLL) -> None:
    lib.fig_abi_version.restype = ctypes.c_int
    lib.fig_abi_version.argtypes = []
    lib.fig_decode_params_size.restype = ctypes.c_int
    lib.fig_decode_params_size.argtypes = []
    lib.fig_instance_name.restype = ctypes.c_char_p
    lib.fig_instance_name.argtypes = []
    lib.fig_decode_run.restype = ctypes.c_int
    lib.fig_decode_run.argtypes = [ctypes.POINTER(FigDecodeParams), ctypes.c_void_p]
    lib.fig_decode_occupancy.restype = ctypes.c_int
    lib.fig_decode_occupancy.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    lib.fig_decode_grid_rows.restype = ctypes.c_int
    lib.fig_decode_grid_rows.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.fig_convert_kv.restype = ctypes.c_int
    lib.fig_convert_kv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
