"""White-cell detection on one smear image: purple nuclei, grouped into cells, mapped to source pixels.

How it works, and why:

1. Scale. Red cells (7.5 um) are the ruler (`pipeline.scale`), unless the caller gives the scale.
   The image is resampled to a fixed working scale (red cells `working_rbc_px` across), so every
   size below is physical, and a 2592x1944 picture costs no more than the cells it holds.
2. Nuclei. Giemsa stains chromatin purple: it absorbs red light more than blue, while red cells
   absorb blue more than red and background absorbs neither, so OD(R) - OD(B) is a nucleus signal
   independent of lamp and white balance. Each blob is cut at half its own peak: pale and dark
   stainings both give the real outline. The rest runs in windows around nucleus clusters only.
3. Cells. A neutrophil's nucleus is 2-5 lobes joined by threads too thin to see; two touching
   cells are two nuclei side by side. Blobs wider than one nucleus are cut at their necks (and
   at the arcs of their outline, one per round nucleus pressed among others); then
   each fragment claims the cell body (non-red, non-background matter) around it by a watershed
   on the body's distance map, and fragments merge when they lie within one nucleus's width, or
   when the body joining them has no waist: one round cell holds lobes, two touching cells meet
   at a narrow waist (pipeline.fragment_groups). Two round nuclei pressed together are two cells
   (packed blasts), unless they fill less than half of the body they claim and its cytoplasm is
   pink: the two lobes of an eosinophil (a granulocyte's cytoplasm absorbs green, a blast's or
   monocyte's red). Groups with less chromatin than a small lymphocyte (platelets) are dropped.
4. Outline. A cell is its nucleus plus the body its fragments claimed (within
   `max_cytoplasm_um`); its area, centre, box and border contact come from that. The red cells'
   colour is measured in each image (scale.measure_red_cell_colour). Where they read lavender (a
   May-Gruenwald Giemsa stain photographed warm, as in PBC: OD(R) > OD(B), so "less red than red
   cells" holds for them too) the outline is trimmed to matter of another hue than theirs joined
   to the nucleus. Where red cells reach a positive OD(R) - OD(B) (lavender ones, the thickest in
   some pictures), the nucleus threshold rises by what two overlapping ones read, and the
   pale-net pass reads the chromatin unmixed from them. A ragged nucleus with no cytoplasm rim is
   a smudge (ruptured) cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from pipeline.fragment_groups import group_fragments
from pipeline.nucleus_split import split_nuclei
from pipeline.scale import (
    RBC_DIAMETER_UM,
    RedCellColour,
    estimate_um_per_pixel,
    measure_optical_density,
    measure_red_cell_colour,
    measure_red_level,
    resize_image,
)
from pipeline.schema import KIND_SMUDGE, KIND_WBC
from pipeline.shapes import fill_small_holes, find_near, measure_solidity
from pipeline.smudge import SmudgeFeatures, is_smudge, measure_smudge_features

__all__ = ["RBC_DIAMETER_UM", "DetectConfig", "DetectedCell", "Detection", "detect_cells", "estimate_um_per_pixel"]


# Fixed details of the method (physical sizes are converted to working pixels where used).
_PALE_MAX_SOLIDITY = 0.9  # a burst cell's faint net has a ragged outline (a disc or an ellipse gives ~1) ...
_PALE_MIN_VARIATION = 0.2  # ... or, compact, a lacy or streaky inside: OD varying >= 20% (a blurred cell is smooth)
_NUCLEUS_HOLE_UM2 = 3.0  # holes in a nucleus smaller than this are pale chromatin or nucleoli
_MAX_UPSAMPLE = 4.0  # low-resolution pictures are enlarged at most this much (more adds no detail)
_MAX_WORKING_PX = 16e6  # ... and never beyond this many pixels (memory stays ~0.5 GB)
_FOREGROUND_OD = 0.05  # summed OD above which a pixel is not empty background (noise is ~0.01)
_BODY_HOLE_UM2 = 12.0  # holes in a cell body smaller than this (a 4 um disc) are filled
_HUE_SPREADS = 3.0  # matter whose hue lies this many red-cell spreads (MAD) below theirs is not red-cell matter ...
_MIN_HUE_MARGIN = 0.08  # ... and at least this far below (noise, and the background light misread by a few %)
_RED_FRACTION = 0.8  # matter at least 0.8x as red (OD(B) - OD(R)) as a typical red cell is red-cell matter


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
    # A chromatin blob cut at its necks stays whole across a neck at least this fraction as thick as
    # the thinner side: an oval or dented nucleus has no waist, two pressed nuclei meet at a notch.
    split_neck_ratio: float = 0.95
    # Nucleus parts wider apart than one sure nucleus are one cell when the cell body between
    # them is at least this fraction as thick as the thinner body: one round cell has no waist,
    # two touching cells meet at a narrow one.
    neck_ratio: float = 0.7
    # Lobes of one nucleus lie at most this far apart (their threads are often invisible).
    max_lobe_gap_um: float = 3.0
    # A nucleus piece holding a disc this wide is a whole round nucleus, not a lobe (neutrophil
    # lobes are 2-4 um thick, the smallest lymphocyte nucleus ~6-7 um across): two such pieces
    # pressed together are two cells (packed blasts), whatever the body between them.
    round_nucleus_um: float = 6.0
    # The cytoplasm is searched this far out from the nucleus (a monocyte's rim is ~4 um).
    max_cytoplasm_um: float = 5.0
    # Chromatin whose extent fills less than this share of its convex hull (ragged, spread) ...
    smudge_max_solidity: float = 0.7
    # ... and whose chromatin threads are thinner than this on average (2 x area / perimeter):
    # neutrophil lobes and intact nuclei are thicker, the threads of a basket cell's net ~1 um.
    smudge_max_thread_um: float = 2.2
    # Chromatin paler than this fraction of the image's median nucleus, and not a compact round
    # nucleus, is spread (smudged) chromatin.
    smudge_max_level: float = 0.55
    # A smudge cell too pale for the nucleus mask: a faint net (OD(R) - OD(B) above this, smoothed
    # over 0.5 um; plasma is ~0, red cells below) away from every nucleus, at least this wide.
    smudge_min_od: float = 0.05
    smudge_min_um: float = 8.0

    def __post_init__(self) -> None:
        limits = {
            "working_rbc_px": (12.0, 100.0), "default_um_per_pixel": (0.005, 10.0), "nucleus_min_od": (0.01, 2.0),
            "nucleus_relative_threshold": (0.05, 0.95), "min_nucleus_um": (1.0, 20.0), "one_nucleus_um": (2.0, 30.0),
            "max_nucleus_um": (5.0, 60.0), "neck_ratio": (0.0, 1.0), "split_neck_ratio": (0.0, 1.0), "max_lobe_gap_um": (0.0, 10.0),
            "round_nucleus_um": (1.0, 30.0),
            "max_cytoplasm_um": (0.0, 15.0), "smudge_max_solidity": (0.0, 1.0), "smudge_max_thread_um": (0.0, 10.0),
            "smudge_max_level": (0.0, 1.0), "smudge_min_od": (0.0, 2.0), "smudge_min_um": (1.0, 60.0),
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
    n_split: int = 1  # cells its chromatin blob was split into (1 = its own blob; 2+ = pressed nuclei parted)


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
            n_split=c.n_split,
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
    n_split: int = 1  # cells its chromatin blob was split into (1 = not split)
    features: SmudgeFeatures | None = None  # what the smudge rule reads (smudge.measure_smudge_features)


def find_cells(od: np.ndarray, config: DetectConfig, px_per_um: float) -> list[WorkingCell]:
    """White cells in an (H, W, 3) float32 optical-density image at `px_per_um` pixels per micrometre."""
    colour = measure_red_cell_colour(od)
    purple = ndi.gaussian_filter(od[..., 0] - od[..., 2], 1.0)
    # Lavender red cells read a little purple, two overlapping ones twice as much: that is no nucleus.
    red_purple = 2.0 * max(0.0, colour.purple) if colour is not None else 0.0
    nucleus = segment_nuclei(od, config, purple, red_purple)
    # Work in windows around clusters of nucleus blobs (blobs closer than a cell apart share one):
    # nuclei cover a few percent of a smear, so everything after this touches only that much.
    reach = int(math.ceil(config.max_cytoplasm_um * px_per_um)) + 2
    near = find_near(nucleus, reach)
    clusters, n = ndi.label(near)
    min_area = math.pi / 4 * (config.min_nucleus_um * px_per_um) ** 2
    chromatin = np.bincount(clusters[nucleus], minlength=n + 1)
    red_level = measure_red_level(od)
    found = []
    cells_near = np.zeros(n + 1, bool)  # the clusters holding cells (their nuclei and cytoplasm)
    for k, sl in enumerate(ndi.find_objects(clusters), start=1):
        if chromatin[k] < min_area:
            continue  # platelets and debris: too little chromatin for any cell
        cells_near[k] = True
        own = clusters[sl] == k
        nuclei = fill_small_holes(nucleus[sl] & own, _NUCLEUS_HOLE_UM2 * px_per_um**2)
        smooth = _smooth_od(od[sl])
        body = segment_bodies(od[sl], red_level, smooth) & own
        off_red = segment_off_red_hue(od[sl], colour, smooth)
        y0, x0 = sl[0].start, sl[1].start
        for cell in assemble_cells(nuclei, body, config, px_per_um, purple[sl], od[sl], off_red):
            r0, c0, r1, c1 = (a + b for a, b in zip(cell.bbox, (y0, x0, y0, x0)))
            border = r0 == 0 or c0 == 0 or r1 == od.shape[0] or c1 == od.shape[1]  # it touches the edge
            found.append(cell._replace(x=cell.x + x0, y=cell.y + y0, bbox=(r0, c0, r1, c1), at_border=border))
    if found:
        # The image's intact nuclei: the compact ones (all cells where none is compact).
        compact = [c.features.level for c in found if c.features.solidity >= config.smudge_max_solidity]
        image_level = float(np.median(compact or [c.features.level for c in found]))
        found = [c._replace(kind=KIND_SMUDGE) if is_smudge(c.features, image_level, config) else c for c in found]
    cells = cells_near[clusters]
    pale_min_od = config.smudge_min_od
    if red_purple:
        # Red cells that read purple (lavender ones, overlapping ones): the pale pass reads the
        # chromatin alone (measure_chromatin), above what 90% of the picture away from cells reads
        # in it (red cells and plasma read ~0; a few hundredths where the background light is misread).
        purple = ndi.gaussian_filter(measure_chromatin(od, colour.od, od[nucleus]), 1.0)
        rest = purple[~cells]
        if rest.size:
            pale_min_od += max(0.0, float(np.percentile(rest[:: max(1, rest.size // 100_000)], 90)))
    return join_smudge_pieces(found + find_pale_smudges(purple, cells, config, px_per_um, pale_min_od))


def join_smudge_pieces(cells: list[WorkingCell]) -> list[WorkingCell]:
    """The cells with every group of smudge cells whose boxes overlap made one: a burst cell's net
    spreads wider than any nucleus and falls apart into pieces (dense strands found as chromatin,
    the faint rest by the pale pass), all of one ruptured cell."""
    smudges = [c for c in cells if c.kind == KIND_SMUDGE]
    if len(smudges) < 2:
        return cells
    boxes = np.array([c.bbox for c in smudges])
    overlap = (
        (boxes[:, None, 0] < boxes[None, :, 2]) & (boxes[None, :, 0] < boxes[:, None, 2])
        & (boxes[:, None, 1] < boxes[None, :, 3]) & (boxes[None, :, 1] < boxes[:, None, 3])
    )  # fmt: skip
    _, group = connected_components(overlap, directed=False)
    joined = []
    for g in np.unique(group):
        part = [c for c, k in zip(smudges, group) if k == g]
        area = sum(c.area for c in part)
        box = (min(c.bbox[0] for c in part), min(c.bbox[1] for c in part),
               max(c.bbox[2] for c in part), max(c.bbox[3] for c in part))  # fmt: skip
        x, y = (sum(c.x * c.area for c in part) / area, sum(c.y * c.area for c in part) / area)
        biggest = max(part, key=lambda c: c.area)
        joined.append(biggest._replace(x=x, y=y, bbox=box, area=area, at_border=any(c.at_border for c in part)))
    return [c for c in cells if c.kind != KIND_SMUDGE] + joined


def measure_chromatin(od: np.ndarray, red_od: tuple[float, float, float], nuclei_od: np.ndarray) -> np.ndarray:
    """(H, W) float32: the OD(R) - OD(B) of the chromatin alone in each pixel of an (H, W, 3) OD
    image, its red-cell matter taken out: each pixel's OD unmixed (least squares) into the red
    cells' stain vector `red_od` and the nuclei's (the median of `nuclei_od`, (N, 3) OD of nucleus
    pixels), the chromatin part kept. Where red cells read purple (lavender ones, overlapping
    ones), OD(R) - OD(B) alone counts them as faint chromatin; this does not, and a faint net of
    chromatin keeps its whole signal (unlike subtracting the red cells' hue times the pixel's OD)."""
    nucleus = np.median(nuclei_od, axis=0) if len(nuclei_od) else np.asarray([0.8, 1.2, 0.33])
    stains = np.stack([np.asarray(red_od, np.float64), nucleus.astype(np.float64)], axis=1)  # (3, 2)
    if np.linalg.matrix_rank(stains) < 2:
        return (od[..., 0] - od[..., 2]).astype(np.float32)
    unmix = np.linalg.pinv(stains)[1]  # (3,): OD -> amount of the nuclei's stain vector
    weights = (unmix * (nucleus[0] - nucleus[2])).astype(np.float32)
    return od @ weights


def find_pale_smudges(
    purple: np.ndarray, cells: np.ndarray, config: DetectConfig, px_per_um: float, min_od: float | None = None
) -> list[WorkingCell]:
    """Smudge cells too pale for the nucleus mask: chromatin spread into a faint net (OD(R) - OD(B),
    `purple`, above `min_od` (default `smudge_min_od`), far below an intact nucleus; where red cells
    read purple the caller passes the chromatin unmixed from them, measure_chromatin) over at least
    a disc `smudge_min_um` wide, away from every cell found (`cells`: their nuclei and cytoplasm),
    and ragged (not a compact round shape) or, if compact, lacy inside (a net's threads and holes;
    a blurred cell is smooth). They are marked smudge, so they are left out of the counts like every
    smudge cell. Searched at half the working resolution (nets are >= 8 um wide; it costs a quarter
    as much)."""
    step = 2 if px_per_um >= 2.5 else 1
    ppu = px_per_um / step
    pale = ndi.gaussian_filter(purple[::step, ::step], 0.5 * ppu) > (config.smudge_min_od if min_od is None else min_od)
    pale &= ~ndi.binary_dilation(cells[::step, ::step], iterations=2)
    close = max(1, round(ppu))  # threads of a net lie ~1-2 um apart
    pale = ndi.binary_fill_holes(ndi.binary_closing(pale, iterations=close))
    labels, n = ndi.label(pale)
    if n == 0:
        return []
    area = np.bincount(labels.ravel(), minlength=n + 1)
    low = math.pi / 4 * (config.smudge_min_um * ppu) ** 2
    high = math.pi / 4 * (3 * config.max_nucleus_um * ppu) ** 2
    found = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if not low <= area[k] <= high:
            continue
        blob = labels[sl] == k
        solidity = measure_solidity(blob)
        if solidity > _PALE_MAX_SOLIDITY and _measure_variation(purple[::step, ::step][sl][blob]) < _PALE_MIN_VARIATION:
            continue  # a round, smooth pale patch (an out-of-focus cell, a stain blotch) is not a burst cell
        rows, cols = np.nonzero(blob)
        h, w = purple.shape
        box = (sl[0].start * step, sl[1].start * step, min(sl[0].stop * step, h), min(sl[1].stop * step, w))
        border = box[0] == 0 or box[1] == 0 or box[2] == h or box[3] == w
        x = (cols.mean() + sl[1].start) * step  # pixel i here is pixel step * i of the working copy
        y = (rows.mean() + sl[0].start) * step
        found.append(WorkingCell(float(x), float(y), box, int(area[k]) * step * step, KIND_SMUDGE, border, 1,
                                 SmudgeFeatures(solidity, 0.0, 0.0)))  # fmt: skip
    return found


def _measure_variation(values: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of OD values: the threads and holes of a net."""
    return float(values.std() / max(float(values.mean()), 1e-6)) if values.size else 0.0


