# Source on the lent GPU machine (offline, no pip install of this project possible):
# lays out the ramp.kernels / ramp.sim / ramp.adapters / ramp.traces subpackages the
# way the installed distribution has them, and puts the tree on PYTHONPATH. When both
# halves of the CuTe DSL 4.6.0 pack are here (bench/carry_cutlass.sh; carried in two
# calls), unpacks them into /tmp/site first (with quack-kernels, which vLLM imports
# beside it); else the single 4.3.5 pack of earlier sessions, the DSL the shipped CuTe
# profiles were measured with (no quack: a vLLM engine start then fails, docs/engine.md).
for sub in kernels sim adapters traces; do
  [ -e "ramp/$sub" ] || ln -s "../$sub" "ramp/$sub"
done
dsl_pack=.whl/cutlass_dsl-4.6.0-cp312.tar.xz
dsl_435=.whl/cutlass_dsl-4.3.5-cp312.tar.xz
if [ ! -f /tmp/site/.cutlass_dsl ]; then
  if [ -f "$dsl_pack.1" ] && [ -f "$dsl_pack.2" ]; then
    mkdir -p /tmp/site && cat "$dsl_pack.1" "$dsl_pack.2" | tar xJf - -C /tmp/site &&
      echo 4.6.0 > /tmp/site/.cutlass_dsl
  elif [ -f "$dsl_pack.1" ] || [ -f "$dsl_pack.2" ]; then
    echo "device_env.sh: one half of $dsl_pack here; carry the other (.1 and .2)" >&2
  elif [ -f "$dsl_435" ]; then
    mkdir -p /tmp/site && tar xJf "$dsl_435" -C /tmp/site && echo 4.3.5 > /tmp/site/.cutlass_dsl
  fi
fi
# 4.6 keeps its Python packages in dsl_packages/, 4.3 in python_packages/
for dsl_dir in /tmp/site/nvidia_cutlass_dsl/{dsl,python}_packages; do
  [ -f /tmp/site/.cutlass_dsl ] && [ -d "$dsl_dir" ] &&
    export PYTHONPATH="/tmp/site:$dsl_dir${PYTHONPATH:+:$PYTHONPATH}"
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
