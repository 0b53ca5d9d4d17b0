"""The ingest stage without Ray: planted cells become labelled rows; every bad file is quarantined."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import schema
from pipeline.config import CropSettings
from pipeline.ingest import TASK_COLUMN, ImageOutcome, IngestStage, ingest_image, process_task
from pipeline.io import ImageReadError, decode_png, encode_png, sha256_hex
from pipeline.sources import SINGLE_CELL, ImageTask
from pipeline.store import open_output, read_table
from pipeline.synth import choose_patient_style, make_image_rng, make_smear

SETTINGS = CropSettings()


@pytest.fixture(scope="module")
def smear():
    """A synthetic smear (800x600) and its truth cells."""
    style = choose_patient_style(3, 1)
    image, truth = make_smear(make_image_rng(3, 1, 0), (800, 600), 0.5, style)
    return image, truth


def _task(name="P1/S1/a.png", **kw) -> ImageTask:
    return ImageTask(path="-", image=name, patient_id="P1", sample_id="S1", **kw)


def test_planted_cells_found_with_labels_and_fixed_size_crops(smear):
    image, truth = smear
    points = [[c.x, c.y, c.r, c.label] for c in truth]
    data = encode_png(image)
    outcome = ingest_image(_task(points_json=json.dumps(points), label_source="labels_csv"), data, SETTINGS,
                           sha256_hex(data), SETTINGS.to_json())  # fmt: skip
    rows = outcome.cells
    assert len(rows) == len(truth)
    assert sorted(r[schema.LABEL] for r in rows) == sorted(c.label for c in truth)
    assert all(r[schema.LABEL_SOURCE] == "labels_csv" for r in rows)
    for r in rows:
        crop = decode_png(r[schema.CROP])
        assert crop.shape == (128, 128, 3)
        assert (
            r[schema.BBOX_X0] < r[schema.X] < r[schema.BBOX_X1] and r[schema.BBOX_Y0] < r[schema.Y] < r[schema.BBOX_Y1]
        )
        assert 4.0 < r[schema.DIAMETER_UM] < 25.0  # white cells are ~8-20 um across
    assert outcome.scale_source == "red_cells"


def test_unlabelled_images_leave_labels_null(smear):
    image, _ = smear
    data = encode_png(image)
    outcome = ingest_image(_task(), data, SETTINGS, sha256_hex(data), SETTINGS.to_json())
    assert outcome.cells and all(r[schema.LABEL] is None and r[schema.LABEL_SOURCE] is None for r in outcome.cells)


def test_single_cell_image_is_one_crop_with_its_label(smear):
    image, truth = smear
    cell = max(truth, key=lambda c: min(c.x, c.y, 800 - c.x, 600 - c.y))  # one well inside the field
    x0, y0 = int(cell.x) - 90, int(cell.y) - 90
    data = encode_png(np.ascontiguousarray(image[y0 : y0 + 180, x0 : x0 + 180]))
    task = _task("Im001_1.tif", kind=SINGLE_CELL, default_label=1, label_source="filename")
    (row,) = ingest_image(task, data, SETTINGS, sha256_hex(data), SETTINGS.to_json()).cells
    assert row[schema.KIND] == schema.KIND_SINGLE_CELL and row[schema.LABEL] == 1
    assert row[schema.SCALE_SOURCE] == "red_cells"
    assert decode_png(row[schema.CROP]).shape == (128, 128, 3)


def test_single_cell_image_without_red_cells_is_quarantined_with_the_rule():
    data = encode_png(np.full((193, 257, 3), 200, np.uint8))
    task = _task("Im001_1.tif", kind=SINGLE_CELL, default_label=1, label_source="filename")
    outcome = ingest_image_or_reason(task, data)
    assert outcome.cells == [] and "--um-per-pixel" in outcome.reason
    given = CropSettings(um_per_pixel=0.1)
    (row,) = ingest_image(task, data, given, sha256_hex(data), given.to_json()).cells
    assert row[schema.SCALE_SOURCE] == "user" and row[schema.UM_PER_PIXEL] == pytest.approx(0.1)
    # a 24 um window at 0.1 um/px is 240 px, centred on the image: 240 x 193 of it lie inside
    assert row[schema.PAD_FRACTION] == pytest.approx(1 - 240 * 193 / 240**2, abs=0.01)


def ingest_image_or_reason(task, data):
    """ingest_image's outcome, or the quarantine outcome process_task gives for its error."""
    try:
        return ingest_image(task, data, SETTINGS, sha256_hex(data), SETTINGS.to_json())
    except ImageReadError as err:
        return ImageOutcome([], reason=str(err))