def segment_nuclei(
    od: np.ndarray, config: DetectConfig, purple: np.ndarray | None = None, red_purple: float = 0.0
) -> np.ndarray:
    """(H, W) bool: pixels of stained nuclei (purple: OD(R) - OD(B) high), at each blob's own contrast.
    `purple`: the smoothed OD(R) - OD(B) of `od`, when the caller has it already; `red_purple`:
    what overlapping red cells reach in it where they read purple (lavender), added to
    `nucleus_min_od`."""
    if purple is None:
        purple = ndi.gaussian_filter(od[..., 0] - od[..., 2], 1.0)
    min_od = config.nucleus_min_od + red_purple
    candidates, n = ndi.label(purple > min_od)
    if n == 0:
        return np.zeros(purple.shape, bool)
    # A blob's level is its 90th percentile, not its peak: where two cells overlap, chromatin
    # lies twice as thick, and cutting at half of that would lose both nuclei around it.
    inside = candidates > 0
    labels, values = candidates[inside], purple[inside]
    order = np.lexsort((values, labels))
    counts = np.bincount(labels, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    peaks = values[order][starts + np.floor(0.9 * (counts - 1)).astype(int)]
    # Each blob is cut at a fraction of its own peak: a pale nucleus keeps its full outline and a
    # dark one does not swell into the bluish cytoplasm around it.
    cut = np.concatenate([[np.inf], np.maximum(config.nucleus_relative_threshold * peaks, min_od)])
    return purple > cut[candidates]


def segment_bodies(od: np.ndarray, red_level: float, smooth: np.ndarray | None = None) -> np.ndarray:
    """(h, w) bool: white-cell matter: not background, and less red than the red cells (OD(B) -
    OD(R) below 0.8 of their typical level), so a red cell is never part of a white one.
    `smooth`: `od` smoothed over 1 px (_smooth_od), when the caller has it already."""
    smooth = _smooth_od(od) if smooth is None else smooth
    return (smooth.sum(axis=2) > _FOREGROUND_OD) & (smooth[..., 2] - smooth[..., 0] < _RED_FRACTION * red_level)


def _smooth_od(od: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(od, (1.0, 1.0, 0))


def segment_off_red_hue(
    od: np.ndarray, colour: RedCellColour | None, smooth: np.ndarray | None = None
) -> np.ndarray | None:
    """(h, w) bool: matter whose hue ((OD(B) - OD(R)) / summed OD) lies below the red cells' by more
    than they vary among themselves; None where red cells read pink (hue >= 0) or were not measured.

    Lavender red cells (a May-Gruenwald Giemsa stain photographed warm: PBC) have OD(B) < OD(R),
    so "less red than the red cells" (segment_bodies) holds for them too and every red cell beside
    a white one would join its body. Their hue still differs from a white cell's nucleus and blue
    cytoplasm; a granulocyte's pink cytoplasm shares it, so this mask only trims a cell's outline
    (centre, box, area), never the body that decides which nuclei are one cell. (Trimming pink
    pictures too centres cells a little better, but moves the demo's crops by a pixel or two, and
    its trained differential missed its 3-point target: kept to lavender red cells.)
    `smooth`: as in segment_bodies."""
    if colour is None or not colour.lavender:
        return None
    smooth = _smooth_od(od) if smooth is None else smooth
    density = smooth.sum(axis=2)
    margin = max(_HUE_SPREADS * colour.hue_spread, _MIN_HUE_MARGIN)
    off_red = (density > _FOREGROUND_OD) & (smooth[..., 2] - smooth[..., 0] < (colour.hue - margin) * density)
    # Thin lines of it are the rims of red cells (their faint edges, where hue is noisy, and the
    # colour fringes of the lens), which would chain a white cell to every red cell it touches.
    return ndi.binary_opening(off_red)


def assemble_cells(
    nucleus: np.ndarray, body: np.ndarray, config: DetectConfig, px_per_um: float, purple: np.ndarray,
    od: np.ndarray | None = None, outline: np.ndarray | None = None,
) -> list[WorkingCell]:  # fmt: skip
    """Cells (window coordinates, at_border unset) from a window's nucleus and body masks, its
    smoothed OD(R) - OD(B), and its (h, w, 3) OD (given, the cytoplasm's colour can show two round
    nuclei to be one granulocyte's lobes). `outline`, given, trims each cell's extent (centre, box,
    area) to that mask plus its nucleus (segment_off_red_hue)."""
    blobs, _ = ndi.label(nucleus)
    fragments, lenses = split_nuclei(nucleus, config, px_per_um, blobs, purple, None if od is None else od[..., 1])
    # Each fragment claims the body around it: a watershed on the body's distance map, so two
    # touching cells part at their waist while the lobes of one nucleus share one round body.
    body = ndi.binary_opening(body, iterations=2) | (fragments > 0)
    # Granules and pale spots leave holes that would fake a waist inside one cell.
    body = fill_small_holes(body, max_area=_BODY_HOLE_UM2 * px_per_um**2)
    outside, (iy, ix) = ndi.distance_transform_edt(fragments == 0, return_indices=True)
    near = outside <= config.max_cytoplasm_um * px_per_um
    depth = ndi.distance_transform_edt(body)
    regions = watershed(-depth, fragments, mask=body & near)
    zones = fragments[iy, ix]  # the nearest fragment of every pixel
    groups = group_fragments(fragments, zones, outside, regions, depth, config, px_per_um, lenses, od)
    nuclei, cells = groups[fragments], groups[regions]
    if outline is not None:  # the cell's matter of its own hue that is joined to its nucleus
        cells = np.where(
            ndi.binary_propagation(fragments > 0, mask=(outline | (fragments > 0)) & (cells > 0)), cells, 0
        )
    m = int(groups.max())
    # How many cells each chromatin blob was split into, and so each cell's blob.
    inside = fragments > 0
    keys = np.unique(blobs[inside].astype(np.int64) * (m + 1) + nuclei[inside])  # (blob, cell) pairs
    pair_blob, pair_cell = keys // (m + 1), keys % (m + 1)
    per_blob = np.bincount(pair_blob)
    n_split = np.ones(m + 1, int)
    np.maximum.at(n_split, pair_cell, per_blob[pair_blob])
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
        features = measure_smudge_features(nuclei[r, c] == i, purple[r, c], px_per_um)
        kind = KIND_WBC  # smudge cells are told in find_cells, against the whole image's nuclei
        box = (r.start, c.start, r.stop, c.stop)
        found.append(
            WorkingCell(float(cx[i]), float(cy[i]), box, int(cell_area[i]), kind, False, int(n_split[i]), features)
        )
    return found


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
