"""`allray demo OUT`: the whole pipeline on synthetic data, each step timed (`make demo` runs it).

A newcomer's first minutes: a training cohort with truth labels and a separate cohort of "new"
patients are synthesised, the first is ingested, a small ResNet is trained on it, and the new
slides are counted. The steps run in one process and one Ray session (Ray starts once), and each
prints its elapsed time. The sizes below were chosen by measurement (README, Quick start) so that
the demo ends in a few minutes on two cores while `benchmarks/pipeline_quality.py OUT` still
meets its targets.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (`allray demo --help` exposes them, for measuring)."""

    out: str = "demo-out"
    # Training: 12 patients x 8 smears (~390 white cells), ResNet-18 on crops shrunk to 64 px for 14
    # epochs (12 until session 11): ~1/5 of the training CPU time of 24 x 8 smears at 128 px for 12
    # epochs (the demo's sizes until it took 16 minutes on a slow day), which was 2/3 of the demo's
    # time (benchmarks/demo_units.py: 47.5 vs 137 CPU ms per sample at 64 and 128 px). A healthy patient's ~45 cells leave the 2% check
    # one cell of margin: with 8 epochs one more training crop (session 9) and with 10 the eosinophil
    # lobes joined (session 10) each left a monocyte or two called blasts (2.4-3.3%); 12 met every
    # pipeline_quality.py check (val accuracy 0.989, blast % MAE 0.07) for ~8 s more here. With
    # session 11's eosinophils (PBC-sized lobes, dense chromatin), 12 left neutrophils and
    # lymphocytes confused (the neutrophil % off by 3.34 points on average, target 3); 14 met every
    # check (val accuracy 1.000, MAE 0.07, worst class basophil 2.15) in 57 s of training on 2 threads.
    train_patients: int = 12
    train_images: int = 8  # per patient
    # The new cohort stays as it was: 9 patients of 12 smears, enough cells per patient for the
    # blast % intervals pipeline_quality.py checks.
    new_patients: int = 9
    new_images: int = 12
    epochs: int = 14
    image_size: int | None = 64  # model input side; None = the architecture's default (128)
    arch: str = "resnet"
    min_cells: int = 30

    def __post_init__(self) -> None:
        for name in ("train_patients", "train_images", "new_patients", "new_images", "epochs", "min_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo {name}={getattr(self, name)!r} must be at least 1")


def run_demo(config: DemoConfig, echo=click.echo, address: str | None = None, verbose: bool = False) -> dict:
    """Run every step of the demo into config.out (replaced); returns {step: seconds} and prints as it goes."""
    from jobs.infer import run_infer
    from jobs.ingest import run_ingest
    from jobs.train import run_train
    from pipeline.config import CropSettings, IngestConfig, TrainConfig
    from pipeline.synth_cohort import write_cohort

    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        if not (out / "train" / "truth" / "cohort.json").is_file():
            raise ValueError(f"{out} is not empty and is not an earlier demo's output: give a new folder")
        shutil.rmtree(out)  # an earlier demo's output: replaced
    times: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, func):
        t0 = time.perf_counter()
        result = func()
        times[name] = time.perf_counter() - t0
        echo(f"demo: {name} took {times[name]:.1f} s")
        return result

    def synth_both():
        # The two cohorts are independent (their own seeds): one process each, one per core. Before
        # Ray starts, so forking is safe; the bytes are those of two calls in a row.
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
            train = pool.submit(write_cohort, out / "train", config.train_patients, config.train_images, seed=1)
            new = pool.submit(write_cohort, out / "new", config.new_patients, config.new_images, seed=2)
            return train.result(), new.result()

    for s in step("synth training and new cohorts (in parallel)", synth_both):
        echo(f"  {s.n_patients} patients, {s.n_images} images, {s.n_wbc} white cells ({s.n_blast} blasts)")
    ingest = IngestConfig(
        src=str(out / "train" / "slides"),
        out=str(out / "cells"),
        labels=str(out / "train" / "truth" / "cells.csv"),
        crops=CropSettings(),
    )
    s = step("ingest (Ray start included)", lambda: run_ingest(ingest, address=address, verbose=verbose))
    echo(
        f"  {s['images_ingested']} images, {s['cells_written']} cells ({s['cells_labelled']} labelled), "
        f"Ray start-up {s['ray_startup_seconds']:.1f} s"
    )
    train = TrainConfig(
        cells=(str(out / "cells"),),
        out=str(out / "run"),
        arch=config.arch,
        epochs=config.epochs,
        image_size=config.image_size,
    )
    s = step("train", lambda: run_train(train, address=address, verbose=verbose))
    for arch, r in s["archs"].items():
        best = r.get("best") or {}
        if best.get("val_acc") is not None:
            echo(f"  {arch}: best val accuracy {best['val_acc']:.3f} (epoch {r.get('best_epoch')})")
    s = step(
        "infer",
        lambda: run_infer(
            str(out / "new" / "slides"),
            str(out / "run"),
            str(out / "report"),
            min_cells=config.min_cells,
            address=address,
            verbose=verbose,
        ),
    )
    echo(s["terminal"])
    times["total"] = time.perf_counter() - started
    echo(f"demo: total {times['total']:.1f} s ({times['total'] / 60:.1f} min)")
    echo("")
    echo(f"demo outputs under {out}/: cells/ (Parquet crops), run/ (model, metrics.jsonl, curves.png),")
    echo(f"report/ (patients.csv, predictions/); open {out}/report/report.html in a browser.")
    echo(f"the truth of the new slides is in {out}/new/truth/patients.csv;")
    echo(f"compare: .venv/bin/python benchmarks/pipeline_quality.py {out}")
    echo(f"review and sign off the counts in a browser: .venv/bin/allray review {out}/report")
    return times
