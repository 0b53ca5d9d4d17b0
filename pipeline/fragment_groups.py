"""Grouping a window's nucleus fragments into cells (pipeline.detect, step 3).

Each fragment has claimed the cell body around it (a watershed on the body's distance map).
Fragments merge, strongest evidence first: lobes within one nucleus's reach, then fragments whose
regions meet without a waist (one round cell). Two round nuclei pressed together stay two cells
(packed blasts), unless they are a granulocyte's lobes: little chromatin in pink cytoplasm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from skimage.segmentation import relabel_sequential

from pipeline.shapes import find_root, find_seams, measure_inscribed_radius, project

if TYPE_CHECKING:
    from pipeline.detect import DetectConfig

__all__ = ["group_fragments", "measure_claims"]

# Two round nuclei pressed together are one granulocyte's lobes (an eosinophil's two) when they
# fill less than half of the body they claim (N:C 1:1 or less: a lymphocyte's, blast's or
# monocyte's nucleus fills two thirds of its cell or more) ...
_LOBED_MAX_NC = 0.5
# ... and the cytoplasm around them is pink: a granulocyte's (eosin and neutral granules) absorbs
# green light and little red, OD(R) < 0.5 OD(G); the basophilic (RNA) cytoplasm of lymphocytes,
# blasts and monocytes is blue or grey, absorbing red about as much as green or more.
_PINK_MAX_RED_GREEN = 0.5
# Lobes (pieces holding no round nucleus) within `max_lobe_gap_um` of each other are one nucleus
# while together they span at most this: an eosinophil's two lobes lie at the edge of its 12-15 um
# cell, so they span 10-13 um, beyond one round nucleus (`one_nucleus_um`).
_LOBES_SPAN_UM = 14.0


def group_fragments(
    fragments: np.ndarray, zones: np.ndarray, outside: np.ndarray, regions: np.ndarray, depth: np.ndarray,
    config: DetectConfig, px_per_um: float, lenses: np.ndarray | None = None, od: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(n + 1,) int: the cell (1..m) of each fragment label (index 0 -> 0).

    Inputs, (h, w) each: fragment labels; the nearest fragment of each pixel and the distance to
    it; the body region each fragment claimed; the body's distance map (depth); the lenses where
    nuclei overlap (bool, or None); the window's OD (h, w, 3), or None.

    Fragments merge, strongest evidence first, while the merged nucleus stays within
    `max_nucleus_um`: when they lie within one sure nucleus (`one_nucleus_um`) and no further
    apart than `max_lobe_gap_um`; or when the cell body joining their regions is at least
    `neck_ratio` as thick as the thinner of the two bodies (one round cell, not two touching).
    Two fragments each holding a round nucleus stay two cells, unless they fill less than half of
    the body they claim and the cytoplasm there is pink (`od` given): a granulocyte's lobes.
    """
    n = int(fragments.max())
    parent = np.arange(n + 1)
    if n >= 2:
        lows, highs = project(fragments, n)
        peaks = np.zeros(n + 1)
        np.maximum.at(peaks, regions.ravel(), depth.ravel())
        # A fragment holding a disc `round_nucleus_um` wide is a whole round nucleus, not a lobe:
        # two such fragments are two cells, however thick the matter between them.
        # A nucleus partly under another is measured whole: its fragment plus the lens it shares.
        cores = measure_inscribed_radius(fragments, n, lenses, px_per_um) >= config.round_nucleus_um * px_per_um / 2
        claims = None  # measured when first asked for (two round nuclei pressed together are rare)

        candidates = []  # (priority, a, b, needs_neck): lower priority merges first
        # Gap between two fragments: the two distances summed across the seam of their zones.
        for a, b, gap in find_seams(zones, outside, np.add):
            if gap + 1.0 <= config.max_lobe_gap_um * px_per_um:
                candidates.append((gap - 1e6, a, b, False))  # sure merges first, nearest first
        # Neck between two regions: the deepest point of the body on their common border.
        for a, b, neck in find_seams(regions, -depth, np.maximum):
            candidates.append((neck, a, b, True))  # neck < 0: thicker necks first
        one, most = config.one_nucleus_um * px_per_um, config.max_nucleus_um * px_per_um
        lobes_span = max(one, _LOBES_SPAN_UM * px_per_um)
        for priority, a, b, needs_neck in sorted(candidates):
            ra, rb = find_root(parent, a), find_root(parent, b)
            if ra == rb:
                continue
            low, high = np.minimum(lows[ra], lows[rb]), np.maximum(highs[ra], highs[rb])
            extent = float(np.max(high - low)) + 1.0
            if needs_neck:
                if extent > most or -priority < config.neck_ratio * min(peaks[ra], peaks[rb]):
                    continue
                if cores[ra] and cores[rb]:
                    if od is None:
                        continue  # two round nuclei pressed together: two cells
                    if claims is None:
                        claims = measure_claims(fragments, regions, od, n)
                    roots = np.array([find_root(parent, i) for i in range(n + 1)])
                    chromatin, claimed, red, green = claims[:, (roots == ra) | (roots == rb)].sum(axis=1)
                    if chromatin >= _LOBED_MAX_NC * claimed or red >= _PINK_MAX_RED_GREEN * green:
                        continue  # ... unless they are a granulocyte's lobes: little chromatin, pink cytoplasm
            elif extent > (one if cores[ra] or cores[rb] else lobes_span):
                continue  # one nucleus; or, neither a whole round nucleus, a granulocyte's lobes
            parent[rb] = ra
            lows[ra], highs[ra], peaks[ra] = low, high, max(peaks[ra], peaks[rb])
            cores[ra] = cores[ra] or cores[rb]
    roots = np.array([find_root(parent, i) for i in range(n + 1)])
    return relabel_sequential(roots)[0]


def measure_claims(fragments: np.ndarray, regions: np.ndarray, od: np.ndarray, n: int) -> np.ndarray:
    """(4, n + 1): per fragment label, its chromatin (px), the region it claimed (px), and the
    OD(R) and OD(G) summed over that region's cytoplasm (the region less every nucleus)."""
    cyto = (regions > 0) & (fragments == 0)
    return np.stack([
        np.bincount(fragments.ravel(), minlength=n + 1).astype(float),
        np.bincount(regions.ravel(), minlength=n + 1).astype(float),
        np.bincount(regions[cyto], od[..., 0][cyto], minlength=n + 1),
        np.bincount(regions[cyto], od[..., 1][cyto], minlength=n + 1),
    ])  # fmt: skip
