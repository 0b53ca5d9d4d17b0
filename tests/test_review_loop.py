"""The review -> labels -> ingest loop on a real infer output (synth -> train -> infer under Ray): slow + ray."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from conftest import write_truth_cells

from pipeline import schema, taxonomy
from pipeline.config import IngestConfig, TrainConfig
from pipeline.store import read_table

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_reviewed_labels_label_exactly_those_cells_on_reingest(ray_session, tmp_path):
    from jobs.infer import run_infer
    from jobs.ingest import run_ingest
    from jobs.train import run_train
    from pipeline.review.cells import load_report
    from pipeline.review.store import ReviewStore
    from pipeline.synth_cohort import write_cohort

    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=2, images_per_patient=2, seed=13, size=(400, 300))
    cells = write_truth_cells(tmp_path / "truth", patients=4, images_per_patient=2)
    run = tmp_path / "run"
    run_train(TrainConfig(cells=(str(cells),), out=str(run), arch="lenet", epochs=1, workers=1, batch_size=16),
              quiet=True)  # fmt: skip
    report = tmp_path / "report"
    run_infer(str(cohort / "slides"), str(run), str(report), min_cells=1, quiet=True)

    r = load_report(report)
    pid = sorted(r.patients)[0]
    p = r.patients[pid]
    chosen = {p.keys[0]: taxonomy.LYMPHOBLAST, p.keys[1]: taxonomy.LYMPHOCYTE, p.keys[2]: taxonomy.NEUTROPHIL}
    store = ReviewStore(f"sqlite:///{report / 'review.sqlite'}", r.fingerprint, str(report))
    for key, cls in chosen.items():
        store.set_class(pid, key, cls, "ann")
    store.close()
    labels = tmp_path / "reviewed.csv"
    from jobs.cli import cli

    res = CliRunner().invoke(cli, ["review", str(report), "--export-labels", str(labels)], catch_exceptions=False)
    assert res.exit_code == 0 and len(labels.read_text().splitlines()) == 1 + 3

    again = tmp_path / "cells-reviewed"
    run_ingest(IngestConfig(src=str(cohort / "slides"), out=str(again), labels=str(labels)), quiet=True)
    table = read_table(str(again), columns=[schema.SOURCE_SHA256, schema.CELL_ID, schema.LABEL])
    labelled = table.filter(pc.is_valid(table.column(schema.LABEL)))
    got = {f"{s}#{c}": lab for s, c, lab in zip(labelled.column(0).to_pylist(), labelled.column(1).to_pylist(),
                                                labelled.column(2).to_pylist())}  # fmt: skip
    # the same detector finds the same cells: exactly the reviewed ones come back labelled, with their labels
    assert got == {k: taxonomy.binary_label(c) for k, c in chosen.items()}
