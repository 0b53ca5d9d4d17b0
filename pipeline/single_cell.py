"""Single-cell images (ALL-IDB2, class-folder exports) cut at the slides' micrometre window.

A single-cell image is one white cell with parts of the red cells around it, cut from a field by
someone else, at a size of their choosing (ALL-IDB2: 257 px at ~0.1 um/px; copies in circulation
are shrunk to ~103 px). A model trained on such images counts blasts on slides only if it sees the
cells at the slides' scale, so the image is not resized whole: it gets the same window of
`crop_um` micrometres around the cell as a slide crop.

- Scale: `--um-per-pixel` when given (`scale_source = "user"`), else measured from the red cells
  the image shows (`"red_cells"`, `pipeline.scale.estimate_single_cell_um_per_pixel`). When
  neither is possible (no red cells, or too few to measure) the image is quarantined with that
  reason: a guessed scale would make every size in the crop wrong without anyone seeing it.
- Centre: the white cell nearest the image centre, as slide detection finds it (at the measured
  scale); where detection finds nothing, the centroid of the stained matter nearest the centre;
  else the image centre.
- Padding: where the window is larger than the image it is filled with the background colour,
  and the padded share of the window is recorded (`pad_fraction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline.config import CropSettings
from pipeline.crops import cut_crop, window_pixels
from pipeline.detect import detect_cells
from pipeline.io import ImageReadError
from pipeline.scale import estimate_single_cell_um_per_pixel, find_background_colour, find_white_cells, resize_image

SCALE_USER = "user"
SCALE_RED_CELLS = "red_cells"
NO_SCALE_REASON = (
    "single-cell image: no red cells to measure its scale from (or too few); "
    "give ingest --um-per-pixel (the micrometres per pixel of these images)"
)
_FIND_SIDE_PX = 160  # the stained-matter fallback looks at a copy this size


class ScaleNotMeasured(ImageReadError):
    """A single-cell image whose scale cannot be measured and was not given: quarantined."""


@dataclass(frozen=True)
class SingleCellCut:
    """The crop of one single-cell image and how it was cut."""

    crop: np.ndarray  # (crop_size, crop_size, 3) uint8
    x: float  # centre of the window, source pixels
    y: float
    bbox: tuple[int, int, int, int]  # the cell's box (x0, y0, x1, y1), the whole image when unknown
    area: int | None  # the cell's segmented area, source pixels, when detection found it
    um_per_pixel: float
    scale_source: str
    pad_fraction: float  # share of the window outside the image (filled with background)


def choose_single_cell_scale(pixels: np.ndarray, settings: CropSettings) -> tuple[float, str]:
    """(um_per_pixel, scale_source) of a single-cell image; raises ScaleNotMeasured."""
    if settings.um_per_pixel is not None:
        return float(settings.um_per_pixel), SCALE_USER
    measured = estimate_single_cell_um_per_pixel(pixels)
    if measured is None:
        raise ScaleNotMeasured(NO_SCALE_REASON)
    return measured, SCALE_RED_CELLS


def find_centre_cell(
    pixels: np.ndarray, settings: CropSettings, um_per_pixel: float
) -> tuple[float, float, tuple[int, int, int, int], int | None]:
    """(x, y, bbox, area) of the white cell nearest the image centre (see the module doc)."""
    h, w = pixels.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cells = detect_cells(pixels, settings.detect, um_per_pixel=um_per_pixel).cells
    if cells:
        cell = min(cells, key=lambda c: math.hypot(c.x - cx, c.y - cy))
        return cell.x, cell.y, cell.bbox, cell.area
    zoom = min(1.0, _FIND_SIDE_PX / max(h, w))
    labels, n = ndi.label(find_white_cells(resize_image(pixels, zoom)))
    if n:
        centres = ndi.center_of_mass(np.ones_like(labels), labels, range(1, n + 1))
        sy, sx = labels.shape[0] / h, labels.shape[1] / w
        points = [((x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5) for y, x in centres]
        x, y = min(points, key=lambda p: math.hypot(p[0] - cx, p[1] - cy))
        return float(x), float(y), (0, 0, w, h), None
    return cx, cy, (0, 0, w, h), None


def cut_single_cell(pixels: np.ndarray, settings: CropSettings) -> SingleCellCut:
    """The slide-window crop of a single-cell image (H, W, 3) uint8; raises ScaleNotMeasured."""
    h, w = pixels.shape[:2]
    upp, source = choose_single_cell_scale(pixels, settings)
    x, y, bbox, area = find_centre_cell(pixels, settings, upp)
    window = window_pixels(settings.crop_um, upp)
    crop = cut_crop(pixels, x, y, window, settings.crop_size, find_background_colour(pixels))
    return SingleCellCut(crop, x, y, bbox, area, upp, source, measure_pad_fraction(w, h, x, y, window))


def measure_pad_fraction(width: int, height: int, x: float, y: float, window_px: int) -> float:
    """Share of a `window_px` square centred on (x, y) (placed as cut_crop places it) outside the image."""
    x0, y0 = int(round(x - window_px / 2.0)), int(round(y - window_px / 2.0))
    inside_w = max(0, min(x0 + window_px, width) - max(x0, 0))
    inside_h = max(0, min(y0 + window_px, height) - max(y0, 0))
    return 1.0 - inside_w * inside_h / float(window_px * window_px)
