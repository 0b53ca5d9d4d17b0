"""Quality of the whole pipeline on synthetic data, against its ground truth.

    make demo && .venv/bin/python benchmarks/pipeline_quality.py demo-out

Reads what `make demo` wrote (a run trained on demo-out/train, a report on the unseen cohort
demo-out/new) and prints, with the issue's targets:
- the model's validation accuracy and AUC (split by patient);
- per patient: true and reported blast %, the 95% interval, white-cell counts;
- mean absolute error of blast % (<= 3 points), healthy patients reported at <= 2%, every true
  fraction inside or within 2 points of its interval, white-cell counts within 3% on average.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def _rows(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {r["patient_id"]: r for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path)
    args = ap.parse_args()
    d = args.demo
    run = json.loads((d / "run" / "summary.json").read_text())
    for arch, r in run["archs"].items():
        b = r["best"]
        print(f"model {arch}: best val acc {b['val_acc']:.3f}, AUC {b['val_auc']:.3f}, sensitivity "
              f"{b['val_sensitivity']:.3f}, specificity {b['val_specificity']:.3f} (split by "
              f"{run['split']['split_mode_used']}; targets for resnet: acc >= 0.97, AUC >= 0.99)")
    truth = _rows(d / "new" / "truth" / "patients.csv")
    report = _rows(d / "report" / "patients.csv")
    errors, count_err, outside = [], [], []
    healthy_ok = True
    print(f"{'patient':<8} {'true %':>7} {'reported %':>10} {'95% CI':>13} {'true WBC':>8} {'found':>6}")
    for pid, t in sorted(truth.items()):
        r = report.get(pid)
        if r is None:
            print(f"{pid:<8} missing from the report")
            continue
        true_pct, pct = float(t["blast_pct"]), float(r["blast_pct"])
        lo, hi = float(r["ci_low"]), float(r["ci_high"])
        errors.append(abs(pct - true_pct))
        count_err.append(abs(int(r["n_cells"]) - int(t["n_wbc"])) / max(1, int(t["n_wbc"])))
        gap = max(lo - true_pct, true_pct - hi, 0.0)
        if gap > 2.0:
            outside.append(pid)
        if int(t["n_blast"]) == 0 and pct > 2.0:
            healthy_ok = False
        print(f"{pid:<8} {true_pct:7.2f} {pct:10.2f} {lo:6.1f}-{hi:5.1f} {t['n_wbc']:>8} {r['n_cells']:>6}")
    mae = statistics.fmean(errors)
    print(f"blast % mean absolute error: {mae:.2f} points (target <= 3)")
    print(f"healthy patients all at <= 2%: {healthy_ok}")
    print(f"true fraction inside or within 2 points of the interval: {len(errors) - len(outside)}/{len(errors)}"
          + (f" (not: {', '.join(outside)})" if outside else ""))
    print(f"white-cell count error: {100 * statistics.fmean(count_err):.2f}% on average (target <= 3%)")


if __name__ == "__main__":
    main()
