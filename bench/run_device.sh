#!/usr/bin/env bash
# One device-machine session: install the carried CUTLASS wheel, build the GPU test set, run the
# GPU tests and the decode benchmark, leave logs and results in $OUT. Usage (on the device):
#   FIG_COMMIT=<sha> bash bench/run_device.sh [pytest args...]
set -uo pipefail
OUT=${OUT:-/tmp/fig_out}; mkdir -p "$OUT"
python -m pip install --no-deps --no-index .wheels/nvidia_cutlass-*.whl >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
export FLASHINFER_GEN_CACHE=$PWD/.fig_cache PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
python -m flashinfer_gen.cli build --arch sm90a --head-dim 64,128,256 --jobs 16 >"$OUT/build.log" 2>&1 &&
python -m flashinfer_gen.cli build --arch sm90a --head-dim 128 --variant softcap --jobs 16 >>"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/build.log"
python -m flashinfer_gen.cli list >"$OUT/registry.txt" 2>&1
for lib in .fig_cache/lib/*sm90a*.so; do cuobjdump -lelf "$lib" | grep -q sm_90a || echo "NO sm_90a SASS in $lib"; done
python -m flashinfer_gen.cli demo 2>&1 | tee "$OUT/demo.log"
python -m pytest tests -q -x -p no:cacheprovider "$@" >"$OUT/pytest.log" 2>&1; rc=$?
tail -15 "$OUT/pytest.log"
if [ "${FIG_TUNE:-0}" = 1 ]; then
  python bench/tune_decode.py --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log" | tail -40
fi
if [ "${FIG_BENCH:-1}" = 1 ]; then
  python bench/bench_decode.py ${FIG_BENCH_ARGS:-} --out "$OUT/decode.json" 2>&1 | tee "$OUT/bench.log" | tail -70
fi
exit $rc
