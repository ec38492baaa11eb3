#!/usr/bin/env bash
# Prefill tuning sweep on the device: for each variant, builds its instances into a cache of its
# own and runs `bench_prefill.py --quick` (d128, B4 S4096, 32/32 heads, paged 16 and ragged, bf16
# and e4m3; an instance that would spill is refused by the build and shows as an error row).
# FIG_TUNE_FAMILY=sm80 (default): FIG_PREFILL_TUNE variants (m16 tiles per warp, keys per tile);
# FIG_TUNE_FAMILY=sm90: FIG_PREFILL_SM90_TUNE variants (ring depths, generator/kind_prefill_sm90.py;
# "" is the default). Results: $OUT/tune-<family>-<variant>.json.
# Usage: bash bench/tune_prefill.sh "m_tiles=1,block_n=64" "m_tiles=2,block_n=16" ...
#        FIG_TUNE_FAMILY=sm90 bash bench/tune_prefill.sh "" "k16=2,v16=3" "vt8=3"
set -uo pipefail
OUT=${OUT:-/tmp/fig_out}; mkdir -p "$OUT"
family=${FIG_TUNE_FAMILY:-sm80}
env_name=$([ "$family" = sm90 ] && echo FIG_PREFILL_SM90_TUNE || echo FIG_PREFILL_TUNE)
for variant in "$@"; do
  tag=$(echo "${variant:-default}" | tr ',=' '_-')
  env "$env_name=$variant" FLASHINFER_GEN_CACHE=/tmp/fig_tune_${family}_$tag FLASHINFER_GEN_JIT=1 \
    python bench/bench_prefill.py --family "$family" --quick --reps 10 --out "$OUT/tune-$family-$tag.json" 2>&1 \
    | grep -E "prefill_|error" | awk -v v="${variant:-default}" '{print v, $0}' | cut -c1-150
done
