"""Dataset layouts: patients, samples and labels come out as the formats document them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.sources import SINGLE_CELL, SourceError, discover_images, read_xyc


def _png(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)


def test_patient_sample_folders(tmp_path):
    for rel in ["P1/S1/a.png", "P1/S2/b.JPG", "P2/S1/c.tif"]:
        _png(tmp_path / rel)
    (tmp_path / "P1" / "notes.txt").write_text("not an image")
    d = discover_images(tmp_path)
    got = {(t.image, t.patient_id, t.sample_id) for t in d.tasks}
    assert got == {("P1/S1/a.png", "P1", "S1"), ("P1/S2/b.JPG", "P1", "S2"), ("P2/S1/c.tif", "P2", "S1")}
    assert d.format == "folders" and d.ignored == ["P1/notes.txt"]


def test_flat_folder_each_image_its_own_sample(tmp_path):
    _png(tmp_path / "x1.png")
    _png(tmp_path / ".hidden.png")
    (t,) = discover_images(tmp_path).tasks
    assert (t.image, t.patient_id, t.sample_id) == ("x1.png", None, "x1")


def test_manifest_overrides_folders(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,sample_id,label\nimgs/a.png,PX,SX,0\n")
    d = discover_images(tmp_path, manifest=manifest)
    by = {t.image: t for t in d.tasks}
    assert (by["imgs/a.png"].patient_id, by["imgs/a.png"].sample_id) == ("PX", "SX")
    assert by["imgs/a.png"].default_label == "other"  # a healthy patient's smear: all its cells healthy
    assert by["imgs/b.png"].patient_id == "imgs"


def test_manifest_missing_column_names_it(tmp_path):
    _png(tmp_path / "a.png")
    bad = tmp_path / "m.csv"
    bad.write_text("image,patient\na.png,P\n")
    with pytest.raises(SourceError, match="missing column.*sample_id"):
        discover_images(tmp_path, manifest=bad)


def test_labels_csv_attaches_points(tmp_path):
    _png(tmp_path / "P/S/a.png")
    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,r,label\nP/S/a.png,10,12,5,1\nP/S/a.png,30,20,,0\n")
    (t,) = discover_images(tmp_path / "P" / "..", labels=labels).tasks
    assert json.loads(t.points_json) == [[10.0, 12.0, 5.0, "lymphoblast"], [30.0, 20.0, None, "other"]]
    assert t.label_source == "labels_csv" and t.default_label is None


def test_labels_bad_label_value_names_line(tmp_path):
    _png(tmp_path / "a.png")
    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,label\na.png,1,2,7\n")
    with pytest.raises(SourceError, match=r"cells.csv:2"):
        discover_images(tmp_path, labels=labels)


def test_allidb1_labels_from_xyc_and_filename(tmp_path):
    _png(tmp_path / "Im001_1.jpg", size=(500, 400))
    _png(tmp_path / "Im002_0.JPG", size=(500, 400))
    (tmp_path / "xyc").mkdir()
    (tmp_path / "xyc" / "Im001_1.xyc").write_text("100\t200\n300 150\n\n")
    d = discover_images(tmp_path)
    assert d.format == "allidb1"
    by = {t.image: t for t in d.tasks}
    assert json.loads(by["Im001_1.jpg"].points_json) == [
        [100.0, 200.0, None, "lymphoblast"],
        [300.0, 150.0, None, "lymphoblast"],
    ]
    assert by["Im001_1.jpg"].default_label == "other" and by["Im001_1.jpg"].label_source == "xyc"
    assert by["Im002_0.JPG"].default_label == "other" and by["Im002_0.JPG"].points_json is None
    assert by["Im002_0.JPG"].sample_id == "Im002_0" and by["Im002_0.JPG"].patient_id is None


def test_allidb2_single_cells_labelled_by_suffix(tmp_path):
    _png(tmp_path / "Im001_1.tif", size=(257, 257))
    _png(tmp_path / "Im131_0.tif", size=(257, 193))
    d = discover_images(tmp_path)
    assert d.format == "allidb2"
    assert {(t.image, t.default_label, t.kind) for t in d.tasks} == {
        ("Im001_1.tif", "lymphoblast", SINGLE_CELL),
        ("Im131_0.tif", "other", SINGLE_CELL),
    }


def test_allidb2_reencoded_small_jpegs_detected_by_size(tmp_path):
    _png(tmp_path / "Im001_1.jpg", size=(103, 103))
    assert discover_images(tmp_path).format == "allidb2"


def test_xyc_bad_line_is_named(tmp_path):
    p = tmp_path / "a.xyc"
    p.write_text("1 2\nfoo\n")
    with pytest.raises(SourceError, match="a.xyc:2"):
        read_xyc(p)


def test_missing_or_empty_source_is_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        discover_images(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no images found"):
        discover_images(tmp_path)
    with pytest.raises(SourceError, match="unknown --format"):
        discover_images(tmp_path, fmt="zip")


def test_discovery_through_file_uris_matches_local_paths(tmp_path):
    """SRC, manifest and labels given as file:// URIs: the same tasks, each path a URI that reads the file."""
    from pipeline.locations import read_bytes

    src = tmp_path / "slides dir"
    for rel in ["P1/S1/a.png", "P1/S2/b b.JPG", "P2/S1/c.tif", "P2/.hidden/d.png"]:
        _png(src / rel)
    (src / "P1" / "notes.txt").write_text("not an image")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,sample_id,label\nP2/S1/c.tif,PX,SX,0\n")
    labels = tmp_path / "cells.csv"
    labels.write_text("image,x,y,r,label\nP1/S1/a.png,10,12,5,1\n")
    local = discover_images(src, manifest=manifest, labels=labels)
    remote = discover_images(src.as_uri(), manifest=manifest.as_uri(), labels=labels.as_uri())
    strip = [{**t.__dict__, "path": None} for t in remote.tasks]
    assert strip == [{**t.__dict__, "path": None} for t in local.tasks]
    assert (remote.format, remote.ignored) == ("manifest", ["P1/notes.txt"])
    assert [t.image for t in remote.tasks] == ["P1/S1/a.png", "P1/S2/b b.JPG", "P2/S1/c.tif"]
    for task in remote.tasks:
        assert task.path.startswith("file:///")
        assert read_bytes(task.path) == (src / task.image).read_bytes()
    with pytest.raises(SourceError, match="does not exist"):
        discover_images((tmp_path / "nope").as_uri())
    with pytest.raises(SourceError, match="CSV file .* does not exist"):
        discover_images(src.as_uri(), labels=(tmp_path / "none.csv").as_uri())


