"""`allray infer` throughput on precomputed crops against a plain PyTorch loop, at equal threads.

    .venv/bin/python benchmarks/infer_speed.py CELLS RUN

CELLS is an `allray ingest` output, RUN a run folder or checkpoint (e.g. demo-out/cells and
demo-out/run after `make demo`). Prints cells/s of
1. a plain loop: one process, torch.set_num_threads(1), the same CellClassifier on batches of 64;
2. `allray infer CELLS` with one classifier actor (one CPU, so one thread): target >= 0.9x (1);
3. the same with two actors on the 2 cores: target >= 1.5x (2).
Ray's start-up is reported apart; the rates include reading, classifying and writing predictions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells")
    ap.add_argument("run")
    ap.add_argument("--repeat", type=int, default=2, help="copies of the cell table to classify (more = steadier)")
    args = ap.parse_args()

    import torch

    from jobs.infer import find_model, run_infer
    from jobs.runtime import start_ray
    from pipeline import schema
    from pipeline.classify import CellClassifier
    from pipeline.store import read_table

    ckpt = find_model(args.run)
    torch.set_num_threads(1)
    crops = read_table(args.cells, columns=[schema.CROP]).column(0).to_pylist()
    classifier = CellClassifier(str(ckpt), threads=1)
    classifier.predict(crops[:64])  # warm-up
    started = time.perf_counter()
    for _ in range(args.repeat):
        for i in range(0, len(crops), 64):
            classifier.predict(crops[i : i + 64])
    plain = args.repeat * len(crops) / (time.perf_counter() - started)
    print(f"plain loop, 1 thread:      {plain:7.1f} cells/s ({len(crops)} crops x {args.repeat})")

    startup = start_ray()
    rates = {}
    for workers in (1, 2):
        best = 0.0
        for _ in range(args.repeat):
            out = Path(tempfile.mkdtemp()) / "report"
            s = run_infer(args.cells, str(ckpt), str(out), workers=workers, quiet=True)
            best = max(best, s["cells_per_s"])
        rates[workers] = best
    print(f"allray infer, 1 actor:     {rates[1]:7.1f} cells/s -> {rates[1] / plain:.2f}x the plain loop (target >= 0.9)")
    print(f"allray infer, 2 actors:    {rates[2]:7.1f} cells/s -> {rates[2] / rates[1]:.2f}x one actor (target >= 1.5)")
    print(f"Ray start-up {startup:.1f} s, not counted")


if __name__ == "__main__":
    main()
