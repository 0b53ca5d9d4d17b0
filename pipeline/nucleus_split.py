"""Parting a chromatin blob into its nuclei (pipeline.detect, step 3).

Touching cells give one blob of chromatin. It is cut where its distance map has a neck (two pressed
nuclei meet at a waist, an oval or a dented nucleus has none), and, where the stain is given, along
the pale lines where pressed cells meet (paler in green too: a red cell's rim over a nucleus is
pale only in purple), which part even a packed clump whose outline shows no waist; a piece twice
as dark as all its neighbours is where two nuclei overlap, not a third cell, and the two pieces of
a crescent along one overlap lens are the one nucleus lying under the other.
Last, a piece holding two or more clean arcs of the outline, each a round nucleus's edge between two
notches, is parted among them (pipeline.nucleus_arcs): a nucleus pressed on all sides has no waist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold, sato
from skimage.morphology import disk, h_maxima
from skimage.segmentation import relabel_sequential, watershed

from pipeline.nucleus_arcs import split_at_arcs
from pipeline.shapes import find_root, find_seams, project

if TYPE_CHECKING:
    from pipeline.detect import DetectConfig

__all__ = [
    "find_boundary_lines",
    "find_overlap_lenses",
    "merge_overlaps",
    "merge_round_pieces",
    "split_fragments",
    "split_nuclei",
]

_SPLIT_DEPTH_UM = 0.5  # blobs are cut at necks 0.5 um thinner than both sides (pressed nuclei meet at shallow ones)
_LINE_WIDTH_UM = 0.6  # where pressed cells meet, a pale line about this wide (two membranes, a thin rim) ...
_LINE_HIGH = 0.04  # ... its ridge strength at least this fraction of the blob's level somewhere, half of it all along,
_LINE_OVER_TEXTURE = 2.0  # ... and this many times the ridges of the blob's chromatin texture (its 90th percentile)
_OVERLAP_LEVEL = 1.5  # a blob piece this much darker than all its neighbours is two nuclei overlapping
_LENS_ELONGATION = 1.6  # a lens where two nuclei overlap is this many times longer than wide, at least
_LENS_MIN_UM = 1.0  # ... and at least this wide (darker chromatin specks are narrower)
_LENS_EDGE = 1.4  # ... and reaches out to where its blurred edge falls to this many times the level
_ONE_SIDE_UM = 16.0  # pieces on one side of a lens spanning at most this (the largest blast nucleus) are one nucleus


def split_fragments(
    nucleus: np.ndarray, config: DetectConfig, px_per_um: float, blobs: np.ndarray | None = None,
    purple: np.ndarray | None = None, green: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(H, W) int32 labels of nucleus fragments: split_nuclei without the lenses."""
    return split_nuclei(nucleus, config, px_per_um, blobs, purple, green)[0]


