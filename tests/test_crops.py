"""Crops: fixed windows around centres, true relative size kept, border handled, labels matched."""

from __future__ import annotations

import numpy as np

from pipeline.crops import assign_labels, cut_crop, window_pixels


def test_window_follows_scale():
    assert window_pixels(24.0, 0.1) == 240
    assert window_pixels(24.0, 0.2) == 120


def test_crop_is_centred_on_the_cell():
    img = np.full((200, 300, 3), 230, np.uint8)
    img[95:106, 145:156] = 10  # an 11x11 dark square centred at (150, 100)
    crop = cut_crop(img, 150, 100, window_px=41, out_size=41)
    ys, xs = np.nonzero(crop[:, :, 0] < 100)
    assert crop.shape == (41, 41, 3) and ys.mean() == 20 and xs.mean() == 20


def test_same_cell_at_two_magnifications_gives_same_size_in_crop():
    def disc(scale):
        h = w = int(400 * scale)
        yy, xx = np.mgrid[:h, :w]
        img = np.full((h, w, 3), 230, np.uint8)
        img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (40 * scale) ** 2] = 20
        return img

    sizes = []
    for scale, upp in ((1.0, 0.2), (2.0, 0.1)):  # twice the pixels per micrometre
        crop = cut_crop(disc(scale), 200 * scale, 200 * scale, window_pixels(24, upp), 64)
        sizes.append((crop[:, :, 0] < 125).sum())
    assert abs(sizes[0] - sizes[1]) / sizes[0] < 0.05


def test_border_cell_is_padded_with_background_not_mirrored():
    img = np.full((100, 100, 3), 220, np.uint8)
    img[0:10, 0:10] = 0
    crop = cut_crop(img, 2, 2, window_px=40, out_size=40)
    assert crop.shape == (40, 40, 3)
    assert (crop[:18, :18] == 220).all()  # outside the image: background colour
    assert (crop[20:28, 20:28] == 0).all()  # the real dark corner


def test_labels_nearest_point_within_radius_else_default():
    centres = [(10, 10), (50, 50), (200, 200)]
    points = [[12, 11, 5, 1], [48, 52, None, 0], [51, 49, None, 1]]
    assert assign_labels(centres, points, default_label=None, fallback_radius_px=8) == [1, 1, None]
    assert assign_labels(centres, points, default_label=0, fallback_radius_px=8) == [1, 1, 0]
    assert assign_labels(centres, None, default_label=0, fallback_radius_px=8) == [0, 0, 0]
