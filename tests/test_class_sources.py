"""Sources that carry cell classes: class folders, the class column of labels and manifest, ALL-IDB's 0/1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import schema
from pipeline.config import CropSettings
from pipeline.ingest import ingest_image
from pipeline.io import encode_png, sha256_hex
from pipeline.sources import SINGLE_CELL, ImageTask, SourceError, discover_images

SETTINGS = CropSettings(um_per_pixel=0.25)  # a blank single-cell image has no red cells to measure


def _png(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)


def test_class_folders_auto_detected_with_synonyms(tmp_path):
    for rel in ["neutrophil/a.jpg", "neutrophil/b.jpg", "Lymphocytes/c.png", "IG/d.jpg", "platelet/e.jpg"]:
        _png(tmp_path / rel)
    d = discover_images(tmp_path)
    assert d.format == "classfolders"
    got = {t.image: (t.default_label, t.kind, t.label_source, t.patient_id, t.sample_id) for t in d.tasks}
    assert got == {
        "neutrophil/a.jpg": ("neutrophil", SINGLE_CELL, "class_folder", None, "a"),
        "neutrophil/b.jpg": ("neutrophil", SINGLE_CELL, "class_folder", None, "b"),
        "Lymphocytes/c.png": ("lymphocyte", SINGLE_CELL, "class_folder", None, "c"),
        "IG/d.jpg": ("ig", SINGLE_CELL, "class_folder", None, "d"),
        "platelet/e.jpg": ("platelet", SINGLE_CELL, "class_folder", None, "e"),
    }


def test_patient_folders_are_not_taken_for_class_folders(tmp_path):
    for rel in ["P1/S1/a.png", "P2/S1/b.png"]:
        _png(tmp_path / rel)
    assert discover_images(tmp_path).format == "folders"
    _png(tmp_path / "x" / "neutrophil" / "a.png")  # a known name below an unknown one: still folders
    assert discover_images(tmp_path).format == "folders"


def test_explicit_class_folders_refuse_an_unknown_folder_naming_it(tmp_path):
    _png(tmp_path / "neutrophil" / "a.jpg")
    _png(tmp_path / "megakaryocyte" / "b.jpg")
    assert discover_images(tmp_path).format == "folders"  # not every folder a class: not auto-detected
    with pytest.raises(
        SourceError,
        match=r"megakaryocyte.*unknown cell class 'megakaryocyte'; known classes: "
        r"lymphoblast, neutrophil",
    ):
        discover_images(tmp_path, fmt="classfolders")
    only_one = tmp_path / "one"
    _png(only_one / "monocyte" / "m.png")
    assert {t.default_label for t in discover_images(only_one, fmt="classfolders").tasks} == {"monocyte"}


def test_labels_csv_class_column_takes_precedence(tmp_path):
    _png(tmp_path / "P" / "S" / "a.png")
    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,r,label,class\nP/S/a.png,1,2,,1,\nP/S/a.png,3,4,,0,eosinophil\nP/S/a.png,5,6,,,nrbc\n")
    (t,) = discover_images(tmp_path, labels=labels).tasks
    assert [p[3] for p in json.loads(t.points_json)] == ["lymphoblast", "eosinophil", "erythroblast"]
    class_only = tmp_path / "class_only.csv"
    class_only.write_text("image,x,y,class\nP/S/a.png,1,2,Smudge cell\n")
    (t,) = discover_images(tmp_path, labels=class_only).tasks
    assert json.loads(t.points_json) == [[1.0, 2.0, None, "smudge"]]


def test_unknown_label_refused_with_file_line_and_value(tmp_path):
    _png(tmp_path / "a.png")
    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,label,class\na.png,1,2,1,neutrophil\na.png,1,2,0,granulocyte\n")
    with pytest.raises(SourceError, match=r"cells\.csv:3: unknown cell class 'granulocyte'; known classes"):
        discover_images(tmp_path, labels=labels)
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,sample_id,label\na.png,P,S,2\n")
    with pytest.raises(SourceError, match=r"m\.csv:2: label '2' must be 0 or 1"):
        discover_images(tmp_path, manifest=manifest)


def test_manifest_class_column_for_single_cells_and_healthy_smears(tmp_path):
    for rel in ["Im001_1.tif", "Im002_0.tif", "Im003_1.tif"]:
        _png(tmp_path / rel, size=(257, 257))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,patient_id,sample_id,label,class\nIm001_1.tif,P1,S1,1,\n"
        "Im002_0.tif,P2,S1,0,lymphocyte\nIm003_1.tif,P3,S1,,\n"
    )
    by = {t.image: t for t in discover_images(tmp_path, manifest=manifest, fmt="allidb2").tasks}
    assert by["Im001_1.tif"].default_label == "lymphoblast"
    assert (by["Im002_0.tif"].default_label, by["Im002_0.tif"].label_source) == ("lymphocyte", "manifest")
    assert (by["Im003_1.tif"].default_label, by["Im003_1.tif"].label_source) == ("lymphoblast", "filename")


@pytest.mark.parametrize("value, cls, label", [
    ("lymphoblast", "lymphoblast", 1), ("neutrophil", "neutrophil", 0), ("other", "other", 0),
    ("platelet", "platelet", None), ("erythroblast", "erythroblast", None), ("wbc", "wbc", None),
    (1, "lymphoblast", 1), (0, "other", 0), (None, None, None)])  # fmt: skip
def test_single_cell_row_carries_its_class_and_the_derived_label(value, cls, label):
    data = encode_png(np.full((120, 100, 3), 200, np.uint8))
    task = ImageTask(path="-", image="x/a.png", patient_id=None, sample_id="a", kind=SINGLE_CELL,
                     label_source="class_folder", default_label=value)  # fmt: skip
    (row,) = ingest_image(task, data, SETTINGS, sha256_hex(data), SETTINGS.to_json()).cells
    assert (row[schema.CELL_CLASS], row[schema.LABEL]) == (cls, label)
    assert row[schema.LABEL_SOURCE] == ("class_folder" if cls else None)


def test_cell_table_stores_the_class_dictionary_encoded(tmp_path):
    import pyarrow as pa

    from pipeline.store import open_output, read_table, write_shard

    rows = []
    for i, cls in enumerate(["neutrophil", "platelet", "neutrophil", None]):
        row = {f.name: None for f in schema.CELL_SCHEMA}
        row.update({schema.IMAGE: f"{i}.png", schema.CELL_ID: 0, schema.CELL_CLASS: cls})
        rows.append(row)
    ledger = [{schema.IMAGE: f"{i}.png", schema.STATUS: schema.STATUS_INGESTED, schema.SHARD: "s0"} for i in range(4)]
    for row in rows:
        row[schema.SHARD] = "s0"
    open_output(tmp_path)
    write_shard(tmp_path, "s0", pa.Table.from_pylist(rows, schema=schema.CELL_SCHEMA),
                schema.QUARANTINE_SCHEMA.empty_table(), pa.Table.from_pylist(ledger, schema=schema.IMAGE_SCHEMA))  # fmt: skip
    col = read_table(tmp_path, columns=[schema.CELL_CLASS]).column(0)
    assert pa.types.is_dictionary(col.type)
    assert col.to_pylist() == ["neutrophil", "platelet", "neutrophil", None]
