"""Parting packed round nuclei by the arcs of their outline (pipeline.detect, step 3, after the necks).

Inside a packed cluster of blasts, a nucleus pressed on several sides shows no waist of its own on
the distance map: its neighbours fill the notches that would make one. But where it reaches the
cluster's outline, its edge is an arc of a circle the size of a nucleus, cut off at each end by the
notch where the next nucleus begins. Each clean arc between two notches stands for one round
nucleus (its fitted circle); a piece of the blob that holds two or more such circles, and is not
one oval nucleus, is parted among them (each pixel to the circle it lies deepest in, relative to
the circle's size). Ragged or lobed outlines give no clean arc of nucleus size, and stay as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import find_peaks
from skimage.measure import find_contours

if TYPE_CHECKING:
    from pipeline.detect import DetectConfig

__all__ = ["Disc", "find_arc_discs", "split_at_arcs"]

_NOTCH_UM = 0.5  # a notch dips at least this far inside the chord ...
_CHORD_UM = 1.5  # ... joining the outline this far along on either side (a convex arc bulges out)
_NOTCH_GAP_UM = 2.0  # notches closer than this along the outline are one notch
_ARC_TRIM_UM = 0.7  # the rounded bottom of a notch, left out of both arcs beside it
_MAX_RADIUS_UM = 8.0  # the largest blast nucleus is ~16 um across
_MIN_SPAN = 0.2  # an arc covers at least this share of its circle (a shorter one fixes no centre)
_MAX_RMS = 0.05  # ... and departs from its circle by at most this share of the radius (a clean arc)
_MIN_FILL = 0.8  # the circle is at least this full of chromatin: a nucleus, not a bay of the outline
_SAME_NUCLEUS = 0.5  # circles closer than this share of the smaller radius are one nucleus ...
_JOINT_RMS = 0.07  # ... as are two arcs that one circle fits this well (a nucleus dented in two places),
_JOINT_GROWTH = 1.2  # ... a circle hardly larger than theirs (two neighbours' arcs can fit a wide one)
_REST_UM = 2.5  # a piece's part outside all its circles stays apart only if it holds a disc this wide
_OVAL_IOU = 0.95  # a piece that fills its moment ellipse this well is one oval nucleus (two overlapping discs: ~0.9)


class Disc(NamedTuple):
    """A round nucleus seen by an arc of its outline: centre (row y, column x), radius (px) and the
    arc's points ((N, 2) row, column)."""

    y: float
    x: float
    r: float
    points: np.ndarray


def find_arc_discs(blob: np.ndarray, config: DetectConfig, px_per_um: float) -> list[Disc]:
    """The round nuclei whose edge shows as a clean arc between two notches of a chromatin blob's
    outline (bool (h, w) mask), one per nucleus, longest arc first."""
    contours = find_contours(np.pad(blob, 1).astype(np.float32), 0.5)
    if not contours:
        return []
    outline = max(contours, key=len)[:-1] - 1.0  # closed: its last point repeats its first
    n = len(outline)
    step = max(2, round(_CHORD_UM * px_per_um))
    if n < 8 * step:
        return []
    # Signed depth of each point inside the chord between its neighbours `step` points away.
    turn = np.sign(np.sum(outline[:, 1] * np.roll(outline[:, 0], -1) - np.roll(outline[:, 1], -1) * outline[:, 0]))
    before, after = np.roll(outline, step, axis=0), np.roll(outline, -step, axis=0)
    chord = after - before
    cross = chord[:, 0] * (outline[:, 1] - before[:, 1]) - chord[:, 1] * (outline[:, 0] - before[:, 0])
    depth = -turn * cross / np.maximum(np.hypot(chord[:, 0], chord[:, 1]), 1e-9)
    peaks, _ = find_peaks(
        np.tile(depth, 3), height=_NOTCH_UM * px_per_um, distance=max(2, int(_NOTCH_GAP_UM * px_per_um))
    )
    notches = np.unique(peaks[(peaks >= n) & (peaks < 2 * n)] - n)  # the outline is closed: no end effects
    if len(notches) < 2:
        return []
    r_min, r_max = config.round_nucleus_um / 2 * px_per_um, _MAX_RADIUS_UM * px_per_um
    trim = max(1, round(_ARC_TRIM_UM * px_per_um))
    rows, cols = np.ogrid[: blob.shape[0], : blob.shape[1]]
    discs = []
    for start, stop in zip(notches, np.roll(notches, -1)):
        stop = stop if stop > start else stop + n
        points = outline[np.arange(start + trim, stop - trim + 1) % n]
        if len(points) < 8:
            continue
        y, x, r, rms = fit_circle(points)
        if not (r_min <= r <= r_max and rms <= _MAX_RMS * r and len(points) >= _MIN_SPAN * 2 * np.pi * r):
            continue
        iy, ix = round(y), round(x)
        if not (0 <= iy < blob.shape[0] and 0 <= ix < blob.shape[1] and blob[iy, ix]):
            continue
        if np.count_nonzero(blob & ((rows - y) ** 2 + (cols - x) ** 2 <= r * r)) < _MIN_FILL * np.pi * r * r:
            continue
        discs.append(Disc(y, x, r, points))
    discs.sort(key=lambda d: -len(d.points))
    kept: list[Disc] = []
    for d in discs:
        for i, k in enumerate(kept):
            apart = np.hypot(d.y - k.y, d.x - k.x)
            if apart < _SAME_NUCLEUS * min(d.r, k.r):
                break
            if apart < d.r + k.r:
                points = np.concatenate([k.points, d.points])
                y, x, r, rms = fit_circle(points)
                if rms <= _JOINT_RMS * r and r <= _JOINT_GROWTH * max(d.r, k.r):
                    kept[i] = Disc(y, x, r, points)
                    break
        else:
            kept.append(d)
    return kept


