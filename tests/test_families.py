"""The kernel-family registry: every entry resolves, the core stays free of kernel code."""

import importlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ramp.cli import main
from ramp.config import KernelConfig
from ramp.errors import InputError
from ramp.families import FAMILIES, get_family, installed_family_versions, resolve


def _importable(ref: str) -> bool:
    """False only where the module needs an optional GPU library absent here."""
    try:
        importlib.import_module(ref.partition(":")[0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("cutlass", "cuda", "torch", "triton"):
            return False
        raise
    return True


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_reference_of_every_family_resolves(name):
    family = get_family(name)
    assert family.name == name
    assert isinstance(family.family_version(), str) and family.family_version()
    if family.space is not None:
        configs = family.configs()
        assert configs and all(isinstance(c, KernelConfig) for c in configs)
    if family.bank is not None:
        assert len(family.default_bank()) == len(family.configs())
    for ref in (family.timer, family.launcher, family.fields):
        if ref is not None and _importable(ref):
            assert callable(resolve(ref)), ref


def test_versions_come_from_the_families_modules():
    from ramp.kernels.cute.configs import FAMILY_VERSION as CUTE
    from ramp.kernels.triton.configs import FAMILY_VERSION as TRITON
    from ramp.kernels.triton.configs import TILES_FAMILY_VERSION as TILES

    assert installed_family_versions() == {"triton": TRITON, "triton-tiles": TILES,
                                           "triton-poly": TRITON, "cute": CUTE}


def test_unknown_family_is_a_clear_error():
    with pytest.raises(InputError, match="unknown; known: triton"):
        get_family("tritn")
    result = CliRunner().invoke(main, ["profile", "--model", "qwen3-30b-a3b", "--gemm", "w13",
                                       "--family", "tritn"])
    assert result.exit_code == 2 and "'tritn' is not one of" in result.output
    assert "'triton-poly'" not in result.output  # its branches come from measurements


def test_core_imports_no_kernel_code():
    pytest.importorskip("simpy", reason="ramp.sim needs simpy (absent on the GPU machine)")
    code = ("import sys, ramp.cli, ramp.families, ramp.profiler, ramp.sim.moe; "
            "print([m for m in sys.modules if m.startswith('ramp.kernels')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
