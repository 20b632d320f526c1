"""Hardware catalog: lookups by catalog key and torch device name, ridge points."""

from __future__ import annotations

import dataclasses

import pytest

from ramp.errors import InputError
from ramp.hardware import GPUS, GPUSpec, detect_gpu, get_gpu, ridge_point

REQUIRED = ("A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "B200", "L40S",
            "RTX-4090", "MI300X")


def test_catalog_has_required_gpus_with_sane_numbers() -> None:
    for name in REQUIRED:
        gpu = GPUS[name]
        assert gpu.name == name
        assert gpu.sms > 0 and gpu.hbm_bandwidth > 1e11 and gpu.peak_bf16_flops > 1e14
        assert gpu.smem_per_sm >= gpu.smem_per_block >= 64 * 1024 and gpu.l2_bytes > 0 and gpu.hbm_bytes > 1e10
        assert gpu.source
    assert GPUS["A100-80GB"].peak_fp8_flops == 0  # no fp8 tensor cores on Ampere


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA B200", "B200"),
        ("AMD Instinct MI300X", "MI300X"),
        ("h100-sxm", "H100-SXM"),
        ("H100_SXM", "H100-SXM"),
        ("mi300x", "MI300X"),
    ],
)
def test_get_gpu_accepts_keys_and_device_names(device_name: str, key: str) -> None:
    assert get_gpu(device_name).name == key


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "Tesla V100", "", "A100-PCIE-40GB"])
def test_unknown_gpu_lists_known_names(name: str) -> None:
    with pytest.raises(InputError, match=r"known: .*H100-SXM"):
        get_gpu(name)


def test_ridge_point_h100() -> None:
    gpu = get_gpu("H100-SXM")
    assert ridge_point(gpu, 2) == pytest.approx(989.4e12 / 3.35e12)
    assert ridge_point(gpu, 1) == pytest.approx(2 * ridge_point(gpu, 2), rel=1e-3)


def test_ridge_point_bad_inputs() -> None:
    with pytest.raises(InputError, match=r"fp8|float8"):
        ridge_point(get_gpu("A100-80GB"), 1)
    with pytest.raises(InputError, match="dtype_bytes"):
        ridge_point(get_gpu("H100-SXM"), 4)
    blank = dataclasses.replace(get_gpu("H100-SXM"), hbm_bandwidth=0.0)
    with pytest.raises(InputError, match="hbm_bandwidth"):
        ridge_point(blank, 2)


def test_peak_flops_by_dtype() -> None:
    gpu = get_gpu("H200")
    assert gpu.peak_flops("bfloat16") == gpu.peak_bf16_flops
    with pytest.raises(InputError, match="float32"):
        gpu.peak_flops("float32")
    assert gpu.arch_number == 90 and get_gpu("MI300X").arch_number == 0


def test_detect_gpu_returns_spec_or_none() -> None:
    torch = pytest.importorskip("torch")
    gpu = detect_gpu()
    if not torch.cuda.is_available():
        assert gpu is None
    else:
        assert isinstance(gpu, GPUSpec)
        assert gpu.sms == torch.cuda.get_device_properties(0).multi_processor_count


def test_occupancy_is_the_least_resource_limit():
    """One occupancy rule for every timer and estimate (ramp.hardware.GPUSpec.occupancy)."""
    h100 = get_gpu("H100-SXM")
    assert h100.smem_per_sm - h100.smem_per_block == 1024  # 228 vs 227 KiB
    assert h100.occupancy(4, 0) == 16                       # warp slots: 64 / 4
    assert h100.occupancy(4, 100 * 1024) == 2               # shared memory: 228 // 100
    assert h100.occupancy(8, 1024, regs_per_thread=255) == 1  # 256 regs x 256 threads
    assert h100.occupancy(4, 1024, regs_per_thread=64) == 8   # 65536 / (2048 * 4)
    assert h100.occupancy(4, 300 * 1024) == 1               # never below one CTA
    assert get_gpu("L40S").occupancy(4, 0) == 12            # Ada: 48 warps per SM


def test_weight_copies_follow_the_l2():
    pytest.importorskip("torch")
    from ramp.kernels.workload import MAX_WEIGHT_COPIES, weight_copies
    from ramp.models import get_model
    from ramp.problem import MoEProblem

    l2 = get_gpu("H100-SXM").l2_bytes
    for name, gemm, copies in (("qwen3-30b-a3b", "w13", 4), ("mixtral-8x7b", "w13", 2)):
        problem = get_model(name).problem(gemm)
        n = weight_copies(problem, l2)
        assert n == copies
        touched = problem.top_k * problem.expert_weight_bytes
        assert n * touched > 3 * l2 or n == 2
    assert weight_copies(get_model("qwen3-30b-a3b").problem("w13"), 4 * l2) > 4
    assert weight_copies(MoEProblem(8, 64, 64, 2), l2) == MAX_WEIGHT_COPIES
