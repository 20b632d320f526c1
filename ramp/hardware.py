"""Hardware catalog: the GPU constants that the region analysis and the simulator need.

Every number is a datasheet or whitepaper figure (dense tensor throughput, no sparsity),
so that predictions made from it can be checked against what the vendor promises. Live
measurements never overwrite the catalog; they are recorded next to it.

Measured on the lent H100 SXM (2026-11-23): device-to-device copy 3.0 TB/s (read+write;
datasheet 3.35 TB/s), bf16 matmul 795 TFLOP/s at 8192^3 (datasheet 989 TFLOP/s dense),
132 SMs, 50 MiB L2; every side-by-side run since records the same ceilings
(``read_bandwidth_bytes_per_s`` 2.9-3.05e12, ``matmul_flops`` 7.3-7.9e14 in
bench/results/raw/*_baselines.json). Kernels that only read weights get closer to the
datasheet bandwidth than the copy figure suggests, so the catalog keeps datasheet values
and callers that want measured ceilings pass them explicitly (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ramp.errors import InputError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
GB = 10**9  # datasheets quote capacities and bandwidths in decimal units
TB = 10**12
TFLOPS = 1e12


@dataclass(frozen=True)
class GPUSpec:
    """Constants of one GPU model, as its datasheet states them.

    ``smem_per_block`` is the shared memory one CTA may opt into (what limits a tile
    pipeline), ``smem_per_sm`` what one SM holds (what CTAs resident together share);
    ``max_ctas_per_sm``, ``max_warps_per_sm`` and ``regs_per_sm`` (32-bit registers)
    bound occupancy (``occupancy``). ``interconnect_bandwidth`` is per GPU, one direction (NVLink, xGMI or
    PCIe), what tensor/expert-parallel collectives can use. Peak FLOP/s are dense tensor
    throughput with fp32 accumulation; ``peak_fp8_flops`` is 0 where unsupported.
    ``hbm_bytes`` is the memory the driver exposes (``nvidia-smi`` memory.total, what an
    engine's ``gpu_memory_utilization`` is a fraction of), not the datasheet's rounded
    "GB": an "80 GB" H100 has 80 GiB (85.9e9 bytes) of HBM3, 81559 MiB of it visible;
    a "141 GB" H200 shows 143771 MiB (150.8e9 bytes).
    """

    name: str
    vendor: str
    arch: str
    sms: int
    hbm_bandwidth: float
    peak_bf16_flops: float
    peak_fp16_flops: float
    peak_fp8_flops: float
    smem_per_block: int
    smem_per_sm: int
    l2_bytes: int
    max_ctas_per_sm: int
    max_warps_per_sm: int
    regs_per_sm: int
    hbm_bytes: int
    interconnect_bandwidth: float
    source: str

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor FLOP/s for operands of ``dtype`` (a MoEProblem dtype name).

        Raises InputError when the catalog has no tensor peak for that dtype (float32) or
        the GPU lacks the unit (fp8 before Ada/Hopper), rather than returning 0 and
        letting a roofline divide by it.
        """
        table = {
            "bfloat16": self.peak_bf16_flops,
            "float16": self.peak_fp16_flops,
            "float8_e4m3fn": self.peak_fp8_flops,
        }
        if dtype not in table:
            raise InputError(f"dtype {dtype!r}: no tensor peak in the catalog; use {sorted(table)}")
        peak = table[dtype]
        if peak <= 0:
            raise InputError(f"dtype {dtype!r}: {self.name} has no {dtype} tensor peak (0)")
        return peak

    def occupancy(self, num_warps: int, smem_bytes: int, regs_per_thread: int = 0) -> int:
        """CTAs of one kernel resident per SM: the least of what shared memory, warp
        slots, the CTA limit and (when ``regs_per_thread`` is known, e.g. from a compiled
        kernel) the register file allow; at least 1. Registers are allocated per warp in
        units of 256 (NVIDIA's granularity)."""
        limits = [self.max_ctas_per_sm, self.max_warps_per_sm // num_warps]
        if smem_bytes > 0:
            limits.append(self.smem_per_sm // smem_bytes)
        if regs_per_thread > 0:
            regs_per_warp = -(-regs_per_thread * 32 // 256) * 256
            limits.append(self.regs_per_sm // (regs_per_warp * num_warps))
        return max(1, min(limits))

    @property
    def arch_number(self) -> int:
        """Compute capability as an int (``sm_90`` -> 90), 0 for non-NVIDIA archs."""
        match = re.fullmatch(r"sm_(\d+)a?", self.arch)
        return int(match.group(1)) if match else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NV_DS = "NVIDIA {} datasheet"

GPUS: dict[str, GPUSpec] = {
    spec.name: spec
    for spec in (
        GPUSpec(
            name="A100-40GB", vendor="NVIDIA", arch="sm_80", sms=108,
            hbm_bandwidth=1555 * GB, peak_bf16_flops=312 * TFLOPS,
            peak_fp16_flops=312 * TFLOPS, peak_fp8_flops=0.0,
            smem_per_block=163 * KIB, smem_per_sm=164 * KIB, l2_bytes=40 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=40960 * MIB, interconnect_bandwidth=300 * GB,
            source="NVIDIA A100 datasheet (SXM4 40GB); NVIDIA A100 (Ampere) whitepaper",
        ),
        GPUSpec(
            name="A100-80GB", vendor="NVIDIA", arch="sm_80", sms=108,
            hbm_bandwidth=2039 * GB, peak_bf16_flops=312 * TFLOPS,
            peak_fp16_flops=312 * TFLOPS, peak_fp8_flops=0.0,
            smem_per_block=163 * KIB, smem_per_sm=164 * KIB, l2_bytes=40 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=81920 * MIB, interconnect_bandwidth=300 * GB,
            source="NVIDIA A100 datasheet (SXM4 80GB); NVIDIA A100 (Ampere) whitepaper",
        ),
        GPUSpec(
            name="H100-SXM", vendor="NVIDIA", arch="sm_90", sms=132,
            hbm_bandwidth=3350 * GB, peak_bf16_flops=989.4 * TFLOPS,
            peak_fp16_flops=989.4 * TFLOPS, peak_fp8_flops=1978.9 * TFLOPS,
            smem_per_block=227 * KIB, smem_per_sm=228 * KIB, l2_bytes=50 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=81559 * MIB, interconnect_bandwidth=450 * GB,
            source="NVIDIA H100 Tensor Core GPU datasheet (SXM5); NVIDIA H100 whitepaper",
        ),
        GPUSpec(
            name="H100-PCIe", vendor="NVIDIA", arch="sm_90", sms=114,
            hbm_bandwidth=2000 * GB, peak_bf16_flops=756.5 * TFLOPS,
            peak_fp16_flops=756.5 * TFLOPS, peak_fp8_flops=1513 * TFLOPS,
            smem_per_block=227 * KIB, smem_per_sm=228 * KIB, l2_bytes=50 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=81559 * MIB, interconnect_bandwidth=64 * GB,
            source="NVIDIA H100 Tensor Core GPU datasheet (PCIe, PCIe Gen5 x16)",
        ),
        GPUSpec(
            name="H200", vendor="NVIDIA", arch="sm_90", sms=132,
            hbm_bandwidth=4800 * GB, peak_bf16_flops=989.4 * TFLOPS,
            peak_fp16_flops=989.4 * TFLOPS, peak_fp8_flops=1978.9 * TFLOPS,
            smem_per_block=227 * KIB, smem_per_sm=228 * KIB, l2_bytes=50 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=143771 * MIB, interconnect_bandwidth=450 * GB,
            source="NVIDIA H200 Tensor Core GPU datasheet (SXM)",
        ),
        GPUSpec(
            name="B200", vendor="NVIDIA", arch="sm_100", sms=148,
            hbm_bandwidth=8000 * GB, peak_bf16_flops=2250 * TFLOPS,
            peak_fp16_flops=2250 * TFLOPS, peak_fp8_flops=4500 * TFLOPS,
            smem_per_block=227 * KIB, smem_per_sm=228 * KIB, l2_bytes=126 * MIB,
            max_ctas_per_sm=32, max_warps_per_sm=64,
            regs_per_sm=65536, hbm_bytes=183359 * MIB, interconnect_bandwidth=900 * GB,
            source="NVIDIA HGX B200 / DGX B200 datasheets (per-GPU, dense); Blackwell whitepaper",
        ),
        GPUSpec(
            name="L40S", vendor="NVIDIA", arch="sm_89", sms=142,
            hbm_bandwidth=864 * GB, peak_bf16_flops=362.05 * TFLOPS,
            peak_fp16_flops=362.05 * TFLOPS, peak_fp8_flops=733 * TFLOPS,
            smem_per_block=99 * KIB, smem_per_sm=100 * KIB, l2_bytes=96 * MIB,
            max_ctas_per_sm=24, max_warps_per_sm=48,
            regs_per_sm=65536, hbm_bytes=46068 * MIB, interconnect_bandwidth=32 * GB,
            source="NVIDIA L40S datasheet (GDDR6, PCIe Gen4 x16); Ada Lovelace whitepaper",
        ),
        GPUSpec(
            name="RTX-4090", vendor="NVIDIA", arch="sm_89", sms=128,
            hbm_bandwidth=1008 * GB, peak_bf16_flops=165.2 * TFLOPS,
            peak_fp16_flops=165.2 * TFLOPS, peak_fp8_flops=330.3 * TFLOPS,
            smem_per_block=99 * KIB, smem_per_sm=100 * KIB, l2_bytes=72 * MIB,
            max_ctas_per_sm=24, max_warps_per_sm=48,
            regs_per_sm=65536, hbm_bytes=24564 * MIB, interconnect_bandwidth=32 * GB,
            source="NVIDIA Ada Lovelace whitepaper (GeForce RTX 4090, FP32 accumulate)",
        ),
        GPUSpec(
            # CU = "SM"; smem = 64 KiB LDS per CU; L2 = 8 XCDs x 4 MiB (the 256 MiB Infinity
            # Cache is not counted); regs = 512 KiB VGPR+AGPR file per CU; max_ctas is the
            # approximate workgroup limit per CU.
            name="MI300X", vendor="AMD", arch="gfx942", sms=304,
            hbm_bandwidth=5300 * GB, peak_bf16_flops=1307.4 * TFLOPS,
            peak_fp16_flops=1307.4 * TFLOPS, peak_fp8_flops=2614.9 * TFLOPS,
            smem_per_block=64 * KIB, smem_per_sm=64 * KIB, l2_bytes=32 * MIB,
            max_ctas_per_sm=16, max_warps_per_sm=32,
            regs_per_sm=131072, hbm_bytes=192 * GIB, interconnect_bandwidth=448 * GB,
            source="AMD Instinct MI300X datasheet; AMD CDNA 3 architecture whitepaper",
        ),
    )
}


def _squash(text: str) -> str:
    """Lowercase and drop everything but letters and digits: 'H100-SXM' -> 'h100sxm'."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


# Device-name patterns (torch.cuda.get_device_name) -> catalog key, tried in order on the
# squashed name. Variants with different memory systems (H100 NVL, H200 NVL, A100 PCIe)
# are deliberately not mapped: wrong bandwidth numbers are worse than an error.
_DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"h100.*(nvl)", ""),
    (r"h100.*pcie", "H100-PCIe"),
    (r"h100", "H100-SXM"),
    (r"h200.*nvl", ""),
    (r"h200", "H200"),
    (r"a100.*pcie", ""),
    (r"a100.*80gb", "A100-80GB"),
    (r"a100.*40gb", "A100-40GB"),
    (r"b200", "B200"),
    (r"l40s", "L40S"),
    (r"rtx4090|geforce4090", "RTX-4090"),
    (r"mi300x", "MI300X"),
)


def _lookup(name: str) -> str | None:
    """Catalog key for a catalog name or device name, or None."""
    squashed = _squash(name)
    for key in GPUS:
        if _squash(key) == squashed:
            return key
    for pattern, key in _DEVICE_PATTERNS:
        if re.search(pattern, squashed):
            return key or None
    return None


def get_gpu(name: str) -> GPUSpec:
    """The catalog entry for a catalog key (any case) or a torch device name.

    ``"h100-sxm"``, ``"NVIDIA H100 80GB HBM3"`` and ``"H100 SXM"`` all give H100-SXM.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"gpu: expected a GPU name, got {name!r}; known: {', '.join(GPUS)}")
    key = _lookup(name)
    if key is None:
        raise InputError(f"gpu: unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]


def detect_gpu(device: int = 0) -> GPUSpec | None:
    """The spec of the live CUDA/ROCm device, or None without torch or a GPU.

    The catalog entry is used with ``sms``, ``l2_bytes``, ``hbm_bytes`` and the shared
    memory limit replaced by what the driver reports (MIG slices and cut-down SKUs differ
    from datasheets). An unknown device gets a spec built from live properties alone,
    with bandwidth and FLOP/s 0: usable for grid geometry, not for rooflines.
    """
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(device)
    except (RuntimeError, AssertionError):
        return None
    live: dict[str, Any] = {"sms": int(props.multi_processor_count)}
    for attr, field in (
        ("L2_cache_size", "l2_bytes"),
        ("shared_memory_per_block_optin", "smem_per_block"),
        ("shared_memory_per_multiprocessor", "smem_per_sm"),
        ("total_memory", "hbm_bytes"),
        ("regs_per_multiprocessor", "regs_per_sm"),
    ):
        value = getattr(props, attr, None)
        if isinstance(value, int) and value > 0:
            live[field] = value
    key = _lookup(props.name)
    if key is not None:
        return dataclasses.replace(GPUS[key], **live)
    major, minor = getattr(props, "major", 0), getattr(props, "minor", 0)
    defaults: dict[str, Any] = {
        "smem_per_block": 48 * KIB, "smem_per_sm": 48 * KIB, "l2_bytes": 0, "hbm_bytes": 0,
        "regs_per_sm": 65536,
    }
    return GPUSpec(
        name=props.name, vendor="unknown", arch=f"sm_{major}{minor}",
        hbm_bandwidth=0.0, peak_bf16_flops=0.0, peak_fp16_flops=0.0, peak_fp8_flops=0.0,
        max_ctas_per_sm=16, max_warps_per_sm=48, interconnect_bandwidth=0.0,
        source="live device (no catalog entry)", **{**defaults, **live},
    )


_BYTES_TO_DTYPE = {2: "bfloat16", 1: "float8_e4m3fn"}


def ridge_point(gpu: GPUSpec, dtype_bytes: int = 2) -> float:
    """Arithmetic intensity (FLOP per HBM byte) at which compute and memory time are equal.

    A kernel whose FLOPs per byte moved is below this is memory-bound on ``gpu``.
    ``dtype_bytes`` picks the tensor peak: 2 -> bf16, 1 -> fp8.
    """
    if dtype_bytes not in _BYTES_TO_DTYPE:
        raise InputError(f"dtype_bytes must be one of {sorted(_BYTES_TO_DTYPE)}, got {dtype_bytes!r}")
    if gpu.hbm_bandwidth <= 0:
        raise InputError(f"gpu {gpu.name!r}: hbm_bandwidth is 0 (no catalog entry)")
    return gpu.peak_flops(_BYTES_TO_DTYPE[dtype_bytes]) / gpu.hbm_bandwidth