def split_nuclei(
    nucleus: np.ndarray, config: DetectConfig, px_per_um: float, blobs: np.ndarray | None = None,
    purple: np.ndarray | None = None, green: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """((H, W) int32 labels of nucleus fragments, (H, W) bool lenses where nuclei overlap); a blob
    bigger than one sure nucleus is cut at its necks. `blobs`: ndi.label(nucleus)[0], when the
    caller has it (it is not changed). `purple`: the smoothed OD(R) - OD(B); given, the pale lines
    where pressed cells meet count as necks too, and overlap lenses part the nuclei they join
    (each lens's pixels go to the two fragments on its sides). `green`: OD(G), unsmoothed; given,
    a line must be paler in green too (a red cell's rim over a nucleus is not)."""
    labels = ndi.label(nucleus)[0] if blobs is None else blobs.copy()
    n = int(labels.max())
    all_lenses = np.zeros(labels.shape, bool)
    if n == 0:
        return labels.astype(np.int32), all_lenses
    lows, highs = project(labels, n)
    extents = np.max(highs - lows, axis=1) + 1.0  # Feret diameters (px)
    h = _SPLIT_DEPTH_UM * px_per_um
    next_label = n + 1
    boxes = ndi.find_objects(labels)
    for index in np.flatnonzero(extents[1:] > config.one_nucleus_um * px_per_um) + 1:
        sl = boxes[index - 1]
        blob = labels[sl] == index
        solid, lenses = blob, np.zeros_like(blob)
        if purple is not None:
            lenses = find_overlap_lenses(blob, purple[sl], px_per_um)
            solid = blob & ~find_boundary_lines(blob, purple[sl], config, px_per_um, lenses, _smooth(green, sl))
        distance = ndi.distance_transform_edt(np.pad(solid, 1))[1:-1, 1:-1]
        # Nuclei are told apart with their overlaps left out: a lens parts the two it joins.
        parted = ndi.distance_transform_edt(np.pad(solid & ~lenses, 1))[1:-1, 1:-1] if lenses.any() else distance
        markers, k = ndi.label(h_maxima(parted, h))
        if k < 2:
            pieces = blob.astype(np.int32)
        else:
            all_lenses[sl] |= lenses
            pieces = watershed(-parted, markers, mask=blob)
            if purple is not None:
                pieces = merge_overlaps(pieces, purple[sl])
            pieces = merge_round_pieces(pieces, distance, config.split_neck_ratio, lenses)
            if lenses.any():
                pieces = merge_lens_sides(pieces, lenses, _ONE_SIDE_UM * px_per_um)
        # Nuclei pressed on all sides show no neck, but their edge on the outline is an arc.
        pieces = split_at_arcs(pieces, blob, config, px_per_um)
        if pieces.max() < 2:
            continue
        sub = labels[sl]
        for piece in range(2, int(pieces.max()) + 1):
            sub[pieces == piece] = next_label
            next_label += 1
    return labels.astype(np.int32), all_lenses


def _smooth(image: np.ndarray | None, box: tuple[slice, slice]) -> np.ndarray | None:
    """`image` smoothed as the purple signal is (a 1 px Gaussian), within `box` (computed on the box
    with a 4 px margin, so it equals smoothing the whole image there up to the image's own edge)."""
    if image is None:
        return None
    outer = tuple(slice(max(0, s.start - 4), min(n, s.stop + 4)) for s, n in zip(box, image.shape))
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
    return ndi.gaussian_filter(image[outer], 1.0)[inner]


def merge_lens_sides(pieces: np.ndarray, lenses: np.ndarray, max_extent: float) -> np.ndarray:
    """(h, w) int labels 1..k' of a blob's pieces after joining the pieces that reach one overlap
    lens from the same side. A lens is where two nuclei overlap: one lies on each side of it. The
    nucleus under the other shows only a crescent, which can have a waist of its own and fall
    into two pieces, both along the lens on its side: when exactly three pieces reach a lens, two
    of them from one side and meeting each other, those two are that nucleus (while they span at
    most `max_extent` px, one nucleus). Four or more pieces at one lens are a junction of several
    nuclei, left as they are."""
    k = int(pieces.max())
    lens_labels, n = ndi.label(lenses)
    if k < 3 or n == 0:
        return pieces
    parent = np.arange(k + 1)
    rows, cols = np.nonzero(pieces)
    lows, highs = project(pieces, k)
    meet = {(a, b) for a, b, _ in find_seams(pieces, np.zeros(pieces.shape), np.maximum)}
    for j in range(1, n + 1):
        lens = lens_labels == j
        ly, lx = np.nonzero(lens)
        if ly.size < 3:
            continue
        cov = np.cov(np.vstack([lx, ly]))
        normal = np.linalg.eigh(cov)[1][:, 0]  # the lens's short axis: across it, from one nucleus to the other
        touching = [int(p) for p in np.unique(pieces[lens]) if p > 0]
        if len(touching) != 3:
            continue  # two pieces: the two nuclei; four or more: a junction of several nuclei
        sides = {}
        for piece in touching:
            mine = pieces[rows, cols] == piece
            offset = np.array([cols[mine].mean() - lx.mean(), rows[mine].mean() - ly.mean()])
            sides.setdefault(bool(offset @ normal > 0), []).append(piece)
        for group in sides.values():
            if len(group) != 2 or (min(group), max(group)) not in meet:
                continue  # one nucleus on this side, or two pieces that do not meet
            a, b = find_root(parent, group[0]), find_root(parent, group[1])
            low, high = np.minimum(lows[a], lows[b]), np.maximum(highs[a], highs[b])
            if a != b and float(np.max(high - low)) + 1.0 <= max_extent:
                parent[b] = a
                lows[a], highs[a] = low, high
    roots = np.array([find_root(parent, i) for i in range(k + 1)])
    return relabel_sequential(roots)[0][pieces]


def merge_overlaps(pieces: np.ndarray, purple: np.ndarray) -> np.ndarray:
    """(h, w) int labels 1..k' of a blob's pieces after merging every piece where two cells lie one
    over the other into the neighbour it shares the longest seam with. Chromatin absorbs as
    layers add (Beer-Lambert), so where one nucleus lies over another the stain reads about twice
    as dark: a piece whose median OD(R) - OD(B) is at least `_OVERLAP_LEVEL` times that of every
    neighbour is such an overlap, not a cell of its own."""
    k = int(pieces.max())
    if k < 2:
        return pieces
    inside = pieces > 0
    order = np.argsort(pieces[inside], kind="stable")
    counts = np.bincount(pieces[inside], minlength=k + 1)
    values = np.split(purple[inside][order], np.cumsum(counts[1:])[:-1])
    level = np.array([0.0] + [float(np.median(v)) if v.size else 0.0 for v in values])
    base = k + 1
    keys = []
    for la, lb in ((pieces[:, :-1], pieces[:, 1:]), (pieces[:-1, :], pieces[1:, :])):
        meet = (la != lb) & (la > 0) & (lb > 0)
        keys.append(la[meet].astype(np.int64) * base + lb[meet])
        keys.append(lb[meet].astype(np.int64) * base + la[meet])
    pairs, length = np.unique(np.concatenate(keys), return_counts=True)
    parent = np.arange(k + 1)
    for a in range(1, k + 1):
        mine = pairs // base == a
        if not mine.any():
            continue
        others = pairs[mine] % base
        if np.all(level[a] >= _OVERLAP_LEVEL * level[others]):
            parent[a] = others[np.argmax(length[mine])]
    roots = np.array([find_root(parent, i) for i in range(k + 1)])
    return relabel_sequential(roots)[0][pieces]


def find_overlap_lenses(blob: np.ndarray, purple: np.ndarray, px_per_um: float) -> np.ndarray:
    """(h, w) bool: the lenses inside one chromatin blob where one nucleus lies over another. Light
    crosses both there, so the lens reads about twice the blob's level (at least `_OVERLAP_LEVEL`
    times its median), and two overlapping discs leave a lens much longer than it is wide (at least
    `_LENS_ELONGATION`: 2 for discs overlapping by a fifth of their diameter) with a tip at each
    notch, where a darker whole nucleus is about round. Left out of the distance map, a lens parts
    the two nuclei it joins, however little waist their outline shows."""
    level = float(np.median(purple[blob]))
    if not np.any(purple[blob] >= _OVERLAP_LEVEL * level):
        return np.zeros_like(blob)
    # Seeded at `_OVERLAP_LEVEL` x the level, grown out to `_LENS_EDGE` x (its blurred edge).
    dark = blob & apply_hysteresis_threshold(purple, _LENS_EDGE * level, _OVERLAP_LEVEL * level)
    radius = max(1, round(_LENS_MIN_UM * px_per_um / 2))
    dark = ndi.binary_opening(dark, structure=disk(radius))
    labels, n = ndi.label(dark)
    if n == 0:
        return dark
    lows, highs = project(labels, n)
    length = np.max(highs - lows, axis=1) + 1.0
    inscribed = np.zeros(n + 1)
    np.maximum.at(inscribed, labels.ravel(), ndi.distance_transform_edt(np.pad(dark, 1))[1:-1, 1:-1].ravel())
    keep = length >= _LENS_ELONGATION * 2 * inscribed
    keep[0] = False
    return keep[labels]


def find_boundary_lines(
    blob: np.ndarray, purple: np.ndarray, config: DetectConfig, px_per_um: float, lenses: np.ndarray | None = None,
    green: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(h, w) bool: the pale lines inside one chromatin blob where pressed cells meet (their
    membranes and the thin rim between them). A ridge filter (Sato, at the scale of a line
    `_LINE_WIDTH_UM` wide) finds thin pale lines however faint; a line is kept where it is at least
    `_LINE_HIGH` of the blob's median level deep (and `_LINE_OVER_TEXTURE` times the ridges of its
    chromatin texture) somewhere and half that all along (hysteresis, so a line fading in the
    middle stays whole), and where it runs in from the blob's outline
    (from the notch at each end of a shared boundary): pale spots inside one nucleus (nucleoli,
    chromatin texture) do not reach it. The pale foot of a lens's edge (`lenses`: where nuclei
    overlap) is no boundary: lines within 1 um of a lens are dropped. With `green` (OD(G), smoothed
    like `purple`), a line must also pass more green light than the chromatin within 1 um of it:
    less chromatin is paler in every colour, a red cell's rim over a nucleus is not."""
    sigma = max(0.7, _LINE_WIDTH_UM * px_per_um / 2)
    level = float(np.median(purple[blob]))
    ridge = sato(purple, sigmas=[sigma], black_ridges=True, mode="nearest") / max(level, 1e-6)
    # Lines must stand out of the blob's own texture: mottled chromatin has ridges everywhere.
    high = max(_LINE_HIGH, _LINE_OVER_TEXTURE * float(np.percentile(ridge[blob], 90)))
    line = apply_hysteresis_threshold(ridge, high / 2, high) & blob
    if lenses is not None and lenses.any():
        line &= ~ndi.binary_dilation(lenses, structure=disk(max(1, round(px_per_um))))
    if not line.any():
        return line
    labels, n = ndi.label(line, structure=np.ones((3, 3)))
    rim = blob & ~ndi.binary_erosion(np.pad(blob, 1))[1:-1, 1:-1]
    reaches = np.zeros(n + 1, bool)
    reaches[labels[rim]] = True
    reaches[0] = False
    if green is not None:
        # Where pressed cells meet there is less chromatin, so the line passes more green light
        # (chromatin's strongest absorption) than the chromatin within 1 um of it. A red cell's
        # rim lying over a nucleus makes a line as little purple, but no paler in green
        # (haemoglobin absorbs green): it is no boundary.
        width = max(1, round(px_per_um))
        kept = np.where(reaches[labels], labels, 0)
        near = ndi.grey_dilation(kept, footprint=disk(width))  # the (highest) kept line within 1 um
        ring = blob & ~line & (near > 0)
        line_green = np.bincount(kept.ravel(), green.ravel(), minlength=n + 1)
        line_px = np.bincount(kept.ravel(), minlength=n + 1)
        ring_green = np.bincount(near[ring], green[ring], minlength=n + 1)
        ring_px = np.bincount(near[ring], minlength=n + 1)
        dark = (ring_px > 0) & (line_green * ring_px >= ring_green * line_px)
        reaches &= ~dark
    return reaches[labels]


