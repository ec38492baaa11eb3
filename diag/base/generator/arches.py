"""Every fact about a GPU architecture that the generator, the build, the registry or the tests
need, in one table. Nothing else in the project names a compute capability, a gencode flag or a
shared-memory size.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

KB = 1024


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str                                  # the key's arch field, e.g. "sm80"
    gencode: str                               # nvcc target; SASS only, no PTX to JIT
    sass: str                                  # what `cuobjdump -sass` names the SASS ("sm_80")
    capabilities: tuple[tuple[int, int], ...]  # devices whose kernels come from this arch
    smem_per_sm: int                           # bytes of shared memory per SM
    smem_per_block: int                        # largest dynamic shared memory one CTA may opt into
    has_fp8_cvt: bool                          # cvt.rn.f16x2.e4m3x2 / e5m2x2 exist (sm_89+)
    kinds: tuple[str, ...]                     # kernel kinds this arch builds
    registers_per_sm: int = 64 * KB
    smem_reserved_per_block: int = 1 * KB      # the system's share of every CTA's shared memory

    @property
    def default_conversion(self) -> str:
        """How an FP8 KV cache is upcast unless the caller forces one."""
        return "hardware" if self.has_fp8_cvt else "software"

    @property
    def conversions(self) -> tuple[str, ...]:
        """FP8 conversions this arch can run, preferred first."""
        return ("hardware", "software") if self.has_fp8_cvt else ("software",)


# SASS runs only on devices of the same major version, and a CTA's shared memory must fit the
# smallest part it is launched on, so sm_86 (A10, RTX 30xx) and sm_89 (L4, L40, RTX 40xx), with
# 100 KB per SM instead of the A100's 164 KB, get instances of their own; sm_89 also has the FP8
# convert instruction. sm_87 (Orin) has the A100's 164 KB and runs the sm80 instances.
ARCHES: tuple[Arch, ...] = (
    Arch("sm80", "-gencode=arch=compute_80,code=sm_80", "sm_80", ((8, 0), (8, 7)),
         smem_per_sm=164 * KB, smem_per_block=163 * KB, has_fp8_cvt=False, kinds=("decode", "prefill", "append")),
    Arch("sm86", "-gencode=arch=compute_86,code=sm_86", "sm_86", ((8, 6),),
         smem_per_sm=100 * KB, smem_per_block=99 * KB, has_fp8_cvt=False, kinds=("decode", "prefill", "append")),
    Arch("sm89", "-gencode=arch=compute_89,code=sm_89", "sm_89", ((8, 9),),
         smem_per_sm=100 * KB, smem_per_block=99 * KB, has_fp8_cvt=True, kinds=("decode", "prefill", "append")),
    # wgmma and setmaxnreg need the arch-specific sm_90a target, not plain sm_90.
    Arch("sm90a", "-gencode=arch=compute_90a,code=sm_90a", "sm_90a", ((9, 0),),
         smem_per_sm=228 * KB, smem_per_block=227 * KB, has_fp8_cvt=True,
         kinds=("decode", "prefill", "prefill_sm90", "append")),
)
ARCH_BY_NAME = {a.name: a for a in ARCHES}
ARCH_NAMES = tuple(ARCH_BY_NAME)
# Built when no GPU is visible to say which one is wanted: the A100 and the H100 parts.
FALLBACK_ARCHES = ("sm80", "sm90a")


def arch(name: str) -> Arch:
    try:
        return ARCH_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; known: {list(ARCH_NAMES)}") from None


def arch_for_capability(capability: Iterable[int]) -> Arch | None:
    """The arch whose instances run on a device of this compute capability, or None."""
    cap = tuple(int(c) for c in capability)
    return next((a for a in ARCHES if cap in a.capabilities), None)


def capability_error(capability: Iterable[int]) -> str:
    cap = tuple(capability)
    served = ", ".join(f"{a.name} ({'/'.join(f'{x}.{y}' for x, y in a.capabilities)})" for a in ARCHES)
    return f"no flashinfer_gen kernels target compute capability {cap[0]}.{cap[1]}; arches: {served}"
