"""Shape measurements shared by the detector's stages: caliper extents, solidity, inscribed discs, hole filling,
the seams between labelled regions and union-find over region labels. Plain numpy/scipy."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from skimage.morphology import disk

__all__ = [
    "DIRECTIONS",
    "count_hull_pixels",
    "fill_small_holes",
    "find_root",
    "find_seams",
    "measure_inscribed_radius",
    "measure_solidity",
    "project",
]

# Directions on which caliper widths are measured: 12 directions find a Feret diameter within 1%.
DIRECTIONS = np.stack([np.cos(np.arange(12) * np.pi / 12), np.sin(np.arange(12) * np.pi / 12)], axis=1)


def find_seams(labels: np.ndarray, values: np.ndarray, combine) -> list[tuple[int, int, float]]:
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


def find_near(mask: np.ndarray, reach: int) -> np.ndarray:
    """(H, W) bool: pixels within `reach` px (Euclidean) of `mask`, as `distance_transform_edt(~mask)
    <= reach`, but with the exact distance computed only around the mask: first the pixels within
    `reach` in chessboard distance (a superset, cheap), then the Euclidean distance in each of
    their connected pieces' boxes, where every mask pixel that close lies."""
    near = np.zeros(mask.shape, bool)
    if not mask.any():
        return near
    loose, _ = ndi.label(ndi.distance_transform_cdt(~mask, metric="chessboard") <= reach)
    for box in ndi.find_objects(loose):
        near[box] |= ndi.distance_transform_edt(~mask[box]) <= reach
    return near


def find_root(parent: np.ndarray, i: int) -> int:
    """Union-find root of i, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def project(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n + 1, D) float64 min and max of each label's pixel coordinates projected on D directions."""
    # A label's extremes along any direction lie on its outline: only pixels with a 4-neighbour of
    # another label (or the image's edge) are projected.
    padded = np.pad(labels, 1)
    inner = padded[1:-1, 1:-1]
    edge = (inner != padded[:-2, 1:-1]) | (inner != padded[2:, 1:-1]) | (inner != padded[1:-1, :-2])
    edge |= inner != padded[1:-1, 2:]
    rows, cols = np.nonzero(edge & (labels > 0))
    lows = np.full((n + 1, len(DIRECTIONS)), np.inf)
    highs = np.full((n + 1, len(DIRECTIONS)), -np.inf)
    if rows.size:
        lab = labels[rows, cols]
        order = np.argsort(lab, kind="stable")
        lab, rows, cols = lab[order], rows[order], cols[order]
        proj = np.outer(cols, DIRECTIONS[:, 0]) + np.outer(rows, DIRECTIONS[:, 1])
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        lows[lab[starts]] = np.minimum.reduceat(proj, starts, axis=0)
        highs[lab[starts]] = np.maximum.reduceat(proj, starts, axis=0)
    return lows, highs


def measure_solidity(blob: np.ndarray) -> float:
    """Area of a bool mask over the area of its convex hull (1 = convex)."""
    area = int(np.count_nonzero(blob))
    if area < 3:
        return 1.0
    return area / max(count_hull_pixels(blob), 1)


# The midpoints of a pixel square's edges, doubled (so coordinates stay integers).
_EDGE_MIDPOINTS_2X = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


