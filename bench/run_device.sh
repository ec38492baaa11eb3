#!/usr/bin/env bash
# One device-machine session (no network there): the README's two commands, verbatim, on this
# tree as a fresh checkout would run them, then benchmarks. pip resolves offline from the wheels
# carried in .wheels/ (nvidia-cutlass, setuptools for the build backend, the cuobjdump/nvdisasm
# test extras); everything else is on the device image. Logs and results go to $OUT.
# Usage (on the device): FIG_COMMIT=<sha> [FIG_BASE_COMMIT=<sha>] bash bench/run_device.sh {readme|install|tests|bench|prefill|ab} ...
#   Write the sha out as it is here: the device's copy of .git can be stale, so a $(git rev-parse)
#   run there has named an older commit (result files of 2026-11-27 were corrected by hand).
#   readme       the README's main command, then its test command (full suite, log in $OUT; $FIG_README_TESTS
#                narrows it, e.g. to --ignore some files that a later `tests` phase runs)
#   install      the README's install step only; tests: pytest with $FIG_PYTEST_ARGS
#   bench        the decode benchmark (bench/results/decode-*.json shape set) into $OUT
#   prefill      the prefill benchmark with $FIG_PREFILL_ARGS into $OUT
#   sanitize     compute-sanitizer memcheck / racecheck / synccheck on small prefills ($FIG_SANITIZE_ARGS)
#   tune         bench/tune_prefill.sh over $FIG_TUNE_VARIANTS
#   peer88       CUTLASS's 88_hopper_fmha built here and run on bench_prefill's shapes (bench/peer_cutlass_fmha.py)
#   host         run()'s host cost and where it goes (bench/bench_host.py) into $OUT
#   example      examples/generate.py alone into $OUT
#   append       the append benchmark (bench/bench_append.py) into $OUT
#   generate     the '.[hf]' extra from .wheels/hf, tests/test_generate_gpu.py, examples/generate.py into $OUT
#   ncu          Nsight Compute reports of the d128 prefill kernel ($FIG_NCU_CASES, bench/ncu_prefill.py;
#                $FIG_NCU_ARGS e.g. "--backend sm90" with FIG_NCU_KERNEL=prefill_sm90_kernel; $FIG_NCU_TAG
#                is appended to the report names, for runs of the same cases with other arguments)
#   ab DIR ARGS  bench_decode.py ARGS for this tree and for the older checkout in DIR (A/B, same machine)
#   abprefill DIR  bench_prefill.py --family sm90 --quick (pages 16, 64) for this tree and DIR, twice each
#   variants     FP8 tile settings A/B'd in one run: $FIG_VARIANTS, entries "name=TUNE" (TUNE as
#                FIG_PREFILL_SM90_TUNE, may be empty) or "name=@DIR" (the checkout in DIR as it is),
#                each built into a cache of its own ($FIG_VAR_KV: the cache dtypes, default e4m3), then
#                rotated_prefill --set $FIG_VAR_SET (default fp8; wide: with bf16 and cuDNN; sm80*
#                (FIG_VAR_KV=e5m2 or e4m3,e5m2 for sets sm80e5m2, sm80codes): the Ampere path's rows,
#                built as kind prefill and tuned by FIG_PREFILL_TUNE) ($FIG_VAR_ARGS) over
#                them in turn, $FIG_VAR_ROUNDS (2) times, each time in a rotated order (the JSONs name
#                FIG_COMMIT and the TUNE for this tree's variants, FIG_BASE_COMMIT for a DIR's), all
#                packed into $OUT/variants.tgz (bench/variant_medians.py tabulates it); head dim
#                $FIG_VAR_HEAD_DIM (128)
#   peers        bench/rotated_prefill.py --set peers ($FIG_PEERS_ARGS, default --rounds 3): our rows of
#                both families beside FlashInfer's FA2 and FA3 backends and torch SDPA, FlashInfer from
#                .peers/flashinfer (bench/make_flashinfer_peer.sh; carry .peers; run `install` first)
#   abrotated DIR  bench/rotated_prefill.py (the Hopper bars' rows against cuDNN, rotated rounds;
#                $FIG_ROT_ARGS, default --rounds 3) for this tree and DIR, alternating, twice each
set -uo pipefail
OUT=${OUT:-/tmp/fig_out}; mkdir -p "$OUT"
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.wheels PIP_DISABLE_PIP_VERSION_CHECK=1
# The image's `pip` (/usr/local/bin) is not the pip of its `python` (the torch venv): make the
# README's `pip` the interpreter's own, as it is on a machine with one Python.
shim=$(mktemp -d); printf '#!/bin/sh\nexec %s -m pip "$@"\n' "$(command -v python)" >"$shim/pip"; chmod +x "$shim/pip"
export PATH=$shim:$PATH
# nvidia-cutlass declares Python dependencies (cuda-python pinned to another cuda-bindings, pydot,
# treelib) that only its Python front end uses and the offline image lacks; the headers need
# none of them, and every direct dependency of ours is on the image. So pip installs without
# resolving dependencies here (PIP_NO_DEPS), which a machine with a network does not need.
pip install -q --no-deps .wheels/nvidia_cutlass-*.whl
export PIP_NO_DEPS=1
rc=0
echo "python $(command -v python) pip $(command -v pip) flashinfer-gen after install: $(dirname "$(command -v python)")" >>"$OUT/readme.log"
while [ $# -gt 0 ]; do
  phase=$1; shift
  case "$phase" in
  readme)
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv | tee -a "$OUT/readme.log"
    t0=$(date +%s)
    { pip install -e . && flashinfer-gen build && flashinfer-gen list && flashinfer-gen demo; } >>"$OUT/readme.log" 2>&1 \
      || { tail -60 "$OUT/readme.log"; exit 1; }
    echo "main command: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/readme.log"
    grep -A3 "^demo on" "$OUT/readme.log"
    t0=$(date +%s)
    # $FIG_README_TESTS (shell words) narrows the test command, for a suite longer than one device call
    eval "readme_tests=(${FIG_README_TESTS:-})"
    { pip install -e '.[test]' && python -m pytest -q -p no:cacheprovider -rfE "${readme_tests[@]}"; } >"$OUT/pytest.log" 2>&1; rc=$?
    echo "test command: $(( $(date +%s) - t0 )) s, exit $rc" | tee -a "$OUT/readme.log"
    grep -E "building the|built in" "$OUT/pytest.log"; tail -15 "$OUT/pytest.log"
    ;;
  bench)
    python bench/bench_decode.py --out "$OUT/decode.json" 2>&1 | tee "$OUT/bench.log" | tail -64
    ;;
  install)  # the README's install step alone, for phases run without `readme`
    pip install -q -e '.[test]' >>"$OUT/readme.log" 2>&1 || { tail -30 "$OUT/readme.log"; exit 1; }
    ;;
  tests)  # FIG_PYTEST_ARGS selects, parsed as shell words (so -k "a or b" stays one argument)
    eval "pytest_args=(${FIG_PYTEST_ARGS:-})"
    python -m pytest -q -p no:cacheprovider -rfE "${pytest_args[@]}" >"$OUT/pytest_sel.log" 2>&1; rc=$?
    tail -8 "$OUT/pytest_sel.log"
    ;;
  prefill)  # the prefill benchmark (FIG_PREFILL_ARGS), missing instances built on first use
    FLASHINFER_GEN_JIT=1 python bench/bench_prefill.py ${FIG_PREFILL_ARGS:-} --out "$OUT/prefill.json" 2>&1 \
      | tee "$OUT/prefill.log" | tail -60
    ;;
  sanitize)  # compute-sanitizer over one small prefill per dtype (the instances are built first; $FIG_SANITIZE_ARGS)
    python bench/sanitize_prefill.py ${FIG_SANITIZE_ARGS:-} >"$OUT/sanitize.log" 2>&1 || { tail -20 "$OUT/sanitize.log"; rc=1; }
    for tool in memcheck racecheck synccheck; do
      compute-sanitizer --tool $tool --error-exitcode 9 python bench/sanitize_prefill.py ${FIG_SANITIZE_ARGS:-} >>"$OUT/sanitize.log" 2>&1
      echo "compute-sanitizer $tool: exit $?" | tee -a "$OUT/sanitize.log"
    done
    grep -E "ERROR SUMMARY|rel. error|within|FAILED" "$OUT/sanitize.log" | sort | uniq -c | head -20
    ;;
  peer88)
    python bench/peer_cutlass_fmha.py --out "$OUT/peer88.json" 2>&1 | tee "$OUT/peer88.log" | tail -20
    ;;
  generate)  # transformers and its dependencies from .wheels/hf (so with dependency resolution)
    env -u PIP_NO_DEPS pip install -q --find-links .wheels/hf transformers >>"$OUT/readme.log" 2>&1 \
      || { tail -20 "$OUT/readme.log"; exit 1; }
    python -m pytest -q -p no:cacheprovider -rfE tests/test_generate_gpu.py >"$OUT/pytest_generate.log" 2>&1; rc=$?
    tail -5 "$OUT/pytest_generate.log"
    python examples/generate.py --out "$OUT/generate.json" 2>&1 | tee "$OUT/generate.log" | tail -40
    ;;
  host)  # run()'s host cost and its breakdown (bench/bench_host.py)
    python bench/bench_host.py --out "$OUT/host.json" 2>&1 | tee "$OUT/host.log" | tail -40
    ;;
  example)  # examples/generate.py alone (transformers from the image or .wheels/hf)
    python -c "import transformers" 2>/dev/null || env -u PIP_NO_DEPS pip install -q --find-links .wheels/hf transformers \
      >>"$OUT/readme.log" 2>&1
    python examples/generate.py --out "$OUT/generate.json" 2>&1 | tee "$OUT/generate.log" | tail -60
    ;;
  append)
    FLASHINFER_GEN_JIT=1 python bench/bench_append.py --out "$OUT/append.json" 2>&1 | tee "$OUT/append.log" | tail -12
    ;;
  ncu)  # one report per case ("kv[:conversion]", space separated), details as text in $OUT
    for case in ${FIG_NCU_CASES:-bf16 e4m3:hardware e4m3:software}; do
      kv=${case%%:*}; conv=$([ "$case" != "$kv" ] && echo "${case#*:}" || true)
      ncu --clock-control none -k regex:${FIG_NCU_KERNEL:-prefill_kernel} -s 1 -c 1 --section SpeedOfLight \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section InstructionStats \
        --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active \
        python bench/ncu_prefill.py $kv $conv ${FIG_NCU_ARGS:-} >"$OUT/ncu_${kv}_${conv:-none}${FIG_NCU_TAG:-}.txt" 2>&1 || rc=1
      grep -E "profiled|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Executed Ipc A|Issue Slots Busy|Achieved Occupancy|Registers Per|hmma_cycles|pipe_xu|pipe_fma|bank_conflicts|pipe_lsu|No Eligible|Stall" \
        "$OUT/ncu_${kv}_${conv:-none}${FIG_NCU_TAG:-}.txt" | head -20 | sed "s/^/$case${FIG_NCU_TAG:-}: /"
    done
    ;;
  tune)  # the prefill tile-shape sweep, variants in $FIG_TUNE_VARIANTS
    bash bench/tune_prefill.sh $FIG_TUNE_VARIANTS
    ;;
  peers)
    [ -d .peers/flashinfer/modules ] || { echo "no .peers/flashinfer: run bench/make_flashinfer_peer.sh and carry .peers"; exit 1; }
    site=$(mktemp -d)
    { tar xJf .peers/flashinfer/flashinfer-*.tar.xz -C "$site" &&
      pip install -q --no-deps --target "$site" .peers/flashinfer/apache_tvm_ffi-*.whl >>"$OUT/readme.log" 2>&1; } \
      || { echo "unpacking .peers/flashinfer failed"; exit 1; }
    python -m flashinfer_gen.cli build --kind prefill_sm90 --arch sm90a --head-dim 128 --q-dtype bf16,e4m3 \
      --kv-dtype bf16,e4m3 --conversion none,hardware --variant default --jobs 16 >"$OUT/peers_build.log" 2>&1 &&
    python -m flashinfer_gen.cli build --kind prefill --arch sm90a --head-dim 128 --q-dtype bf16 --kv-dtype bf16,e4m3 \
      --conversion none,hardware,software --variant default --jobs 16 >>"$OUT/peers_build.log" 2>&1 \
      || { tail -20 "$OUT/peers_build.log"; exit 1; }
    PYTHONPATH=$site FIG_FLASHINFER_MODULES=$PWD/.peers/flashinfer/modules FLASHINFER_GEN_JIT=1 PYTHONUNBUFFERED=1 \
      python bench/rotated_prefill.py --set peers ${FIG_PEERS_ARGS:---rounds 3} --out "$OUT/peers.json" >"$OUT/peers.log" 2>&1 \
      || { tail -30 "$OUT/peers.log"; rc=1; }
    sed -n '/^median/,$p' "$OUT/peers.log"
    # Nsight Compute on our Ampere-path kernel and FlashInfer's FA2 one, ragged and paged 16, bf16,
    # non-causal, B4 S4096 32/32 whatever $FIG_PEERS_ARGS says (the first launch of each row);
    # $FIG_PEERS_NCU=0 skips it
    if [ "${FIG_PEERS_NCU:-1}" = 1 ]; then
      for row in "sm80 ragged bf16:prefill_kernel" "flashinfer-fa2 ragged bf16:BatchPrefillWithRaggedKVCacheKernel" \
                 "sm80 paged16 random bf16:prefill_kernel" "flashinfer-fa2 paged16 random bf16:BatchPrefillWithPagedKVCacheKernel"; do
        name=$(echo "${row%%:*}" | tr ' ' '_')  # the row's label, matched whole (--only LABEL$)
        PYTHONPATH=$site FIG_FLASHINFER_MODULES=$PWD/.peers/flashinfer/modules ncu --clock-control none -k "regex:${row##*:}" -c 1 \
          --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
          --section InstructionStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
          --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum \
          python bench/rotated_prefill.py --set peers --only "${row%%:*}\$" --rounds 1 --reps 3 >"$OUT/ncu_peer_$name.txt" 2>&1 || rc=1
        grep -E "Duration|Executed Ipc A|Issue Slots Busy|Registers Per|Achieved Occupancy|hmma_cycles|inst_executed.sum|No Eligible|Block Size|Grid Size|bank_conflicts" \
          "$OUT/ncu_peer_$name.txt" | head -14 | sed "s/^/$name: /"
      done
      (cd "$OUT" && tar czf ncu_peers.tgz ncu_peer_*.txt && rm -f ncu_peer_*.txt)
    fi
    rm -rf "$site"
    ;;
  abprefill)  # abprefill DIR: prefill A/B, this tree against the checkout in DIR, same machine: the
    # d128 instances of bench_prefill --quick built for each (caches of their own), then its rows
    # (pages 16 and 64, ragged; causal or not; $FIG_ABP_ARGS instead of --quick --pages 16,64) for
    # this tree, DIR, this tree, DIR. $FIG_ABP_FAMILY: sm90 (default, the Hopper family) or sm80
    base=$(cd "$1" && pwd); shift
    family=${FIG_ABP_FAMILY:-sm90}
    if [ "$family" = sm90 ]; then
      select="--kind prefill_sm90 --q-dtype bf16,e4m3 --kv-dtype bf16,e4m3,e5m2 --conversion none,hardware"
    else
      select="--kind prefill --q-dtype bf16 --kv-dtype bf16,e4m3,e5m2 --conversion none,hardware,software"
    fi
    for tree in "$PWD" "$base"; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo base)
      (cd "$tree" && FLASHINFER_GEN_CACHE=/tmp/fig_abp_$name PYTHONPATH=$tree python -m flashinfer_gen.cli build \
         $select --arch sm90a --head-dim 128 --variant default --jobs 8 >"$OUT/abp_build_$name.log" 2>&1) &
    done
    wait
    for round in 1 2; do
      for tree in "$PWD" "$base"; do
        name=$([ "$tree" = "$PWD" ] && echo new || echo base)
        commit=$([ $name = new ] && echo "${FIG_COMMIT:-}" || echo "${FIG_BASE_COMMIT:-}")
        FIG_COMMIT=$commit FIG_TREE=$tree FLASHINFER_GEN_CACHE=/tmp/fig_abp_$name FLASHINFER_GEN_JIT=1 python bench/bench_prefill.py \
          --family $family ${FIG_ABP_ARGS:---quick --pages 16,64} --reps 10 --out "$OUT/abp_${name}_$round.json" >"$OUT/abp_${name}_$round.log" 2>&1 \
          || { tail -20 "$OUT/abp_${name}_$round.log"; rc=1; }
        grep -E "^(B4|chunked)" "$OUT/abp_${name}_$round.log" | grep -v dense | cut -c1-78 | sed "s/^/$name$round /" | head -40
      done
    done
    break
    ;;
  abrotated)  # abrotated DIR: the instances both trees need, then rotated_prefill for this tree,
    # DIR, this tree, DIR
    base=$(cd "$1" && pwd); shift
    # Each tree builds into its own cache: CMake's build folder remembers the source tree.
    for tree in "$PWD" "$base"; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo base)
      (cd "$tree" && FLASHINFER_GEN_CACHE=/tmp/fig_abr_$name PYTHONPATH=$tree python -m flashinfer_gen.cli build --kind prefill_sm90 --arch sm90a \
         --head-dim 128 --q-dtype bf16,e4m3 --kv-dtype bf16,e4m3 --conversion none,hardware --variant default \
         --jobs 8 >>"$OUT/abr_build.log" 2>&1) || { tail -20 "$OUT/abr_build.log"; exit 1; }
    done
    for round in 1 2; do
      for tree in "$PWD" "$base"; do
        name=$([ "$tree" = "$PWD" ] && echo new || echo base)
        commit=$([ $name = new ] && echo "${FIG_COMMIT:-}" || echo "${FIG_BASE_COMMIT:-}")
        FIG_COMMIT=$commit FIG_TREE=$tree FLASHINFER_GEN_CACHE=/tmp/fig_abr_$name FLASHINFER_GEN_JIT=1 python bench/rotated_prefill.py ${FIG_ROT_ARGS:---rounds 3} \
          --out "$OUT/abr_${name}_$round.json" >"$OUT/abr_${name}_$round.log" 2>&1 \
          || { tail -20 "$OUT/abr_${name}_$round.log"; rc=1; }
        sed -n '/^median/,$p' "$OUT/abr_${name}_$round.log" | sed "s/^/$name$round /"
      done
    done
    break
    ;;
  variants)
    names=(); trees=(); tunes=()
    var_set=${FIG_VAR_SET:-fp8}
    if [ "$var_set" != "${var_set#sm80}" ]; then  # the Ampere path's rows (sets sm80*)
      tune_env=FIG_PREFILL_TUNE
      var_select="--kind prefill --q-dtype bf16 --kv-dtype bf16,${FIG_VAR_KV:-e4m3} --conversion none,hardware,software"
    else
      tune_env=FIG_PREFILL_SM90_TUNE
      var_select="--kind prefill_sm90 --q-dtype bf16,e4m3 --kv-dtype ${FIG_VAR_KV:-e4m3} --conversion none,hardware"
    fi
    for entry in $FIG_VARIANTS; do
      name=${entry%%=*}; value=${entry#*=}
      if [ "${value#@}" != "$value" ]; then tree=$(cd "${value#@}" && pwd); tune=""; else tree=$PWD; tune=$value; fi
      names+=("$name"); trees+=("$tree"); tunes+=("$tune")
      (cd "$tree" && env "$tune_env=$tune" FLASHINFER_GEN_CACHE=/tmp/fig_var_$name PYTHONPATH=$tree python -m flashinfer_gen.cli build \
         $var_select --arch sm90a --head-dim ${FIG_VAR_HEAD_DIM:-128} --variant default --jobs 4 >"$OUT/var_build_$name.log" 2>&1 \
         || echo "BUILD FAILED $name") &
    done
    wait
    n=${#names[@]}
    for round in $(seq 1 "${FIG_VAR_ROUNDS:-2}"); do
      for i in $(seq 0 $((n - 1))); do
        j=$(( (i + round - 1) % n )); name=${names[$j]}
        if [ "${trees[$j]}" = "$PWD" ]; then commit="${FIG_COMMIT:-}${tunes[$j]:+ with ${tunes[$j]}}"; else commit=${FIG_BASE_COMMIT:-}; fi
        env FIG_COMMIT="$commit" "$tune_env=${tunes[$j]}" FIG_TREE=${trees[$j]} FLASHINFER_GEN_CACHE=/tmp/fig_var_$name FLASHINFER_GEN_JIT=1 \
          python bench/rotated_prefill.py --set $var_set --head-dim ${FIG_VAR_HEAD_DIM:-128} ${FIG_VAR_ARGS:---rounds 2} \
          --out "$OUT/var_${name}_$round.json" \
          >"$OUT/var_${name}_$round.log" 2>&1 || { tail -20 "$OUT/var_${name}_$round.log"; rc=1; }
        sed -n '/^median/,$p' "$OUT/var_${name}_$round.log" | grep -v "^median" | sed "s/^/$name r$round /"
      done
    done
    # the device returns at most 8 files of $OUT: two variants' builds, JSONs and logs are 10
    (cd "$OUT" && tar czf variants.tgz var_* && rm -f var_*)
    break
    ;;
  ab)
    base=$(cd "$1" && pwd); shift
    for tree in "$PWD" "$base"; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo base)
      (cd "$tree" && FLASHINFER_GEN_CACHE=/tmp/fig_ab_$name PYTHONPATH=$tree python -m flashinfer_gen.cli build \
         --arch sm90a --q-dtype bf16 --head-dim 128,256 --jobs 16 >"$OUT/ab_build_$name.log" 2>&1) \
        || { tail -30 "$OUT/ab_build_$name.log"; exit 1; }
    done
    for hd in 128 256; do
      for tree in "$PWD" "$base"; do
        name=$([ "$tree" = "$PWD" ] && echo new || echo base)
        commit=$([ $name = new ] && echo "${FIG_COMMIT:-}" || echo "${FIG_BASE_COMMIT:-}")
        FIG_COMMIT=$commit FIG_TREE=$tree FLASHINFER_GEN_CACHE=/tmp/fig_ab_$name python bench/bench_decode.py --quick --head-dim $hd "$@" \
          --out "$OUT/ab_${name}_d$hd.json" 2>&1 | tail -11 | sed "s/^/$name d$hd /"
      done
    done
    break
    ;;
  esac
done
exit $rc
