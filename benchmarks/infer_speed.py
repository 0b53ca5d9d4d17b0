"""`allray infer` throughput on precomputed crops against a plain PyTorch loop, at equal threads.

    .venv/bin/python benchmarks/infer_speed.py CELLS RUN [--copies 8]

CELLS is an `allray ingest` output, RUN a run folder or checkpoint (e.g. demo-out/cells and
demo-out/run after `make demo`). The benchmark classifies --copies copies of CELLS (each copy's
images renamed, so a lab-sized run of thousands of cells) and prints cells/s of
1. a plain loop: one process, torch.set_num_threads(1), the same CellClassifier on batches of 64
   (model loaded and warmed up before the clock starts);
2. `allray infer` on the copies with one classifier actor (one CPU, so one thread): target >= 0.9x (1);
3. the same with two actors on the 2 cores: target >= 1.5x (2).
Ray's start-up is reported apart; the Ray rates are whole runs (actor start-up with the model load,
reading, classifying and writing predictions), without the report writing at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def copy_cells(cells: str, out: Path, copies: int) -> None:
    """`copies` copies of an ingest output's cells and images tables, image names made unique."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline import schema
    from pipeline.store import shard_files

    for sub in (schema.CELLS_DIR, schema.IMAGES_DIR, schema.QUARANTINE_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            for f in shard_files(cells, sub):
                table = pq.read_table(f)
                i = table.schema.get_field_index(schema.IMAGE)
                table = table.set_column(i, schema.IMAGE, pc.binary_join_element_wise(
                    table.column(i), f"~copy{k}", ""))  # fmt: skip
                pq.write_table(table, out / sub / f"copy{k}-{Path(f).name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells")
    ap.add_argument("run")
    ap.add_argument("--copies", type=int, default=8, help="copies of the cell table to classify (more = steadier)")
    args = ap.parse_args()

    import torch

    from jobs.infer import run_infer
    from jobs.infer_inputs import find_model
    from jobs.runtime import start_ray
    from pipeline import schema
    from pipeline.classify import CellClassifier
    from pipeline.store import read_table

    ckpt = find_model(args.run)
    cells = Path(tempfile.mkdtemp()) / "cells"
    copy_cells(args.cells, cells, args.copies)
    torch.set_num_threads(1)
    crops = read_table(str(cells), columns=[schema.CROP]).column(0).to_pylist()
    classifier = CellClassifier(str(ckpt), threads=1)
    classifier.predict(crops[:64])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(crops), 64):
        classifier.predict(crops[i : i + 64])
    plain = len(crops) / (time.perf_counter() - started)
    print(f"plain loop, 1 thread:      {plain:7.1f} cells/s ({len(crops)} crops)")

    startup = start_ray()
    rates, steady, first = {}, {}, {}
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp()) / "report"
        s = run_infer(str(cells), str(ckpt), str(out), workers=workers, quiet=True)
        rates[workers], steady[workers] = s["cells_per_s"], s["cells_per_s_after_first_result"]
        first[workers] = s["first_result_s"]
    print(
        f"allray infer, 1 actor:     {rates[1]:7.1f} cells/s -> {rates[1] / plain:.2f}x the plain loop (target >= 0.9)"
    )
    print(f"allray infer, 2 actors:    {rates[2]:7.1f} cells/s -> {rates[2] / rates[1]:.2f}x one actor (target >= 1.5)")
    print(
        f"after start-up (first labelled cells back after {first[1]:.1f} s / {first[2]:.1f} s): "
        f"{steady[1]:.1f} cells/s -> {steady[1] / plain:.2f}x (1 actor), {steady[2]:.1f} cells/s -> "
        f"{steady[2] / steady[1]:.2f}x (2 actors)"
    )
    print(f"Ray start-up {startup:.1f} s, not counted")


if __name__ == "__main__":
    main()
