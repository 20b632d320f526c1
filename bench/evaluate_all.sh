#!/usr/bin/env bash
# Regret, speedups and plots for every GPU run in bench/results/raw (CPU only, seconds).
# Usage: bash bench/evaluate_all.sh   ->  bench/results/<gpu>_<problem>[_cross].json + .png
set -euo pipefail
cd "$(dirname "$0")/.."
for profile in bench/results/raw/*_triton.profile.json; do
  stem=${profile%_triton.profile.json}
  name=$(basename "$stem")
  args=(--profile "$profile" --holdout "${stem}_triton.holdout.json"
        --out "bench/results/${name}.json" --plot "bench/results/${name}.png")
  [ -f "${stem}_baselines.json" ] && args+=(--baselines "${stem}_baselines.json")
  [ -f "${stem}_poly.holdout.json" ] && args+=(--sync-free "${stem}_poly.holdout.json")
  ramp evaluate "${args[@]}"
  # RaMP choosing per call across families: Triton + torch._grouped_mm (black box).
  gmm="${stem}_grouped_mm"
  if [ -f "${gmm}.train.json" ]; then
    ramp fit "${gmm}.train.json" --out "${gmm}.profile.json"
    args=("${args[@]/%${name}.json/${name}_cross.json}")
    args=("${args[@]/%${name}.png/${name}_cross.png}")
    ramp evaluate "${args[@]}" --with-family "${gmm}.profile.json" "${gmm}.holdout.json"
  fi
done
