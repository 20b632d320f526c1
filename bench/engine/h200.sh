#!/usr/bin/env bash
# The H200 runs behind the engine results, one stage per device call (each < 10 min):
#   bash bench/engine/h200.sh profiles MODEL...   Triton + sync-free profiles, layer plans
#   bash bench/engine/h200.sh triton MODEL...     Triton + sync-free profiles only (no vLLM)
#   bash bench/engine/h200.sh plans MODEL...      layer plans only (profiles already there;
#                                                 ROUTINGS="...;collapsed" adds routings)
#   bash bench/engine/h200.sh host MODEL...       host times per eager call added to the
#                                                 embedded plans (their GPU times kept;
#                                                 EAGER_GRAPHS=1: eager calls replayed
#                                                 from per-size CUDA graphs)
#   bash bench/engine/h200.sh families MODEL...   the family tests, then grouped_mm and CuTe
#                                                 profiles (CuTe: carry [".whl"], made by
#                                                 bench/carry_cutlass.sh)
#   bash bench/engine/h200.sh kernels MODEL...    roofline side by side (bench/roofline.py)
#                                                 and the layer's stages (layer_parts.py),
#                                                 packed in $OUT/kernels.tar.gz
#   bash bench/engine/h200.sh ep-profiles MODEL EP...  Triton and triton-tiles profiles of
#                                                 the local problem one GPU runs under each
#                                                 EP degree (E/EP experts), to $OUT only
#   bash bench/engine/h200.sh engine MODEL [bench.py options]
# Profiles and plans go to /tmp/ramp-profiles on the GPU machine (RAMP_PROFILE_DIR for the
# engine stage, which must follow while the machine is warm) and, packed, to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/engine/env.sh
prof=/tmp/ramp-profiles
mkdir -p "$prof" "$OUT"
stage=$1; shift
case $stage in
  profiles|triton)
    for model in "$@"; do
      for gemm in w13 w2; do
        python3 bench/run_gpu.py --model "$model" --gemm "$gemm" --skip-holdout \
          --budget "${BUDGET:-50}" --routings "uniform;zipf:s=1.2" --out "$prof" 2>&1 |
          grep -v "^WARNING" | tee -a "$OUT/profiles.log"
      done
    done
    [ "$stage" = triton ] && { tar czf "$OUT/profiles.tar.gz" -C "$prof" .; exit; }
    ;&
  plans)
    for model in "$@"; do  # from /tmp: the checkout's ramp/ would shadow the installed one
      (cd /tmp && python3 -m ramp.adapters.plan --model "$model" --profile-dir "$prof" \
        --out "$prof" --details "$prof/details" ${ROUTINGS:+--routings "$ROUTINGS"}) 2>&1 |
        grep -v "^WARNING" |
        tee -a "$OUT/profiles.log"
    done
    tar czf "$OUT/profiles.tar.gz" -C "$prof" . ;;
  host)  # from /tmp, as plans
    (cd /tmp && python3 -m ramp.adapters.plan --host-times "$@" --profile-dir "$prof" \
      --out "$prof" ${EAGER_GRAPHS:+--eager-graphs}) 2>&1 | grep -v "^WARNING" |
      tee -a "$OUT/profiles.log"
    tar czf "$OUT/profiles.tar.gz" -C "$prof" . ;;
  families)  # FAMILIES="grouped_mm cute" by default; TESTS=0 skips the tests
    source bench/device_env.sh  # the CuTe DSL, and this checkout first on PYTHONPATH
    [ "${TESTS:-1}" = 1 ] && python3 -m pytest -q -p no:cacheprovider \
      tests/test_triton_kernel.py tests/test_cute_kernel.py tests/test_families.py 2>&1 |
      tee "$OUT/family-tests.log"
    for family in ${FAMILIES:-grouped_mm cute}; do
      for gemm in w13 w2; do
        if [ "$family" = grouped_mm ]; then
          python3 bench/run_gpu.py --grouped-mm --model "$@" --gemm "$gemm" --out "$prof"
        else
          python3 bench/run_gpu.py --family "$family" --model "$@" --gemm "$gemm" \
            --skip-holdout --budget "${BUDGET:-10}" --routings "uniform;zipf:s=1.2" \
            --jobs "${JOBS:-12}" --out "$prof"
        fi 2>&1 | grep -v "^WARNING" | tee -a "$OUT/profiles.log"
      done
    done
    tar czf "$OUT/families.tar.gz" -C "$prof" . ;;
  ep-profiles)  # the busiest rank's share of the layer's T = 1..8192 (ramp profile --ep);
    # kept out of $prof: profiles there would be the engine stage's
    model=$1; shift; local=/tmp/ramp-ep-profiles; mkdir -p "$local"
    for ep in "$@"; do for family in triton triton-tiles; do for gemm in w13 w2; do
      (cd /tmp && python3 -m ramp profile --model "$model" --gemm "$gemm" --ep "$ep" \
        --family "$family" --budget "${BUDGET:-30}" --no-progress --out "$local" \
        --routings "${ROUTINGS:-uniform;realistic;zipf:s=1.2}") 2>&1 |
        grep -v "^WARNING" | tee -a "$OUT/ep-profiles.log"
    done; done; done
    tar czf "$OUT/ep-profiles.tar.gz" -C "$local" . ;;
  kernels)  # vLLM for its baselines; the CuTe family where .whl was carried
    source bench/device_env.sh
    for model in "$@"; do
      data=()
      [ "$model" = deepseek-v2-lite ] && [ -d .carry/routing ] && data=(--data .carry/routing)
      python3 bench/roofline.py measure --model "$model" "${data[@]}" --out "$OUT/roofline" \
        2>&1 | grep -v "^WARNING" | tee -a "$OUT/kernels.log"
      python3 bench/layer_parts.py --model "$model" --out "$OUT/layer-parts" \
        2>&1 | grep -v "^WARNING" | tee -a "$OUT/kernels.log"
    done  # packed: a call brings back at most 8 files
    made=(); for d in roofline layer-parts; do [ -d "$OUT/$d" ] && made+=("$d"); done
    [ ${#made[@]} -gt 0 ] && tar czf "$OUT/kernels.tar.gz" -C "$OUT" "${made[@]}" &&
      (cd "$OUT" && rm -rf "${made[@]}") ;;
  engine)
    model=$1; shift
    RAMP_PROFILE_DIR=$prof python3 bench/engine/bench.py --model "$model" --out "$OUT" \
      --stats-dir "/tmp/ramp-stats-$model" "$@" 2>&1 | tee "$OUT/engine-$model.log"
    status=$?  # bench.py's (pipefail), not the trace loop's: no trace is no failure
    for f in /tmp/ramp-stats-"$model"/trace.*.jsonl; do
      if [ -f "$f" ]; then gzip -c "$f" > "$OUT/$(basename "$f").gz"; fi
    done
    exit $status ;;
  *) echo "h200.sh: unknown stage $stage" >&2; exit 2 ;;
esac
