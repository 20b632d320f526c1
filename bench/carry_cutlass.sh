#!/usr/bin/env bash
# Pack nvidia-cutlass-dsl 4.6.0 (the DSL vLLM 0.26.0 pins, its cu13 flavour) and
# quack-kernels 0.6.3 (the newest quack that accepts DSL 4.6.0; vLLM 0.26 imports it in
# its sm90 warm-up whenever `import cutlass` works) for the offline GPU machine, CPython
# 3.12, x86_64. Its wheels (92 MB) pack with xz to ~63 MB, more than one device call
# carries beside the working tree, so the archive is cut into two halves under the
# git-ignored .whl/: .whl/cutlass_dsl-4.6.0-cp312.tar.xz.1 and .2, carried in two calls
# back to back (a carried file stays while the machine is warm); once both are there,
# `source bench/device_env.sh` unpacks them into /tmp/site and puts the DSL on PYTHONPATH.
# Left out, as the GPU machine has them or nothing here imports them: cuda-python (the
# machine has it), nvidia-cuda-nvdisasm and protobuf (SASS dumps, the iket profiler),
# apache-tvm-ffi (quack's; in vLLM's pack), torch-c-dlpack-ext (torch >= 2.10 has its API).
# Usage (here, once): bash bench/carry_cutlass.sh
set -euo pipefail
cd "$(dirname "$0")/.."
name=cutlass_dsl-4.6.0-cp312.tar.xz
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" \
  nvidia-cutlass-dsl==4.6.0 nvidia-cutlass-dsl-libs-base==4.6.0 \
  nvidia-cutlass-dsl-libs-core==4.6.0 nvidia-cutlass-dsl-libs-cu13==4.6.0 quack-kernels==0.6.3
mkdir "$tmp/site"
for whl in "$tmp"/*.whl; do unzip -q -o "$whl" -d "$tmp/site"; done
(cd "$tmp/site" && tar -cf - . | xz -9 -T0 > "$tmp/pack.tar.xz")
mkdir -p .whl && rm -f .whl/cutlass_dsl-*.tar.xz*
split -n 2 -d -a 1 "$tmp/pack.tar.xz" "$tmp/part." &&
  mv "$tmp/part.0" ".whl/$name.1" && mv "$tmp/part.1" ".whl/$name.2"
ls -l .whl/"$name".*
