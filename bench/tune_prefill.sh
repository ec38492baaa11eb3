#!/usr/bin/env bash
# Prefill tile-shape sweep on the device: for each FIG_PREFILL_TUNE variant (m16 tiles per warp,
# keys per tile), builds its instances into a cache of its own and runs `bench_prefill.py --quick`
# (d128, B4 S4096, 32/32 heads, paged 16 and ragged, bf16 and e4m3; an instance that would
# spill is refused by the build and shows as an error row). Results: $OUT/tune-<variant>.json.
# Usage: bash bench/tune_prefill.sh "m_tiles=1,block_n=64" "m_tiles=2,block_n=16" ...
set -uo pipefail
OUT=${OUT:-/tmp/fig_out}; mkdir -p "$OUT"
for variant in "$@"; do
  tag=$(echo "$variant" | tr ',=' '_-')
  FIG_PREFILL_TUNE=$variant FLASHINFER_GEN_CACHE=/tmp/fig_tune_$tag FLASHINFER_GEN_JIT=1 \
    python bench/bench_prefill.py --quick --reps 10 --out "$OUT/tune-$tag.json" 2>&1 \
    | grep -E "prefill_|error" | awk -v v="$variant" '{print v, $0}' | cut -c1-150
done
