"""Compile smoke test (CI has nvcc but no GPU): builds a small set through the real CMake + ninja
path into the build cache, then inspects the libraries: exported C ABI only, the SASS arch of
every built instance (sm_80 for every Ampere-path sm80 instance), and whether the FP8 convert
instruction is present exactly where the instance asks for hardware conversion."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from generator import InstanceKey
from flashinfer_gen.builder import build, cache_root
from flashinfer_gen.registry import Registry

pytestmark = pytest.mark.compile

SMOKE = [
    InstanceKey("decode", "bf16", "e4m3", 128, "sm80", "software"),
    InstanceKey("decode", "f16", "e5m2", 64, "sm90a", "hardware"),
]
EXPORTS = {"fig_abi_version", "fig_decode_params_size", "fig_instance_name", "fig_decode_run",
           "fig_decode_occupancy", "fig_decode_grid_rows", "fig_convert_kv"}


def _cuda_tool(name: str) -> str:
    """cuobjdump / nvdisasm from PATH, the CUDA toolkit, or the nvidia-cuda-* wheels."""
    candidates = [shutil.which(name), f"/usr/local/cuda/bin/{name}",
                  str(Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "bin" / name)]
    for c in candidates:
        if c and Path(c).exists():
            return c
    pytest.fail(f"{name} not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


@pytest.fixture(scope="module")
def smoke_build():
    if shutil.which("nvcc") is None:
        pytest.fail("nvcc is required for the compile smoke test")
    return build(SMOKE, echo=None)


def test_smoke_set_builds_with_times(smoke_build):
    assert smoke_build.built == sorted(k.name for k in SMOKE)
    for k in SMOKE:
        assert smoke_build.library_bytes[k.name] > 0
    print(f"\nbuild of {len(SMOKE)} instances: {smoke_build.wall_seconds:.1f} s wall; "
          + ", ".join(f"{n} {s:.1f} s" for n, s in smoke_build.seconds.items()))


def test_only_the_c_abi_is_exported(smoke_build):
    reg = Registry(cache_root())
    for e in reg.entries():
        if e.key in SMOKE:
            out = subprocess.run(["nm", "-D", "--defined-only", str(e.library)], capture_output=True, text=True,
                                 check=True).stdout
            names = {line.split()[-1] for line in out.splitlines() if " T " in line}
            assert names == EXPORTS, f"{e.library.name} exports {sorted(names ^ EXPORTS)} unexpectedly"


def test_every_built_instance_has_its_sass(smoke_build):
    """cuobjdump -sass of every built library in the cache: the SASS is there for its arch (sm_80
    for every Ampere-path sm80 instance) and for no other."""
    cuobjdump = _cuda_tool("cuobjdump")
    env = dict(os.environ, PATH=f"{Path(_cuda_tool('nvdisasm')).parent}:{os.environ.get('PATH', '')}")
    entries = [e for e in Registry(cache_root()).entries() if e.built]
    assert any(e.key.arch == "sm80" for e in entries), "the smoke set builds at least one sm80 instance"
    for e in entries:
        sass = subprocess.run([cuobjdump, "-sass", str(e.library)], capture_output=True, text=True, check=True,
                              env=env).stdout
        arches = set(re.findall(r"arch = (sm_\d+a?)", sass))
        expected = {"sm80": "sm_80", "sm90a": "sm_90a"}[e.key.arch]
        assert arches == {expected}, f"{e.library.name}: SASS for {arches}, expected {expected}"
        assert "HMMA" in sass, f"{e.key.name}: no tensor-core instruction"


def test_on_demand_build_from_two_processes(tmp_path):
    """jit=True builds a missing instance into the cache under the file lock: two processes asking
    at once both get a loadable library, built once."""
    script = (
        "import sys; from generator import InstanceKey; from flashinfer_gen.registry import Registry\n"
        "m = Registry(sys.argv[1]).lookup(InstanceKey('decode', 'f16', 'f16', 64, 'sm80', 'none'), jit=True)\n"
        "print(m.lib.fig_instance_name().decode(), m.lib.fig_abi_version())\n")
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))  # nvcc, cmake and ninja as the caller finds them
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["decode_qf16_kvf16_d64_sm80_none_default", "1"]
    assert len(list((tmp_path / "lib").glob("*.so"))) == 1


def test_fp8_convert_instruction_only_in_hardware_instances(smoke_build):
    _cuda_tool("nvdisasm")  # cuobjdump -sass needs it on PATH
    cuobjdump = _cuda_tool("cuobjdump")
    env = dict(os.environ, PATH=f"{Path(_cuda_tool('nvdisasm')).parent}:{os.environ.get('PATH', '')}")
    for e in Registry(cache_root()).entries():
        if e.key not in SMOKE:
            continue
        sass = subprocess.run([cuobjdump, "-sass", str(e.library)], capture_output=True, text=True, check=True,
                              env=env).stdout
        assert "HMMA" in sass, f"{e.key.name}: no tensor-core instruction"
        has_cvt = bool(re.search(r"F2FP\.F16\.E[45]M[32]", sass))
        assert has_cvt == (e.key.conversion == "hardware"), f"{e.key.name}: FP8 cvt present={has_cvt}"
