"""Quality of the whole pipeline on synthetic data, against its ground truth.

    make demo && .venv/bin/python benchmarks/pipeline_quality.py demo-out

Reads what `make demo` wrote (a run trained on demo-out/train, a report on the unseen cohort
demo-out/new) and prints, with the issue's targets:
- the model's validation accuracy and AUC (split by patient);
- per patient: true and reported blast %, the 95% interval, white-cell counts;
- mean absolute error of blast % (<= 3 points), healthy patients reported at <= 2%, every true
  fraction inside or within 2 points of its interval, white-cell counts within 3% on average;
- where the truth has classes (synth's n_<class>/<class>_pct) and the report a differential: per
  class the mean absolute error of the per-patient percentage (target: each white class <= 3
  points), with the per-patient errors; nucleated red and smudge cells per 100 white cells apart.

Any other layout: --truth new/truth/patients.csv --report REPORT_DIR (--run RUN, optional), e.g. the
issue-11 check: train ResNet-18 8 epochs `--classes auto` on 24 patients x 6 images, infer 9 other
patients x 8 images, then `pipeline_quality.py --truth ... --report ...`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rows(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {r["patient_id"]: r for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, nargs="?", help="a `make demo` output (run/, new/truth/, report/)")
    ap.add_argument("--truth", type=Path, help="truth/patients.csv of the inferred cohort (default DEMO/new/...)")
    ap.add_argument("--report", type=Path, help="the `allray infer` output folder (default DEMO/report)")
    ap.add_argument("--run", type=Path, help="the training run folder (default DEMO/run; skipped if absent)")
    args = ap.parse_args()
    d = args.demo or Path("demo-out")
    run_dir = args.run or d / "run"
    if (run_dir / "summary.json").is_file():
        run = json.loads((run_dir / "summary.json").read_text())
        for arch, r in run["archs"].items():
            b = r.get("best") or {}
            facts = ", ".join(
                f"{k} {b[k]:.3f}"
                for k in (
                    "val_acc",
                    "val_auc",
                    "val_sensitivity",
                    "val_specificity",
                    "val_macro_f1",
                    "val_balanced_acc",
                )
                if k in b
            )
            print(
                f"model {arch}: best {facts} (split by {run.get('split', {}).get('split_mode_used')}; "
                "targets for resnet: acc >= 0.97, AUC >= 0.99)"
            )
    truth = _rows(args.truth or d / "new" / "truth" / "patients.csv")
    report = _rows((args.report or d / "report") / "patients.csv")
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
    print(
        f"true fraction inside or within 2 points of the interval: {len(errors) - len(outside)}/{len(errors)}"
        + (f" (not: {', '.join(outside)})" if outside else "")
    )
    print(f"white-cell count error: {100 * statistics.fmean(count_err):.2f}% on average (target <= 3%)")
    class_errors(truth, report)


def class_errors(truth: dict[str, dict], report: dict[str, dict]) -> dict[str, float]:
    """Print and return the mean absolute error of each class's per-patient percentage (classes in both)."""
    from pipeline import taxonomy

    t_cols = next(iter(truth.values()), {})
    r_cols = next(iter(report.values()), {})
    classes = [
        c for c in (*taxonomy.WHITE_CLASSES, *taxonomy.APART_CLASSES) if f"{c}_pct" in t_cols and f"{c}_pct" in r_cols
    ]
    if not classes:
        print("differential: the truth or the report has no class columns (binary model or old cohort)")
        return {}
    print(
        "differential: per-patient error of each class's percentage (white classes: % of white cells; "
        "erythroblast, smudge: per 100 white cells)"
    )
    pids = [pid for pid in sorted(truth) if pid in report]
    print(f"{'class':<13} {'MAE':>6} {'max':>6}  " + " ".join(f"{pid:>7}" for pid in pids))
    out = {}
    for c in classes:
        errs = [float(report[pid][f"{c}_pct"]) - float(truth[pid][f"{c}_pct"]) for pid in pids]
        out[c] = statistics.fmean(abs(e) for e in errs)
        print(f"{c:<13} {out[c]:6.2f} {max(abs(e) for e in errs):6.2f}  " + " ".join(f"{e:+7.2f}" for e in errs))
    white = {c: v for c, v in out.items() if taxonomy.is_white(c)}
    worst = max(white.items(), key=lambda kv: kv[1]) if white else None
    if worst:
        print(
            f"white classes within 3 points on average: {all(v <= 3 for v in white.values())} "
            f"(worst {worst[0]}: {worst[1]:.2f})"
        )
    return out


if __name__ == "__main__":
    main()
