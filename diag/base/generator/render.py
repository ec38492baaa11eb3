"""Jinja rendering of instances, the generated ABI headers, the manifest and the CMake list.

Output is deterministic (same keys and templates -> byte-identical files) and files are only
rewritten when their content changes, so ninja rebuilds exactly the instances that changed.
An instance's cache key (`source_hash`, part of its library's file name) covers its rendered
source, the headers it includes (followed from its own #include lines), the exact nvcc flags
the CMake module passes, the CMake module itself, and the nvcc, host compiler and CUTLASS
versions: a stale
binary is never loaded, and an edit of one kind's header rebuilds only the instances that
include it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

import jinja2

from . import abi, toolchain
from .arches import ARCH_BY_NAME
from .instances import KINDS, InstanceKey, check, template_context

# Flags every instance is compiled with, besides its arch's gencode; the CMake module passes
# exactly this list (and CMake's own CUDA flags are cleared), so what is hashed is what is used.
# -DNDEBUG keeps CUTLASS's asserts (function calls) out of the kernels; -warn-spills makes ptxas
# report any register spill, which the build driver then refuses.
COMMON_NVCC_FLAGS = ("-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr",
                     "-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden", "-Xptxas=-warn-spills")
MANIFEST_NAME = "manifest.json"
CMAKE_LIST_NAME = "instances.cmake"
MANIFEST_VERSION = 2
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


@functools.lru_cache(maxsize=4)
def _environment(template_dir: str) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(key: InstanceKey, template_dir: Path = toolchain.TEMPLATE_DIR) -> str:
    check(key)
    return _environment(str(template_dir)).get_template(KINDS[key.kind].template).render(**template_context(key))


@functools.lru_cache(maxsize=1)
def generated_headers() -> dict[str, str]:
    """The C ABI headers rendered from generator/abi.py: the shared one and one per kind."""
    headers = {abi.COMMON_HEADER: abi.common_header()}
    for spec in KINDS.values():
        headers[spec.abi.header] = abi.kind_header(spec.abi)
    return headers


def included_headers(source: str, template_dir: Path = toolchain.TEMPLATE_DIR) -> dict[str, str]:
    """Name -> text of every project header `source` includes, directly or not (quoted
    includes; the CuTe/CUTLASS headers, included with <>, are covered by the CUTLASS version)."""
    found: dict[str, str] = {}
    pending = _INCLUDE.findall(source)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        if name in generated_headers():
            text = generated_headers()[name]
        elif (template_dir / name).is_file():
            text = (template_dir / name).read_text()
        else:
            raise FileNotFoundError(f'#include "{name}" is neither a template header nor a generated ABI header')
        found[name] = text
        pending += _INCLUDE.findall(text)
    return dict(sorted(found.items()))


def nvcc_flags(key: InstanceKey) -> list[str]:
    return [*COMMON_NVCC_FLAGS, ARCH_BY_NAME[key.arch].gencode]


def _build_system_text() -> str:
    return "".join(p.read_text() for p in sorted(toolchain.CMAKE_DIR.glob("*")) if p.is_file())


def tools_or_unknown(tools: dict | None = None) -> dict:
    """`tools`, else the toolchain found now, else placeholders (sources can be generated on a
    machine without nvcc; their hashes then match no library built anywhere)."""
    tools = toolchain.current() if tools is None else tools
    return tools if tools is not None else {"nvcc": "unknown", "host_cxx": "unknown", "cutlass": "unknown"}


def source_hash(key: InstanceKey, source: str | None = None, tools: dict | None = None,
                template_dir: Path = toolchain.TEMPLATE_DIR) -> str:
    """The cache key of one instance. `tools` is {"nvcc": ..., "host_cxx": ..., "cutlass": ...}
    (default: the toolchain found now)."""
    source = render(key, template_dir) if source is None else source
    tools = tools_or_unknown(tools)
    h = hashlib.sha256()
    for part in (source, *(f"{n}\n{t}" for n, t in included_headers(source, template_dir).items()),
                 " ".join(nvcc_flags(key)), _build_system_text(), json.dumps(tools, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def library_filename(key: InstanceKey, digest: str) -> str:
    return f"libfig_{key.name}_{digest}.so"


def write_if_changed(path: Path, content: str) -> bool:
    if path.exists() and path.read_text() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)
    return True


def load_manifest(generated_dir: Path) -> dict:
    """The manifest, or an empty one where there is none or it is of another version (its
    instances are then simply rebuilt)."""
    path = Path(generated_dir) / MANIFEST_NAME
    empty = {"version": MANIFEST_VERSION, "instances": {}}
    if not path.exists():
        return empty
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return empty
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return empty
    return data


def generate(keys: Iterable[InstanceKey], generated_dir: Path, tools: dict | None = None) -> dict:
    """Renders `keys` and the ABI headers into generated_dir and merges the keys into its manifest.

    The manifest lists every instance generated into this directory so far (so that later
    builds add to, not replace, the registry); instances.cmake lists exactly `keys`, the ones
    this build asks for. Returns the manifest entries of `keys` by name.
    """
    generated_dir = Path(generated_dir)
    keys = sorted(set(check(k) for k in keys))
    tools = tools_or_unknown(tools)
    for name, text in generated_headers().items():
        write_if_changed(generated_dir / name, text)
    manifest = load_manifest(generated_dir)
    entries = {}
    for key in keys:
        source = render(key)
        write_if_changed(generated_dir / key.filename, source)
        digest = source_hash(key, source, tools)
        entries[key.name] = {
            "key": key.as_dict(),
            "source": key.filename,
            "library": library_filename(key, digest),
            "source_hash": digest,
            "nvcc_flags": nvcc_flags(key),
            "headers": list(included_headers(source)),
            "toolchain": tools,
        }
    manifest["instances"].update(entries)
    manifest["instances"] = dict(sorted(manifest["instances"].items()))
    write_if_changed(generated_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    lines = ["# Generated by generator/render.py: the instances this build asks for.\n"]
    for name, entry in entries.items():
        flags = ";".join(entry["nvcc_flags"])
        lines.append(f'fig_add_instance({name} "${{FIG_GENERATED_DIR}}/{entry["source"]}" '
                     f'"{entry["library"][len("lib"):-len(".so")]}" "{flags}")\n')
    write_if_changed(generated_dir / CMAKE_LIST_NAME, "".join(lines))
    return entries
