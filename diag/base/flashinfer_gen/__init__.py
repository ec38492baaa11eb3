"""flashinfer_gen: generated CuTe attention kernels behind FlashInfer's Python API.

The wrappers need torch; the CLI's generate/build/list do not, so the public names are loaded
on first use."""
from importlib import import_module

_PUBLIC = {"BatchDecodeWithPagedKVCacheWrapper": ".decode", "CUDAGraphBatchDecodeWithPagedKVCacheWrapper": ".decode", "BatchPrefillWithPagedKVCacheWrapper": ".prefill",
           "BatchPrefillWithRaggedKVCacheWrapper": ".prefill", "InstanceNotBuiltError": ".registry",
           "Registry": ".registry", "default_registry": ".registry", "ArgumentError": ".validation",
           "append_paged_kv_cache": ".append", "get_batch_indices_positions": ".append",
           "single_decode_with_kv_cache": ".single", "single_prefill_with_kv_cache": ".single"}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module 'flashinfer_gen' has no attribute {name!r}")
