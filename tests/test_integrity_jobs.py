"""Integrity of whole `allray ingest` runs under Ray (issue 10): changed, linked, huge and concurrent inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_integrity import huge_tiff

from pipeline import schema
from pipeline.config import IngestConfig
from pipeline.store import read_table, shard_files

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    from pipeline.synth_cohort import write_cohort

    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=2, images_per_patient=2, seed=3, size=(400, 300))
    return out / "slides"


def test_changed_huge_and_linked_inputs_are_each_accounted_for(ray_session, slides, tmp_path):
    from jobs.ingest import run_ingest

    src = tmp_path / "slides"
    shutil.copytree(slides, src)
    huge_tiff(src / "P000" / "S0" / "huge.tif")
    os.symlink(".", src / "P001" / "loop")
    (tmp_path / "secret.txt").write_text("DB_PASSWORD=hunter2\n")
    os.symlink(tmp_path / "secret.txt", src / "P001" / "S0" / "notes.png")
    out = tmp_path / "cells"
    started = time.perf_counter()
    s = run_ingest(IngestConfig(src=str(src), out=str(out)), quiet=True)
    assert time.perf_counter() - started < 240
    assert s["images_seen"] == 5 and s["images_quarantined"] == 1 and s["images_ingested"] == 4
    (huge,) = s["quarantined"]
    assert huge["image"] == "P000/S0/huge.tif" and "30000x30000 px" in huge["reason"]
    assert s["links_not_followed"] == 2
    assert {x["path"] for x in s["links_not_followed_examples"]} == {"P001/loop", "P001/S0/notes.png"}
    assert "hunter2" not in (out / "summary.json").read_text()
    cells_before = read_table(out).num_rows

    # re-save one image: same pixels, other bytes; and the duplicate of another under a second name
    path = src / "P000" / "S0" / "img000.png"
    Image.open(path).save(path, compress_level=0)
    shutil.copy(src / "P001" / "S0" / "img001.png", src / "P000" / "S0" / "copy.png")
    again = run_ingest(IngestConfig(src=str(src), out=str(out)), quiet=True)
    assert again["images_replaced"] == 1
    assert again["images_seen"] == 6 == again["images_ingested"] + again["images_skipped"] + again["images_quarantined"]
    assert again["images_ingested"] == 2 and again["images_skipped"] == 4  # the changed one and the copy in
    assert again["images_with_same_content"] == 2
    assert again["same_content_examples"] == [["P000/S0/copy.png", "P001/S0/img001.png"]]
    ledger = read_table(out, schema.IMAGES_DIR)
    images = ledger.column(schema.IMAGE).to_pylist()
    assert len(images) == len(set(images)) == 6
    cells = read_table(out)
    copy_cells = sum(im == "P000/S0/copy.png" for im in cells.column(schema.IMAGE).to_pylist())
    assert cells.num_rows == cells_before + copy_cells  # the changed image's cells once, not twice
    assert sum(ledger.column(schema.N_CELLS).to_pylist()) == cells.num_rows
    assert sum(pq.read_table(f).num_rows for f in shard_files(out)) == cells.num_rows  # what infer reads

    # other crops into the same folder: refused before any work; --rebuild re-cuts everything
    from pipeline.config import CropSettings
    from pipeline.geometry import GeometryMismatchError

    wider = CropSettings(crop_um=30.0)
    with pytest.raises(GeometryMismatchError, match="--crop-um 24.0"):
        run_ingest(IngestConfig(src=str(src), out=str(out), crops=wider), quiet=True)
    rebuilt = run_ingest(IngestConfig(src=str(src), out=str(out), crops=wider, rebuild=True), quiet=True)
    assert rebuilt["images_ingested"] == 5 and rebuilt["images_skipped"] == 0 and rebuilt["images_replaced"] == 0
    settings = set(read_table(out, columns=[schema.INGEST_SETTINGS]).column(0).to_pylist())
    assert settings == {wider.to_json()} and read_table(out).num_rows == cells.num_rows


def test_two_ingests_on_one_output_one_runs_the_other_fails_at_once(slides, tmp_path):
    out = tmp_path / "cells"
    env = {**os.environ, "RAY_ADDRESS": ""}
    cmd = [str(Path(sys.executable).parent / "allray"), "ingest", str(slides), "--out", str(out), "--workers", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    _, _, err = next(r for r in results if r[0] == 1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is being written by allray ingest" in lines[0] and "pid" in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_seen"] == 4 == summary["images_ingested"]
    ledger = read_table(out, schema.IMAGES_DIR)
    cells = read_table(out)
    for image, n in zip(ledger.column(schema.IMAGE).to_pylist(), ledger.column(schema.N_CELLS).to_pylist()):
        assert sum(im == image for im in cells.column(schema.IMAGE).to_pylist()) == n > 0


def test_infer_on_an_output_with_a_replaced_image_counts_it_once(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from conftest import write_truth_cells

    from jobs.infer import run_infer
    from jobs.train import run_train
    from pipeline.config import TrainConfig
    from pipeline.store import ReplacedVersionsError, compact, open_output, write_shard

    cells = write_truth_cells(tmp_path / "cells", patients=4, images_per_patient=2)
    run = tmp_path / "run"
    run_train(TrainConfig(cells=(str(cells),), out=str(run), arch="lenet", epochs=1, batch_size=16), quiet=True)
    n_before = read_table(cells).num_rows
    # what a re-run commits for a re-saved image: its cells under the new hash, superseding the old shard
    image = "P000/S0/img000.png"
    versions = open_output(cells).versions
    new_cells = read_table(cells).filter(pc.equal(read_table(cells).column(schema.IMAGE), image))
    for name, value in ((schema.SOURCE_SHA256, "sha-new"), (schema.SHARD, "later-1")):
        i = new_cells.schema.get_field_index(name)
        new_cells = new_cells.set_column(i, new_cells.schema.field(i), pa.array([value] * new_cells.num_rows))
    ledger = read_table(cells, schema.IMAGES_DIR).filter(pc.equal(read_table(cells, schema.IMAGES_DIR).column(
        schema.IMAGE), image)).to_pylist()  # fmt: skip
    ledger[0].update({schema.SOURCE_SHA256: "sha-new", schema.SHARD: "later-1", schema.SUPERSEDES: versions[image]})
    write_shard(cells, "later-1", new_cells, schema.QUARANTINE_SCHEMA.empty_table(),
                pa.Table.from_pylist(ledger, schema=schema.IMAGE_SCHEMA))  # fmt: skip
    assert read_table(cells).num_rows == n_before
    with pytest.raises(ReplacedVersionsError):  # files still hold both versions: refused, not counted twice
        run_infer(str(cells), str(run), str(tmp_path / "report0"), min_cells=5, quiet=True)
    compact(cells)
    run_infer(str(cells), str(run), str(tmp_path / "report"), min_cells=5, quiet=True)
    predicted = pads.dataset(str(tmp_path / "report" / schema.PREDICTIONS_DIR), format="parquet").to_table(
        columns=[schema.IMAGE, schema.SOURCE_SHA256]
    )
    assert predicted.num_rows == n_before
    shas = set(predicted.filter(pc.equal(predicted.column(schema.IMAGE), image)).column(1).to_pylist())
    assert shas == {"sha-new"}
    patients = json.loads((tmp_path / "report" / "patients.json").read_text())["patients"]
    assert sum(p["n_cells"] for p in patients) == n_before
