"""Registry: which instances are built, and the ctypes modules that run them.

The registry is derived from the build cache's manifest; an entry counts as built only when
its library exists *and* its cache key matches the current templates, flags and toolchain (a
stale library is never loaded). A missing instance is either built on demand
(FLASHINFER_GEN_JIT=1 or `jit=True`) or refused with an error that names it, the nearest built
keys and the command that adds it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
from pathlib import Path

from generator import KINDS, InstanceKey, toolchain, why_invalid
from generator.abi import ctypes_struct, declare
from generator.keys import KEY_FIELDS
from generator.render import load_manifest, source_hash

from .builder import build, cache_root, generated_dir, library_dir

ENV_JIT = "FLASHINFER_GEN_JIT"

# The cudaError_t values a launch can plausibly return, for readable messages.
_CUDA_ERRORS = {1: "cudaErrorInvalidValue", 2: "cudaErrorMemoryAllocation", 98: "cudaErrorInvalidDeviceFunction",
                100: "cudaErrorNoDevice", 101: "cudaErrorInvalidDevice", 209: "cudaErrorNoKernelImageForDevice",
                400: "cudaErrorInvalidResourceHandle", 700: "cudaErrorIllegalAddress",
                701: "cudaErrorLaunchOutOfResources", 801: "cudaErrorNotSupported"}


def check_status(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what}: CUDA error {code} ({_CUDA_ERRORS.get(code, 'see cudaError_t')})")


def build_command(key: InstanceKey) -> str:
    return "flashinfer-gen build " + " ".join(f"--{f.replace('_', '-')} {getattr(key, f)}" for f in KEY_FIELDS)


class InstanceNotBuiltError(RuntimeError):
    def __init__(self, key: InstanceKey, nearest: list[InstanceKey]):
        self.key = key
        self.nearest = nearest
        near = "\n".join(f"    {k.name}" for k in nearest) or "    (nothing is built yet)"
        super().__init__(
            f"flashinfer_gen has no built kernel for {key.name}\n  ({key.describe()}).\n"
            f"  Nearest built instances:\n{near}\n"
            f"  Add it with:\n    {build_command(key)}\n"
            f"  or let it build on first use: export {ENV_JIT}=1")


class Module:
    """One loaded instance library: its kind's entry points, declared from the kind's ABI spec,
    after checking that the library was built from the same spec."""

    def __init__(self, key: InstanceKey, path: Path):
        self.key = key
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.lib.fig_kind.restype = ctypes.c_char_p
        kind = self.lib.fig_kind().decode()
        if kind != key.kind or kind not in KINDS:
            raise RuntimeError(f"{path} is a {kind!r} library, expected {key.kind!r}")
        self.abi = KINDS[kind].abi
        # The version and size first: a library built from another spec may lack entry points.
        identity = [fn for fn in self.abi.all_functions if fn.name in ("abi_version", "params_size")]
        self._ops = declare(self.lib, self.abi, identity)
        version, size = self.call("abi_version"), self.call("params_size")
        expected = (self.abi.version, ctypes.sizeof(self.params_type))
        if (version & 0xFFFFFFFF, size) != expected:
            raise RuntimeError(f"{path}: {kind} ABI version {version & 0xFFFFFFFF} / params size {size} does not "
                               f"match this flashinfer_gen {expected}; rebuild it")
        self._ops = declare(self.lib, self.abi)
        name = self.call("instance_name").decode()
        if name != key.name:
            raise RuntimeError(f"{path} holds instance {name}, expected {key.name}")
        self._per_device: dict[tuple[str, int], object] = {}

    @property
    def params_type(self) -> type:
        return ctypes_struct(self.abi.params)

    def call(self, op: str, *args):
        """Calls entry point `op` of this kind (fig_kind / fig_<kind>_<op>); a cudaError_t result
        other than success raises."""
        if op not in self._ops:
            raise AttributeError(f"{self.key.kind} libraries export no {op!r}")
        cfunc, fn = self._ops[op]
        result = cfunc(*args)
        if fn.returns_status:
            check_status(result, f"{self.key.name} {op}")
        return result

    def entry(self, op: str):
        """Entry point `op`'s ctypes function, for a caller that checks its status itself (run()'s
        launch, where Module.call's lookups are measurable host time)."""
        return self._ops[op][0]

    def per_device(self, what: str, device: int, compute):
        """A value that depends on the device (occupancy, SM count), computed once per device."""
        key = (what, device)
        if key not in self._per_device:
            self._per_device[key] = compute()
        return self._per_device[key]


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
        paths = [generated_dir(self.root) / "manifest.json", library_dir(self.root),
                 *sorted(toolchain.TEMPLATE_DIR.iterdir())]
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
        tools_now = toolchain.current()
        out = []
        for item in manifest["instances"].values():
            try:
                key = InstanceKey.from_dict(item["key"])
                recorded_hash, library = item["source_hash"], item["library"]
            except (KeyError, TypeError, ValueError):
                continue  # an entry another version wrote: not loadable, rebuilt when asked for
            if why_invalid(key) is not None:
                continue
            # Without nvcc here nothing can be rebuilt; judge the library by the toolchain that built it.
            tools = tools_now if tools_now is not None else item.get("toolchain")
            stale = tools is None or source_hash(key, tools=tools) != recorded_hash
            path = library_dir(self.root) / library
            out.append(Entry(key, path, built=path.exists() and not stale, stale=stale))
        return sorted(out, key=lambda e: e.key)

    def built_keys(self) -> list[InstanceKey]:
        return [e.key for e in self.entries() if e.built]

    def nearest(self, key: InstanceKey, limit: int = 5) -> list[InstanceKey]:
        def distance(other: InstanceKey) -> tuple[int, str]:
            return (sum(getattr(other, f) != getattr(key, f) for f in KEY_FIELDS), other.name)

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
