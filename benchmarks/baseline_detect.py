"""Frozen copy of pipeline/detect.py as of commit 080e2d5 (before issue 9): the speed and quality yardstick
of benchmarks/detect_quality.py. Do not edit; it is today's detector, kept to be measured against."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image, h_maxima
from skimage.segmentation import relabel_sequential, watershed

from pipeline.scale import (
    RBC_DIAMETER_UM,
    estimate_um_per_pixel,
    measure_optical_density,
    measure_red_level,
    resize_image,
)
from pipeline.schema import KIND_SMUDGE, KIND_WBC

__all__ = ["RBC_DIAMETER_UM", "DetectConfig", "DetectedCell", "Detection", "detect_cells", "estimate_um_per_pixel"]


# Fixed details of the method (physical sizes are converted to working pixels where used).
_SPLIT_DEPTH_UM = 1.0  # blobs are cut at necks 1 um thinner than both sides: touching nuclei, not ragged edges
_NUCLEUS_HOLE_UM2 = 3.0  # holes in a nucleus smaller than this are pale chromatin or nucleoli
_MAX_UPSAMPLE = 4.0  # low-resolution pictures are enlarged at most this much (more adds no detail)
_MAX_WORKING_PX = 16e6  # ... and never beyond this many pixels (memory stays ~0.5 GB)
_FOREGROUND_OD = 0.05  # summed OD above which a pixel is not empty background (noise is ~0.01)
_BODY_HOLE_UM2 = 12.0  # holes in a cell body smaller than this (a 4 um disc) are filled
_RED_FRACTION = 0.8  # matter at least 0.8x as red (OD(B) - OD(R)) as a typical red cell is red-cell matter
# Directions on which caliper widths are measured: 12 directions find a Feret diameter within 1%.
_DIRECTIONS = np.stack([np.cos(np.arange(12) * np.pi / 12), np.sin(np.arange(12) * np.pi / 12)], axis=1)


@dataclass(frozen=True)
class DetectConfig:
    """Tunables of white-cell detection; sizes are physical (micrometres) so one config fits all
    microscopes."""

    # Red cells span this many pixels in the working copy: nucleus lobes (~3 um) stay ~10 px
    # wide, platelets (2-3 um) ~8 px, and a 1712x1368 ALL-IDB1 field shrinks below a megapixel.
    working_rbc_px: float = 26.0
    # Used when no red cells can be measured (blank field, or a picture of one cell): a typical
    # 100x oil-immersion photograph.
    default_um_per_pixel: float = 0.1
    # OD(R) - OD(B) above which a pixel may belong to a nucleus: red cells are < 0, plasma ~0,
    # the palest BCCD nuclei peak at ~0.3.
    nucleus_min_od: float = 0.12
    # A blob is kept where it exceeds this fraction of its own peak: its real outline at any
    # stain strength (cytoplasm of the same hue stays below it).
    nucleus_relative_threshold: float = 0.5
    # Chromatin of one cell (all its lobes) covers at least a disc of this diameter: a platelet
    # (2-3 um) has far less, the smallest lymphocyte nucleus (~6 um) far more.
    min_nucleus_um: float = 4.5
    # Chromatin within a circle this wide is one nucleus whatever its shape: two nuclei of the
    # smallest lymphocytes (~6 um) side by side span more.
    one_nucleus_um: float = 10.0
    # No cell's nucleus (all its lobes) spans more than this; BCCD neutrophils reach ~20 um as
    # measured there (its red cells read ~20% small, so all its sizes read ~25% large).
    max_nucleus_um: float = 24.0
    # Nucleus parts wider apart than one sure nucleus are one cell when the cell body between
    # them is at least this fraction as thick as the thinner body: one round cell has no waist,
    # two touching cells meet at a narrow one.
    neck_ratio: float = 0.7
    # Lobes of one nucleus lie at most this far apart (their threads are often invisible).
    max_lobe_gap_um: float = 3.0
    # The cytoplasm is searched this far out from the nucleus (a monocyte's rim is ~4 um).
    max_cytoplasm_um: float = 5.0
    # A nucleus with cytoplasm on less than this share of a ring 1-2 um around it has no rim,
    # and one that is also ragged (solidity below the next value) is a smudge (ruptured) cell;
    # lobed neutrophils are as ragged but sit in cytoplasm, blasts have thin rims but are round.
    smudge_max_rim: float = 0.25
    smudge_max_solidity: float = 0.8

    def __post_init__(self) -> None:
        limits = {
            "working_rbc_px": (12.0, 100.0), "default_um_per_pixel": (0.005, 10.0), "nucleus_min_od": (0.01, 2.0),
            "nucleus_relative_threshold": (0.05, 0.95), "min_nucleus_um": (1.0, 20.0), "one_nucleus_um": (2.0, 30.0),
            "max_nucleus_um": (5.0, 60.0), "neck_ratio": (0.0, 1.0), "max_lobe_gap_um": (0.0, 10.0),
            "max_cytoplasm_um": (0.0, 15.0), "smudge_max_rim": (0.0, 1.0), "smudge_max_solidity": (0.0, 1.0),
        }  # fmt: skip
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = limits[f.name]
            if isinstance(value, bool) or not isinstance(value, Real) or not low <= value <= high:
                raise ValueError(f"DetectConfig.{f.name}={value!r} is invalid: it must be a number in [{low}, {high}]")
        if not self.min_nucleus_um <= self.one_nucleus_um <= self.max_nucleus_um:
            raise ValueError(
                f"DetectConfig sizes must satisfy min_nucleus_um <= one_nucleus_um <= max_nucleus_um, got "
                f"{self.min_nucleus_um!r}, {self.one_nucleus_um!r}, {self.max_nucleus_um!r}"
            )


@dataclass(frozen=True)
class DetectedCell:
    x: float  # centre of the cell's visible part, source pixels (column)
    y: float  # (row)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 half-open, source pixels
    area: int  # segmented cell area in source pixels
    kind: str  # schema.KIND_WBC or schema.KIND_SMUDGE (ruptured/smudge cell)
    at_border: bool  # cell touches the image border


@dataclass(frozen=True)
class Detection:
    cells: tuple[DetectedCell, ...]
    um_per_pixel: float  # scale used
    scale_source: str  # "red_cells" (measured), "user" (given), "default" (could not measure)


def detect_cells(
    image: np.ndarray, config: DetectConfig = DetectConfig(), um_per_pixel: float | None = None
) -> Detection:
    """White cells of one smear image. image: (H, W, 3) uint8 RGB.

    Returns a Detection whose cells are in source-pixel coordinates, ordered top to bottom.
    `um_per_pixel` given by the caller is used as is; otherwise it is measured from red cells,
    falling back to `config.default_um_per_pixel` when none can be measured.
    """
    rgb = _check_rgb(image)
    um_per_pixel, source = _choose_scale(rgb, config, um_per_pixel)
    h, w = rgb.shape[:2]
    zoom = um_per_pixel * config.working_rbc_px / RBC_DIAMETER_UM
    zoom = min(zoom, max(1.0, min(_MAX_UPSAMPLE, math.sqrt(_MAX_WORKING_PX / (h * w)))))
    work = resize_image(rgb, zoom)
    zoom_y, zoom_x = work.shape[0] / rgb.shape[0], work.shape[1] / rgb.shape[1]
    found = find_cells(measure_optical_density(work), config, px_per_um=zoom_x / um_per_pixel)
    cells = [
        DetectedCell(
            x=float((c.x + 0.5) / zoom_x - 0.5),
            y=float((c.y + 0.5) / zoom_y - 0.5),
            bbox=(
                max(0, math.floor(c.bbox[1] / zoom_x)),
                max(0, math.floor(c.bbox[0] / zoom_y)),
                min(w, math.ceil(c.bbox[3] / zoom_x)),
                min(h, math.ceil(c.bbox[2] / zoom_y)),
            ),  # fmt: skip
            area=max(1, round(c.area / (zoom_x * zoom_y))),
            kind=c.kind,
            at_border=c.at_border,
        )
        for c in found
    ]
    cells.sort(key=lambda c: (c.y, c.x))
    return Detection(cells=tuple(cells), um_per_pixel=float(um_per_pixel), scale_source=source)


class WorkingCell(NamedTuple):
    """A cell found in the working copy: centroid (x col, y row), bbox (row0, col0, row1, col1)."""

    x: float
    y: float
    bbox: tuple[int, int, int, int]
    area: int
    kind: str
    at_border: bool


def find_cells(od: np.ndarray, config: DetectConfig, px_per_um: float) -> list[WorkingCell]:
    """White cells in an (H, W, 3) float32 optical-density image at `px_per_um` pixels per micrometre."""
    nucleus = segment_nuclei(od, config)
    # Work in windows around clusters of nucleus blobs (blobs closer than a cell apart share one):
    # nuclei cover a few percent of a smear, so everything after this touches only that much.
    reach = int(math.ceil(config.max_cytoplasm_um * px_per_um)) + 2
    near = ndi.distance_transform_edt(~nucleus) <= reach if nucleus.any() else nucleus
    clusters, n = ndi.label(near)
    min_area = math.pi / 4 * (config.min_nucleus_um * px_per_um) ** 2
    chromatin = np.bincount(clusters[nucleus], minlength=n + 1)
    red_level = measure_red_level(od)
    found = []
    for k, sl in enumerate(ndi.find_objects(clusters), start=1):
        if chromatin[k] < min_area:
            continue  # platelets and debris: too little chromatin for any cell
        own = clusters[sl] == k
        nuclei = _fill_small_holes(nucleus[sl] & own, _NUCLEUS_HOLE_UM2 * px_per_um**2)
        body = segment_bodies(od[sl], red_level) & own
        y0, x0 = sl[0].start, sl[1].start
        for cell in assemble_cells(nuclei, body, config, px_per_um):
            r0, c0, r1, c1 = (a + b for a, b in zip(cell.bbox, (y0, x0, y0, x0)))
            border = r0 == 0 or c0 == 0 or r1 == od.shape[0] or c1 == od.shape[1]  # it touches the edge
            found.append(WorkingCell(cell.x + x0, cell.y + y0, (r0, c0, r1, c1), cell.area, cell.kind, border))
    return found


def segment_nuclei(od: np.ndarray, config: DetectConfig) -> np.ndarray:
    """(H, W) bool: pixels of stained nuclei (purple: OD(R) - OD(B) high), at each blob's own contrast."""
    purple = ndi.gaussian_filter(od[..., 0] - od[..., 2], 1.0)
    candidates, n = ndi.label(purple > config.nucleus_min_od)
    if n == 0:
        return np.zeros(purple.shape, bool)
    peaks = ndi.maximum(purple, candidates, np.arange(1, n + 1))
    # Each blob is cut at a fraction of its own peak: a pale nucleus keeps its full outline and a
    # dark one does not swell into the bluish cytoplasm around it.
    cut = np.concatenate([[np.inf], np.maximum(config.nucleus_relative_threshold * peaks, config.nucleus_min_od)])
    return purple > cut[candidates]


