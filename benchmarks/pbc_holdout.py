"""PBC held-out check, the way the review scores it: train on class folders, `allray infer` on others.

    .venv/bin/python benchmarks/pbc_holdout.py [OUT] [--arch lenet] [--epochs 15] [--held-out 0.2]

The shared PBC folder (../shared/data/pbc) is split by a hash of each file's name into a training
tree and a held-out tree (both class folders, files copied). Then, through the CLI only:
`allray ingest TRAIN` (class folders, auto-detected; one pooled scale), `allray train --arch lenet
--classes auto --split random --workers 1 --epochs 15` and `allray infer HELD` on the held-out
class-folder tree. Accuracy, balanced accuracy, macro F1 and per-class F1 of the held-out cells are
read from the predictions (their known class, from the folder, against the predicted class).
Target (issue 11): the LeNet variant >= 85% accuracy.

Data: PBC, Acevedo et al., Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474 (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def split_tree(src: Path, train: Path, held: Path, fraction: float) -> tuple[int, int]:
    """Copy SRC/<class>/<file> into TRAIN or HELD by a hash of the file name; returns the counts."""
    counts = [0, 0]
    for path in sorted(src.glob("*/*")):
        if not path.is_file() or path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
            continue
        # salted: the shared subset was itself chosen by a hash of the names, so a plain one is not uniform here
        h = int(hashlib.blake2b(b"pbc-holdout/" + path.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        side = 1 if h < fraction else 0
        dest = (held if side else train) / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        counts[side] += 1
    return counts[0], counts[1]


def score(report: Path) -> dict:
    """Held-out metrics from an infer report's predictions (known class vs predicted class)."""
    import pyarrow.dataset as pads

    from pipeline import schema, taxonomy
    from pipeline.multiclass import class_metrics

    t = pads.dataset(str(report / schema.PREDICTIONS_DIR), format="parquet").to_table(
        columns=[schema.KNOWN_CLASS, schema.PREDICTED_CLASS]
    )
    truth, pred = t.column(schema.KNOWN_CLASS).to_pylist(), t.column(schema.PREDICTED_CLASS).to_pylist()
    names = [c for c in taxonomy.CLASSES if c in set(truth) | set(pred)]
    index = {c: i for i, c in enumerate(names)}
    cm = [[0] * len(names) for _ in names]
    for a, b in zip(truth, pred):
        cm[index[a]][index[b]] += 1
    return {"n_cells": len(truth), "class_names": names, "confusion": cm, **class_metrics(cm, names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="pbc-holdout-out")
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "pbc"))
    ap.add_argument("--arch", default="lenet")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--image-size", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    allray = str(REPO / ".venv" / "bin" / "allray")
    n_train, n_held = split_tree(Path(args.src), out / "train", out / "held", args.held_out)
    print(f"pbc_holdout: {n_train} training images, {n_held} held out ({args.src})", flush=True)
    times = {}
    train_cmd = [allray, "train", str(out / "cells"), "--out", str(out / "run"), "--arch", args.arch,
                 "--classes", "auto", "--split", "random", "--workers", "1", "--epochs", str(args.epochs)]  # fmt: skip
    if args.image_size:
        train_cmd += ["--image-size", str(args.image_size)]
    for name, cmd in (
        ("ingest", [allray, "ingest", str(out / "train"), "--out", str(out / "cells")]),
        ("train", train_cmd),
        ("infer", [allray, "infer", str(out / "held"), "--model", str(out / "run"), "--out", str(out / "report")]),
    ):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        times[name] = time.perf_counter() - t0
    m = score(out / "report")
    per = ", ".join(f"{c} {v['f1']:.2f}" for c, v in m["per_class"].items() if v["f1"] is not None)
    print(
        f"pbc_holdout {args.arch}, {args.epochs} epochs: {m['n_cells']} held-out cells, accuracy {100 * m['accuracy']:.1f}%, "
        f"balanced {100 * m['balanced_accuracy']:.1f}%, macro F1 {m['macro_f1']:.3f} (target: lenet >= 85%)"
    )
    print(f"  per-class F1: {per}")
    print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
