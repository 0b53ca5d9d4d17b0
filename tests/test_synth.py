"""Synthetic smears: reproducible, self-consistent ground truth, cells where the truth says."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from pipeline import schema, taxonomy
from pipeline.synth import (
    RBC_DIAMETER_UM,
    SmearStyle,
    choose_blast_fraction,
    choose_patient_style,
    choose_style,
    make_image_rng,
    make_smear,
)
from pipeline.synth_cohort import PATIENT_CLASS_COLUMNS, write_cohort

SIZE = (400, 300)  # small fields keep the suite fast; magnification is unchanged by size


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=3, images_per_patient=3, seed=7, size=SIZE, samples_per_patient=2)
    return out


@pytest.fixture(scope="module")
def smears() -> list[tuple[np.ndarray, list, SmearStyle]]:
    """24 smears over 8 patient styles, half the white cells blasts."""
    out = []
    for p in range(8):
        style = choose_patient_style(11, p)
        for i in range(3):
            image, cells = make_smear(make_image_rng(11, p, i), SIZE, 0.5, style)
            out.append((image, cells, style))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def nucleus_mask(image: np.ndarray) -> np.ndarray:
    """Purple pixels: nuclei (and platelets); red cells and background are never this blue."""
    r, g, b = (image[..., k].astype(int) for k in range(3))
    return (b - g > 45) & (b > r)


def test_cohort_layout_and_headers(cohort):
    slides = sorted(p.relative_to(cohort / "slides").as_posix() for p in (cohort / "slides").rglob("*.png"))
    assert slides == [f"P{p:03d}/S{i * 2 // 3}/img{i:03d}.png" for p in range(3) for i in range(3)]
    with (cohort / "truth" / "cells.csv").open() as f:
        assert tuple(f.readline().strip().split(",")) == schema.TRUTH_COLUMNS
    with (cohort / "truth" / "patients.csv").open() as f:
        assert tuple(f.readline().strip().split(",")) == (*schema.PATIENT_TRUTH_COLUMNS, *PATIENT_CLASS_COLUMNS)
    image = np.asarray(Image.open(cohort / "slides" / slides[0]))
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8


def test_same_seed_gives_identical_bytes_and_other_seed_differs(cohort, tmp_path):
    write_cohort(tmp_path / "again", patients=3, images_per_patient=3, seed=7, size=SIZE, samples_per_patient=2)
    assert files_of(tmp_path / "again") == files_of(cohort)
    write_cohort(tmp_path / "other", patients=3, images_per_patient=3, seed=8, size=SIZE, samples_per_patient=2)
    other = files_of(tmp_path / "other")
    mine = files_of(cohort)
    assert other["truth/cells.csv"] != mine["truth/cells.csv"]
    assert all(other[k] != mine[k] for k in mine if k.endswith(".png"))


def test_any_image_can_be_rebuilt_alone(cohort):
    seed, patient, index = 7, 2, 1
    fraction, style = choose_blast_fraction(seed, patient), choose_patient_style(seed, patient)
    image, cells = make_smear(make_image_rng(seed, patient, index), SIZE, fraction, style)
    rel = f"P002/S0/img{index:03d}.png"
    assert np.array_equal(np.asarray(Image.open(cohort / "slides" / rel)), image)
    rows = [r for r in read_csv(cohort / "truth" / "cells.csv") if r["image"] == rel]
    assert [(float(r["x"]), float(r["y"]), r["label"], r["class"]) for r in rows] == [
        (round(c.x, 2), round(c.y, 2), "" if c.label is None else str(c.label), c.kind) for c in cells
    ]


def test_smaller_cohort_is_a_prefix_of_a_larger_one(cohort, tmp_path):
    write_cohort(tmp_path / "small", patients=2, images_per_patient=3, seed=7, size=SIZE, samples_per_patient=2)
    small, big = files_of(tmp_path / "small" / "slides"), files_of(cohort / "slides")
    assert small == {k: v for k, v in big.items() if not k.startswith("P002")}


def test_patient_counts_equal_sums_of_cell_rows(cohort):
    cells = read_csv(cohort / "truth" / "cells.csv")
    n_wbc, n_blast = defaultdict(int), defaultdict(int)
    for row in cells:
        patient = row["image"].split("/")[0]
        n_wbc[patient] += row["label"] != ""  # erythroblasts have no binary label: not white cells
        n_blast[patient] += row["label"] == "1"
    patients = read_csv(cohort / "truth" / "patients.csv")
    assert [p["patient_id"] for p in patients] == ["P000", "P001", "P002"]
    for p in patients:
        pid = p["patient_id"]
        assert int(p["n_wbc"]) == n_wbc[pid] >= 3 * 2
        assert int(p["n_blast"]) == n_blast[pid]
        assert p["blast_pct"] == f"{100 * n_blast[pid] / n_wbc[pid]:.2f}"


def test_class_counts_in_patients_csv_equal_the_cells_of_each_class(tmp_path):
    out = tmp_path / "classes"
    write_cohort(out, patients=6, images_per_patient=8, seed=3, size=SIZE)
    cells = read_csv(out / "truth" / "cells.csv")
    assert all(taxonomy.parse_class(r["class"], "cells.csv") == r["class"] for r in cells)
    assert all(
        r["label"] == str(taxonomy.binary_label(r["class"]) if taxonomy.binary_label(r["class"]) is not None else "")
        for r in cells
    )  # the label is derived from the class
    per_patient: dict[str, list[str]] = defaultdict(list)
    for r in cells:
        per_patient[r["image"].split("/")[0]].append(r["class"])
    drawn = {c for classes in per_patient.values() for c in classes}
    assert {"lymphoblast", "neutrophil", "lymphocyte", "monocyte", "eosinophil"} <= drawn  # rarer ones need luck
    for p in read_csv(out / "truth" / "patients.csv"):
        classes = per_patient[p["patient_id"]]
        white = [c for c in classes if taxonomy.is_white(c)]
        assert int(p["n_wbc"]) == len(white)
        for name in ("lymphoblast", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"):
            assert int(p[f"n_{name}"]) == classes.count(name)
            assert p[f"{name}_pct"] == f"{100 * classes.count(name) / len(white):.2f}"
        for name in ("erythroblast", "smudge"):  # per 100 white cells
            assert int(p[f"n_{name}"]) == classes.count(name)
            assert p[f"{name}_pct"] == f"{100 * classes.count(name) / len(white):.2f}"
        assert sum(
            int(p[f"n_{c}"]) for c in ("lymphoblast", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
        ) == len(white)
        if choose_blast_fraction(3, int(p["patient_id"][1:])) == 0:
            assert int(p["n_erythroblast"]) == 0  # healthy blood has no nucleated red cells


def test_erythroblasts_are_drawn_at_a_low_rate_in_smears_with_blasts():
    style = choose_patient_style(0, 0)
    kinds = [c.kind for i in range(300) for c in make_smear(make_image_rng(0, 0, i), SIZE, 0.5, style)[1]]
    n_white = sum(k != "erythroblast" for k in kinds)
    per_100 = 100 * kinds.count("erythroblast") / n_white
    assert 0.5 < per_100 < 4.0, per_100
    healthy = [c.kind for i in range(60) for c in make_smear(make_image_rng(0, 0, i), SIZE, 0.0, style)[1]]
    assert "erythroblast" not in healthy and "lymphoblast" not in healthy


def test_healthy_patients_have_no_blasts_and_others_do(cohort):
    patients = {p["patient_id"]: p for p in read_csv(cohort / "truth" / "patients.csv")}
    fractions = [choose_blast_fraction(7, p) for p in range(3)]
    assert sorted(f == 0 for f in fractions) == [False, False, True]  # one healthy in each three
    for p, fraction in enumerate(fractions):
        if fraction == 0:
            assert int(patients[f"P{p:03d}"]["n_blast"]) == 0
    assert sum(int(p["n_blast"]) for p in patients.values()) > 0


def test_blast_fractions_span_healthy_low_and_high():
    fractions = np.array([choose_blast_fraction(0, p) for p in range(30)])
    assert np.sum(fractions == 0) == 10
    sick = fractions[fractions > 0]
    assert sick.min() >= 0.1 and sick.max() <= 0.9
    assert np.sum(sick < 0.5) == 10 and np.sum(sick >= 0.5) == 10


def test_truth_centres_sit_on_nuclei_and_background_is_not_nuclear(smears):
    for image, cells, _ in smears:
        h, w = image.shape[:2]
        assert 2 <= sum(c.label is not None for c in cells) <= 6  # white cells; a nucleated red cell beside them
        purple = nucleus_mask(image)
        yy, xx = np.mgrid[:h, :w]
        far = np.ones((h, w), bool)
        for c in cells:
            assert 0 <= c.x < w and 0 <= c.y < h
            d = np.hypot(xx - c.x, yy - c.y)
            assert purple[d <= 0.5 * c.r].mean() > 0.1, c  # neutrophils: between lobes
            far &= d > 1.3 * c.r
        # Only platelets are purple away from the white cells: a few percent of a percent.
        assert purple[far].mean() < 0.01
        corners = [image[:4, :4], image[:4, -4:], image[-4:, :4], image[-4:, -4:]]
        assert sum(nucleus_mask(c).mean() > 0.5 for c in corners) <= 1


def test_every_purple_blob_is_a_truth_cell(smears):
    """No white cell is drawn without its truth row: nucleus-sized purple blobs all have one."""
    for image, cells, style in smears:
        px_per_um = style.rbc_diameter_px / RBC_DIAMETER_UM
        labels, n = ndi.label(ndi.binary_opening(nucleus_mask(image), iterations=1))
        sizes = ndi.sum_labels(np.ones_like(labels), labels, np.arange(1, n + 1))
        centres = ndi.center_of_mass(labels > 0, labels, np.arange(1, n + 1))
        for size, (cy, cx) in zip(sizes, centres):
            if size < np.pi * (2.0 * px_per_um) ** 2:  # a platelet is at most 1.5 um in radius
                continue
            assert any(np.hypot(cx - c.x, cy - c.y) < c.r for c in cells), (cx, cy)


def test_blasts_are_larger_than_lymphocytes(smears):
    radius_um = defaultdict(list)
    for _, cells, style in smears:
        for c in cells:
            radius_um[c.kind].append(c.r * RBC_DIAMETER_UM / style.rbc_diameter_px)
    assert {"lymphoblast", "lymphocyte", "neutrophil"} <= set(radius_um)
    assert np.mean(radius_um["lymphoblast"]) > np.mean(radius_um["lymphocyte"]) + 1.5
    assert all(c.label == (c.kind == "lymphoblast") for _, cells, _ in smears for c in cells)


def test_smears_include_cut_and_touching_white_cells(smears):
    h, w = smears[0][0].shape[:2]
    cut = touching = 0
    for _, cells, _ in smears:
        cut += sum(min(c.x, c.y, w - 1 - c.x, h - 1 - c.y) < c.r for c in cells)
        touching += sum(
            np.hypot(a.x - b.x, a.y - b.y) < 1.05 * (a.r + b.r) for i, a in enumerate(cells) for b in cells[i + 1 :]
        )
    assert cut > 0 and touching > 0


def test_make_smear_shape_and_uses_only_its_rng():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    style = choose_style(np.random.default_rng(1))
    a, cells = make_smear(np.random.default_rng(5), (300, 200), 0.3, style)
    b, _ = make_smear(np.random.default_rng(5), (300, 200), 0.3, style)
    assert a.shape == (200, 300, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"patients": 0}, ["patients", "0"]),
        ({"images_per_patient": -2}, ["images_per_patient", "-2"]),
        ({"size": (64, 600)}, ["64x600"]),
        ({"samples_per_patient": 5}, ["samples_per_patient=5"]),
        ({"seed": -1}, ["seed", "-1"]),
    ],
)
def test_bad_cohort_arguments_raise_naming_the_value(tmp_path, kwargs, words):
    args = {"out": tmp_path, "patients": 1, "images_per_patient": 2, "size": (200, 200)} | kwargs
    with pytest.raises(ValueError) as err:
        write_cohort(**args)
    assert all(w in str(err.value) for w in words)
    assert not (tmp_path / "slides").exists()


def test_bad_smear_arguments_raise():
    with pytest.raises(ValueError, match="1.5"):
        make_smear(np.random.default_rng(0), (200, 200), 1.5, SmearStyle())
    with pytest.raises(ValueError, match="100x20"):
        make_smear(np.random.default_rng(0), (100, 20), 0.5, SmearStyle())
    with pytest.raises(ValueError, match="rbc_diameter_px"):
        SmearStyle(rbc_diameter_px=2.0)
    with pytest.raises(ValueError, match="red_cell_tint"):
        SmearStyle(red_cell_tint=1.5)


def test_red_cell_tint_makes_red_cells_lavender_and_nothing_else():
    from pipeline.synth import _mix_stains

    pink, lavender = _mix_stains(SmearStyle()), _mix_stains(SmearStyle(red_cell_tint=1.0))
    assert pink.rbc[2] > pink.rbc[0] and lavender.rbc[0] > lavender.rbc[2]  # OD(B) > OD(R), then OD(R) > OD(B)
    assert all(np.array_equal(getattr(pink, f), getattr(lavender, f)) for f in pink.__dataclass_fields__ if f != "rbc")


def test_refuses_to_write_over_an_earlier_cohort(tmp_path):
    write_cohort(tmp_path, patients=1, images_per_patient=1, size=(160, 160))
    with pytest.raises(FileExistsError, match="slides"):
        write_cohort(tmp_path, patients=1, images_per_patient=1, size=(160, 160))