def segment_bodies(od: np.ndarray, red_level: float) -> np.ndarray:
    """(h, w) bool: white-cell matter: not background, and less red than the red cells (OD(B) -
    OD(R) below 0.8 of their typical level), so a red cell is never part of a white one."""
    smooth = ndi.gaussian_filter(od, (1.0, 1.0, 0))
    return (smooth.sum(axis=2) > _FOREGROUND_OD) & (smooth[..., 2] - smooth[..., 0] < _RED_FRACTION * red_level)


def assemble_cells(nucleus: np.ndarray, body: np.ndarray, config: DetectConfig, px_per_um: float) -> list[WorkingCell]:
    """Cells (window coordinates, at_border unset) from a window's nucleus and body masks."""
    fragments = split_fragments(nucleus, config, px_per_um)
    # Each fragment claims the body around it: a watershed on the body's distance map, so two
    # touching cells part at their waist while the lobes of one nucleus share one round body.
    body = ndi.binary_opening(body, iterations=2) | (fragments > 0)
    # Granules and pale spots leave holes that would fake a waist inside one cell.
    body = _fill_small_holes(body, max_area=_BODY_HOLE_UM2 * px_per_um**2)
    outside, (iy, ix) = ndi.distance_transform_edt(fragments == 0, return_indices=True)
    near = outside <= config.max_cytoplasm_um * px_per_um
    depth = ndi.distance_transform_edt(body)
    regions = watershed(-depth, fragments, mask=body & near)
    zones = fragments[iy, ix]  # the nearest fragment of every pixel
    groups = group_fragments(fragments, zones, outside, regions, depth, config, px_per_um)
    nuclei, cells = groups[fragments], groups[regions]
    m = int(groups.max())
    # Cytoplasm rim: the share of a ring 0.75-1.75 um outside the nucleus that is cell body (the
    # blur halo right at the nucleus edge is skipped).
    ring = (outside > 0.75 * px_per_um) & (outside <= 1.75 * px_per_um)
    owner = groups[zones]
    ring_area = np.maximum(np.bincount(owner[ring], minlength=m + 1), 1)
    rim = np.bincount(owner[ring & body], minlength=m + 1) / ring_area
    cell_area = np.bincount(cells.ravel(), minlength=m + 1)
    nucleus_area = np.bincount(nuclei.ravel(), minlength=m + 1)
    min_area = math.pi / 4 * (config.min_nucleus_um * px_per_um) ** 2
    rows, cols = np.nonzero(cells)
    labels = cells[rows, cols]
    cy = np.bincount(labels, rows, minlength=m + 1) / np.maximum(cell_area, 1)
    cx = np.bincount(labels, cols, minlength=m + 1) / np.maximum(cell_area, 1)
    boxes = ndi.find_objects(cells, max_label=m)
    found = []
    for i in range(1, m + 1):
        if nucleus_area[i] < min_area or boxes[i - 1] is None:
            continue  # platelets and debris: too little chromatin for a cell
        r, c = boxes[i - 1]
        kind = KIND_WBC
        if rim[i] < config.smudge_max_rim and _measure_solidity(nuclei[r, c] == i) < config.smudge_max_solidity:
            kind = KIND_SMUDGE  # ragged chromatin without a cytoplasm rim: a ruptured cell
        box = (r.start, c.start, r.stop, c.stop)
        found.append(WorkingCell(float(cx[i]), float(cy[i]), box, int(cell_area[i]), kind, False))
    return found


