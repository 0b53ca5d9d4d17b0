"""Single-cell images cut at the slides' micrometre window: same cell, same size in its crop."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from pipeline import schema
from pipeline.config import CropSettings
from pipeline.crops import window_pixels
from pipeline.ingest import ingest_image
from pipeline.io import decode_png, encode_png, sha256_hex
from pipeline.scale import estimate_single_cell_um_per_pixel, find_white_cells
from pipeline.single_cell import cut_single_cell, measure_pad_fraction
from pipeline.sources import SINGLE_CELL, ImageTask
from pipeline.synth_cohort import write_cohort
from pipeline.synth_single import DOWNSCALED_SIDE_PX, write_single_cells

SETTINGS = CropSettings()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small synthetic cohort and ALL-IDB2-like single-cell images cut from it (every 3rd downscaled)."""
    root = tmp_path_factory.mktemp("sc")
    write_cohort(root / "cohort", patients=3, images_per_patient=3, seed=11)
    cells = write_single_cells(root / "cohort", root / "cells")
    return root, cells


def _smear(root, image):
    return np.asarray(Image.open(root / "cohort" / "slides" / image).convert("RGB"))


def _single(root, cell):
    return np.asarray(Image.open(root / "cells" / cell.name).convert("RGB"))


def _cell_diameter_px(crop: np.ndarray) -> float:
    """Equivalent diameter of the white cell at the centre of a crop, crop pixels."""
    labels, _ = ndi.label(find_white_cells(crop))
    h, w = labels.shape
    centre = labels[h // 2 - 3 : h // 2 + 4, w // 2 - 3 : w // 2 + 4]
    label = np.bincount(centre[centre > 0]).argmax()
    return 2.0 * math.sqrt((labels == label).sum() / math.pi)


def test_single_cells_are_cut_like_all_idb2(cohort):
    root, cells = cohort
    with open(root / "cohort" / "truth" / "cells.csv", newline="") as f:
        white = [r for r in csv.DictReader(f) if r["label"] in ("0", "1")]  # erythroblasts are not cut
        assert len(cells) == len(white)
    assert {c.name.rsplit(".", 1)[0][-1] for c in cells} == {"0", "1"}
    small = [c for c in cells if c.downscaled]
    assert len(small) == len(cells) // 3 and all(max(c.width, c.height) <= DOWNSCALED_SIDE_PX + 1 for c in small)
    assert all(c.name.endswith(".jpg") for c in small)


def test_same_cell_same_diameter_in_single_cell_crop_as_in_slide_crop(cohort):
    """With the scale given, the crop of a single-cell image shows the cell at the slide crop's size (in px)."""
    root, cells = cohort
    checked = 0
    for cell in cells:
        if cell.downscaled or cell.width < 100 or cell.height < 100:
            continue  # full-resolution cells well inside their smear: the cell mask is clean in both
        smear = _smear(root, cell.image)
        smear_upp = cell.um_per_pixel  # not downscaled: the smear's own scale
        detection = ingest_image(_task("smear.png"), encode_png(smear), CropSettings(um_per_pixel=smear_upp), "x", "{}")
        nearest = min(
            detection.cells, key=lambda r: math.hypot(r[schema.X] - cell.source_x, r[schema.Y] - cell.source_y)
        )
        if math.hypot(nearest[schema.X] - cell.source_x, nearest[schema.Y] - cell.source_y) > 0.3 * cell.r:
            continue  # the slide detection is not this cell alone (touching cells): no clean reference
        slide_crop = decode_png(nearest[schema.CROP])
        cut = cut_single_cell(_single(root, cell), CropSettings(um_per_pixel=cell.um_per_pixel))
        assert cut.scale_source == "user"
        assert _cell_diameter_px(cut.crop) == pytest.approx(_cell_diameter_px(slide_crop), rel=0.05)
        checked += 1
    assert checked >= 5


def _task(name, **kw):
    return ImageTask(path="-", image=name, patient_id=None, sample_id=None, **kw)


def test_measured_scale_puts_cells_at_the_slide_size(cohort):
    """Measured from the few red cells they show (downscaled JPEG copies included), single-cell scales
    match the truth: no bias, and most within 15%, so the cell's diameter in its crop matches the slide's."""
    root, cells = cohort
    ratios = []
    for cell in cells:
        measured = estimate_single_cell_um_per_pixel(_single(root, cell))
        assert measured is not None, cell.name
        # the cell's diameter in crop px is 2 r * crop_size / window: its ratio to the truth's
        true_d = 2 * cell.r * SETTINGS.crop_size / window_pixels(SETTINGS.crop_um, cell.um_per_pixel)
        got_d = 2 * cell.r * SETTINGS.crop_size / window_pixels(SETTINGS.crop_um, measured)
        ratios.append(got_d / true_d)
    ratios = np.asarray(ratios)
    assert abs(np.median(ratios) - 1) < 0.06
    assert np.mean(abs(ratios - 1) < 0.15) >= 0.6


def test_window_larger_than_image_is_padded_and_recorded(cohort):
    root, cells = cohort
    cell = next(c for c in cells if c.downscaled)
    image = _single(root, cell)
    upp = cell.um_per_pixel / 1.5  # as if the image were smaller than the 24 um window
    task = _task(cell.name, kind=SINGLE_CELL, default_label=cell.label, label_source="filename")
    data = encode_png(image)
    given = CropSettings(um_per_pixel=upp)
    (row,) = ingest_image(task, data, given, sha256_hex(data), given.to_json()).cells
    window = window_pixels(SETTINGS.crop_um, upp)
    h, w = image.shape[:2]
    assert window > max(h, w)
    expected = measure_pad_fraction(w, h, row[schema.X], row[schema.Y], window)
    assert row[schema.PAD_FRACTION] == pytest.approx(expected)
    assert row[schema.PAD_FRACTION] >= 1 - w * h / window**2 - 1e-6 > 0.3
    crop = decode_png(row[schema.CROP])
    assert crop[0, 0].mean() > 180 and crop[-1, -1].mean() > 180  # padded corners: the slide's background
    # the centre of the crop is the cell (nearest the image centre), found by detection
    assert math.hypot(row[schema.X] - cell.x, row[schema.Y] - cell.y) < 0.5 * cell.r


def test_pooled_scale_is_the_median_per_image_size_and_refuses_disagreement():
    from pipeline.single_cell import pool_scales

    noisy = [0.1, 0.104, 0.097, 0.42, None, 0.101, 0.19, 0.099]  # two outliers, one unmeasurable
    shrunk = [0.25, 0.26, 0.24]
    mixed = [0.1, 0.2, 0.3, 0.45]
    pool = pool_scales(
        [("360x363", v) for v in noisy]
        + [("103x103", v) for v in shrunk]
        + [("257x257", v) for v in mixed]
        + [("64x64", 0.1), ("64x64", None)]  # fmt: skip
    )
    assert pool.scales() == pytest.approx({"360x363": 0.101, "103x103": 0.25})
    assert (pool.sizes["360x363"].measured, pool.sizes["360x363"].agreeing) == (7, 5)
    assert "disagree" in pool.sizes["257x257"].reason and "too few" in pool.sizes["64x64"].reason
    assert pool.sampled == len(noisy) + len(shrunk) + len(mixed) + 2


def test_scale_sample_is_fixed_by_the_file_names():
    from pipeline.single_cell import scale_sample

    names = [f"{c}/img{i:03d}.jpg" for c in ("basophil", "lymphocyte", "neutrophil") for i in range(40)]
    sample = scale_sample(names, 30)
    assert sample == scale_sample(list(names), 30) and len(set(sample)) == 30
    assert {names[i].split("/")[0] for i in sample} == {"basophil", "lymphocyte", "neutrophil"}
    assert scale_sample(names[:5], 30) == [0, 1, 2, 3, 4]


def test_a_size_without_a_pool_takes_the_pool_of_a_size_within_five_percent():
    from pipeline.single_cell import pooled_scale_for

    pooled = {"360x363": 0.114, "103x103": 0.39}
    assert pooled_scale_for(pooled, 360, 363) == 0.114
    assert (
        pooled_scale_for(pooled, 366, 369) == 0.114 and pooled_scale_for(pooled, 360, 360) == 0.114
    )  # PBC's other sizes
    assert pooled_scale_for(pooled, 106, 104) == 0.39
    assert pooled_scale_for(pooled, 257, 257) is None and pooled_scale_for(None, 360, 363) is None


def test_class_folders_get_one_scale_per_image_size(tmp_path):
    """A class-folder export pools its scale (auto); a shrunk copy of the same cells gets its own;
    with `each` (or another layout under auto) every image is measured alone."""
    from pipeline.ingest import apply_pooled_scale
    from pipeline.single_cell import SCALE_POOLED, SCALE_RED_CELLS, size_key
    from pipeline.sources import discover_images
    from pipeline.synth import RBC_DIAMETER_UM, SmearStyle, make_image_rng, make_smear

    style = SmearStyle(rbc_diameter_px=60.0)  # one analyser: every image at 7.5 / 60 = 0.125 um/px
    upp = RBC_DIAMETER_UM / style.rbc_diameter_px
    for k in range(8):
        image, truth = make_smear(make_image_rng(5, k, 0), (360, 360), 0.45, style)
        c = min(truth, key=lambda t: math.hypot(t.x - 180, t.y - 180))
        x0, y0 = int(np.clip(c.x - 120, 0, 120)), int(np.clip(c.y - 120, 0, 120))
        cell = Image.fromarray(image[y0 : y0 + 240, x0 : x0 + 240])
        folder = tmp_path / "src" / ("lymphocyte" if k % 2 else "neutrophil")
        folder.mkdir(parents=True, exist_ok=True)
        cell.save(folder / f"c{k}.png")
        cell.resize((120, 120), Image.LANCZOS).save(folder / f"c{k}_small.png")
    found = discover_images(str(tmp_path / "src"))
    assert found.format == "classfolders"
    tasks, pool = apply_pooled_scale(found.tasks, SETTINGS, "auto", found.format)
    scales = pool.scales()
    assert set(scales) == {"240x240", "120x120"}
    assert scales["240x240"] == pytest.approx(upp, rel=0.1) and scales["120x120"] == pytest.approx(2 * upp, rel=0.1)
    assert all(t.pooled_scales == scales for t in tasks)
    for t in tasks[:4]:
        pixels = np.asarray(Image.open(t.path).convert("RGB"))
        cut = cut_single_cell(pixels, SETTINGS, t.pooled_scales)
        assert cut.scale_source == SCALE_POOLED and cut.um_per_pixel == scales[size_key(*pixels.shape[1::-1])]
    for mode, fmt in (("each", "classfolders"), ("auto", "allidb2")):
        same, none = apply_pooled_scale(found.tasks, SETTINGS, mode, fmt)
        assert none is None and same == found.tasks
    assert apply_pooled_scale(found.tasks, CropSettings(um_per_pixel=0.1), "pooled", found.format)[1] is None
    assert cut_single_cell(pixels, SETTINGS).scale_source == SCALE_RED_CELLS
