"""Synthetic cohorts written to disk: each patient's smears (`pipeline.synth` for the default
profile, `pipeline.synth_all` for ALL-like patients) and the ground truth of every cell drawn:

    OUT/slides/<patient>/<sample>/<image>.png   e.g. P000/S0/img000.png (.jpg for profile "all")
    OUT/truth/cells.csv                          image,x,y,r,label,kind,cluster,class (one row per nucleated cell)
    OUT/truth/patients.csv                       patient_id,n_wbc,n_blast,blast_pct, then per class
                                                 n_<class>,<class>_pct (PATIENT_CLASS_COLUMNS)
    OUT/truth/cohort.json                        the settings, and each patient's style

Every image is drawn from its own generator (`pipeline.synth.make_image_rng`), so a cohort of N
patients is the first N patients of any larger cohort with the same seed.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import schema, taxonomy
from pipeline.synth import (
    RBC_DIAMETER_UM,
    SmearStyle,
    _check_size,
    choose_blast_fraction,
    choose_patient_style,
    make_image_rng,
    make_smear,
)
from pipeline.synth_all import choose_all_patient, make_all_smear
from pipeline.synth_cells import WBC_KINDS

# truth/patients.csv class columns: the white classes drawn (% of white cells), then the cells
# counted apart (per 100 white cells), named as `allray infer` names its differential columns.
TRUTH_WHITE_CLASSES = tuple(c for c in taxonomy.WHITE_CLASSES if c in WBC_KINDS)
PATIENT_CLASS_COLUMNS = tuple(
    col for c in (*TRUTH_WHITE_CLASSES, *taxonomy.APART_CLASSES) for col in taxonomy.column_names(c)[:2]
)
PROFILES = ("default", "all")  # "all": ALL-like patients (pipeline.synth_all)


@dataclass(frozen=True)
class CohortSummary:
    """What `write_cohort` wrote: the folder and the totals of its ground truth."""

    out: Path
    n_patients: int
    n_images: int
    n_wbc: int
    n_blast: int


def write_cohort(
    out: Path,
    patients: int,
    images_per_patient: int,
    seed: int = 0,
    size: tuple[int, int] = (800, 600),
    samples_per_patient: int = 1,
    profile: str = "default",
    red_cell_tint: float | None = None,
) -> CohortSummary:
    """Write a synthetic cohort's slides and ground truth under `out`; return its totals.

    Images are spread over the samples in order (img000.. in S0, then S1, ..); image numbers run
    per patient, so an image's content does not depend on `samples_per_patient`.
    profile "all" makes ALL-like patients instead (`pipeline.synth_all`: crowded fields, packed
    blast clusters, smudge cells, JPEG images). `red_cell_tint`, given, sets every patient's
    SmearStyle.red_cell_tint (0 pink red cells, 1 lavender); the cells drawn stay the same.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if red_cell_tint is not None and not (isinstance(red_cell_tint, (int, float)) and 0.0 <= red_cell_tint <= 1.0):
        raise ValueError(f"red_cell_tint must be a number in [0, 1] (0 pink, 1 lavender), got {red_cell_tint!r}")
    out = Path(out)
    _check_count("patients", patients, 1)
    _check_count("images_per_patient", images_per_patient, 1)
    _check_count("samples_per_patient", samples_per_patient, 1)
    if samples_per_patient > images_per_patient:
        raise ValueError(
            f"samples_per_patient={samples_per_patient} exceeds images_per_patient="
            f"{images_per_patient}: every sample needs at least one image"
        )
    _check_count("seed", seed, 0)
    width, height = _check_size(size)
    for sub in ("slides", "truth"):
        if (out / sub).exists() and any((out / sub).iterdir()):
            raise FileExistsError(
                f"{out / sub} is not empty: write the cohort to a new folder "
                f"(stale images would not match the new ground truth)"
            )

    cell_rows, patient_rows, styles = [], [], {}
    n_images = 0
    for p in range(patients):
        patient_id = f"P{p:03d}"
        if profile == "all":
            style, fraction, *extra = choose_all_patient(seed, p)
            style = _tinted(style, red_cell_tint)
            styles[patient_id] = {
                "blast_fraction": fraction,
                "style": asdict(style),
                "smudge_share": extra[0],
                "rbc_on_wbc": extra[1],
                "jpeg_quality": extra[2],
            }
        else:
            style, fraction = _tinted(choose_patient_style(seed, p), red_cell_tint), choose_blast_fraction(seed, p)
            styles[patient_id] = {"blast_fraction": fraction, "style": asdict(style)}
        n_wbc = n_blast = 0
        classes: list[str] = []
        for i in range(images_per_patient):
            sample_id = f"S{i * samples_per_patient // images_per_patient}"
            rel = f"{patient_id}/{sample_id}/img{i:03d}." + ("jpg" if profile == "all" else "png")
            if profile == "all":
                _, data, cells = make_all_smear(make_image_rng(seed, p, i), (width, height), (seed, p), red_cell_tint)
                (out / "slides" / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / "slides" / rel).write_bytes(data)
            else:
                image, cells = make_smear(make_image_rng(seed, p, i), (width, height), fraction, style)
                _write_png(out / "slides" / rel, image)
            n_images += 1
            for c in cells:
                label = "" if (c.label is None or c.smudge) else c.label
                cell_rows.append(
                    (
                        rel,
                        f"{c.x:.2f}",
                        f"{c.y:.2f}",
                        f"{c.r:.2f}",
                        label,
                        schema.KIND_SMUDGE if c.smudge else schema.KIND_WBC,
                        c.cluster or "",
                        c.kind,
                    )
                )
            counted = [c for c in cells if not c.smudge]  # smudge cells are left out of the counts
            n_wbc += sum(c.label is not None for c in counted)
            n_blast += sum(c.label == 1 for c in counted)
            classes += [c.kind for c in cells]
        pct = 100.0 * n_blast / n_wbc if n_wbc else 0.0
        patient_rows.append((patient_id, n_wbc, n_blast, f"{pct:.2f}", *truth_class_counts(classes)))

    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    _write_csv(truth / "cells.csv", schema.TRUTH_COLUMNS, cell_rows)
    _write_csv(truth / "patients.csv", (*schema.PATIENT_TRUTH_COLUMNS, *PATIENT_CLASS_COLUMNS), patient_rows)
    settings = {
        "seed": seed,
        "patients": patients,
        "images_per_patient": images_per_patient,
        "samples_per_patient": samples_per_patient,
        "size": [width, height],
        "rbc_diameter_um": RBC_DIAMETER_UM,
        "profile": profile,
        "red_cell_tint": red_cell_tint,
        "per_patient": styles,
    }
    (truth / "cohort.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return CohortSummary(
        out=out,
        n_patients=patients,
        n_images=n_images,
        n_wbc=sum(r[1] for r in patient_rows),
        n_blast=sum(r[2] for r in patient_rows),
    )


def truth_class_counts(classes: list[str]) -> tuple:
    """The PATIENT_CLASS_COLUMNS values of a patient's drawn cells: count and % of white cells per
    white class, count and number per 100 white cells of erythroblasts and smudge cells (2 decimals)."""
    n_white = sum(taxonomy.is_white(c) for c in classes)
    out: list = []
    for name in (*TRUTH_WHITE_CLASSES, *taxonomy.APART_CLASSES):
        k = classes.count(name)
        out += [k, f"{100.0 * k / n_white:.2f}" if n_white else "0.00"]
    return tuple(out)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write (H, W, 3) uint8 as PNG with no metadata, so equal pixels give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    # Camera noise makes pixels incompressible: higher levels save ~10% and take twice as long.
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=1)
    path.write_bytes(buf.getvalue())


def _write_csv(path: Path, header, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _tinted(style: SmearStyle, red_cell_tint: float | None) -> SmearStyle:
    """`style` with its red cells' tint replaced, when one is given."""
    return style if red_cell_tint is None else replace(style, red_cell_tint=float(red_cell_tint))
