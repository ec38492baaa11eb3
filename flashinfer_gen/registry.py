"""Registry: which instances are built, and the ctypes modules that run them.

The registry is derived from the build cache's manifest; an entry counts as built only when
its library exists *and* its source hash matches the current templates (a stale library is
never loaded). A missing instance is either built on demand (FLASHINFER_GEN_JIT=1 or
`jit=True`) or refused with an error that names it, the nearest built keys and the command
that adds it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
from pathlib import Path

from generator import InstanceKey, why_invalid
from generator.render import TEMPLATE_DIR, headers_digest, load_manifest, source_hash

from . import abi
from .builder import build, cache_root, generated_dir, library_dir

ENV_JIT = "FLASHINFER_GEN_JIT"

# Device compute capability -> the arch whose SASS runs there. sm80 SASS runs on every 8.x.
_CAPABILITY_ARCH = {8: "sm80", 9: "sm90a"}


def _template_files() -> list[Path]:
    return sorted(TEMPLATE_DIR.iterdir())


def arch_for_capability(capability: tuple[int, int]) -> str | None:
    return _CAPABILITY_ARCH.get(capability[0])


class InstanceNotBuiltError(RuntimeError):
    def __init__(self, key: InstanceKey, nearest: list[InstanceKey]):
        self.key = key
        self.nearest = nearest
        near = "\n".join(f"    {k.name}" for k in nearest) or "    (nothing is built yet)"
        super().__init__(
            f"flashinfer_gen has no built kernel for {key.name}\n"
            f"  ({key.kind}, q {key.q_dtype}, kv {key.kv_dtype}, head dim {key.head_dim}, {key.arch}, "
            f"conversion {key.conversion}, variant {key.variant}).\n"
            f"  Nearest built instances:\n{near}\n"
            f"  Add it with:\n    {build_command(key)}\n"
            f"  or let it build on first use: export {ENV_JIT}=1")


def build_command(key: InstanceKey) -> str:
    return (f"flashinfer-gen build --kind {key.kind} --arch {key.arch} --head-dim {key.head_dim} "
            f"--q-dtype {key.q_dtype} --kv-dtype {key.kv_dtype} --conversion {key.conversion} "
            f"--variant {key.variant}")


class Module:
    """One loaded instance library."""

    def __init__(self, key: InstanceKey, path: Path):
        self.key = key
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        abi.declare(self.lib)
        version, size = self.lib.fig_abi_version(), self.lib.fig_decode_params_size()
        if version != abi.ABI_VERSION or size != ctypes.sizeof(abi.FigDecodeParams):
            raise RuntimeError(f"{path}: ABI version {version} / params size {size} does not match "
                               f"this flashinfer_gen ({abi.ABI_VERSION} / {ctypes.sizeof(abi.FigDecodeParams)}); "
                               "rebuild it")
        name = self.lib.fig_instance_name().decode()
        if name != key.name:
            raise RuntimeError(f"{path} holds instance {name}, expected {key.name}")
        self._occupancy: tuple[int, int] | None = None

    def occupancy(self) -> tuple[int, int]:
        """(CTAs per SM, SM count) of the decode kernel on the current device."""
        if self._occupancy is None:
            ctas, sms = ctypes.c_int(0), ctypes.c_int(0)
            abi.check(self.lib.fig_decode_occupancy(ctypes.byref(ctas), ctypes.byref(sms)), "occupancy query")
            self._occupancy = (ctas.value, sms.value)
        return self._occupancy

    def grid_rows(self, num_qo_heads: int, num_kv_heads: int) -> int:
        return int(self.lib.fig_decode_grid_rows(num_qo_heads, num_kv_heads))

    def run(self, params: abi.FigDecodeParams, stream: int) -> None:
        abi.check(self.lib.fig_decode_run(ctypes.byref(params), ctypes.c_void_p(stream)), self.key.name)

    def convert_kv(self, codes_ptr: int, out_ptr: int, n: int, stream: int) -> None:
        abi.check(self.lib.fig_convert_kv(ctypes.c_void_p(codes_ptr), ctypes.c_void_p(out_ptr), n,
                                          ctypes.c_void_p(stream)), f"{self.key.name} convert_kv")


@dataclasses.dataclass(frozen=True)
class Entry:
    key: InstanceKey
    library: Path
    built: bool
    stale: bool


class Registry:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_root()
        self._modules: dict[InstanceKey, Module] = {}
        self._lock = threading.Lock()
        self._entries_cache: tuple[tuple, list[Entry]] | None = None

    def _state(self) -> tuple:
        # Entries depend on the manifest, the libraries present and the templates.
        paths = [generated_dir(self.root) / "manifest.json", library_dir(self.root), *_template_files()]
        return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)

    def entries(self) -> list[Entry]:
        state = self._state()
        if self._entries_cache is not None and self._entries_cache[0] == state:
            return self._entries_cache[1]
        entries = self._scan()
        self._entries_cache = (state, entries)
        return entries

    def _scan(self) -> list[Entry]:
        manifest = load_manifest(generated_dir(self.root))
        digest = headers_digest()
        out = []
        for item in manifest["instances"].values():
            key = InstanceKey.from_dict(item["key"])
            if why_invalid(key) is not None:
                continue
            current = source_hash(key, digest=digest)
            path = library_dir(self.root) / item["library"]
            stale = current != item["source_hash"]
            out.append(Entry(key, path, built=path.exists() and not stale, stale=stale))
        return sorted(out, key=lambda e: e.key)

    def built_keys(self) -> list[InstanceKey]:
        return [e.key for e in self.entries() if e.built]

    def nearest(self, key: InstanceKey, limit: int = 5) -> list[InstanceKey]:
        fields = [f.name for f in dataclasses.fields(InstanceKey)]

        def distance(other: InstanceKey) -> tuple[int, str]:
            return (sum(getattr(other, f) != getattr(key, f) for f in fields), other.name)

        return sorted(self.built_keys(), key=distance)[:limit]

    def lookup(self, key: InstanceKey, jit: bool | None = None) -> Module:
        reason = why_invalid(key)
        if reason is not None:
            raise ValueError(f"unsupported combination {key.name}: {reason}")
        with self._lock:
            if key in self._modules:
                return self._modules[key]
            entry = next((e for e in self.entries() if e.key == key and e.built), None)
            if entry is None:
                if jit is None:
                    jit = os.environ.get(ENV_JIT, "0") not in ("", "0", "false", "False")
                if not jit:
                    raise InstanceNotBuiltError(key, self.nearest(key))
                build([key], root=self.root, echo=None)
                entry = next((e for e in self.entries() if e.key == key and e.built), None)
                if entry is None:
                    raise RuntimeError(f"on-demand build of {key.name} produced no library")
            module = Module(key, entry.library)
            self._modules[key] = module
            return module


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None or _default.root != cache_root():
        _default = Registry()
    return _default
