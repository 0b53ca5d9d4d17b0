"""ingest -> train -> infer with every input and output given as a URI (marked slow + ray).

file:///abs/path URIs go through the same code as s3:// ones, so any `Path(uri)` left on the way
(which turns file:///x into file:/x) breaks the first test; the second runs the chain against a
local S3 server. Both also check the run record each output folder's summary.json carries.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from pipeline import schema
from pipeline.config import IngestConfig, TrainConfig
from pipeline.locations import is_file, join_uri, list_tree, read_json, read_text, upload_dir
from pipeline.store import ledger_identity, read_table

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RUN_RECORD_KEYS = {"command", "cwd", "finished_utc", "config", "versions", "ray_cluster", "identities"}


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Three patients of two smears each, one text file named .png (quarantined)."""
    from pipeline.synth_cohort import write_cohort

    out = tmp_path_factory.mktemp("uri cohort")  # a space: URIs must escape it
    write_cohort(out, patients=3, images_per_patient=2, seed=11, size=(500, 400))
    (out / "slides" / "P000" / "S0" / "notes.png").write_text("not an image")
    return out


def check_run_record(record: dict, config_keys: set[str]) -> None:
    assert set(record) == RUN_RECORD_KEYS
    assert config_keys <= set(record["config"])
    for name in ("allray", "ray", "torch", "torchvision", "pyarrow", "numpy", "scikit-image"):
        assert record["versions"][name] == importlib.metadata.version(name), name
    assert record["versions"]["python"].count(".") == 2
    assert record["ray_cluster"]["alive_nodes"] >= 1 and record["ray_cluster"]["resources"]["CPU"] >= 1


def run_chain(slides: str, labels: str, cells: str, run: str, report: str, infer_input: str) -> dict:
    """ingest SLIDES -> CELLS, train CELLS -> RUN (lenet, 1 epoch), infer INFER_INPUT with RUN -> REPORT."""
    from jobs.infer import run_infer
    from jobs.ingest import run_ingest
    from jobs.train import run_train

    ingest = run_ingest(IngestConfig(src=slides, out=cells, labels=labels, images_per_shard=2), quiet=True)
    train = run_train(TrainConfig(cells=(cells,), out=run, arch="lenet", epochs=1, batch_size=16), quiet=True)
    infer = run_infer(infer_input, run, report, min_cells=5, quiet=True)
    return {"ingest": ingest, "train": train, "infer": infer}


def check_chain(s: dict, cells: str, run: str, report: str) -> None:
    """What every URI run must show: all images accounted for, every output file, consistent identities."""
    ingest, train, infer = s["ingest"], s["train"], s["infer"]
    assert ingest["images_seen"] == 7 and ingest["images_quarantined"] == 1
    assert read_table(cells).num_rows == ingest["cells_written"] > 0
    assert read_json(join_uri(cells, "summary.json"))["run"] == ingest["run"]
    check_run_record(ingest["run"], {"src", "out", "labels", "crops"})
    assert ingest["run"]["identities"]["cells_data_id"] == ledger_identity(cells)

    files, _ = list_tree(run)
    for name in (
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "config.json",
        "split.json",
        "lenet/best/model.pt",
        "lenet/best/meta.json",
    ):
        assert name in files, name
    assert "lenet/best/optimizer.pt" not in files
    assert any(f.startswith("lenet/checkpoint_") for f in files)  # Ray Train's own, through the same filesystem
    assert train["archs"]["lenet"]["checkpoint"] == join_uri(run, "lenet", "best")
    meta = read_json(join_uri(run, "lenet", "best", "meta.json"))
    check_run_record(train["run"], {"cells", "out", "arch", "epochs"})
    assert train["run"]["identities"]["data_id"] == meta["data_id"] == train["data_id"]
    assert train["run"]["config"]["out"] == run

    for name in ("patients.csv", "patients.json", "samples.csv", "report.html", "summary.json"):
        assert is_file(join_uri(report, name)), name
    predictions, _ = list_tree(join_uri(report, schema.PREDICTIONS_DIR))
    assert predictions and all(p.endswith(".parquet") for p in predictions)
    record = read_json(join_uri(report, "summary.json"))["run"]
    check_run_record(record, {"slides", "model", "out", "threshold"})
    assert record["identities"]["model_id"].startswith("lenet@")
    assert record["identities"]["model_data_id"] == meta["data_id"]
    # The same images, read as slides or as the ingest output made from them, have one identity.
    assert record["identities"]["input_data_id"] == ingest["run"]["identities"]["cells_data_id"]
    assert infer["n_quarantined"] == 1 and infer["quarantined"][0]["image"] == "P000/S0/notes.png"


def test_chain_with_file_uris(ray_session, small_cohort, tmp_path):
    base = (tmp_path / "out dir").as_uri()  # file:///.../out%20dir
    cells, run, report = join_uri(base, "cells"), join_uri(base, "run"), join_uri(base, "report")
    slides = (small_cohort / "slides").as_uri()
    s = run_chain(slides, (small_cohort / "truth" / "cells.csv").as_uri(), cells, run, report, infer_input=slides)
    check_chain(s, cells, run, report)
    assert s["infer"]["input"] == "slides"
    assert (tmp_path / "out dir" / "run" / "lenet" / "best" / "model.pt").is_file()  # really where the URI says
    html = (tmp_path / "out dir" / "report" / "report.html").read_text()
    assert "data:image/jpeg" in html  # slide overlays, read back through the slides' URIs


def test_chain_on_s3(ray_session, small_cohort, s3_bucket):
    """Slides and labels on S3, cells, run and report written there, inference from the S3 cells."""
    upload_dir(small_cohort, join_uri(s3_bucket, "study"))
    cells, run, report = (join_uri(s3_bucket, "study", name) for name in ("cells", "run", "report"))
    s = run_chain(join_uri(s3_bucket, "study", "slides"), join_uri(s3_bucket, "study", "truth", "cells.csv"),
                  cells, run, report, infer_input=cells)  # fmt: skip
    check_chain(s, cells, run, report)
    assert s["infer"]["input"].startswith("ingest output")
    assert s["ingest"]["run"]["config"]["src"] == join_uri(s3_bucket, "study", "slides")
    rows = [json.loads(line) for line in read_text(join_uri(run, "metrics.jsonl")).splitlines()]
    assert [r["epoch"] for r in rows] == [0]
    html = read_text(join_uri(report, "report.html"))
    assert "data:image/jpeg" in html  # overlays: the slides found again on S3 through the ingest's config
