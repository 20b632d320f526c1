"""Data kept in two places stays one: every shipped profile is its raw GPU result."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "ramp/data/profiles").glob("*.json"))


def raw_source(shipped: Path) -> Path | None:
    """The bench/results/raw file a shipped profile was copied from (H200 runs live in
    raw/H200/), or None where the profile has no raw file."""
    raw = ROOT / "bench/results/raw"
    name = f"{shipped.stem}.profile.json"
    for candidate in (raw / name, raw / shipped.stem.split("_")[0] / name):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_equals_its_raw_source(shipped):
    source = raw_source(shipped)
    if source is None:
        pytest.skip("no raw file for this profile")
    assert shipped.read_bytes() == source.read_bytes(), (
        f"{shipped.relative_to(ROOT)} differs from {source}: copy the raw file over it")
