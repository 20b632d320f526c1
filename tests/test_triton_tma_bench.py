"""bench/triton_tma.py on a CPU: the plot of a results file (the GPU part needs a GPU)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("triton_tma", REPO / "bench" / "triton_tma.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tflops_and_the_plot_of_a_results_file(tmp_path):
    tma = load()
    problem = {"num_experts": 8, "n": 1024, "k": 512, "top_k": 2}
    # 2 * 64 tokens * 2 * 1024 * 512 FLOPs in 1 us: 134.2 TFLOP/s
    assert abs(tma.tflops(problem, 64, 1.0) - 134.217728) < 1e-9
    results = {"device": {"device": "NVIDIA H200"}, "routing": "realistic", "rounds": 3,
               "shapes": {"m/w13": {"problem": problem, "tokens": {
                   "1024": {"best_plain": {"config": "a", "us": 20.0},
                            "best_tma": {"config": "a-tma", "us": 16.0}},
                   "64": {"best_plain": {"config": "b", "us": 5.0}, "best_tma": None}}}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert tma.main(["plot", str(path), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
