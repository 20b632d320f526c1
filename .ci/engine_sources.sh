#!/usr/bin/env bash
# Unpack the hook modules of the vLLM and SGLang releases the adapters support, so the
# adapter tests check the hook points against the engines' real source. The engines
# cannot be installed on a CPU machine (they pin CUDA builds of other torch versions);
# their wheels can be downloaded and read. Prints the environment to export.
set -uo pipefail
dest=${1:-.engine-src}
mkdir -p "$dest/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheels" \
  vllm==0.33.0 sglang==0.5.23 >&2 || { echo "# engine wheels unavailable" >&2; exit 0; }
python3 - "$dest" <<'PY'
import sys, zipfile, pathlib
dest = pathlib.Path(sys.argv[1])
for wheel in (dest / "wheels").glob("*.whl"):
    name = wheel.name.split("-")[0]
    prefix = {"vllm": "vllm/model_executor/layers/fused_moe/",
              "sglang": "sglang/srt/layers/moe/"}[name]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest / name, [m for m in z.namelist() if m.startswith(prefix)])
    print(f"export RAMP_TEST_{name.upper()}_SOURCE={(dest / name).resolve()}")
PY
