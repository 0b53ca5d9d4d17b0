"""The study's workflow on synthetic data: train on ALL-IDB2-like single-cell images, count blasts on slides.

Single-cell images are cut from a synthetic cohort's smears (a third downscaled to ~103 px and
re-encoded as JPEG, like the copies of ALL-IDB2 in circulation), ingested as `--format allidb2`
(scale measured from their red cells), a ResNet is trained on them with `allray train`, and
`allray infer` counts the blasts on the very smears they came from: per patient, within 3 points
of the truth on average.
"""

from __future__ import annotations

import csv

import pytest

from pipeline import schema
from pipeline.config import IngestConfig, TrainConfig
from pipeline.store import read_table

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# ~300 white cells. With ~200 (6 images per patient) the best epoch on 52 validation cells was an
# early one and the mean error 3.4 points (deterministic since the seeded block order); with 9
# images per patient, cohort seeds 7 / 8 / 9 gave 0.4 / 0.5 / 1.8 points (session 8).
PATIENTS, IMAGES = 9, 9
EPOCHS, IMAGE_SIZE = 8, 64


def test_model_trained_on_single_cells_counts_blasts_on_the_smears(ray_session, tmp_path):
    from jobs.infer import run_infer
    from jobs.ingest import run_ingest
    from jobs.train import run_train
    from pipeline.synth_cohort import write_cohort
    from pipeline.synth_single import write_single_cells

    write_cohort(tmp_path / "cohort", patients=PATIENTS, images_per_patient=IMAGES, seed=7)
    singles = write_single_cells(tmp_path / "cohort", tmp_path / "idb2")
    s = run_ingest(IngestConfig(src=str(tmp_path / "idb2"), out=str(tmp_path / "cells"), format="allidb2"), quiet=True)
    assert s["images_seen"] == len(singles)
    assert s["images_quarantined"] <= len(singles) // 20  # only images with too few red cells to measure
    cells = read_table(str(tmp_path / "cells"))
    assert set(cells.column(schema.SCALE_SOURCE).to_pylist()) == {"red_cells"}
    assert set(cells.column(schema.KIND).to_pylist()) == {schema.KIND_SINGLE_CELL}

    run = tmp_path / "run"
    summary = run_train(TrainConfig(cells=(str(tmp_path / "cells"),), out=str(run), arch="resnet", epochs=EPOCHS,
                                    image_size=IMAGE_SIZE, split="random"), quiet=True)  # fmt: skip
    assert summary["archs"]["resnet"]["best"]["val_acc"] >= 0.9

    report = run_infer(str(tmp_path / "cohort" / "slides"), str(run), str(tmp_path / "report"), min_cells=5, quiet=True)
    truth = _rows(tmp_path / "cohort" / "truth" / "patients.csv")
    got = _rows(tmp_path / "report" / "patients.csv")
    assert set(got) == set(truth)
    errors = {p: abs(float(got[p]["blast_pct"]) - float(truth[p]["blast_pct"])) for p in truth}
    print("blast % error per patient:", {p: round(e, 1) for p, e in errors.items()}, report["report"])
    assert sum(errors.values()) / len(errors) <= 3.0, errors


def _rows(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["patient_id"]: r for r in csv.DictReader(f)}
