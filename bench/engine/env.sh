# Source on the GPU machine (bash): unpacks the carried vLLM pack once per machine,
# installs this project (its vllm.general_plugins entry point makes every vLLM process
# load RaMP) into /tmp/ramp-site, and exports the offline-engine environment.
#   call 1: carry [".carry/vllm/deps", ".carry/vllm/vllm-fa3.tar.xz"] (FA3: FLASH_ATTN)
#   call 2: carry [".carry/vllm/vllm-slim.tar.xz"], or, where the checkout is too big to
#           travel beside it, [".carry/vllm/vllm-slim.tar.xz.1of2"] and then, in call 3,
#           [".carry/vllm/vllm-slim.tar.xz.2of2"]: the halves wait in /tmp until all came
# What a call unpacks or installs stays in /tmp/site while the machine is warm (30 s
# between calls): a fresh machine (after a give-back or a lost lease) needs every piece
# again, deps first.
site=/tmp/site parts=/tmp/vllm-slim-parts
mkdir -p "$site" "$parts"
unpack_vllm() {  # stdin: the pack; the marker only after a whole unpack, else none of it
  if tar xJf - -C "$site"; then
    touch "$site/.vllm-unpacked"
  else
    echo "env.sh: the vLLM pack did not unpack (a corrupt or mismatched part?); removed (FA3 with it), carry both again" >&2
    rm -rf "$site/vllm" "$site"/vllm-*.dist-info
  fi
  rm -rf "$parts"; mkdir -p "$parts"
}
if [ ! -f "$site/.vllm-unpacked" ]; then
  for part in .carry/vllm/vllm-slim.tar.xz.*of*; do
    [ -f "$part" ] && cp "$part" "$parts/"
  done
  if [ -f .carry/vllm/vllm-slim.tar.xz ]; then
    unpack_vllm < .carry/vllm/vllm-slim.tar.xz
  else
    n=$(find "$parts" -name 'vllm-slim.tar.xz.*of*' | sed -n 's/.*of\([0-9]*\)$/\1/p' | head -1)
    have=$(find "$parts" -name "vllm-slim.tar.xz.*of$n" | wc -l)
    if [ -n "$n" ] && [ "$have" -eq "$n" ]; then
      for i in $(seq 1 "$n"); do cat "$parts/vllm-slim.tar.xz.${i}of$n"; done | unpack_vllm
    elif [ -n "$n" ]; then
      echo "env.sh: $have of $n parts of the vLLM pack here; carry the others next" >&2
    fi
  fi
fi
if [ -f .carry/vllm/vllm-fa3.tar.xz ] && [ ! -f "$site/vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so" ]; then
  tar xJf .carry/vllm/vllm-fa3.tar.xz -C "$site"
fi
if [ -d .carry/vllm/deps ] && [ ! -f "$site/.deps-installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .carry/vllm/deps/*.whl &&
    touch "$site/.deps-installed"
fi
[ -f "$site/.vllm-unpacked" ] || echo "env.sh: no vLLM in $site (carry .carry/vllm first)" >&2
for sub in kernels sim adapters traces; do  # bench/device_env.sh's links would package twice
  [ -L "ramp/$sub" ] && rm "ramp/$sub"
done
rm -rf /tmp/ramp-site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --target /tmp/ramp-site . >/tmp/ramp-install.log 2>&1 || cat /tmp/ramp-install.log >&2
rm -rf build
export PYTHONPATH="/tmp/ramp-site:$site${PYTHONPATH:+:$PYTHONPATH}"
# the CuTe DSL (and quack with 4.6), where an earlier call unpacked it (bench/device_env.sh;
# /tmp/site/.cutlass_dsl names the version): the plans measure the cute path and the
# engine runs it only then
for dsl_dir in "$site"/nvidia_cutlass_dsl/{dsl,python}_packages; do
  [ -f "$site/.cutlass_dsl" ] && [ -d "$dsl_dir" ] && export PYTHONPATH="$PYTHONPATH:$dsl_dir"
done
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
