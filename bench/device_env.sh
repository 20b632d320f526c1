# Source on the lent GPU machine (offline, no pip install of this project possible):
# lays out the ramp.kernels / ramp.sim / ramp.adapters / ramp.traces subpackages the
# way the installed distribution has them, and puts the tree on PYTHONPATH. When the
# CuTe DSL was carried (bench/carry_cutlass.sh, carry [".whl"]), unpacks it first.
for sub in kernels sim adapters traces; do
  [ -e "ramp/$sub" ] || ln -s "../$sub" "ramp/$sub"
done
if [ -f .whl/cutlass_dsl-4.3.5-cp312.tar.xz ] && [ ! -d /tmp/site/nvidia_cutlass_dsl ]; then
  mkdir -p /tmp/site && tar xJf .whl/cutlass_dsl-4.3.5-cp312.tar.xz -C /tmp/site
fi
[ -d /tmp/site/nvidia_cutlass_dsl ] &&
  export PYTHONPATH="/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
