"""Single-cell images (ALL-IDB2, class-folder exports) cut at the slides' micrometre window.

A single-cell image is one white cell with parts of the red cells around it, cut from a field by
someone else, at a size of their choosing (ALL-IDB2: 257 px at ~0.1 um/px; copies in circulation
are shrunk to ~103 px). A model trained on such images counts blasts on slides only if it sees the
cells at the slides' scale, so the image is not resized whole: it gets the same window of
`crop_um` micrometres around the cell as a slide crop.

- Scale: `--um-per-pixel` when given (`scale_source = "user"`). Else, for a class-folder export
  (CellaVision-style: an analyser at one fixed magnification) or with `--single-cell-scale pooled`,
  one scale per image size, pooled from the red cells of a sample of the source's images
  (`"pooled_red_cells"`, `pool_single_cell_scale`): one image shows only a few red cell fragments,
  so a per-image measure is noisy (PBC: a few images in twenty off by 40% or more) where the
  median of a few dozen is not. A size whose sampled measures disagree (under half within 15% of
  their median: mixed magnifications) is not pooled; a size with too few images in the sample
  takes the pool of a size within 5% of it (the same export, cropped a little differently). Otherwise (ALL-IDB2's cells were cut from
  fields photographed at 300-500x, all at 257x257 px; `--single-cell-scale each`) each image is
  measured alone (`"red_cells"`, `pipeline.scale.estimate_single_cell_um_per_pixel`). An image
  whose own scale is needed but cannot be measured (no red cells, or too few) is quarantined with
  that reason: a guessed scale would make every size in the crop wrong without anyone seeing it.
- Centre: the white cell nearest the image centre, as slide detection finds it (at the measured
  scale); where detection finds nothing, the centroid of the stained matter nearest the centre;
  else the image centre.
- Padding: where the window is larger than the image it is filled with the background colour,
  and the padded share of the window is recorded (`pad_fraction`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline.config import SINGLE_CELL_SCALES, CropSettings
from pipeline.crops import cut_crop, window_pixels
from pipeline.detect import detect_cells
from pipeline.io import ImageReadError
from pipeline.scale import estimate_single_cell_um_per_pixel, find_background_colour, find_white_cells, resize_image

SCALE_USER = "user"
SCALE_RED_CELLS = "red_cells"
SCALE_POOLED = "pooled_red_cells"
AUTO, POOLED, EACH = SINGLE_CELL_SCALES  # --single-cell-scale
POOLED_FORMATS = ("classfolders",)  # what `auto` pools: analyser exports, one magnification per image size
POOL_SAMPLE = 48  # images measured for a source's pooled scales
POOL_AGREE = 0.15  # a measure "agrees" within this relative distance of the median
POOL_MIN_AGREEING = 0.5  # share of the measures that must agree for the pool to be used
POOL_MIN_MEASURED = 3
POOL_NEAR_SIZE = 0.05  # a size without a pool takes the pool of a size this close (relative, both sides)
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


def size_key(width: int, height: int) -> str:
    """The key of an image size in a pool ("360x363"): one export setting, one scale."""
    return f"{int(width)}x{int(height)}"


@dataclass(frozen=True)
class SizeScale:
    """The pooled scale of the sampled images of one pixel size."""

    um_per_pixel: float | None  # the median of the measures; None when not used (see reason)
    sampled: int  # images of this size read
    measured: int  # of which the scale could be measured
    agreeing: int  # measures within POOL_AGREE of the median
    reason: str | None = None


@dataclass(frozen=True)
class PooledScale:
    """The scales of a source's single-cell images, pooled per image size over a sample of them.

    Images of one size come from one export at one magnification (PBC: 360x363; ALL-IDB2: 257x257,
    or ~103 px in the shrunk copies): each size gets the median of its measures. An image whose size
    has no usable pool (too few sampled, or measures that disagree) is measured alone."""

    sizes: dict[str, SizeScale]
    sampled: int  # images read

    def scales(self) -> dict[str, float]:
        """{size key: um per pixel} of the sizes whose pool is used."""
        return {k: v.um_per_pixel for k, v in self.sizes.items() if v.um_per_pixel is not None}

    def to_dict(self) -> dict:
        return {"sampled": self.sampled,
                "sizes": {k: {"um_per_pixel": None if v.um_per_pixel is None else round(v.um_per_pixel, 5),
                              "sampled": v.sampled, "measured": v.measured, "agreeing": v.agreeing,
                              "reason": v.reason} for k, v in sorted(self.sizes.items())}}  # fmt: skip


def pool_size(measures: Sequence[float | None]) -> SizeScale:
    """The pooled scale of one size's measures (None: not measurable); see the module doc."""
    values = np.asarray([m for m in measures if m is not None], dtype=float)
    n = len(measures)
    if values.size < POOL_MIN_MEASURED:
        return SizeScale(None, n, int(values.size), 0,
                         f"{values.size} of {n} sampled images measured: too few to pool")  # fmt: skip
    median = float(np.median(values))
    agreeing = int(np.sum(np.abs(values / median - 1.0) <= POOL_AGREE))
    if agreeing < POOL_MIN_AGREEING * values.size:
        return SizeScale(None, n, int(values.size), agreeing,
                         f"the sampled images disagree on their scale ({agreeing} of {values.size} within "
                         f"{POOL_AGREE:.0%} of the median): mixed magnifications?")  # fmt: skip
    return SizeScale(median, n, int(values.size), agreeing)


