"""flashinfer_gen: generated CuTe attention kernels behind FlashInfer's Python API."""
from .decode import BatchDecodeWithPagedKVCacheWrapper
from .registry import InstanceNotBuiltError, Registry, default_registry
from .validation import ArgumentError

__all__ = ["BatchDecodeWithPagedKVCacheWrapper", "InstanceNotBuiltError", "Registry", "default_registry",
           "ArgumentError"]
