#!/usr/bin/env bash
# One device-machine session: install the carried CUTLASS wheel, build the GPU test set, run the
# GPU tests and the decode benchmark; logs and results go to $OUT (at most 8 files come back).
# Usage (on the device): FIG_COMMIT=<sha> [FIG_TUNE=1] [FIG_BENCH=0] bash bench/run_device.sh [pytest args]
set -uo pipefail
OUT=${OUT:-/tmp/fig_out}; mkdir -p "$OUT"
log="$OUT/session.log"
python -m pip install --no-deps --no-index .wheels/nvidia_cutlass-*.whl >>"$log" 2>&1 || { cat "$log"; exit 1; }
export FLASHINFER_GEN_CACHE=$PWD/.fig_cache PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv | tee -a "$log"
t0=$(date +%s)
python -m flashinfer_gen.cli build --arch sm90a --head-dim 64,128,256 --jobs 16 >"$OUT/build.log" 2>&1 &&
python -m flashinfer_gen.cli build --arch sm90a --head-dim 128 --variant softcap --jobs 16 >>"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$log"
python -m flashinfer_gen.cli list >>"$OUT/build.log" 2>&1
for lib in .fig_cache/lib/*sm90a*.so; do cuobjdump -lelf "$lib" | grep -q sm_90a || echo "NO sm_90a SASS in $lib" | tee -a "$log"; done
python -m flashinfer_gen.cli demo 2>&1 | tee -a "$log"
rc=0
if [ "${FIG_TESTS:-1}" = 1 ]; then
  python -m pytest tests -q -x -p no:cacheprovider "$@" >"$OUT/pytest.log" 2>&1; rc=$?
  tail -4 "$OUT/pytest.log"
fi
if [ "${FIG_TUNE:-0}" = 1 ]; then
  python bench/tune_decode.py --out "$OUT/tune.json" >"$OUT/tune.log" 2>&1; tail -30 "$OUT/tune.log"
fi
if [ "${FIG_BENCH:-1}" = 1 ]; then
  python bench/bench_decode.py ${FIG_BENCH_ARGS:-} --out "$OUT/decode.json" 2>&1 | tee "$OUT/bench.log" | tail -70
fi
exit $rc
