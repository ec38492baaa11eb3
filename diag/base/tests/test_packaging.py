"""A wheel built from this tree installs into a fresh virtual environment and generates sources
there from its own copy of the templates (package data), away from the checkout."""
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import jinja2
import markupsafe

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_generates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("flashinfer_gen-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   cwd=tmp_path)
    # generate needs only Jinja2 (no torch, no CUDA): this interpreter's copy, without a network
    deps = tmp_path / "deps"
    for package in (jinja2, markupsafe):
        shutil.copytree(Path(package.__file__).parent, deps / package.__name__)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "test_deps.pth").write_text(str(deps) + "\n")
    out = tmp_path / "generated"
    run = subprocess.run([tmp_path / "env" / "bin" / "flashinfer-gen", "generate", "--arch", "sm80", "--head-dim", "64",
                          "--q-dtype", "f16", "--kv-dtype", "f16,e4m3", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.glob("*.cu")) == [f"{kind}_qf16_kv{kv}_d64_sm80_{conv}_default.cu"
                                                       for kind in ("append", "decode", "prefill")
                                                       for kv, conv in (("e4m3", "software"), ("f16", "none"))]
    assert all((out / f"fig_abi_{kind}.h").is_file() for kind in ("append", "decode", "prefill"))
    assert (out / "manifest.json").is_file()
    where = subprocess.run([python, "-c", "from generator import toolchain; print(toolchain.TEMPLATE_DIR); "
                            "print(toolchain.CMAKE_DIR)"], capture_output=True, text=True, check=True,
                           cwd=tmp_path).stdout.split()
    env_root = str((tmp_path / "env").resolve())
    assert all(p.startswith(env_root) for p in where), where
    assert all((Path(where[0]) / header).is_file() for header in ("decode_kernel.cuh", "append_kernel.cuh",
                                                                  "kv_tile_convert.cuh", "fp8_encode.cuh"))
    assert (Path(where[1]) / "CMakeLists.txt").is_file()
