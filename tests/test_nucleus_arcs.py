"""Packed round nuclei parted by the arcs of their outline (pipeline.nucleus_arcs), while ovals and
a neutrophil's lobes stay as they were."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.detect import DetectConfig, detect_cells
from pipeline.nucleus_arcs import find_arc_discs
from pipeline.nucleus_split import split_fragments

PX_PER_UM = 4.0


def _discs(discs, shape) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([np.hypot(yy - cy, xx - cx) <= r for cy, cx, r in discs], axis=0)


def _row_under_one(step: float, rise: float) -> list[tuple[float, float, float]]:
    """Three nuclei (6.5 um radius) in a row, each over the next, and an 8 um one lying over the
    top of all three: the row's notches show on its lower side only."""
    r = 26
    return [(130, 70 + i * step * r, r) for i in range(3)] + [(130 - rise * r, 70 + step * r, 32)]


@pytest.mark.parametrize("step, rise", [(1.3, 1.3), (1.5, 1.3)])
def test_nuclei_pressed_on_all_sides_part_at_the_arcs_of_the_outline(step, rise, monkeypatch):
    import pipeline.nucleus_split as nucleus_split

    discs = _row_under_one(step, rise)
    blob = _discs(discs, (200, 260))
    labels = split_fragments(blob, DetectConfig(), PX_PER_UM)
    assert int(labels.max()) == 4
    assert len({int(labels[int(cy), int(cx)]) for cy, cx, _ in discs}) == 4
    # The necks alone (the arcs left out) do not find them all.
    monkeypatch.setattr(nucleus_split, "split_at_arcs", lambda pieces, *args: pieces)
    assert int(split_fragments(blob, DetectConfig(), PX_PER_UM).max()) < 4


@pytest.mark.parametrize("half_axes", [(8, 6), (7, 5.5), (9, 6)])
def test_an_oval_nucleus_dented_on_both_sides_stays_one(half_axes):
    """Each end of the oval is a clean arc between the dents, but the oval fills its ellipse."""
    a, b = half_axes
    yy, xx = np.mgrid[:120, :160]
    oval = ((yy - 60) / (b * PX_PER_UM)) ** 2 + ((xx - 80) / (a * PX_PER_UM)) ** 2 <= 1
    for side in (-1, 1):  # a dent 1 um deep in the middle of each long side
        oval &= np.hypot(yy - (60 + side * (b + 0.5) * PX_PER_UM), xx - 80) > 1.2 * PX_PER_UM
    assert len(find_arc_discs(oval, DetectConfig(), PX_PER_UM)) == 2
    assert int(split_fragments(oval, DetectConfig(), PX_PER_UM).max()) == 1


def test_a_neutrophils_lobes_are_no_arcs_of_a_nucleus():
    """Four lobes (2 um radius) in a bent chain: their arcs are far smaller than a round nucleus."""
    lobes = [(60, 40, 8), (52, 62, 8), (60, 84, 8), (74, 100, 8)]
    assert find_arc_discs(_discs(lobes, (120, 140)), DetectConfig(), PX_PER_UM) == []


def test_a_cluster_of_seven_blasts_gives_seven_cells():
    """Seed 3's sixth ALL-like field: seven packed blasts, two pressed on all sides against their
    neighbours; each blast is found as exactly one cell."""
    from pipeline.synth import make_image_rng
    from pipeline.synth_all import ALL_FIELD, make_all_smear

    image, _, truth = make_all_smear(make_image_rng(3, 5, 0), ALL_FIELD, (3, 5))
    members = [c for c in truth if c.cluster == 1 and not c.smudge]
    assert len(members) == 7
    cells = [c for c in detect_cells(image).cells if c.kind == "wbc"]
    centres = np.array([(c.x, c.y) for c in cells])
    owners = []
    for m in members:
        d = np.hypot(centres[:, 0] - m.x, centres[:, 1] - m.y)
        inside = np.flatnonzero(d <= m.r)
        assert inside.size, f"no cell found for the blast at ({m.x:.0f}, {m.y:.0f})"
        owners.append(int(inside[np.argmin(d[inside])]))
    assert len(set(owners)) == 7


@pytest.mark.parametrize("spread", [0.5, 0.6, 0.7])
def test_a_two_by_two_clump_shows_one_arc_per_nucleus(spread):
    """Four nuclei (7 um radius) packed 2 x 2, centres `spread` radii from the clump's centre on
    each axis: one broad summit on the distance map, but four arcs, each fitting its nucleus."""
    r, centre = 28, 80
    nuclei = [(centre + dy * spread * r, centre + dx * spread * r) for dy in (-1, 1) for dx in (-1, 1)]
    blob = _discs([(cy, cx, r) for cy, cx in nuclei], (160, 160))
    discs = find_arc_discs(blob, DetectConfig(), PX_PER_UM)
    assert len(discs) == 4
    for cy, cx in nuclei:
        assert min(np.hypot(d.y - cy, d.x - cx) for d in discs) < 0.1 * r
    assert all(abs(d.r - r) < 0.1 * r for d in discs)
    assert int(split_fragments(blob, DetectConfig(), PX_PER_UM).max()) == 4