def count_hull_pixels(blob: np.ndarray) -> int:
    """Pixels of a 2-D bool mask (at least 3 set) whose centres lie inside or on the convex hull of its
    pixels' edge midpoints: skimage.morphology.convex_hull_image(blob).sum(), without drawing the hull.
    Only each row's first and last pixel can give a hull vertex, and the hull is convex, so each
    row's pixels inside it are one run, counted from where the row crosses the hull's left and
    right edges."""
    h, w = blob.shape
    rows = np.flatnonzero(blob.any(axis=1))
    by_row = blob[rows]
    ends_r = np.concatenate([rows, rows])
    ends_c = np.concatenate([by_row.argmax(axis=1), w - 1 - by_row[:, ::-1].argmax(axis=1)])
    side = 2 * w + 4  # doubled coordinates, shifted to stay positive, as one integer key per point
    r2 = 2 * ends_r[:, None] + _EDGE_MIDPOINTS_2X[:, 0] + 2
    c2 = 2 * ends_c[:, None] + _EDGE_MIDPOINTS_2X[:, 1] + 2
    keys = np.unique((r2 * side + c2).ravel())
    points = np.stack([keys // side - 2, keys % side - 2], axis=1) / 2.0
    a = points[ConvexHull(points).vertices]  # in order around the hull
    b = np.roll(a, -1, axis=0)
    slanted = a[:, 0] != b[:, 0]  # a flat edge's ends are the ends of the edges beside it
    a, b = a[slanted], b[slanted]
    y = np.arange(np.ceil(a[:, 0].min()), np.floor(a[:, 0].max()) + 1)[:, None]
    eps = 1e-9  # pixel centres on the hull's edges count as inside
    crosses = (y >= np.minimum(a[:, 0], b[:, 0]) - eps) & (y <= np.maximum(a[:, 0], b[:, 0]) + eps)
    x = a[:, 1] + (y - a[:, 0]) * ((b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0]))
    left = np.where(crosses, x, np.inf).min(axis=1)
    right = np.where(crosses, x, -np.inf).max(axis=1)
    run = np.floor(right + eps) - np.ceil(left - eps) + 1
    return int(run[run > 0].sum())


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """The mask with its holes smaller than max_area pixels filled."""
    holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    if n == 0:
        return mask
    small = np.bincount(holes.ravel()) < max_area
    small[0] = False
    return mask | small[holes]


def measure_inscribed_radius(
    fragments: np.ndarray, n: int, lenses: np.ndarray | None = None, px_per_um: float = 1.0
) -> np.ndarray:
    """(n + 1,) float: radius (px) of the largest disc inside each fragment (index 0 -> 0); pixels
    where two fragments meet belong to neither, so a cut blob's pieces are measured apart. A
    fragment holding part of a lens (bool `lenses`, where two nuclei overlap) is measured with the
    whole of each lens it comes within 1.5 um of (the lens and that margin, as the lens's threshold
    leaves its edge to the fragment on its other side): under the lens lies the rest of its nucleus."""
    inner = fragments > 0
    for axis in (0, 1):
        for shift in (1, -1):
            inner &= np.roll(fragments, shift, axis=axis) == fragments
    radius = ndi.distance_transform_edt(inner)
    out = np.zeros(n + 1)
    np.maximum.at(out, fragments.ravel(), radius.ravel())
    out[0] = 0.0
    if lenses is None or not lenses.any():
        return out
    lens_labels, _ = ndi.label(lenses)
    margin = max(1, round(1.5 * px_per_um))
    frame = disk(margin)
    grown: dict[int, list] = {}  # fragment -> [(window, the lens and its margin there)]
    for j, box in enumerate(ndi.find_objects(lens_labels), start=1):
        window = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in box)
        near = ndi.binary_dilation(lens_labels[window] == j, structure=frame)
        for i in np.unique(fragments[window][near]):
            if i > 0:
                grown.setdefault(int(i), []).append((window, near))
    boxes = ndi.find_objects(fragments)
    for i, parts in grown.items():
        spans = [boxes[i - 1]] + [w for w, _ in parts]
        y0, y1 = min(w[0].start for w in spans), max(w[0].stop for w in spans)
        x0, x1 = min(w[1].start for w in spans), max(w[1].stop for w in spans)
        mine = inner[y0:y1, x0:x1] & (fragments[y0:y1, x0:x1] == i)
        for (ys, xs), near in parts:
            h, w = near.shape
            mine[ys.start - y0 : ys.start - y0 + h, xs.start - x0 : xs.start - x0 + w] |= near[
                : y1 - ys.start, : x1 - xs.start
            ]
        out[i] = max(out[i], float(ndi.distance_transform_edt(np.pad(mine, 1)).max()))
    return out