def split_fragments(nucleus: np.ndarray, config: DetectConfig, px_per_um: float) -> np.ndarray:
    """(H, W) int32 labels of nucleus fragments; a blob bigger than one sure nucleus is cut at its necks."""
    labels, n = ndi.label(nucleus)
    if n == 0:
        return labels.astype(np.int32)
    lows, highs = _project(labels, n)
    extents = np.max(highs - lows, axis=1) + 1.0  # Feret diameters (px)
    h = _SPLIT_DEPTH_UM * px_per_um
    next_label = n + 1
    boxes = ndi.find_objects(labels)
    for index in np.flatnonzero(extents[1:] > config.one_nucleus_um * px_per_um) + 1:
        sl = boxes[index - 1]
        blob = labels[sl] == index
        distance = ndi.distance_transform_edt(np.pad(blob, 1))[1:-1, 1:-1]
        markers, k = ndi.label(h_maxima(distance, h))
        if k < 2:
            continue
        pieces = watershed(-distance, markers, mask=blob)
        sub = labels[sl]
        for piece in range(2, k + 1):
            sub[pieces == piece] = next_label
            next_label += 1
    return labels.astype(np.int32)


def group_fragments(
    fragments: np.ndarray, zones: np.ndarray, outside: np.ndarray, regions: np.ndarray, depth: np.ndarray,
    config: DetectConfig, px_per_um: float,
) -> np.ndarray:  # fmt: skip
    """(n + 1,) int: the cell (1..m) of each fragment label (index 0 -> 0).

    Inputs, (h, w) each: fragment labels; the nearest fragment of each pixel and the distance to
    it; the body region each fragment claimed; the body's distance map (depth).

    Fragments merge, strongest evidence first, while the merged nucleus stays within
    `max_nucleus_um`: when they lie within one sure nucleus (`one_nucleus_um`) and no further
    apart than `max_lobe_gap_um`; or when the cell body joining their regions is at least
    `neck_ratio` as thick as the thinner of the two bodies (one round cell, not two touching).
    """
    n = int(fragments.max())
    parent = np.arange(n + 1)
    if n >= 2:
        lows, highs = _project(fragments, n)
        peaks = np.zeros(n + 1)
        np.maximum.at(peaks, regions.ravel(), depth.ravel())
        candidates = []  # (priority, a, b, needs_neck): lower priority merges first
        # Gap between two fragments: the two distances summed across the seam of their zones.
        for a, b, gap in _find_seams(zones, outside, np.add):
            if gap + 1.0 <= config.max_lobe_gap_um * px_per_um:
                candidates.append((gap - 1e6, a, b, False))  # sure merges first, nearest first
        # Neck between two regions: the deepest point of the body on their common border.
        for a, b, neck in _find_seams(regions, -depth, np.maximum):
            candidates.append((neck, a, b, True))  # neck < 0: thicker necks first
        one, most = config.one_nucleus_um * px_per_um, config.max_nucleus_um * px_per_um
        for priority, a, b, needs_neck in sorted(candidates):
            ra, rb = _find_root(parent, a), _find_root(parent, b)
            if ra == rb:
                continue
            low, high = np.minimum(lows[ra], lows[rb]), np.maximum(highs[ra], highs[rb])
            extent = float(np.max(high - low)) + 1.0
            if needs_neck:
                if extent > most or -priority < config.neck_ratio * min(peaks[ra], peaks[rb]):
                    continue
            elif extent > one:
                continue
            parent[rb] = ra
            lows[ra], highs[ra], peaks[ra] = low, high, max(peaks[ra], peaks[rb])
    roots = np.array([_find_root(parent, i) for i in range(n + 1)])
    return relabel_sequential(roots)[0]


