"""Triton fused-MoE family. ``configs`` is pure data; ``fused_moe`` needs torch + triton."""

from ramp.kernels.triton.configs import FAMILY, FAMILY_VERSION, triton_bank, triton_configs

__all__ = ["FAMILY", "FAMILY_VERSION", "triton_bank", "triton_configs"]
