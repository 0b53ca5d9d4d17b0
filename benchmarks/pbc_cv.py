"""K-fold cross-validation of cell-class models on PBC (or any class-folder ingest output).

    .venv/bin/allray ingest ../shared/data/pbc --out /tmp/pbc          # class folders, auto-detected
    .venv/bin/python benchmarks/pbc_cv.py /tmp/pbc --arch lenet --epochs 15 [--folds 5] [--run-folds 0,1]
    .venv/bin/python benchmarks/pbc_cv.py /tmp/pbc --arch resnet --epochs 10 --run-folds 0 [--device cuda]
    .venv/bin/python benchmarks/pbc_cv.py /tmp/pbc --arch resnet --epochs 10 --image-size 64   # 4x cheaper

Folds are by file (each image is one cell: pipeline.splits.kfold_groups over image groups, stratified
by class), the model trains from scratch with the same pieces `allray train` uses (decode_crops,
augment, train_one_epoch with the partial-label criterion, cosine lr, Adam at `allray train`'s
default rate for the model, batch 32) in one
plain torch process (no Ray: the numbers are the model's, not the scheduler's), and each fold's
best epoch by validation accuracy is reported: accuracy, balanced accuracy, macro F1 and per-class
F1, then mean +- sd over the folds run, and training samples/s. --run-folds runs a subset of the K
folds (on a shared 2-core machine ResNet-18 takes minutes per epoch); say which were run.

Data: PBC, Acevedo et al., Data in Brief 30 (2020) 105474, doi:10.1016/j.dib.2020.105474 (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load(cells: str, image_size: int, limit_per_class: int | None):
    import numpy as np
    import torch

    from pipeline import schema
    from pipeline.cellsets import read_cell_index
    from pipeline.store import read_table
    from pipeline.training import decode_crops

    index = read_cell_index([cells])
    keep = set(index.table.column("key").to_pylist())
    table = read_table(cells, columns=[schema.SOURCE_SHA256, schema.CELL_ID, schema.IMAGE, schema.CROP,
                                       schema.CELL_CLASS, schema.LABEL])  # fmt: skip
    rows = [r for r in table.to_pylist() if f"{r[schema.SOURCE_SHA256]}#{r[schema.CELL_ID]}" in keep]
    rows.sort(key=lambda r: r[schema.IMAGE])
    if limit_per_class:
        kept, seen = [], {}
        for r in rows:
            seen[r[schema.CELL_CLASS]] = seen.get(r[schema.CELL_CLASS], 0) + 1
            if seen[r[schema.CELL_CLASS]] <= limit_per_class:
                kept.append(r)
        rows = kept
    classes = [r[schema.CELL_CLASS] for r in rows]
    x = torch.cat([decode_crops([r[schema.CROP] for r in rows[i : i + 256]], image_size)
                   for i in range(0, len(rows), 256)])  # fmt: skip
    return x, classes, [r[schema.IMAGE] for r in rows], np


def run_fold(x, bits, train_idx, val_idx, class_names, args, name, size, device):
    import numpy as np
    import torch

    from pipeline.models import build_model, default_lr
    from pipeline.multiclass import PartialLabelCriterion, class_metrics, evaluate_multiclass
    from pipeline.training import augment, train_one_epoch

    torch.manual_seed(args.seed)
    model = build_model(name, size, num_classes=len(class_names)).to(device)
    lr = args.lr if args.lr is not None else default_lr(name, len(class_names))  # as `allray train`
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(args.seed)
    crit = PartialLabelCriterion(len(class_names))
    y = torch.as_tensor(bits)
    best, rates = None, []
    for epoch in range(args.epochs):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
        order = np.random.default_rng(args.seed * 1000 + epoch).permutation(train_idx)
        batches = ((x[order[i : i + args.batch_size]], y[order[i : i + args.batch_size]])
                   for i in range(0, order.size, args.batch_size))  # fmt: skip
        stats = train_one_epoch(model, batches, opt, device, transform=lambda t: augment(t, gen), criterion=crit)
        rates.append(stats.samples_per_s)
        val = evaluate_multiclass(model, ((x[val_idx[i : i + 256]], y[val_idx[i : i + 256]])
                                          for i in range(0, val_idx.size, 256)), device, class_names)  # fmt: skip
        m = class_metrics(val.confusion(), class_names)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "val_balanced_acc": m["balanced_accuracy"],
            "val_macro_f1": m["macro_f1"],
            "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            "samples_per_s": stats.samples_per_s,
        }
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "per_class_f1"}), file=sys.stderr, flush=True)  # fmt: skip
        if best is None or row["val_acc"] > best["val_acc"]:
            best = row
    best["samples_per_s_mean"] = statistics.fmean(rates[1:] or rates)  # first epoch is a warm-up
    return best


def summarise(results: list[dict], name: str, args, classes: list[str], class_names, started: float) -> dict:
    """Mean and sd over the folds run so far."""

    def ms(key):
        vals = [r[key] for r in results]
        return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None}

    return {
        "arch": name, "cells": args.cells, "n_cells": len(classes), "class_names": list(class_names),
        "epochs": args.epochs, "image_size": args.image_size, "folds": args.folds, "folds_run": [r["fold"] for r in results], "device": args.device,
        "threads": args.threads, "accuracy": ms("val_acc"), "balanced_accuracy": ms("val_balanced_acc"),
        "macro_f1": ms("val_macro_f1"), "samples_per_s": ms("samples_per_s_mean"),
        "per_class_f1": {c: statistics.fmean(r["per_class_f1"][c] or 0.0 for r in results) for c in class_names},
        "best_epochs": [r["epoch"] for r in results], "per_fold": results,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from pipeline.models import default_image_size, resolve_name
    from pipeline.multiclass import resolve_model_classes, training_targets
    from pipeline.splits import kfold_groups

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells")
    p.add_argument("--arch", default="lenet")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--run-folds", default="", help="comma-separated fold numbers to run (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="model input side (default: the arch's own)")
    p.add_argument("--lr", type=float, default=None, help="Adam rate (default: allray train's for the model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-per-class", type=int, default=None, help="a small subset first (smoke run)")
    p.add_argument("--out", default="", help="write the result JSON here too")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = resolve_name(args.arch)
    size = args.image_size or default_image_size(name)
    started = time.perf_counter()
    x, classes, images, _ = load(args.cells, size, args.limit_per_class)
    class_names = resolve_model_classes("auto", classes)
    bits, usable = training_targets(classes, class_names)
    assert usable.all(), "every PBC cell has a leaf class"
    strata = np.unique(classes, return_inverse=True)[1]
    folds = kfold_groups(images, strata, args.folds, args.seed)
    chosen = [int(f) for f in args.run_folds.split(",")] if args.run_folds else list(range(args.folds))
    results = []
    for f in chosen:
        train_idx, val_idx = folds[f]
        print(f"{name} fold {f}: {train_idx.size} train / {val_idx.size} val", file=sys.stderr, flush=True)
        r = run_fold(x, bits, train_idx, val_idx, class_names, args, name, size, args.device)
        r["fold"] = f
        results.append(r)
        summary = summarise(results, name, args, classes, class_names, started)
        if args.out:  # after every fold: a run cut short keeps what it finished
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))

    def pm(d, scale=100.0, digits=1):
        return f"{scale * d['mean']:.{digits}f}" + (f" ± {scale * d['sd']:.{digits}f}" if d["sd"] is not None else "")

    print(f"{name}: folds {summary['folds_run']} of {args.folds}, {args.epochs} epochs: "
          f"accuracy {pm(summary['accuracy'])}%, "
          f"balanced {pm(summary['balanced_accuracy'])}%, macro F1 {pm(summary['macro_f1'], 1.0, 3)}, "
          f"{summary['samples_per_s']['mean']:.0f} train samples/s", file=sys.stderr)  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
