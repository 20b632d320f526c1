"""Performance-region analysis: hand-checked rooflines, region codes, report outputs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ramp.errors import InputError
from ramp.hardware import get_gpu
from ramp.models import get_model
from ramp.problem import MoEProblem
from ramp.regions import (
    CODES,
    DEFAULT_SKEWS,
    DEFAULT_TOKENS,
    RegionAssumptions,
    analyze_regions,
    plot_regions,
)

H100 = get_gpu("H100-SXM")
QWEN_W13 = get_model("qwen3-30b-a3b").problem("w13")


@pytest.fixture(scope="module")
def qwen_report():
    return analyze_regions(H100, QWEN_W13)


def test_grid_shape_and_codes(qwen_report) -> None:
    assert qwen_report.tokens == DEFAULT_TOKENS and qwen_report.skews == DEFAULT_SKEWS
    assert len(qwen_report.cells) == len(DEFAULT_TOKENS) * len(DEFAULT_SKEWS)
    for cell in qwen_report.cells:
        assert cell.code in CODES and set(cell.gains) <= set(CODES)
        assert cell.floor_us > 0 and cell.best_us <= cell.baseline_us
        assert cell.reason.startswith(cell.bound)


def test_qwen_decode_is_memory_bound_and_split_k(qwen_report) -> None:
    cell = qwen_report.cell(1, 0.0)
    assert cell.bound == "memory"
    # 8 experts' weights (8 x 1536 x 2048 bf16) + 1 token in + 8 rows out, at 3.35 TB/s.
    floor_bytes = 8 * 1536 * 2048 * 2 + 2048 * 2 + 8 * 1536 * 2
    assert cell.floor_us == pytest.approx(floor_bytes / 3.35e12 * 1e6)
    assert cell.active_experts == pytest.approx(8.0)
    # 8 experts x 12 column tiles = 96 CTAs < 132 SMs: split-K fills the machine.
    assert cell.ctas == pytest.approx(96)
    assert cell.code == "SK"


def test_qwen_prefill_is_compute_bound_large_tiles(qwen_report) -> None:
    cell = qwen_report.cell(16384, 0.0)
    assert cell.bound == "compute"
    flops = 2 * 16384 * 8 * 1536 * 2048
    assert cell.floor_us == pytest.approx(flops / 989.4e12 * 1e6)
    assert cell.code == "TC"
    assert cell.intensity > qwen_report.ridge


def test_crossover_matches_closed_form(qwen_report) -> None:
    # All 128 experts active: 2*T*k*N*K / (2*(E*N*K + T*K + T*k*N)) = ridge.
    ridge = 989.4e12 / 3.35e12
    n, k, e, top = 1536, 2048, 128, 8
    t_star = ridge * e * n * k / (top * n * k - ridge * (k + top * n))
    assert qwen_report.crossover_tokens[0.0] == pytest.approx(t_star, rel=1e-3)
    first_compute = min(c.tokens for c in qwen_report.cells if c.bound == "compute" and c.skew == 0)
    assert first_compute / 2 < t_star <= first_compute


def test_lower_ridge_gpu_turns_compute_bound_earlier() -> None:
    grid = {"tokens": [1, 1024], "skews": [0.0]}
    h100 = analyze_regions(H100, QWEN_W13, **grid)
    rtx = analyze_regions(get_gpu("RTX-4090"), QWEN_W13, **grid)
    assert rtx.crossover_tokens[0.0] < h100.crossover_tokens[0.0]


def test_skew_reduces_active_experts() -> None:
    report = analyze_regions(H100, QWEN_W13, tokens=[64], skews=[0.0, 2.0])
    flat, steep = report.cell(64, 0.0), report.cell(64, 2.0)
    assert steep.active_experts < flat.active_experts
    assert steep.max_rows > flat.max_rows


def test_mixtral_prefill_floor_and_expert_parallel() -> None:
    mixtral = get_model("mixtral-8x7b").problem("w13")
    cell = analyze_regions(H100, mixtral, tokens=[4096], skews=[0.0]).cell(4096, 0.0)
    assert cell.bound == "compute"
    assert cell.floor_us == pytest.approx(2 * 4096 * 2 * 28672 * 4096 / 989.4e12 * 1e6)
    v3 = get_model("deepseek-v3").problem("w13", ep=8)
    assert v3.num_experts == 32
    report = analyze_regions(get_gpu("H200"), v3, tokens=[1, 4096], skews=[1.0])
    assert report.cell(1, 1.0).bound == "memory"


def test_deterministic(qwen_report) -> None:
    again = analyze_regions(H100, QWEN_W13)
    assert again.codes() == qwen_report.codes()


def test_format_table(qwen_report) -> None:
    text = qwen_report.format_table()
    assert "H100-SXM" in text and QWEN_W13.key in text
    assert "16k" in text and "TC*" in text and "memory -> compute bound at T ~" in text
    for code in CODES:
        assert f"  {code}" in text
    assert len(text.splitlines()) == 2 + len(DEFAULT_SKEWS) + 2 + len(CODES)


def test_to_dict_is_json(qwen_report) -> None:
    data = json.loads(json.dumps(qwen_report.to_dict()))
    assert data["gpu"]["name"] == "H100-SXM" and len(data["cells"]) == 75
    assert data["problem"]["n"] == 1536 and "legend" in data


def test_plot_writes_png(tmp_path) -> None:
    report = analyze_regions(H100, QWEN_W13, tokens=[1, 64, 8192], skews=[0.0, 1.0])
    out = plot_regions(report, tmp_path / "regions.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens": [0]}, "tokens"),
        ({"tokens": []}, "tokens"),
        ({"tokens": "1,2"}, "tokens"),
        ({"skews": [-1.0]}, "skews"),
        ({"skews": [float("inf")]}, "skews"),
        ({"gpu": "H100-SXM"}, "gpu"),
        ({"gpu": dataclasses.replace(H100, hbm_bandwidth=0.0)}, "hbm_bandwidth"),
        ({"gpu": get_gpu("A100-80GB"),
          "problem": dataclasses.replace(QWEN_W13, dtype="float8_e4m3fn")}, "float8"),
        ({"problem": {"n": 1}}, "problem"),
    ],
)
def test_bad_inputs(kwargs: dict, field: str) -> None:
    args = {"gpu": H100, "problem": QWEN_W13, "tokens": [1], "skews": [0.0], **kwargs}
    with pytest.raises(InputError, match=field):
        analyze_regions(**args)


def test_bad_assumptions_and_lookup(qwen_report) -> None:
    with pytest.raises(InputError, match="overlap"):
        RegionAssumptions(overlap=1.5)
    with pytest.raises(InputError, match="samples"):
        RegionAssumptions(samples=0)
    with pytest.raises(InputError, match="tokens=3"):
        qwen_report.cell(3, 0.0)
    tiny = get_gpu("MI300X")
    assert analyze_regions(tiny, QWEN_W13, tokens=[1], skews=[0.0]).cells[0].code in CODES


def test_problem_without_fitting_tile_raises() -> None:
    small = dataclasses.replace(H100, smem_per_block=16 * 1024, smem_per_sm=16 * 1024)
    with pytest.raises(InputError, match="smem_per_block"):
        analyze_regions(small, MoEProblem(8, 256, 256, 2), tokens=[1], skews=[0.0])
