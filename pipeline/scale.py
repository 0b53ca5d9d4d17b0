"""Image scale from the red cells: micrometres per pixel, and the colour tools detection shares.

Red cells are the ruler of a blood smear: they are 7.5 um across in every healthy adult and are
everywhere in the picture. Their typical diameter is measured by granulometry (morphological
openings with discs of growing radius) on a mask of red cells: the radius at which openings
remove half of the mask's area is the typical red-cell radius. Unlike counting connected
components this stays right when red cells touch and overlap in clumps, as in most smears.

Colour is handled as optical density (OD, Beer-Lambert) relative to the light of the empty
background, fitted as a smooth surface, which makes the features independent of lamp brightness,
vignetting and white balance: a stain is a direction in OD space whatever the camera did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

RBC_DIAMETER_UM = 7.5  # red cells are the ruler

# Coarse pass: the image is shrunk so its longer side is this long (a red cell then spans at
# least ~6 px even in a 2592 px ALL-IDB1 picture) and openings try radii over the whole range.
_COARSE_SIDE_PX = 256
_COARSE_RADII_PX = np.geomspace(1.5, 48.0, 13)
# Fine pass: the image is rescaled so the coarse red-cell radius becomes this many pixels, and
# radii from 0.55x to 1.6x of it are tried (geometric steps of ~9%, interpolated between).
_FINE_RADIUS_PX = 14.0
_FINE_RADII_REL = np.geomspace(0.55, 1.6, 13)
_FINE_WINDOW_PX = 360  # side of the central window measured in the fine pass, fine-pass pixels
# Red cells must be darker in green than the rest of the picture by at least this much OD: JPEG
# noise on an empty picture stays well below it.
_MIN_RBC_CONTRAST_OD = 0.04
# ... and cover a plausible part of the picture (blank or fully covered images measure nothing).
_RBC_FRACTION_RANGE = (0.01, 0.95)
# Pixels whose OD(R) - OD(B) exceeds this are stained nuclei (purple), not red cells (pink, < 0).
_NUCLEUS_OD = 0.12
_MIN_RED_OD = 0.05  # floor for the red-cell level of OD(B) - OD(R) (pictures with few red cells)
_MIN_RED_SHARE = 0.1  # red cells cover at least this share of a smear or single-cell picture (20-60% here)
_MIN_CELL_PX = 20  # mask components smaller than this are specks, not red cells
# Background light: fitted on an 8x8 grid of blocks; a block whose bright level is more than 5%
# below the fitted surface is mostly covered by cells and does not vote in the next fit.
_BACKGROUND_GRID = 8
_BACKGROUND_DARK_LOG = 0.05


def resize_image(image: np.ndarray, zoom: float) -> np.ndarray:
    """The (round(H*zoom), round(W*zoom), 3) uint8 image, antialiased; the input if zoom is ~1."""
    h, w = image.shape[:2]
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    if size == (w, h):
        return image
    # Pillow's resampling is antialiased when shrinking and runs in C: on a 1712x1368 smear it
    # costs a few milliseconds, ~20x less than skimage.transform.rescale.
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=3.0))


def measure_optical_density(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 OD of an (H, W, 3) uint8 RGB image relative to its background light.

    OD = log(background) - log(pixel) per channel, so empty background reads 0 everywhere even
    when the lamp lights the field unevenly (vignetting, a gradient across the picture).
    """
    log_image = np.log(image.astype(np.float32) + 1.0)
    return estimate_background_light(image) - log_image