@pytest.mark.parametrize("kind", ["grey", "rgba", "tiff16"])
def test_other_pixel_formats_ingest(smear, kind, tmp_path):
    image, truth = smear
    buf = io.BytesIO()
    if kind == "grey":
        Image.fromarray(image).convert("L").save(buf, format="PNG")
    elif kind == "rgba":
        Image.fromarray(image).convert("RGBA").save(buf, format="PNG")
    else:
        tifffile.imwrite(buf, image.astype(np.uint16) * 257, photometric="rgb", compression="lzw")
    data = buf.getvalue()
    outcome = ingest_image(_task(), data, SETTINGS, sha256_hex(data), SETTINGS.to_json())
    if kind != "grey":  # colour survives: every cell is found
        assert len(outcome.cells) == len(truth)


def test_stage_quarantines_every_bad_kind_and_commits_the_rest(smear, tmp_path):
    image, truth = smear
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(image).save(src / "good.png")
    Image.fromarray(image).save(src / "lying.jpg", format="PNG")  # a PNG named .jpg
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.jpg").write_text("hello, not an image")
    Image.fromarray(image).save(src / "trunc.jpg", quality=90)
    data = (src / "trunc.jpg").read_bytes()
    (src / "trunc.jpg").write_bytes(data[: len(data) // 2])
    names = ["good.png", "lying.jpg", "empty.jpg", "text.jpg", "trunc.jpg", "missing.png"]
    tasks = [ImageTask(path=str(src / n), image=n, patient_id=None, sample_id=n) for n in names]
    out = tmp_path / "out"
    open_output(out)
    statuses = IngestStage(SETTINGS.to_json(), str(out), "run1")({TASK_COLUMN: np.array([t.to_json() for t in tasks])})
    by = dict(zip(statuses[schema.IMAGE], statuses[schema.STATUS]))
    assert by == {"good.png": "ingested", "lying.jpg": "ingested", "empty.jpg": "quarantined",
                  "text.jpg": "quarantined", "trunc.jpg": "quarantined", "missing.png": "quarantined"}  # fmt: skip
    reasons = dict(zip(statuses[schema.IMAGE], statuses[schema.REASON]))
    assert "empty file" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["trunc.jpg"] and "cannot read file" in reasons["missing.png"]
    cells = read_table(out)
    assert cells.num_rows == 2 * len(truth)
    assert read_table(out, schema.QUARANTINE_DIR).num_rows == 4
    assert read_table(out, schema.IMAGES_DIR).num_rows == 6
    # same content again: skipped, nothing written twice
    state = open_output(out)
    again = IngestStage(SETTINGS.to_json(), str(out), "run2", state.known)(
        {TASK_COLUMN: np.array([tasks[0].to_json()])}
    )
    assert list(again[schema.STATUS]) == ["skipped"] and read_table(out).num_rows == 2 * len(truth)


def test_processing_error_is_quarantined_not_raised(monkeypatch, smear):
    import pipeline.ingest as ingest_mod

    def boom(*a, **k):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(ingest_mod, "detect_cells", boom)
    image, _ = smear
    monkeypatch.setattr(ingest_mod, "read_bytes", lambda path: encode_png(image))
    outcome, sha = process_task(_task(), SETTINGS, SETTINGS.to_json())
    assert sha and "processing failed: RuntimeError: detector exploded" in outcome.reason
