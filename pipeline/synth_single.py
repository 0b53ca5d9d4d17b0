"""Synthetic single-cell images cut from a synthetic cohort, laid out like ALL-IDB2.

ALL-IDB2's 260 images are ~257x257 px squares cut around one white cell from fields at the
ALL-IDB1 magnification (about 25.7 um across, with parts of the red cells around the cell); the
copies in circulation are also downscaled to ~103 px and re-encoded. This module makes the same
from a cohort written by `pipeline.synth_cohort.write_cohort`, where the true scale of every image is
known, so single-cell ingest and the train-on-single-cells, count-on-smears workflow can be
tested against truth:

    OUT/ImNNN_L.png (or .jpg for downscaled copies)   L = 1 lymphoblast, 0 other white cell
    OUT/truth.csv   name,image,source_x,source_y,x,y,r,label,um_per_pixel,width,height,downscaled
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.synth import RBC_DIAMETER_UM

SIDE_UM = 25.7  # ALL-IDB2: 257 px at ALL-IDB1's ~0.1 um/px
DOWNSCALED_SIDE_PX = 103  # the circulating copies
JPEG_QUALITY = 85
TRUTH_COLUMNS = (
    "name",
    "image",
    "source_x",
    "source_y",
    "x",
    "y",
    "r",
    "label",
    "um_per_pixel",
    "width",
    "height",
    "downscaled",
)


@dataclass(frozen=True)
class SingleCellImage:
    """One written single-cell image: its file, the cell it shows and its scale."""

    name: str
    image: str  # the smear it was cut from (relative to the cohort's slides/)
    source_x: float  # the cell's centre in that smear, px
    source_y: float
    x: float  # the cell's centre in the written image, px
    y: float
    r: float  # the cell's radius in the written image, px
    label: int
    um_per_pixel: float  # true scale of the written image
    width: int
    height: int
    downscaled: bool


def write_single_cells(
    cohort: Path, out: Path, side_um: float = SIDE_UM, downscale_every: int = 3, limit: int | None = None
) -> list[SingleCellImage]:
    """Cut every white cell of `cohort` (fully inside its smear's window or not: windows are clipped
    at the smear's border, as some ALL-IDB2 images are) into `out`; every `downscale_every`-th image
    (0 = none) is shrunk to ~103 px and re-encoded as JPEG. Returns what was written."""
    cohort, out = Path(cohort), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: write single-cell images to a new folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads((cohort / "truth" / "cohort.json").read_text())
    with open(cohort / "truth" / "cells.csv", newline="") as f:
        # white cells only: erythroblasts and smudge cells have no 0/1 label (ALL-IDB2 holds neither)
        rows = [r for r in csv.DictReader(f) if r["label"] in ("0", "1") and r.get("kind", "wbc") != "smudge"]
    if limit is not None:
        rows = rows[:limit]
    if len(rows) > 999:
        raise ValueError(f"{len(rows)} cells: ALL-IDB names (ImNNN) hold at most 999; pass limit")
    written, images = [], {}
    for index, row in enumerate(rows, start=1):
        rel = row["image"]
        if rel not in images:
            images[rel] = np.asarray(Image.open(cohort / "slides" / rel).convert("RGB"))
        smear = images[rel]
        patient = rel.split("/")[0]
        upp = RBC_DIAMETER_UM / settings["per_patient"][patient]["style"]["rbc_diameter_px"]
        x, y, r, label = float(row["x"]), float(row["y"]), float(row["r"]), int(row["label"])
        half = side_um / upp / 2
        h, w = smear.shape[:2]
        x0, y0 = max(0, int(round(x - half))), max(0, int(round(y - half)))
        x1, y1 = min(w, int(round(x + half))), min(h, int(round(y + half)))
        crop = np.ascontiguousarray(smear[y0:y1, x0:x1])
        cx, cy = x - x0, y - y0
        downscaled = downscale_every > 0 and index % downscale_every == 0
        name = f"Im{index:03d}_{label}.{'jpg' if downscaled else 'png'}"
        picture = Image.fromarray(crop)
        if downscaled:
            zoom = DOWNSCALED_SIDE_PX / (2 * half)
            size = (max(1, round(crop.shape[1] * zoom)), max(1, round(crop.shape[0] * zoom)))
            picture = picture.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            zoom_x, zoom_y = size[0] / crop.shape[1], size[1] / crop.shape[0]
            cx, cy, r, upp = (cx + 0.5) * zoom_x - 0.5, (cy + 0.5) * zoom_y - 0.5, r * zoom_x, upp / zoom_x
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            (out / name).write_bytes(buffer.getvalue())
        else:
            picture.save(out / name)
        written.append(
            SingleCellImage(name, rel, x, y, cx, cy, r, label, upp, picture.width, picture.height, downscaled)
        )
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRUTH_COLUMNS)
        for c in written:
            writer.writerow(
                [
                    c.name,
                    c.image,
                    f"{c.source_x:.2f}",
                    f"{c.source_y:.2f}",
                    f"{c.x:.2f}",
                    f"{c.y:.2f}",
                    f"{c.r:.2f}",
                    c.label,
                    f"{c.um_per_pixel:.5f}",
                    c.width,
                    c.height,
                    int(c.downscaled),
                ]
            )
    return written
