"""Fixed-size crops around cell centres, and the labels of detected cells.

A crop is a fixed window in micrometres around the cell centre, not a box stretched to fit the
cell: cell size is diagnostic (a lymphoblast is larger than a mature lymphocyte), so the model must
see true relative size. The window in pixels follows each image's own scale, so differences in
magnification between microscopes cancel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def background_colour(image: np.ndarray) -> np.ndarray:
    """(3,) uint8 colour of the empty slide: the per-channel median of a sparse pixel sample."""
    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 20_000)))
    sample = image[::step, ::step].reshape(-1, 3)
    return np.median(sample, axis=0).astype(np.uint8)


def window_pixels(crop_um: float, um_per_pixel: float) -> int:
    """Side of the crop window in source pixels for a window of `crop_um` micrometres."""
    return max(8, int(round(crop_um / um_per_pixel)))


def cut_crop(
    image: np.ndarray, x: float, y: float, window_px: int, out_size: int, fill: np.ndarray | None = None
) -> np.ndarray:
    """The (out_size, out_size, 3) uint8 crop of a `window_px` square centred on (x, y).

    Parts of the window outside the image are filled with `fill` (the slide's background colour by
    default) rather than mirrored, so a cell cut by the border is not completed with a fake half.
    """
    h, w = image.shape[:2]
    half = window_px / 2.0
    x0, y0 = int(round(x - half)), int(round(y - half))
    x1, y1 = x0 + window_px, y0 + window_px
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        window = image[y0:y1, x0:x1]
    else:
        colour = background_colour(image) if fill is None else fill
        window = np.empty((window_px, window_px, 3), dtype=np.uint8)
        window[:] = colour
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if window_px == out_size:
        return np.ascontiguousarray(window)
    # Area-averaging (BOX) when shrinking keeps fine chromatin texture without aliasing.
    resample = Image.Resampling.BOX if window_px > out_size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(window)).resize((out_size, out_size), resample))


def assign_labels(
    centres: list[tuple[float, float]],
    points: list[list] | None,
    default_label: str | None,
    fallback_radius_px: float,
) -> list[str | None]:
    """The class (a taxonomy name) of each detected cell centre from known labelled points.

    A detection takes the label of the nearest listed point whose radius (or `fallback_radius_px`
    when the point has none) reaches it; a detection with none near gets `default_label`.
    `points` rows are [x, y, r_or_None, class] in source pixels.
    """
    if not points:
        return [default_label] * len(centres)
    pts = np.asarray([[p[0], p[1]] for p in points], dtype=np.float64)
    radii = np.asarray([p[2] if p[2] is not None else fallback_radius_px for p in points], dtype=np.float64)
    labels = [p[3] for p in points]
    out: list[str | None] = []
    for cx, cy in centres:
        dist = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
        within = dist <= radii
        if not within.any():
            out.append(default_label)
            continue
        nearest = int(np.argmin(np.where(within, dist, np.inf)))
        out.append(labels[nearest])
    return out
