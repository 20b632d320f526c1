#!/usr/bin/env bash
# Pack nvidia-cutlass-dsl 4.3.5 (CPython 3.12, x86_64) for the offline GPU machine.
# Its wheel (56 MiB) plus the tree exceeds the device tool's 64 MiB carry limit, so it
# travels re-compressed with xz (39 MiB) under the git-ignored .whl/ folder; then
# `source bench/device_env.sh` there unpacks it and puts the DSL on PYTHONPATH.
# Usage (here, once): bash bench/carry_cutlass.sh   then carry [".whl"] in device runs.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" nvidia-cutlass-dsl==4.3.5
(cd "$tmp" && unzip -q ./*.whl && rm ./*.whl && tar -cf - . | xz -9 -T0 > cutlass.tar.xz)
mkdir -p .whl && mv "$tmp/cutlass.tar.xz" .whl/cutlass_dsl-4.3.5-cp312.tar.xz
rm -rf "$tmp"
ls -l .whl/cutlass_dsl-4.3.5-cp312.tar.xz
