"""GPU kernel families that register configurations into RaMP's bank.

Installed as ``ramp.kernels``. Each family's configuration space is plain data; its
kernels import torch/triton/cutlass only when a kernel module is imported.
"""
