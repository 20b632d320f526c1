# Source on the lent GPU machine (offline, no pip install of this project possible):
# lays out the ramp.kernels / ramp.sim / ramp.adapters / ramp.traces subpackages the
# way the installed distribution has them, and puts the tree on PYTHONPATH. When both
# halves of the CuTe DSL pack are here (bench/carry_cutlass.sh; carried in two calls),
# unpacks them into /tmp/site first (with quack-kernels, which vLLM imports beside it).
for sub in kernels sim adapters traces; do
  [ -e "ramp/$sub" ] || ln -s "../$sub" "ramp/$sub"
done
dsl_pack=.whl/cutlass_dsl-4.6.0-cp312.tar.xz
if [ ! -f /tmp/site/.cutlass_dsl-4.6.0 ]; then
  if [ -f "$dsl_pack.1" ] && [ -f "$dsl_pack.2" ]; then
    mkdir -p /tmp/site && cat "$dsl_pack.1" "$dsl_pack.2" | tar xJf - -C /tmp/site &&
      touch /tmp/site/.cutlass_dsl-4.6.0
  elif [ -f "$dsl_pack.1" ] || [ -f "$dsl_pack.2" ]; then
    echo "device_env.sh: one half of $dsl_pack here; carry the other (.1 and .2)" >&2
  fi
fi
[ -f /tmp/site/.cutlass_dsl-4.6.0 ] &&
  export PYTHONPATH="/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
