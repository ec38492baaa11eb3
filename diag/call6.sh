#!/bin/bash
# FP8 tiles at head dim 192: GPU tests, a quick bench, the sanitizer's d192 set
OUT=${OUT:-/tmp/out}; export FIG_COMMIT=5c5e915
bash bench/run_device.sh install || exit 1
t0=$(date +%s)
timeout 230 python -m pytest -q -p no:cacheprovider -rfE tests/test_prefill_sm90_gpu.py -k "192 or backend_dispatch" >$OUT/pytest-d192.log 2>&1
echo "tests exit $? $(( $(date +%s) - t0 )) s"; grep -E "built in|passed|failed|error" $OUT/pytest-d192.log | tail -4
t0=$(date +%s)
FLASHINFER_GEN_JIT=1 timeout 60 python bench/bench_prefill.py --family sm90 --quick --head-dim 192 --reps 10 --out $OUT/prefill-sm90-d192.json >$OUT/prefill-sm90-d192.log 2>&1
echo "bench exit $? $(( $(date +%s) - t0 )) s"; grep "B4S4096" $OUT/prefill-sm90-d192.log | awk '{print $2,$3,$5,$7,$9,$10}'
t0=$(date +%s)
FIG_SANITIZE_ARGS="--head-dim 192" timeout 160 bash bench/run_device.sh sanitize | tail -14
echo "sanitize $(( $(date +%s) - t0 )) s"
