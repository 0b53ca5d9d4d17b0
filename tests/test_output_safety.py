"""What allray writes is safe to open and to share: no spreadsheet formulas, no credentials, no `nan`.

Fast tests of the rules themselves (pipeline.csvsafe, pipeline.redact) and of the writers that use
them (patients.csv / samples.csv / patients.json, report.html, the terminal summary, JSON records),
plus one-line errors for the wrong kind of folder (pipeline.folders) given to each command.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipeline import schema
from pipeline.csvsafe import csv_text, neutralise_cell
from pipeline.redact import REDACTED, redact, redact_text
from pipeline.report import (
    BLAST_PCT,
    UNKNOWN,
    CountAccumulator,
    describe_info,
    format_terminal_summary,
    write_count_tables,  # fmt: skip
)

HOSTILE = ['=HYPERLINK("http://evil/","click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tTAB", "\rCR"]


@pytest.mark.parametrize("value", HOSTILE)
def test_formula_cells_get_a_leading_quote(value):
    assert neutralise_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["P000", "a=b", "3-2", "", "'already quoted", "P 1 (smear)"])
def test_plain_text_is_left_alone(value):
    assert neutralise_cell(value) == value


def test_numbers_stay_numbers_and_nan_is_an_empty_cell():
    text = csv_text(("id", "x", "n", "missing", "none"), [{"id": "-P1", "x": -3.5, "n": -2, "missing": float("nan"),
                                                           "none": None}])  # fmt: skip
    row = next(csv.DictReader(text.splitlines()))
    assert row == {"id": "'-P1", "x": "-3.5", "n": "-2", "missing": "", "none": ""}
    assert "nan" not in text.lower()


def _cohort_with_hostile_ids() -> CountAccumulator:
    acc = CountAccumulator(blast_alert_pct=50, min_cells=1)
    for i, pid in enumerate(HOSTILE):
        acc.add_cells(pid, "=S" + str(i), f"img{i}.png", [1, 0, 0], ["wbc"] * 3)
    acc.add_cells(None, None, "flat.png", [1, 1], ["wbc"] * 2)  # a flat folder: patient unknown
    return acc


def test_count_tables_neutralise_ids_and_keep_numbers(tmp_path):
    acc = _cohort_with_hostile_ids()
    write_count_tables(tmp_path, acc.patients(), acc.samples(), {"model": "m"})
    with (tmp_path / "patients.csv").open(newline="") as fh:
        patients = list(csv.DictReader(fh))
    with (tmp_path / "samples.csv").open(newline="") as fh:
        samples = list(csv.DictReader(fh))
    assert sorted(r["patient_id"] for r in patients) == sorted(["'" + p for p in HOSTILE] + [UNKNOWN])
    assert all(not r["patient_id"].startswith(("=", "+", "-", "@", "\t", "\r")) for r in patients + samples)
    assert all(not r["sample_id"].startswith("=") for r in samples)
    by_id = {r["patient_id"]: r for r in patients}
    assert float(by_id["'-2+3"][BLAST_PCT]) == pytest.approx(33.33) and by_id[UNKNOWN][BLAST_PCT] == "100.0"
    # patients.json is data, not a spreadsheet: the ids stay exactly as they are.
    ids = {r["patient_id"] for r in json.loads((tmp_path / "patients.json").read_text())["patients"]}
    assert ids == set(HOSTILE) | {UNKNOWN}


# --- credentials ---------------------------------------------------------------------------------

SECRET, KEY_ID = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("text, kept", [
    (f"s3://{KEY_ID}:{SECRET}@bucket/x?endpoint_override=h:9000&scheme=http", "@bucket/x?endpoint_override=h:9000"),
    (f"allray ingest 's3://b/x?access_key={KEY_ID}&secret_key={SECRET}&region=eu' --out c", "&region=eu' --out c"),
    (f"gs://b/x?session_token={SECRET}#f", "gs://b/x?session_token="),
    (f"cmd --password {SECRET} --aws-secret-access-key={SECRET} -v", "cmd --password "),
    (f"AWS_SECRET_ACCESS_KEY={SECRET} allray train", " allray train"),
    (f"error: s3://{KEY_ID}:{SECRET}@b/x: not found", ": not found"),
])  # fmt: skip
def test_redact_text_removes_every_credential(text, kept):
    out = redact_text(text)
    assert SECRET not in out and KEY_ID not in out and REDACTED in out and kept in out


@pytest.mark.parametrize("text", ["s3://bucket/P1/img@2x.png", "file:///tmp/a b/c.png", "P000/S0/a=b.png",
                                  "tokenised cells: 3"])  # fmt: skip
def test_redact_text_leaves_plain_locations_alone(text):
    assert redact_text(text) == text


def test_redact_walks_records_and_masks_keys_named_like_secrets():
    record = {"command": f"allray infer s3://{KEY_ID}:{SECRET}@b/s", "config": {"aws_secret_access_key": SECRET,
              "password": "", "out": [f"s3://k:{SECRET}@b/o"], "n": 3, "threshold": 0.5}}  # fmt: skip
    out = redact(record)
    assert SECRET not in json.dumps(out) and KEY_ID not in json.dumps(out)
    assert out["config"]["aws_secret_access_key"] == REDACTED and out["config"]["password"] == ""
    assert out["config"]["n"] == 3 and out["config"]["threshold"] == 0.5


def test_json_records_reports_and_terminal_hold_no_credentials(tmp_path):
    from pipeline.locations import write_json
    from pipeline.report_html import write_html_report

    model = f"s3://{KEY_ID}:{SECRET}@bucket/runs/r1/lenet/best?endpoint_override=h:1"
    info = {"model": model, "slides": f"s3://b/slides?secret_key={SECRET}", "command": f"allray infer --model {model}",
            "threshold": 0.5}  # fmt: skip
    acc = _cohort_with_hostile_ids()
    write_count_tables(tmp_path, acc.patients(), acc.samples(), info)
    write_html_report(tmp_path, acc.patients(), {}, {}, [{schema.IMAGE: "x.png", schema.REASON: f"read {model}"}],
                      info)  # fmt: skip
    write_json(tmp_path, "summary.json", {"run": {"command": info["command"], "config": info}})
    printed = format_terminal_summary(acc.patients(), info) + "\n".join(
        f"{k}{v}" for k, v in describe_info(acc.patients(), info)
    )
    for text in [p.read_text() for p in tmp_path.iterdir()] + [printed]:
        assert SECRET not in text and KEY_ID not in text
    assert "bucket/runs/r1/lenet/best" in (tmp_path / "report.html").read_text()  # the location itself stays


# --- nan -----------------------------------------------------------------------------------------


def test_prediction_writer_keeps_a_null_patient_null(tmp_path):
    """Ray's numpy batches turn an all-null id column into float32 NaN (np.float32 is no Python float); it must
    come back as None, never as the text "nan"."""
    from pipeline.predictions import CELLS_IPC, PredictionWriter, pack_cells

    cells = {f.name: [None] for f in schema.PREDICTION_SCHEMA} | {
        schema.IMAGE: ["flat.png"], schema.CELL_ID: [0], schema.KIND: [schema.KIND_WBC], schema.CROP: [b"png"],
        schema.BLAST_PROB: [0.9], schema.PREDICTED: [1], schema.MODEL_ID: ["lenet@x"]}  # fmt: skip
    batch = {
        schema.PATIENT_ID: np.array([np.nan], dtype=np.float32),
        schema.SAMPLE_ID: np.array([np.nan], dtype=object),
        schema.IMAGE: np.array(["flat.png"], dtype=object),
        schema.STATUS: np.array([schema.STATUS_INGESTED]),
        schema.REASON: np.array([None], dtype=object),
        schema.SOURCE_SHA256: np.array(["abc"], dtype=object),
        CELLS_IPC: np.array([pack_cells(pa.table(cells, schema=schema.PREDICTION_SCHEMA))], dtype=object),
    }
    summary = PredictionWriter(str(tmp_path), "run")(batch)
    assert summary[schema.PATIENT_ID] == [None] and summary[schema.SAMPLE_ID] == [None]
    acc = CountAccumulator(min_cells=1)
    acc.add_cells(summary[schema.PATIENT_ID][0], summary[schema.SAMPLE_ID][0], "flat.png", [1], ["wbc"])
    assert [r["patient_id"] for r in acc.patients()] == [UNKNOWN]


def test_ray_turns_a_null_id_column_into_float32_nan():
    """The conversion the test above stands for, as Ray Data does it between two map_batches (no Ray started)."""
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block({schema.PATIENT_ID: [None, None], schema.IMAGE: ["a.png", "b.png"]})
    ids = BlockAccessor.for_block(block).to_batch_format("numpy")[schema.PATIENT_ID]
    assert ids.dtype == np.float32 and np.isnan(ids).all()


def test_missing_values_never_show_as_nan_or_none(tmp_path):
    from pipeline.report_html import write_html_report

    acc = _cohort_with_hostile_ids()
    info = {
        "model": "m",
        "first_result_s": float("nan"),
        "cells_per_s_after_first_result": np.float32("nan"),
        "elapsed_s": 2.0,
    }
    write_html_report(tmp_path, acc.patients(), {}, {}, [{schema.IMAGE: "x.png", schema.REASON: None}], info)
    html = (tmp_path / "report.html").read_text()
    assert ">nan<" not in html.lower() and ">None<" not in html and UNKNOWN in html
    assert "nan" not in "".join(v for _, v in describe_info(acc.patients(), info)).lower()


# --- the wrong kind of folder ----------------------------------------------------------------------


def _folders(tmp_path: Path) -> dict[str, Path]:
    from pipeline.store import open_output

    made = {name: tmp_path / name for name in ("cells", "run", "report", "ckpt", "slides")}
    open_output(made["cells"])
    (made["cells"] / "cells").mkdir(exist_ok=True)
    (made["cells"] / "images").mkdir(exist_ok=True)
    (made["cells"] / "summary.json").write_text(json.dumps({"images_seen": 1}))  # an ingest summary: no "archs"
    made["run"].mkdir()
    (made["run"] / "metrics.jsonl").write_text("")
    (made["run"] / "curves.png").write_bytes(b"\x89PNG not really")
    made["report"].mkdir()
    (made["report"] / "report.html").write_text("<html></html>")
    (made["report"] / "summary.json").write_text(json.dumps({"patients": 1}))
    made["ckpt"].mkdir()
    (made["ckpt"] / "meta.json").write_text("{}")
    (made["slides"] / "P1" / "S1").mkdir(parents=True)
    return made


def _cli(args, cwd: Path) -> tuple[int, list[str]]:
    import os

    from jobs.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize("args, says", [
    (["infer", "slides", "--model", "cells"], ("--model {cells} is an ingest output (made by `allray ingest`): "
                                               "--model wants a run folder made by `allray train`")),
    (["infer", "slides", "--model", "report"], "--model {report} is an inference report"),
    (["infer", "slides", "--model", "slides"], "--model {slides} is a folder: --model wants a run folder"),
    (["infer", "slides", "--model", "nowhere"], "--model {nowhere} does not exist: --model wants a run folder"),
    (["infer", "run", "--model", "ckpt"], "SLIDES {run} is a training run (made by `allray train`): SLIDES wants"),
    (["infer", "report", "--model", "ckpt"], "SLIDES {report} is an inference report"),
    (["train", "slides", "--arch", "lenet"], "CELLS {slides} is a folder: CELLS wants an ingest output"),
    (["train", "run", "--arch", "lenet"], "CELLS {run} is a training run"),
    (["train", "cells", "--out", "report", "--arch", "lenet"], "--out {report} is an inference report"),
    (["ingest", "run"], "SRC {run} is a training run (made by `allray train`): SRC wants a folder of smear images"),
    (["ingest", "cells"], "SRC {cells} is an ingest output"),
    (["ingest", "slides", "--out", "run"], "--out {run} is a training run"),
    (["ingest", "slides", "--out", "report"], "--out {report} is an inference report"),
])  # fmt: skip
def test_the_wrong_kind_of_folder_is_one_line_naming_it(tmp_path, args, says):
    folders = _folders(tmp_path)
    code, lines = _cli(args, tmp_path)
    expected = says.format(**{k: str(v) for k, v in folders.items()}, nowhere=str(tmp_path / "nowhere"))
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: " + expected), lines
    assert "internal error" not in lines[0]


def test_an_architecture_folder_as_model_uses_its_best_checkpoint(tmp_path):
    from jobs.infer_inputs import find_model

    (tmp_path / "run" / "lenet" / "best").mkdir(parents=True)
    (tmp_path / "run" / "lenet" / "best" / "meta.json").write_text("{}")
    assert find_model(str(tmp_path / "run" / "lenet")) == str(tmp_path / "run" / "lenet" / "best")


def test_a_printed_error_never_shows_credentials(s3_bucket, tmp_path):
    """A location with credentials that fails (here: no cells there) is reported without them."""
    from urllib.parse import quote

    uri = s3_bucket.replace("s3://", f"s3://{KEY_ID}:{quote(SECRET, safe='')}@", 1)
    code, lines = _cli(["train", uri.replace("?", "/nothing-here?", 1), "--arch", "lenet"], tmp_path)
    assert code == 1 and len(lines) == 1 and "allray ingest" in lines[0], lines
    assert SECRET not in lines[0] and quote(SECRET, safe="") not in lines[0] and KEY_ID not in lines[0]
