#!/usr/bin/env bash
# Regret, speedups and plots for every GPU run in bench/results/raw (CPU only, seconds).
# Usage: bash bench/evaluate_all.sh   ->  bench/results/<gpu>_<problem>[_cross].json + .png
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for profile in bench/results/raw/*_triton.profile.json; do
  stem=${profile%_triton.profile.json}
  name=$(basename "$stem")
  args=(--profile "$profile" --holdout "${stem}_triton.holdout.json"
        --out "bench/results/${name}.json" --plot "bench/results/${name}.png")
  [ -f "${stem}_baselines.json" ] && args+=(--baselines "${stem}_baselines.json")
  [ -f "${stem}_poly.holdout.json" ] && args+=(--sync-free "${stem}_poly.holdout.json")
  ramp evaluate "${args[@]}"
  # RaMP choosing per call across families: Triton + torch._grouped_mm (black box).
  # raw/ is what the GPU wrote: read, never rewritten (a missing grouped_mm profile is
  # fitted from its training calls into a scratch directory).
  gmm="${stem}_grouped_mm"
  if [ -f "${gmm}.train.json" ]; then
    gmm_profile="${gmm}.profile.json"
    if [ ! -f "$gmm_profile" ]; then
      gmm_profile="$scratch/$(basename "$gmm").profile.json"
      ramp fit "${gmm}.train.json" --out "$gmm_profile"
    fi
    args=("${args[@]/%${name}.json/${name}_cross.json}")
    args=("${args[@]/%${name}.png/${name}_cross.png}")
    ramp evaluate "${args[@]}" --with-family "$gmm_profile" "${gmm}.holdout.json"
  fi
done
# The CuTe family: its own regret/speedups with the same-run side-by-side (Triton's RaMP,
# grouped_mm, vLLM, floors), then RaMP choosing per call across all three families.
for profile in bench/results/raw/*_cute.profile.json; do
  stem=${profile%_cute.profile.json}
  name=$(basename "$stem")
  args=(--profile "$profile" --holdout "${stem}_cute.holdout.json")
  [ -f "${stem}_cute_baselines.json" ] && args+=(--baselines "${stem}_cute_baselines.json")
  ramp evaluate "${args[@]}" --out "bench/results/${name}_cute.json" \
    --plot "bench/results/${name}_cute.png"
  ramp evaluate --profile "${stem}_triton.profile.json" --holdout "${stem}_triton.holdout.json" \
    --baselines "${stem}_baselines.json" --with-family "$profile" "${stem}_cute.holdout.json" \
    --with-family "${stem}_grouped_mm.profile.json" "${stem}_grouped_mm.holdout.json" \
    --out "bench/results/${name}_all.json" --plot "bench/results/${name}_all.png"
done
