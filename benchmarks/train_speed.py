"""Ray Train against a plain PyTorch loop over the same crops, at equal torch threads.

    .venv/bin/python benchmarks/train_speed.py CELLS [--arch resnet] [--epochs 3]

CELLS is an `allray ingest` output with labels (e.g. demo-out/cells after `make demo`). Prints:
1. samples/s of a plain loop (one process, torch.set_num_threads(1), same decode + augment +
   train_one_epoch) and of `allray train --workers 1 --cpus-per-worker 1` (one CPU, so one torch
   thread; by default one worker on 2 cores runs 2 threads), and their ratio (target >= 0.85);
2. `--workers 2` against `--workers 1` (one thread per worker, as in 1.) on the same epochs, for
   each of --seeds seeds (model init, split, shuffling and augmentation; both worker counts share
   each seed): wall time and final val accuracy, their mean +- sd over seeds, so "same accuracy
   within noise" can be read off.
The first epoch of each is a warm-up and is left out of the rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def plain_loop(cells: str, arch: str, epochs: int, batch_size: int) -> float:
    import numpy as np
    import torch

    from pipeline import schema
    from pipeline.cellsets import read_cell_index
    from pipeline.models import build_model, default_image_size, resolve_name
    from pipeline.splits import split_cells
    from pipeline.store import read_table
    from pipeline.training import augment, decode_crops, train_one_epoch

    torch.set_num_threads(1)
    index = read_cell_index([cells])
    t = index.table
    split = split_cells(t.column(schema.PATIENT_ID).to_pylist(), t.column(schema.IMAGE).to_pylist(),
                        t.column(schema.LABEL).to_numpy(), "patient", 0.25, 0)  # fmt: skip
    train_keys = set(np.asarray(t.column("key").to_pylist(), dtype=object)[split.train_idx])
    full = read_table(cells, columns=[schema.SOURCE_SHA256, schema.CELL_ID, schema.CROP, schema.LABEL]).to_pylist()
    rows = [r for r in full if f"{r[schema.SOURCE_SHA256]}#{r[schema.CELL_ID]}" in train_keys]
    name = resolve_name(arch)
    size = default_image_size(name)
    torch.manual_seed(0)
    model = build_model(name, size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(rows))

        def batches():
            for i in range(0, len(order), batch_size):
                chunk = [rows[j] for j in order[i : i + batch_size]]
                yield (decode_crops([r[schema.CROP] for r in chunk], size),
                       torch.tensor([r[schema.LABEL] for r in chunk]))  # fmt: skip

        stats = train_one_epoch(model, batches(), opt, "cpu", transform=lambda x: augment(x, gen))
        rates.append(stats.samples_per_s)
    return statistics.fmean(rates[1:]) if len(rates) > 1 else rates[0]


def ray_run(
    cells: str, arch: str, epochs: int, batch_size: int, workers: int, seed: int = 0
) -> tuple[float, float, float]:
    from jobs.train import run_train
    from pipeline.config import TrainConfig

    out = Path(tempfile.mkdtemp()) / "run"
    started = time.perf_counter()
    # One CPU, so one torch thread, for one worker: the plain loop's threads (2 workers get 0.75 each).
    run_train(TrainConfig(cells=(cells,), out=str(out), arch=arch, epochs=epochs, workers=workers,
                          batch_size=batch_size, seed=seed, cpus_per_worker=1.0 if workers == 1 else None),
              quiet=True)  # fmt: skip
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rate = statistics.fmean(r["samples_per_s"] for r in rows[1:]) if len(rows) > 1 else rows[0]["samples_per_s"]
    return rate, wall, rows[-1]["val_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells")
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=2, help="seeds for the 1- vs 2-worker accuracy comparison")
    args = ap.parse_args()

    from jobs.runtime import start_ray

    plain = plain_loop(args.cells, args.arch, args.epochs, args.batch_size)
    print(f"plain PyTorch loop, 1 thread:   {plain:7.1f} samples/s ({args.arch}, epochs 2..{args.epochs})")
    startup = start_ray()
    one, wall1, acc1 = ray_run(args.cells, args.arch, args.epochs, args.batch_size, 1)
    print(
        f"allray train --workers 1:       {one:7.1f} samples/s -> {one / plain:.2f}x the plain loop "
        f"(target >= 0.85; Ray start-up {startup:.1f} s not counted)"
    )
    runs = {1: [(wall1, acc1)], 2: []}
    for seed in range(args.seeds):
        if seed:
            runs[1].append(ray_run(args.cells, args.arch, args.epochs, args.batch_size, 1, seed)[1:])
        two, wall2, acc2 = ray_run(args.cells, args.arch, args.epochs, args.batch_size, 2, seed)
        runs[2].append((wall2, acc2))
        print(f"allray train --workers 2:       {two:7.1f} samples/s (both workers), seed {seed}")
    for workers, rs in runs.items():
        accs = [a for _, a in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(
            f"--workers {workers}: wall {statistics.fmean(w for w, _ in rs):4.0f} s, final val acc "
            f"{statistics.fmean(accs):.3f} +- {sd:.3f} over {len(accs)} seed(s): {', '.join(f'{a:.3f}' for a in accs)}"
        )


if __name__ == "__main__":
    main()
