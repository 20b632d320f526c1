# Source on the lent GPU machine (offline, no pip install of this project possible):
# lays out the ramp.kernels / ramp.sim / ramp.adapters / ramp.traces subpackages the
# way the installed distribution has them, and puts the tree on PYTHONPATH.
for sub in kernels sim adapters traces; do
  [ -e "ramp/$sub" ] || ln -s "../$sub" "ramp/$sub"
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
