"""Compile smoke test (CI has nvcc but no GPU): builds a small set through the real CMake + ninja
path into the build cache, then inspects the libraries: the exported C ABI and nothing else, the
SASS arch of every built instance, the FP8 convert instruction exactly where the instance asks for
hardware conversion, no register spill (no stack frame, no local memory) in any kernel, and the
compile commands carrying exactly the flags the cache key hashed."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from generator import KINDS, InstanceKey, toolchain
from generator.arches import ARCH_BY_NAME
from generator.render import nvcc_flags
from flashinfer_gen.builder import build, cache_root, cmake_dir
from flashinfer_gen.registry import Registry

pytestmark = [pytest.mark.compile,
              pytest.mark.skipif(toolchain.find_nvcc() is None, reason="nvcc not found: no CUDA toolkit to compile with")]

# The worst register pressure (head dim 256, the e4m3 software routine with its exact replay; a
# 16-bit prefill at 255 registers), the hardware convert on Hopper, a 100 KB part, every kind
# (the Hopper prefill at head dim 256 and with soft-cap), the Ampere-path prefill whose warps
# upcast the FP8 codes themselves (on sm_89, the first arch with `cvt`, and from e5m2 on sm_80 and,
# at head dim 64, on a 100 KB part).
SMOKE = [
    InstanceKey("decode", "bf16", "e4m3", 256, "sm80", "software"),
    InstanceKey("decode", "f16", "e5m2", 64, "sm90a", "hardware"),
    InstanceKey("decode", "f16", "f16", 128, "sm89", "none"),
    InstanceKey("prefill", "bf16", "e4m3", 256, "sm80", "software"),
    InstanceKey("prefill", "bf16", "bf16", 128, "sm90a", "none"),
    InstanceKey("prefill", "bf16", "e4m3", 128, "sm89", "hardware"),  # FP8 codes upcast by the warps
    InstanceKey("prefill", "bf16", "e5m2", 128, "sm80", "software"),  # the same by byte permutes, on sm_80
    InstanceKey("prefill", "f16", "e5m2", 64, "sm86", "software"),  # ... from padded rows of 64 codes
    InstanceKey("prefill_sm90", "bf16", "bf16", 256, "sm90a", "none"),
    InstanceKey("prefill_sm90", "f16", "f16", 128, "sm90a", "none", "softcap"),
    InstanceKey("prefill_sm90", "bf16", "e4m3", 128, "sm90a", "hardware"),
    InstanceKey("prefill_sm90", "bf16", "e4m3", 64, "sm90a", "hardware"),  # 64-byte swizzled rows
    InstanceKey("prefill_sm90", "e4m3", "e4m3", 256, "sm90a", "hardware", o_dtype="bf16"),  # 64-key FP8 tiles
    InstanceKey("append", "bf16", "e4m3", 128, "sm80", "software"),
    InstanceKey("append", "f16", "e5m2", 64, "sm90a", "hardware"),
]


def _cuda_tool(name: str) -> str:
    """cuobjdump / nvdisasm from PATH, the CUDA toolkit, or the nvidia-cuda-* wheels."""
    candidates = [shutil.which(name), str(Path(toolchain.find_nvcc()).parent / name),
                  str(Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "bin" / name)]
    for c in candidates:
        if c and Path(c).exists():
            return c
    pytest.fail(f"{name} not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


def _cuobjdump(*args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(_cuda_tool('nvdisasm')).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run([_cuda_tool("cuobjdump"), *args], capture_output=True, text=True, check=True,
                          env=env).stdout


@pytest.fixture(scope="module")
def smoke_build():
    return build(SMOKE, echo=None)


@pytest.fixture(scope="module")
def built_entries(smoke_build):
    """Every library built in the cache (the smoke set and whatever else is there)."""
    return [e for e in Registry(cache_root()).entries() if e.built]


def test_smoke_set_builds_with_times(smoke_build):
    assert smoke_build.built == sorted(k.name for k in SMOKE)
    for k in SMOKE:
        assert smoke_build.library_bytes[k.name] > 0
    print(f"\nbuild of {len(SMOKE)} instances: {smoke_build.wall_seconds:.1f} s wall; "
          + ", ".join(f"{n} {s:.1f} s" for n, s in smoke_build.seconds.items()))


def test_only_the_c_abi_is_exported(built_entries):
    for e in built_entries:
        abi = KINDS[e.key.kind].abi
        expected = {abi.symbol(fn) for fn in abi.all_functions}
        out = subprocess.run(["nm", "-D", "--defined-only", str(e.library)], capture_output=True, text=True,
                             check=True).stdout
        names = {line.split()[-1] for line in out.splitlines() if " T " in line}
        assert names == expected, f"{e.library.name} exports {sorted(names ^ expected)} unexpectedly"


def test_every_built_instance_has_its_sass(built_entries):
    """cuobjdump -sass of every built library in the cache: the SASS is there for its arch and
    for no other; the attention kinds run on tensor cores; the FP8 convert instruction (FP8 ->
    fp16 for attention, fp32 -> FP8 with saturation for append) is there exactly where the
    instance asks for hardware conversion."""
    assert {k.arch for k in SMOKE} <= {e.key.arch for e in built_entries}
    # prefill_sm90 converts the other way: its FP8 tiles quantise q and P to e4m3
    cvt = {"decode": r"F2FP\.F16\.E[45]M[32]", "prefill": r"F2FP\.F16\.E[45]M[32]",
           "append": r"F2FP\.SATFINITE\.E[45]M[32]\.F32", "prefill_sm90": r"F2FP\.SATFINITE\.E4M3\.F32"}
    for e in built_entries:
        sass = _cuobjdump("-sass", str(e.library))
        arches = set(re.findall(r"arch = (sm_\d+a?)", sass))
        assert arches == {ARCH_BY_NAME[e.key.arch].sass}, f"{e.library.name}: SASS for {arches}"
        if e.key.kind != "append":
            # HMMA, or HGMMA (16-bit) / QGMMA (FP8) warpgroup MMAs
            assert re.search(r"\b(HG?|QG)MMA\.", sass), f"{e.key.name}: no tensor-core instruction"
        if e.key.kind == "prefill_sm90":  # warpgroup MMAs, and the register hand-over between roles
            gmma = "QGMMA" if e.key.is_fp8 else "HGMMA"
            assert gmma in sass and "USETMAXREG" in sass, f"{e.key.name}: no {gmma} / setmaxnreg"
        has_cvt = bool(re.search(cvt.get(e.key.kind, cvt["prefill"]), sass))
        assert has_cvt == (e.key.conversion == "hardware"), f"{e.key.name}: FP8 cvt present={has_cvt}"


def test_no_kernel_spills(built_entries):
    """No stack frame and no local memory in any function of any built library: a spill or a
    register array indexed at run time shows as one of them."""
    for e in built_entries:
        usage = _cuobjdump("-res-usage", str(e.library))
        functions = re.findall(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
        assert functions, f"{e.library.name}: no resource usage found"
        for name, regs, stack, local in functions:
            assert (int(stack), int(local)) == (0, 0), \
                f"{e.key.name}: {name} uses {regs} registers, stack {stack} B, local {local} B (spills)"


def test_compile_commands_carry_exactly_the_hashed_flags(smoke_build):
    """What CMake runs is the instance's hashed flag list plus what the (hashed) CMake module
    adds by itself: includes, the library's export define, the shared-library -fPIC, the host
    compiler (whose version the key holds), and the compile/output/dependency bookkeeping."""
    commands = {Path(c["file"]).stem: c["command"].split()
                for c in json.loads((cmake_dir(cache_root()) / "compile_commands.json").read_text())}
    bookkeeping = re.compile(r"^(-I.*|-D\w+_EXPORTS|-forward-unknown-to-host-compiler|-x|cu|-c|-o|-MD|-MT|-MF"
                             r"|-Xcompiler=-fPIC|" + re.escape(f"-ccbin={toolchain.find_host_compiler()}") + ")$")
    for k in SMOKE:
        args = commands[k.name][1:]
        flags = nvcc_flags(k)
        assert all(f in args for f in flags), f"{k.name}: {sorted(set(flags) - set(args))} not passed"
        files = {a for a in args if not a.startswith("-")} - {"cu"}
        extra = [a for a in args if a not in flags and a not in files and not bookkeeping.match(a)]
        assert extra == [], f"{k.name}: CMake added unhashed flags {extra}"


def test_on_demand_build_from_two_processes(tmp_path):
    """jit=True builds a missing instance into the cache under the file lock: two processes asking
    at once both get a loadable library, built once."""
    key = InstanceKey("decode", "f16", "f16", 64, "sm80", "none")
    script = (
        "import sys; from generator import InstanceKey; from flashinfer_gen.registry import Registry\n"
        f"m = Registry(sys.argv[1]).lookup(InstanceKey(*{tuple(key.as_dict().values())!r}), jit=True)\n"
        "print(m.call('instance_name').decode(), m.call('kind').decode())\n")
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))  # nvcc, cmake and ninja as the caller finds them
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == [key.name, "decode"]
    assert len(list((tmp_path / "lib").glob("*.so"))) == 1