def merge_round_pieces(
    pieces: np.ndarray, distance: np.ndarray, ratio: float, lenses: np.ndarray | None = None
) -> np.ndarray:
    """(h, w) int labels 1..k' of a blob's watershed pieces after merging every two whose neck is at
    least `ratio` as thick as the thinner piece (an oval or dented nucleus is one, two nuclei pressed
    together meet at a waist); `distance` is the blob's distance map, so a piece's thickness is its
    peak and a neck's is the deepest point of the seam between two pieces. A seam through `lenses`
    (bool, where nuclei overlap: find_overlap_lenses) is no neck there: a lens lies between two
    nuclei, not inside one."""
    k = int(pieces.max())
    peaks = np.zeros(k + 1)
    np.maximum.at(peaks, pieces.ravel(), distance.ravel())
    parent = np.arange(k + 1)
    necks = distance if lenses is None else np.where(lenses, 0.0, distance)
    seams = [(-cost / min(peaks[a], peaks[b]), a, b) for a, b, cost in find_seams(pieces, -necks, np.maximum)]
    for rel, a, b in sorted(seams, reverse=True):  # thickest necks (relative) first
        ra, rb = find_root(parent, a), find_root(parent, b)
        if ra == rb or rel * min(peaks[a], peaks[b]) < ratio * min(peaks[ra], peaks[rb]):
            continue
        parent[rb] = ra
        peaks[ra] = max(peaks[ra], peaks[rb])
    roots = np.array([find_root(parent, i) for i in range(k + 1)])
    return relabel_sequential(roots)[0][pieces]
