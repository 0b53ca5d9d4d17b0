"""ingest -> train -> infer through the CLI with every location an S3 URI carrying credentials
(`s3://KEY:SECRET@bucket/...`, on the local moto server), and infer on a flat folder (patient unknown).

No credential may appear in any file under the output folders (Parquet decoded too) nor in any line
the CLI prints; a missing patient is `(unknown)` in every output, never `nan`. Marked slow + ray.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.locations import join_uri, list_tree, read_bytes, read_text, upload_dir
from pipeline.report import UNKNOWN

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzz"
NEEDLES = (KEY_ID, SECRET, quote(SECRET, safe=""), SECRET.split("/")[0])


def run_cli(capfd, monkeypatch, *args: str) -> tuple[str, str]:
    """Run `allray ARGS` in this process (sharing the test Ray); its stdout and stderr, fd-level.
    sys.argv is set as the console script sets it, so the recorded command line holds the credentials."""
    from jobs.cli import main

    monkeypatch.setattr("sys.argv", ["allray", *args])
    capfd.readouterr()
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capfd.readouterr()
    assert done.value.code == 0, (args, out, err)
    return out, err


def strings_in_parquet(data: bytes) -> str:
    """Every string and binary-as-text value of a Parquet file, joined (compressed pages hide them from grep)."""
    table = pq.read_table(io.BytesIO(data))
    parts = [json.dumps(table.schema.metadata and {k.decode(): v.decode(errors="replace")
                                                   for k, v in table.schema.metadata.items()})]  # fmt: skip
    for column in table.column_names:
        if column == schema.CROP:
            continue  # PNG pixels
        parts += [str(v) for v in table.column(column).to_pylist()]
    return "\n".join(parts)


def test_no_credential_in_any_output_or_printed_line(ray_session, s3_bucket, tmp_path, capfd, monkeypatch):
    from pipeline.synth_cohort import write_cohort

    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=3, images_per_patient=2, seed=11, size=(500, 400))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(sorted((cohort / "slides").rglob("*.png"))[:3]):
        shutil.copy(image, flat / f"smear{i}.png")  # a flat folder: each image its own sample, patient unknown
    upload_dir(cohort, join_uri(s3_bucket, "safe", "cohort"))
    upload_dir(flat, join_uri(s3_bucket, "safe", "flat"))

    secret_bucket = s3_bucket.replace("s3://", f"s3://{KEY_ID}:{quote(SECRET, safe='')}@", 1)

    def loc(*parts: str) -> str:
        return join_uri(secret_bucket, "safe", *parts)

    printed = []

    def allray(*args: str) -> tuple[str, str]:
        out, err = run_cli(capfd, monkeypatch, *args)
        printed.extend([out, err])
        return out, err

    allray("ingest", loc("cohort", "slides"), "--out", loc("cells"), "--labels", loc("cohort", "truth", "cells.csv"),
           "--images-per-shard", "2")  # fmt: skip
    allray("train", loc("cells"), "--out", loc("run"), "--arch", "lenet", "--epochs", "1", "--batch-size", "16")
    allray("infer", loc("cells"), "--model", loc("run"), "--out", loc("report"), "--min-cells", "5")
    flat_out, flat_err = allray("infer", loc("flat"), "--model", loc("run"), "--out", loc("flat-report"),
                                "--min-cells", "5")  # fmt: skip

    assert "ingest: 6 images seen: 6 ingested" in printed[0]
    for text in printed:
        for needle in NEEDLES:
            assert needle not in text, (needle, text)
    checked = 0
    for folder in ("cells", "run", "report", "flat-report"):
        files, _ = list_tree(join_uri(s3_bucket, "safe", folder))
        assert files, folder
        for name in files:
            data = read_bytes(join_uri(s3_bucket, "safe", folder, name))
            texts = [data.decode("latin-1")] + ([strings_in_parquet(data)] if name.endswith(".parquet") else [])
            for text in texts:
                for needle in NEEDLES:
                    assert needle not in text, (folder, name, needle)
            checked += 1
    assert checked >= 20
    # The records still say where things were, without the credentials.
    record = json.loads(read_text(join_uri(s3_bucket, "safe", "cells", "summary.json")))["run"]
    assert record["config"]["src"].startswith("s3://*********(redacted)@allray-test/safe/cohort/slides?")
    assert record["command"].startswith("allray ingest 's3://*********(redacted)@allray-test/safe/cohort/slides?")

    # A flat folder: the patient is unknown, and every output says "(unknown)", never "nan".
    report = join_uri(s3_bucket, "safe", "flat-report")
    patients = list(csv.DictReader(io.StringIO(read_text(join_uri(report, "patients.csv")))))
    samples = list(csv.DictReader(io.StringIO(read_text(join_uri(report, "samples.csv")))))
    assert [r["patient_id"] for r in patients] == [UNKNOWN]
    assert {r["patient_id"] for r in samples} == {UNKNOWN} and len(samples) == 3
    assert sorted(r["sample_id"] for r in samples) == ["smear0", "smear1", "smear2"]  # each image its own sample
    doc = json.loads(read_text(join_uri(report, "patients.json")))
    assert [p["patient_id"] for p in doc["patients"]] == [UNKNOWN]
    html = read_text(join_uri(report, "report.html"))
    assert f"Patient {UNKNOWN}" in html
    for name, text in (("patients.csv", read_text(join_uri(report, "patients.csv"))),
                       ("samples.csv", read_text(join_uri(report, "samples.csv"))),
                       ("patients.json", json.dumps(doc)), ("terminal", flat_out + flat_err)):  # fmt: skip
        assert "nan" not in text.lower().replace("(unknown)", ""), name
    assert ">nan<" not in html.lower() and "patient nan" not in html.lower()
    assert any(line.startswith(UNKNOWN) for line in flat_out.splitlines())  # the terminal's patient table
    files, _ = list_tree(join_uri(report, schema.PREDICTIONS_DIR))
    ids = set()
    for name in files:
        table = pq.read_table(io.BytesIO(read_bytes(join_uri(report, schema.PREDICTIONS_DIR, name))))
        ids |= set(table.column(schema.PATIENT_ID).to_pylist())
    assert ids == {None}  # stored as null, the missing value Arrow knows; shown as "(unknown)" only in reports
