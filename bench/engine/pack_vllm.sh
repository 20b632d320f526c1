#!/usr/bin/env bash
# Build the slim vLLM pack that the offline H200 machine runs (../shared/engines/README.md).
#
# Downloads vLLM's wheel and the packages it imports that the GPU image lacks from the
# package registry, deletes what a bf16 Hopper run never loads, prunes the two kernel
# libraries to sm_90 (../shared/engines/fatbin_prune.py) and packs with xz:
#   .carry/vllm/vllm-slim.tar.xz   vLLM without FA2/FA3 (~34 MB)
#   .carry/vllm/vllm-slim.tar.xz.{1of2,2of2}  the same in two halves
#   .carry/vllm/vllm-fa3.tar.xz    the FA3 attention extension alone (~8 MB)
#   .carry/vllm/deps/*.whl         ../shared/engines/vllm-<ver>-gpu-deps.txt (~16 MB)
# .carry/ is git-ignored: nothing of vLLM is ever committed. The device tool carries at
# most 64 MiB per call, the checkout included (~32 MiB by 2026-12-02), so the pieces
# travel in separate calls and bench/engine/env.sh installs them as they arrive: the
# whole slim pack fits beside a checkout below ~31 MiB, the halves beside any up to ~47.
# Usage (here, once per vLLM version): bash bench/engine/pack_vllm.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:-0.26.0}
shared=${RAMP_SHARED:-../shared}
prune=$shared/engines/fatbin_prune.py
deps_list=$shared/engines/vllm-$version-gpu-deps.txt
for f in "$prune" "$deps_list"; do
  [ -f "$f" ] || { echo "pack_vllm.sh: $f not found (set RAMP_SHARED)" >&2; exit 2; }
done
out=.carry/vllm
mkdir -p "$out/deps"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_24_x86_64)
echo "downloading vllm==$version" >&2
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp" "vllm==$version"
echo "downloading $(grep -c . "$deps_list") dependency wheels" >&2
python3 -m pip download -q --no-deps "${plat[@]}" -d "$out/deps" -r "$deps_list"
mkdir "$tmp/site"
(cd "$tmp/site" && unzip -q "$tmp"/vllm-*.whl)
v=$tmp/site/vllm
mv "$v/vllm_flash_attn/_vllm_fa3_C.abi3.so" "$tmp/fa3.so"
rm -rf "$v/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$v/_flashmla_C.abi3.so" \
       "$v/_flashmla_extension_C.abi3.so" "$v/_qutlass_C.abi3.so" "$v/vllm-rs" \
       "$v/third_party/deep_gemm" "$v/third_party/fmha_sm100"
for lib in _C_stable_libtorch.abi3.so _moe_C_stable_libtorch.abi3.so; do
  python3 "$prune" "$v/$lib" "$v/$lib.pruned" --arch 90 && mv "$v/$lib.pruned" "$v/$lib"
done
echo "packing" >&2
(cd "$tmp/site" && tar -cf - vllm "vllm-$version.dist-info" | xz -9 -T0 > "$tmp/slim.tar.xz")
mkdir -p "$tmp/fa3/vllm/vllm_flash_attn" && mv "$tmp/fa3.so" "$tmp/fa3/vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"
(cd "$tmp/fa3" && tar -cf - vllm | xz -9 -T0 > "$tmp/fa3.tar.xz")
mv "$tmp/slim.tar.xz" "$out/vllm-slim.tar.xz"
rm -f "$out"/vllm-slim.tar.xz.*of*
split -n 2 --numeric-suffixes=1 -a 1 "$out/vllm-slim.tar.xz" "$out/vllm-slim.tar.xz."
for i in 1 2; do mv "$out/vllm-slim.tar.xz.$i" "$out/vllm-slim.tar.xz.${i}of2"; done
mv "$tmp/fa3.tar.xz" "$out/vllm-fa3.tar.xz"
echo "$version" > "$out/VERSION"
du -sh "$out"/* >&2