def fit_circle(points: np.ndarray) -> tuple[float, float, float, float]:
    """(y, x, r, rms distance from the circle) of the least-squares circle through (N, 2) points."""
    a = np.stack([points[:, 0], points[:, 1], np.ones(len(points))], axis=1)
    d, e, f = np.linalg.lstsq(a, -(points**2).sum(axis=1), rcond=None)[0]
    y, x = -d / 2, -e / 2
    r = float(np.sqrt(max(y * y + x * x - f, 1e-12)))
    rms = float(np.sqrt(np.mean((np.hypot(points[:, 0] - y, points[:, 1] - x) - r) ** 2)))
    return float(y), float(x), r, rms


def split_at_arcs(pieces: np.ndarray, blob: np.ndarray, config: DetectConfig, px_per_um: float) -> np.ndarray:
    """(h, w) int labels 1..k' of a blob's pieces ((h, w) int labels 1..k of `blob`) after parting
    every piece that holds the centres of two or more arc discs (find_arc_discs) and is no oval
    nucleus: each pixel goes to the disc it lies deepest in (distance over radius). The part of the
    piece outside every disc stays a piece of its own when it is thick enough for a nucleus the
    arcs did not show (`_REST_UM`), else it joins the nearest disc."""
    discs = find_arc_discs(blob, config, px_per_um)
    if len(discs) < 2:
        return pieces
    out = pieces.copy()
    next_label = int(pieces.max()) + 1
    owner = pieces[[round(d.y) for d in discs], [round(d.x) for d in discs]]
    for piece in np.unique(owner):
        mine = [d for d, p in zip(discs, owner) if p == piece]
        if piece == 0 or len(mine) < 2:
            continue
        mask = pieces == piece
        if _ellipse_overlap(mask) >= _OVAL_IOU:
            continue
        rows, cols = np.nonzero(mask)
        depth = np.stack([np.hypot(rows - d.y, cols - d.x) / d.r for d in mine])
        nearest = depth.argmin(axis=0)
        rest = depth.min(axis=0) > 1.0
        leftover = np.zeros_like(mask)
        leftover[rows[rest], cols[rest]] = True
        keep_rest = (
            rest.sum() >= np.pi / 4 * (config.min_nucleus_um * px_per_um) ** 2
            and ndi.distance_transform_edt(leftover).max() >= _REST_UM * px_per_um
        )
        for j in range(len(mine)):
            if j == 0 and not keep_rest:
                continue  # the first disc keeps the piece's label (and the part outside every disc)
            chosen = (nearest == j) & ~(rest & keep_rest)
            out[rows[chosen], cols[chosen]] = next_label
            next_label += 1
    return out


def _ellipse_overlap(mask: np.ndarray) -> float:
    """Intersection over union of a bool mask and the ellipse of its second moments (same centre,
    axes and orientation; a filled ellipse's moments give it back exactly)."""
    rows, cols = np.nonzero(mask)
    centre = np.array([rows.mean(), cols.mean()])
    cov = np.cov(np.stack([rows, cols])) + np.eye(2) / 12  # pixels are squares, not points
    yy, xx = np.indices(mask.shape)
    d = np.stack([yy.ravel() - centre[0], xx.ravel() - centre[1]], axis=1)
    inside = (np.einsum("pi,ij,pj->p", d, np.linalg.inv(cov), d) <= 4).reshape(mask.shape)
    return float(np.count_nonzero(inside & mask)) / max(float(np.count_nonzero(inside | mask)), 1.0)