def pool_scales(measures: Sequence[tuple[str, float | None]]) -> PooledScale:
    """Pool (size key, measure or None) pairs per size."""
    by_size: dict[str, list[float | None]] = {}
    for key, value in measures:
        by_size.setdefault(key, []).append(value)
    return PooledScale({k: pool_size(v) for k, v in by_size.items()}, len(measures))


def scale_sample(images: Sequence[str], n: int = POOL_SAMPLE) -> list[int]:
    """Indices of up to `n` of `images` (relative paths), chosen by a hash of the path: the same
    files give the same sample on every run and machine, and every class folder is drawn from."""
    order = sorted(range(len(images)), key=lambda i: hashlib.sha1(images[i].encode()).hexdigest())
    return sorted(order[:n])


def pool_single_cell_scale(images: Sequence[str], read_pixels: Callable[[int], np.ndarray | None],
                           n: int = POOL_SAMPLE) -> PooledScale:  # fmt: skip
    """Measure the red cells of a sample of `images` (`read_pixels(i)` -> (H, W, 3) uint8, or None
    when the image cannot be read: left out) and pool the measures per image size."""
    measures = []
    for i in scale_sample(images, n):
        pixels = read_pixels(i)
        if pixels is not None:
            h, w = pixels.shape[:2]
            measures.append((size_key(w, h), estimate_single_cell_um_per_pixel(pixels)))
    return pool_scales(measures)


def pooled_scale_for(pooled: Mapping[str, float] | None, width: int, height: int) -> float | None:
    """The pooled scale of an image of this size: its own size's, else that of the nearest pooled
    size within POOL_NEAR_SIZE in both sides (one export crops a few cells a little differently:
    PBC has 360x363, 366x369 and 360x360), else None (the image is measured alone)."""
    near = []
    for key, upp in (pooled or {}).items():
        w, h = (int(v) for v in key.split("x"))
        off = max(abs(width / w - 1.0), abs(height / h - 1.0))  # 0 for the image's own size
        if off <= POOL_NEAR_SIZE:
            near.append((off, key, upp))
    return float(min(near)[2]) if near else None


def choose_single_cell_scale(
    pixels: np.ndarray, settings: CropSettings, pooled: Mapping[str, float] | None = None
) -> tuple[float, str]:
    """(um_per_pixel, scale_source) of a single-cell image, `pooled` the source's scales per image
    size (PooledScale.scales()); raises ScaleNotMeasured."""
    if settings.um_per_pixel is not None:
        return float(settings.um_per_pixel), SCALE_USER
    upp = pooled_scale_for(pooled, pixels.shape[1], pixels.shape[0])
    if upp is not None:
        return upp, SCALE_POOLED
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


def cut_single_cell(
    pixels: np.ndarray, settings: CropSettings, pooled: Mapping[str, float] | None = None
) -> SingleCellCut:
    """The slide-window crop of a single-cell image (H, W, 3) uint8, at the source's pooled scale
    when one is given; raises ScaleNotMeasured."""
    h, w = pixels.shape[:2]
    upp, source = choose_single_cell_scale(pixels, settings, pooled)
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
