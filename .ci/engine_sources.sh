#!/usr/bin/env bash
# Unpack the hook modules of the vLLM and SGLang releases the adapters support, so the
# adapter tests check the hook points against the engines' real source. The engines
# cannot be installed on a CPU machine (they pin CUDA builds of other torch versions);
# their wheels can be downloaded and read. Prints the environment to export; fails (so
# CI fails) when a wheel cannot be had, rather than letting the checks skip unseen.
set -euo pipefail
dest=${1:-.engine-src}
mkdir -p "$dest/wheels"
for spec in vllm==0.26.0 vllm==0.33.0 sglang==0.5.23; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheels" "$spec" >&2 ||
    { echo "engine_sources.sh: cannot download $spec: the hook checks would not run" >&2; exit 1; }
done
python3 - "$dest" <<'PY'
import os, sys, zipfile, pathlib
dest = pathlib.Path(sys.argv[1])
roots = {"vllm": [], "sglang": []}
for wheel in sorted((dest / "wheels").glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    prefix = {"vllm": "vllm/model_executor/layers/fused_moe/",
              "sglang": "sglang/srt/layers/moe/"}[name]
    root = dest / f"{name}-{version}"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [m for m in z.namelist() if m.startswith(prefix)])
    roots[name].append(str(root.resolve()))
for name, paths in roots.items():
    print(f"export RAMP_TEST_{name.upper()}_SOURCE={os.pathsep.join(paths)}")
PY