def _find_seams(labels: np.ndarray, values: np.ndarray, combine) -> list[tuple[int, int, float]]:
    """(a, b, best) per pair of 4-adjacent labels a < b (both > 0): the least combine(value, value')
    over the pixel pairs where they meet."""
    keys, costs = [], []
    base = int(labels.max()) + 1
    for la, lb, va, vb in (
        (labels[:, :-1], labels[:, 1:], values[:, :-1], values[:, 1:]),
        (labels[:-1, :], labels[1:, :], values[:-1, :], values[1:, :]),
    ):
        meet = (la != lb) & (la > 0) & (lb > 0)
        a, b = la[meet].astype(np.int64), lb[meet].astype(np.int64)
        keys.append(np.minimum(a, b) * base + np.maximum(a, b))
        costs.append(combine(va[meet], vb[meet]))
    keys, costs = np.concatenate(keys), np.concatenate(costs)
    if keys.size == 0:
        return []
    order = np.lexsort((costs, keys))
    first = order[np.r_[True, keys[order][1:] != keys[order][:-1]]]
    return [(int(k // base), int(k % base), float(c)) for k, c in zip(keys[first], costs[first])]


def _find_root(parent: np.ndarray, i: int) -> int:
    """Union-find root of i, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    """The image as (H, W, 3) uint8 RGB (greyscale is repeated, alpha dropped); ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}: convert it first (see pipeline.io)")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _choose_scale(image: np.ndarray, config: DetectConfig, um_per_pixel: float | None) -> tuple[float, str]:
    """(um_per_pixel, scale_source): the caller's, else measured from red cells, else the default."""
    if um_per_pixel is not None:
        if isinstance(um_per_pixel, bool) or not isinstance(um_per_pixel, Real) or not 0.005 <= um_per_pixel <= 10:
            raise ValueError(f"um_per_pixel={um_per_pixel!r} must be a number in [0.005, 10] (or None to measure it)")
        return float(um_per_pixel), "user"
    measured = estimate_um_per_pixel(image)
    if measured is None:
        return config.default_um_per_pixel, "default"
    return measured, "red_cells"


def _project(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1, D) float64 min and max of each label's pixel coordinates projected on D directions."""
    rows, cols = np.nonzero(labels)
    lows = np.full((n + 1, len(_DIRECTIONS)), np.inf)
    highs = np.full((n + 1, len(_DIRECTIONS)), -np.inf)
    if rows.size:
        proj = np.outer(cols, _DIRECTIONS[:, 0]) + np.outer(rows, _DIRECTIONS[:, 1])
        lab = labels[rows, cols]
        np.minimum.at(lows, lab, proj)
        np.maximum.at(highs, lab, proj)
    return lows, highs


def _measure_solidity(blob: np.ndarray) -> float:
    """Area of a bool mask over the area of its convex hull (1 = convex)."""
    if blob.sum() < 3:
        return 1.0
    return float(blob.sum()) / max(float(convex_hull_image(blob).sum()), 1.0)


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """The mask with its holes smaller than max_area pixels filled."""
    holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    if n == 0:
        return mask
    small = np.bincount(holes.ravel()) < max_area
    small[0] = False
    return mask | small[holes]