def estimate_background_light(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 log of the light reaching each pixel with no cell in the way.

    A smooth quadratic surface per channel, fitted to the background level of an 8x8 grid of
    blocks (the most common value near the top of each block's histogram); blocks much darker
    than the fit are covered by cells and are left out of the next fit. Vignetting and lamp
    gradients are smooth, so a quadratic follows them.
    """
    h, w = image.shape[:2]
    grid = _BACKGROUND_GRID
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    levels, centres = [], []
    for i in range(grid):
        for j in range(grid):
            block = image[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].reshape(-1, 3)
            if block.shape[0] == 0:
                continue
            block = block[:: max(1, block.shape[0] // 4000)]
            levels.append(np.log(_find_bright_mode(block) + 1.0))
            centres.append(((ys[i] + ys[i + 1]) / 2 / h - 0.5, (xs[j] + xs[j + 1]) / 2 / w - 0.5))
    levels = np.asarray(levels, np.float64)
    cy, cx = np.asarray(centres).T
    design = np.stack([np.ones_like(cx), cx, cy, cx * cx, cy * cy, cx * cy], axis=1)
    keep = np.ones(len(levels), bool)
    coef = None
    for _ in range(3):
        if keep.sum() < 2 * design.shape[1]:
            break
        coef = np.linalg.lstsq(design[keep], levels[keep], rcond=None)[0]
        residual = (levels - design @ coef).mean(axis=1)
        keep = residual > -_BACKGROUND_DARK_LOG
    if coef is None:  # too few blocks (a tiny image): one flat level
        return np.broadcast_to(levels.max(axis=0).astype(np.float32), (h, w, 3))
    v = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    u = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    v, u = v[:, None, None], u[None, :, None]
    c = coef.astype(np.float32)
    return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * v * v + c[5] * u * v


def _find_bright_mode(pixels: np.ndarray) -> np.ndarray:
    """(3,) float64: per channel, the most common value within 30 grey levels below the 95th
    percentile of (N, 3) uint8 pixels: the background itself, not the top of its noise."""
    top = np.percentile(pixels, 95, axis=0)
    mode = np.empty(3)
    for c in range(3):
        counts = ndi.gaussian_filter1d(np.bincount(pixels[:, c], minlength=256).astype(float), 2.0)
        lo, hi = int(max(top[c] - 30, 0)), int(min(top[c] + 3, 255))
        mode[c] = lo + np.argmax(counts[lo : hi + 1])
    return mode


def measure_red_level(od: np.ndarray) -> float:
    """Typical OD(B) - OD(R) of a single layer of red cells, floored at _MIN_RED_OD (few red cells).

    The median over the reddish pixels (above a quarter of the 95th percentile): the percentile
    itself sits on overlapping red cells, twice as dense, wherever the smear is thick.
    """
    flat = od.reshape(-1, 3)[:: max(1, od.shape[0] * od.shape[1] // 100_000)]
    redness = flat[:, 2] - flat[:, 0]
    reddish = redness[redness > 0.25 * np.percentile(redness, 95)]
    return max(float(np.median(reddish)) if reddish.size else 0.0, _MIN_RED_OD)


@dataclass(frozen=True)
class RedCellColour:
    """The colour of an image's red cells in OD, which detection measures white-cell matter against.

    hue: typical (OD(B) - OD(R)) / (summed OD) of red-cell pixels: the direction of haemoglobin
    plus eosin in this stain and camera, whatever their density (a red cell's pale centre has its
    rim's hue at a third of its OD). Pink red cells read > 0 (BCCD, most Giemsa); the lavender red
    cells of a May-Gruenwald Giemsa stain photographed warm (PBC) read < 0.
    hue_spread: the median absolute deviation of that hue among red-cell pixels.
    purple: the 90th percentile of OD(R) - OD(B) among them (what one layer of red cells reaches
    in the nucleus signal: < 0 for pink red cells, a little > 0 for lavender ones).
    """

    hue: float
    hue_spread: float
    purple: float
    od: tuple[float, float, float] = (0.0, 0.0, 0.0)  # their median OD (R, G, B): the red-cell stain vector

    @property
    def lavender(self) -> bool:
        """Red cells that absorb red light more than blue (hue < 0): they read a little purple, and
        "less red than the red cells" no longer tells white-cell matter from them."""
        return self.hue < 0


def measure_red_cell_colour(od: np.ndarray) -> RedCellColour | None:
    """The RedCellColour of an (H, W, 3) OD image; None when it shows too few red cells to say.

    Red-cell pixels: dense in green (haemoglobin absorbs green most: above an Otsu threshold
    between background and cells), not stained nuclei; red cells outnumber every other cell's
    pixels in a smear, so the median and MAD over them are the red cells' own; where such pixels
    cover under a tenth of the picture, they are white cells and plasma, and nothing is said.
    """
    flat = od.reshape(-1, 3)[:: max(1, od.shape[0] * od.shape[1] // 25_000)]
    purple = flat[:, 0] - flat[:, 2]
    green = flat[:, 1][purple < _NUCLEUS_OD]
    if green.size < 100 or float(np.ptp(green)) < _MIN_RBC_CONTRAST_OD:
        return None
    red = flat[(purple < _NUCLEUS_OD) & (flat[:, 1] > _red_cell_threshold(green))]
    if red.shape[0] < _MIN_RED_SHARE * flat.shape[0]:
        return None  # too few to be red cells: what stands out from the background is white cells
    hue = (red[:, 2] - red[:, 0]) / np.maximum(red.sum(axis=1), 1e-3)
    middle = float(np.median(hue))
    return RedCellColour(
        hue=middle,
        hue_spread=float(np.median(np.abs(hue - middle))),
        purple=float(np.percentile(red[:, 0] - red[:, 2], 90)),
        od=tuple(float(v) for v in np.median(red, axis=0)),
    )


def measure_rbc_diameter_px(image: np.ndarray) -> float | None:
    """Typical red-cell diameter in pixels of an (H, W, 3) uint8 image; None when none can be measured."""
    h, w = image.shape[:2]
    coarse_zoom = min(1.0, _COARSE_SIDE_PX / max(h, w))
    mask = _segment_red_cells(resize_image(image, coarse_zoom))
    radius = None if mask is None else _measure_granulometric_radius(mask, _COARSE_RADII_PX)
    if radius is None:
        return None
    radius /= coarse_zoom
    # Fine pass on a central window only: a few hundred red cells give the typical size as well
    # as thousands do, at a fraction of the cost on a large picture.
    zoom = min(1.0, _FINE_RADIUS_PX / radius)
    half = int(_FINE_WINDOW_PX / zoom / 2)
    cy, cx = h // 2, w // 2
    window = image[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
    mask = _segment_red_cells(resize_image(window, zoom))
    fine = None if mask is None else _measure_granulometric_radius(mask, _FINE_RADII_REL * radius * zoom)
    if fine is not None:
        radius = fine / zoom
    return 2.0 * radius


def estimate_um_per_pixel(image: np.ndarray) -> float | None:
    """Micrometres per pixel from the typical red-cell diameter (7.5 um), None if no red cells can be measured."""
    diameter = measure_rbc_diameter_px(image)
    return None if diameter is None else RBC_DIAMETER_UM / diameter


def _segment_red_cells(image: np.ndarray) -> np.ndarray | None:
    """(H, W) bool mask of red cells (holes filled), or None when the picture shows no red cells."""
    od = measure_optical_density(image)
    # Haemoglobin absorbs green most; nuclei absorb it too, so stained nuclei (red absorbed more
    # than blue) are left out, or a large white cell would pass for a clump of red cells.
    green = ndi.gaussian_filter(od[..., 1], 1.0)
    nucleus = ndi.gaussian_filter(od[..., 0] - od[..., 2], 1.0) > _NUCLEUS_OD
    values = green[~nucleus]
    if values.size < 100 or float(np.ptp(values)) < _MIN_RBC_CONTRAST_OD:
        return None
    mask = (green > _red_cell_threshold(values)) & ~nucleus
    fraction = float(mask.mean())
    if not _RBC_FRACTION_RANGE[0] <= fraction <= _RBC_FRACTION_RANGE[1]:
        return None
    if float(green[mask].mean() - green[~mask & ~nucleus].mean()) < _MIN_RBC_CONTRAST_OD:
        return None
    # Filling holes closes the pale centres of red cells (central pallor), so a red cell reads as
    # one disc, not a ring whose thickness would be measured instead of its diameter.
    return _close_crescents(ndi.binary_fill_holes(ndi.binary_opening(mask)))


def _red_cell_threshold(green: np.ndarray) -> float:
    """OD(G) between background and red cells: Otsu on the non-nucleus values clipped at their 99th
    percentile, so that a few very dark specks cannot pull the threshold up into the red cells."""
    return float(threshold_otsu(np.minimum(green, np.percentile(green, 99))))


def _close_crescents(mask: np.ndarray) -> np.ndarray:
    """The mask with each crescent replaced by its convex hull.

    A red cell whose pale centre opens to one side reads as a crescent, which openings would
    measure by its thickness; its convex hull is the cell. A crescent is a hollow component
    (solidity < 0.8) whose hull is no larger than 1.5x the typical solid (single) red cell;
    clumps are left alone, as their hulls would swallow the background between the cells.
    """
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    areas = np.bincount(labels.ravel())
    boxes = ndi.find_objects(labels)
    hulls = {}
    for index, sl in enumerate(boxes, start=1):
        if areas[index] >= _MIN_CELL_PX:
            hulls[index] = convex_hull_image(labels[sl] == index)
    solid = [areas[i] for i, hull in hulls.items() if areas[i] >= 0.9 * hull.sum()]
    if not solid:
        return mask
    typical = float(np.median(solid))
    out = mask.copy()
    for index, hull in hulls.items():
        if areas[index] < 0.8 * hull.sum() <= 0.8 * 1.5 * typical:
            out[boxes[index - 1]] |= hull
    return out


def _measure_granulometric_radius(
    mask: np.ndarray, radii: np.ndarray, hidden: np.ndarray | None = None
) -> float | None:
    """The disc radius (px) at which opening the mask removes half its area; None if outside radii.

    `hidden` marks pixels where red cells may lie unseen (under a white cell): they count as
    inside for the openings, as the image border does, but not in the area measured.
    """
    total = float(mask.sum())
    if total == 0:
        return None
    # scipy's distance maps treat pixels beyond the image edge as inside (and the padding below
    # does the same for the dilation), so a red cell cut by the border opens like a whole one.
    inside = ndi.distance_transform_edt(mask if hidden is None else mask | hidden)
    fraction = []
    for radius in radii:
        pad = int(np.ceil(radius)) + 1
        core = np.pad(inside > radius, pad, mode="edge")
        opened = ndi.distance_transform_edt(~core)[pad:-pad, pad:-pad] <= radius
        fraction.append(float((opened & mask).sum()) / total)
    fraction = np.asarray(fraction)
    below = np.flatnonzero(fraction < 0.5)
    if below.size == 0 or below[0] == 0:
        return None
    k = below[0]
    # Interpolate the crossing in log-radius between the last radius above half and the first below.
    f0, f1 = fraction[k - 1], fraction[k]
    t = (f0 - 0.5) / max(f0 - f1, 1e-9)
    return float(np.exp(np.log(radii[k - 1]) + t * (np.log(radii[k]) - np.log(radii[k - 1]))))


# --- single-cell images (ALL-IDB2, analyser exports): one white cell, a few red cells around it ---
# The image is measured at this longer side at most (a 257 px ALL-IDB2 image shows ~3 red cells
# across, which stay ~20 px wide at this size; downscaled copies are measured as they are).
_SINGLE_SIDE_PX = 160
_SINGLE_RADII_PX = np.geomspace(1.5, 96.0, 30)
_MIN_SINGLE_RED_FRACTION = 0.02  # red cells must cover at least this much of the picture
_BODY_OD = 0.15  # summed OD above which a pixel is matter (cell), not background
# A gap in the red-cell mask smaller than this share of a red cell's disc is a pale centre (or the
# sliver between two red cells) and is filled before measuring again: in a small picture most red
# cells are cut by the border, and their pale centres open to it, so filling holes misses them.
_PALLOR_AREA = 0.3


def estimate_single_cell_um_per_pixel(image: np.ndarray) -> float | None:
    """Micrometres per pixel of a single-cell image from the red cells around the cell; None if none.

    The white cell(s) (nuclei and the non-red matter around them) are taken out of the red-cell
    mask and marked as places where red cells may lie hidden, so that red cells partly under the
    white cell, or cut by the border, open like whole ones. The granulometry then runs twice more
    with the pale centres filled (see _PALLOR_AREA) at the size found.
    """
    h, w = image.shape[:2]
    zoom = min(1.0, _SINGLE_SIDE_PX / max(h, w))
    small = resize_image(image, zoom)
    red = _segment_red_cells(small)
    if red is None:
        return None
    white = find_white_cells(small)
    red &= ~white
    if red.mean() < _MIN_SINGLE_RED_FRACTION:
        return None
    radius = _measure_granulometric_radius(red, _SINGLE_RADII_PX, hidden=white)
    for _ in range(2):
        if radius is None:
            return None
        gaps, n = ndi.label(~red & ~white)
        sizes = np.bincount(gaps.ravel(), minlength=n + 1)
        small_gap = sizes <= _PALLOR_AREA * np.pi * radius**2
        small_gap[0] = False
        radius = _measure_granulometric_radius(red | small_gap[gaps], _SINGLE_RADII_PX, hidden=white) or radius
    diameter = 2.0 * radius / zoom
    if not 4.0 <= diameter <= 2.0 * max(h, w):
        return None
    return RBC_DIAMETER_UM / diameter


def find_white_cells(image: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of the white cells of a small picture: stained nuclei and the non-red matter
    (cytoplasm) joined to them, holes filled, grown by 2 px."""
    od = measure_optical_density(image)
    purple = ndi.gaussian_filter(od[..., 0] - od[..., 2], 1.0)
    nucleus = purple > _NUCLEUS_OD
    body = (ndi.gaussian_filter(od.sum(axis=2), 1.0) > _BODY_OD) & (-purple < 0.3 * measure_red_level(od))
    labels, _ = ndi.label(body | nucleus)
    keep = np.unique(labels[nucleus])
    cells = np.isin(labels, keep[keep > 0])
    return ndi.binary_dilation(ndi.binary_fill_holes(cells), iterations=2)


def find_background_colour(image: np.ndarray) -> np.ndarray:
    """(3,) uint8 colour of the empty slide in a picture mostly covered by cells: its bright mode
    (the median colour, right for a smear, is a cell's colour in a single-cell picture)."""
    pixels = image.reshape(-1, 3)
    return _find_bright_mode(pixels[:: max(1, pixels.shape[0] // 20_000)]).astype(np.uint8)
