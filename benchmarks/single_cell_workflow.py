"""The ALL-IDB2 -> slides workflow without Ray: train on single cells, count blasts on their smears.

    .venv/bin/python benchmarks/single_cell_workflow.py [--patients 9] [--images 9] [--epochs 8]

The same stages as `allray ingest --format allidb2`, `allray train --arch resnet --image-size 64
--split random` and `allray infer` (pipeline functions: ingest_image, decode_crops, augment,
train_one_epoch with Adam and cosine decay), in one process with one torch thread, for machines
where Ray cannot start or to see the figures quickly; tests/test_single_cell_workflow.py runs the
real commands. Prints the single-cell ingest (scale sources, quarantined), the validation accuracy
and, per patient, the true and counted blast % (target: mean absolute error <= 3 points).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import schema  # noqa: E402
from pipeline.config import CropSettings  # noqa: E402
from pipeline.ingest import process_task  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.sources import SINGLE_CELL, ImageTask  # noqa: E402
from pipeline.synth_cohort import write_cohort  # noqa: E402
from pipeline.synth_single import write_single_cells  # noqa: E402
from pipeline.training import augment, decode_crops, train_one_epoch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=9)
    ap.add_argument("--images", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    settings = CropSettings()
    js = settings.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cohort(root / "cohort", patients=args.patients, images_per_patient=args.images, seed=args.seed)
        singles = write_single_cells(root / "cohort", root / "idb2")
        crops, labels, sources, quarantined = [], [], {}, 0
        for c in singles:
            task = ImageTask(
                str(root / "idb2" / c.name),
                c.name,
                None,
                None,
                kind=SINGLE_CELL,
                default_label=c.label,
                label_source="filename",
            )
            outcome, _ = process_task(task, settings, js)
            if outcome.reason:
                quarantined += 1
                continue
            (row,) = outcome.cells
            crops.append(row[schema.CROP])
            labels.append(row[schema.LABEL])
            sources[row[schema.SCALE_SOURCE]] = sources.get(row[schema.SCALE_SOURCE], 0) + 1
        print(f"single cells: {len(singles)} images, {quarantined} quarantined, scale sources {sources}")
        x = decode_crops(crops, args.image_size)
        y = torch.tensor(labels, dtype=torch.float32)
        order = np.random.default_rng(0).permutation(len(y))
        n_val = len(y) // 4
        val, train = order[:n_val], order[n_val:]
        model = build_model("resnet", image_size=args.image_size)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for epoch in range(args.epochs):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
            perm = train[np.random.default_rng(epoch).permutation(len(train))]
            batches = [(x[perm[i : i + 32]], y[perm[i : i + 32]]) for i in range(0, len(perm), 32)]
            train_one_epoch(model, batches, opt, "cpu", transform=lambda b: augment(b, gen))
        model.eval()
        with torch.no_grad():
            val_acc = float(((model(x[val]).reshape(-1) > 0).float() == y[val]).float().mean())
        print(
            f"resnet18 at {args.image_size}px, {args.epochs} epochs on {len(train)} cells: val accuracy {val_acc:.3f}"
        )
        counts: dict[str, list[int]] = {}
        for smear in sorted((root / "cohort" / "slides").rglob("*.png")):
            rel = smear.relative_to(root / "cohort" / "slides").as_posix()
            task = ImageTask(str(smear), rel, rel.split("/")[0], rel.split("/")[1])
            outcome, _ = process_task(task, settings, js)
            wbc = [r[schema.CROP] for r in outcome.cells if r[schema.KIND] != schema.KIND_SMUDGE]
            if wbc:
                with torch.no_grad():
                    calls = (model(decode_crops(wbc, args.image_size)).reshape(-1) > 0).int().tolist()
            else:
                calls = []
            counts.setdefault(task.patient_id, []).extend(calls)
        with open(root / "cohort" / "truth" / "patients.csv", newline="") as f:
            truth = {r["patient_id"]: float(r["blast_pct"]) for r in csv.DictReader(f)}
        errors = []
        for pid, t in sorted(truth.items()):
            calls = counts.get(pid, [])
            pct = 100.0 * sum(calls) / max(1, len(calls))
            errors.append(abs(pct - t))
            print(f"{pid}: true {t:5.1f}%  counted {pct:5.1f}% of {len(calls)} cells")
        print(f"blast % mean absolute error: {np.mean(errors):.2f} points (target <= 3)")


if __name__ == "__main__":
    main()