def test_allidb1_xyc_read_through_a_uri(tmp_path):
    _png(tmp_path / "Im001_1.jpg", size=(500, 400))
    (tmp_path / "xyc").mkdir()
    (tmp_path / "xyc" / "Im001_1.xyc").write_text("100\t200\n")
    d = discover_images(tmp_path.as_uri())
    assert d.format == "allidb1"
    assert json.loads(d.tasks[0].points_json) == [[100.0, 200.0, None, "lymphoblast"]]


def test_discovery_on_s3(s3_bucket, tmp_path):
    """A folder layout, a labels CSV and re-encoded ALL-IDB2 cells, all on a local S3 server."""
    from pipeline.locations import join_uri, read_bytes, upload_dir

    for rel in ["P1/S1/a.png", "P1/S1/odd name?.png", "P2/S1/c.tif"]:
        _png(tmp_path / "slides" / rel)
    (tmp_path / "slides" / "P2" / "readme.txt").write_text("x")
    (tmp_path / "labels.csv").write_text("image,x,y,label\nP1/S1/a.png,5,6,1\n")
    _png(tmp_path / "allidb2" / "Im001_1.jpg", size=(103, 103))
    upload_dir(tmp_path, join_uri(s3_bucket, "discovery"))
    src = join_uri(s3_bucket, "discovery", "slides")
    d = discover_images(src, labels=join_uri(s3_bucket, "discovery", "labels.csv"))
    assert d.format == "folders" and d.ignored == ["P2/readme.txt"]
    by = {t.image: t for t in d.tasks}
    assert sorted(by) == ["P1/S1/a.png", "P1/S1/odd name?.png", "P2/S1/c.tif"]
    assert (by["P2/S1/c.tif"].patient_id, by["P2/S1/c.tif"].sample_id) == ("P2", "S1")
    assert json.loads(by["P1/S1/a.png"].points_json) == [[5.0, 6.0, None, "lymphoblast"]]
    for task in d.tasks:
        assert task.path.startswith("s3://allray-test/discovery/slides/") and "endpoint_override=" in task.path
        assert read_bytes(task.path) == (tmp_path / "slides" / task.image).read_bytes()
    assert discover_images(join_uri(s3_bucket, "discovery", "allidb2")).format == "allidb2"  # size read on S3
