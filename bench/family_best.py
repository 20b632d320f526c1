"""Best configuration of each kernel family on the same histograms, from GPU timing files.

    python3 bench/family_best.py bench/results/raw/H200/H200_<shape>_{triton,cute,grouped_mm}.train.json \
        --out bench/results/H200/<shape>_families.json

Every ``ramp-measurements/1`` file holds every configuration of one family timed on a
list of histograms (``bench/run_gpu.py`` writes them; the training histograms follow
from the sample plan's seeds, so two families' files of one shape share them). For each
histogram both files hold, this reports the fastest configuration of each family and the
ratio to the first file's: where another family's best beats the first family's best,
an engine path over that family can win (no cost model involved). CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ramp.errors import InputError, RampError
from ramp.profiler import Measurements


def best_per_histogram(meas: Measurements) -> dict[str, tuple[float, str]]:
    """label -> (fastest time in us, its configuration's name), histograms with any time."""
    out = {}
    for label, row in zip(meas.labels, meas.times):
        if np.isfinite(row).any():
            i = int(np.nanargmin(row))
            out[label] = (float(row[i]), meas.bank.configs[i].name)
    return out


def compare(files: list[Path]) -> dict[str, Any]:
    runs = [Measurements.load(f) for f in files]
    first = runs[0]
    for f, m in zip(files[1:], runs[1:]):
        if (m.gpu, m.problem) != (first.gpu, first.problem):
            raise InputError(f"{f}: {m.gpu} {m.problem.key} is not {first.gpu} "
                             f"{first.problem.key} (the first file's)")
    best = {m.family: best_per_histogram(m) for m in runs}
    shared = [lab for lab in first.labels if all(lab in b for b in best.values())]
    hists = dict(zip(first.labels, first.hists))
    rows = [{"label": lab, "tokens": int(hists[lab].sum() // first.problem.top_k),
             "best_us": {fam: b[lab][0] for fam, b in best.items()},
             "best_config": {fam: b[lab][1] for fam, b in best.items()},
             "vs_" + first.family: {fam: b[lab][0] / best[first.family][lab][0]
                                    for fam, b in best.items() if fam != first.family}}
            for lab in shared]
    return {"gpu": first.gpu, "problem": first.problem.to_dict(),
            "families": [m.family for m in runs],
            "sources": [{"file": str(f), "command": m.provenance.get("command"),
                         "device": m.provenance.get("device"),
                         "started": m.provenance.get("started")} for f, m in zip(files, runs)],
            "command": "python3 " + " ".join(sys.argv), "histograms": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="measurement files, reference first")
    ap.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = ap.parse_args(argv)
    try:
        result = compare(args.files)
    except RampError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    ref = result["families"][0]
    others = result["families"][1:]
    print(f"{result['gpu']} {result['problem']}: best of each family / best of {ref}")
    for row in sorted(result["histograms"], key=lambda r: (r["tokens"], r["label"])):
        ratios = "  ".join(f"{fam} {row['vs_' + ref][fam]:.3f}" for fam in others)
        print(f"  {row['label']:<34} T={row['tokens']:<6} {ref} {row['best_us'][ref]:9.1f} us"
              f"  {ratios}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
