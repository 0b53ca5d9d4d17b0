"""pipeline.shapes: the shape measurements the detector's rules rest on."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import line, polygon
from skimage.morphology import convex_hull_image, disk

from pipeline.shapes import DIRECTIONS, count_hull_pixels, find_near, measure_solidity, project


def _shapes() -> list[np.ndarray]:
    """Masks of every kind the detector meets: discs, thin lines at all slopes, random polygons,
    and ragged blobs (smoothed noise, its largest piece), some touching the array's edge."""
    rng = np.random.default_rng(3)
    masks = [np.pad(disk(r).astype(bool), 2) for r in range(1, 12)]
    for n in range(3, 20, 4):
        for r0, c0, r1, c1 in ((5, 2, 5, 2 + n), (1, 1, 1 + n, 1 + n // 2), (1, 20, 1 + n, 20 - n)):
            m = np.zeros((25, 25), bool)
            m[line(r0, c0, r1, c1)] = True
            masks.append(m)
    for _ in range(60):
        m = np.zeros((40, 40), bool)
        k = rng.integers(3, 8)
        m[polygon(rng.uniform(0, 40, k), rng.uniform(0, 40, k), m.shape)] = True
        masks.append(m)
    for _ in range(200):
        noise = ndi.gaussian_filter(rng.random(rng.integers(5, 60, 2)), rng.uniform(0.5, 4))
        labels, n = ndi.label(noise > rng.uniform(0.45, 0.6))
        if n:
            masks.append(labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]))
    return [m for m in masks if m.sum() >= 3]


def test_hull_pixels_are_counted_as_skimage_draws_the_hull():
    """Solidity thresholds were set with skimage's convex_hull_image: the hull count must be its
    exact pixel count on every shape, not an approximation of it."""
    masks = _shapes()
    assert len(masks) > 250
    got = [count_hull_pixels(m) for m in masks]
    want = [int(convex_hull_image(m).sum()) for m in masks]
    assert got == want


@pytest.mark.parametrize("side", [5, 12])
def test_a_square_is_solid_and_a_holed_or_bent_one_is_not(side):
    square = np.zeros((side + 6, side + 6), bool)
    square[3 : 3 + side, 3 : 3 + side] = True
    assert measure_solidity(square) == 1.0
    holed = square.copy()
    holed[5 : 1 + side, 5 : 1 + side] = False  # all but a 2-pixel frame
    assert measure_solidity(holed) == pytest.approx(holed.sum() / side**2)
    bent = square.copy()
    bent[3 : 3 + side - 2, 5 : 3 + side] = False  # an L: its hull adds the triangle it lacks
    assert measure_solidity(bent) < 0.9


def test_projections_of_labels_match_every_pixels_projection():
    """`project` reads only each label's outline pixels: its extremes along every direction must
    equal those over all of its pixels, for touching labels, holes, specks and labels at the edge."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        noise = ndi.gaussian_filter(rng.random(rng.integers(1, 70, 2)), rng.uniform(0.5, 4))
        labels, n = ndi.label(noise > np.median(noise))
        if trial % 3 == 0:  # touching labels: random ids inside the blobs
            labels = rng.integers(0, 6, labels.shape) * (labels > 0)
            n = int(labels.max())
        rows, cols = np.nonzero(labels)
        every = np.outer(cols, DIRECTIONS[:, 0]) + np.outer(rows, DIRECTIONS[:, 1])
        lows, highs = project(labels, n)
        for k in range(1, n + 1):
            mine = labels[rows, cols] == k
            if mine.any():
                assert np.array_equal(lows[k], every[mine].min(axis=0))
                assert np.array_equal(highs[k], every[mine].max(axis=0))
            else:
                assert np.all(np.isinf(lows[k])) and np.all(np.isinf(highs[k]))


def test_pixels_near_a_mask_are_those_its_euclidean_distance_map_gives():
    """`find_near` measures exact distances only around the mask: it must equal the whole image's
    Euclidean distance map thresholded, for blobs, specks, masks at the edge, empty masks and reach 0."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        mask = ndi.gaussian_filter(rng.random(rng.integers(1, 120, 2)), rng.uniform(0.5, 3)) > rng.uniform(0.5, 0.75)
        reach = int(rng.integers(0, 25))
        expected = ndi.distance_transform_edt(~mask) <= reach if mask.any() else np.zeros_like(mask)
        assert np.array_equal(find_near(mask, reach), expected)
