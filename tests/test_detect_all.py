"""Leukemic smears (issue 9): packed blast clusters split into their cells, smudge cells told
apart, neutrophils kept whole, and the ALL-like synthetic cohort with its truth."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pipeline.detect import detect_cells
from pipeline.schema import KIND_SMUDGE, KIND_WBC
from pipeline.synth import RBC_DIAMETER_UM, SmearStyle, _mix_stains, _photograph
from pipeline.synth_cells import NEUTROPHIL, draw_blast_cluster, draw_smudge_cell, draw_white_cell
from pipeline.synth_cohort import write_cohort

STYLE = SmearStyle()  # red cells 42 px across
PX_PER_UM = STYLE.rbc_diameter_px / RBC_DIAMETER_UM
UM_PER_PX = 1 / PX_PER_UM


def canvas(width: int, height: int):
    stains = _mix_stains(STYLE)
    od = np.empty((height, width, 3), np.float32)
    od[:] = stains.plasma
    return od, stains


def packed(x: float, y: float, k: int, rng: np.random.Generator, overlap: float) -> list[tuple[float, float, float]]:
    """k blasts (radius 6.5-8 um) in a row or a bent chain, centres `overlap` x (r1 + r2) apart."""
    members = [(x, y, rng.uniform(6.5, 8.0) * PX_PER_UM)]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(k - 1):
        r = rng.uniform(6.5, 8.0) * PX_PER_UM
        px, py, pr = members[-1]
        angle += rng.uniform(-0.6, 0.6)
        d = (pr + r) * overlap
        members.append((px + d * np.cos(angle), py + d * np.sin(angle), r))
    return members


def nearest_detection_counts(cells, truth_xy, radius):
    """How many detections fall within `radius` of each truth centre (each to its nearest)."""
    counts = np.zeros(len(truth_xy), int)
    for c in cells:
        d = np.hypot(truth_xy[:, 0] - c.x, truth_xy[:, 1] - c.y)
        if d.min() <= radius[d.argmin()]:
            counts[d.argmin()] += 1
    return counts


@pytest.mark.parametrize("k, overlap", [(2, 0.8), (2, 0.92), (3, 0.85), (4, 0.8), (5, 0.9)])
def test_packed_blast_cluster_gives_exactly_one_cell_per_blast(k, overlap):
    rng = np.random.default_rng(100 * k + int(100 * overlap))
    od, stains = canvas(700, 700)
    members = packed(350, 350, k, rng, overlap)
    members = [
        (x - np.mean([m[0] for m in members]) + 350, y - np.mean([m[1] for m in members]) + 350, r)
        for x, y, r in members
    ]
    drawn = draw_blast_cluster(od, rng, members, stains)
    assert len(drawn) == k
    cells = detect_cells(_photograph(od, rng, STYLE), um_per_pixel=UM_PER_PX).cells
    truth = np.array([(d.x, d.y) for d in drawn])
    assert len(cells) == k
    assert nearest_detection_counts(cells, truth, [d.r for d in drawn]).tolist() == [1] * k
    # A blob of pressed nuclei is parted into its cells (a membrane line may part some already).
    assert all(c.kind == KIND_WBC and 1 <= c.n_split <= k for c in cells)


def test_neutrophils_stay_one_cell_each():
    rng = np.random.default_rng(5)
    od, stains = canvas(900, 300)
    drawn = [draw_white_cell(od, rng, NEUTROPHIL, x, 150, 6.8 * PX_PER_UM, stains) for x in (150, 450, 750)]
    cells = detect_cells(_photograph(od, rng, STYLE), um_per_pixel=UM_PER_PX).cells
    assert len(cells) == 3
    truth = np.array([(d.x, d.y) for d in drawn])
    assert nearest_detection_counts(cells, truth, [d.r for d in drawn]).tolist() == [1] * 3
    assert all(c.kind == KIND_WBC and c.n_split == 1 for c in cells)


def test_smudge_cells_are_called_smudge_and_intact_cells_are_not():
    """Six smudge cells of varied net and size, four intact cells: at least five smudge calls
    (the detector finds ~85% of synthetic smudge cells, see benchmarks/detect_quality.py), every
    smudge call on a smudge cell, every intact cell intact."""
    rng = np.random.default_rng(11)
    od, stains = canvas(1200, 950)
    smudges = [
        draw_smudge_cell(od, rng, x, y, rng.uniform(6, 10) * PX_PER_UM, stains)
        for x in (200, 600, 1000)
        for y in (170, 430)
    ]
    intact = draw_blast_cluster(od, rng, [(200, 760, 7 * PX_PER_UM)], stains)
    intact += draw_blast_cluster(od, rng, packed(600, 760, 2, rng, 0.85), stains)
    intact.append(draw_white_cell(od, rng, NEUTROPHIL, 1000, 760, 6.8 * PX_PER_UM, stains))
    cells = detect_cells(_photograph(od, rng, STYLE), um_per_pixel=UM_PER_PX).cells
    smudge_cells = [c for c in cells if c.kind == KIND_SMUDGE]
    wbc = [c for c in cells if c.kind == KIND_WBC]
    assert len(smudge_cells) >= 5 and len(smudge_cells) + len(wbc) == 10
    for c in smudge_cells:
        assert min(np.hypot(c.x - s.x, c.y - s.y) for s in smudges) < 8 * PX_PER_UM
    near_intact = [c for c in wbc if min(np.hypot(c.x - s.x, c.y - s.y) for s in intact) < 7 * PX_PER_UM]
    assert len(near_intact) == 4


def test_all_profile_cohort_has_crowded_fields_smudge_rows_and_clusters(tmp_path):
    summary = write_cohort(tmp_path, patients=1, images_per_patient=1, seed=2, size=(1712, 1368), profile="all")
    with (tmp_path / "truth" / "cells.csv").open() as f:
        rows = list(csv.DictReader(f))
    smudge = [r for r in rows if r["kind"] == KIND_SMUDGE]
    intact = [r for r in rows if r["kind"] == KIND_WBC]
    assert rows[0]["image"].endswith(".jpg") and (tmp_path / "slides" / rows[0]["image"]).exists()
    assert 10 <= len(rows) <= 40 and len(intact) == summary.n_wbc
    assert all(r["label"] == "" for r in smudge) and all(r["label"] in ("0", "1") for r in intact)
    clusters = [r["cluster"] for r in intact if r["cluster"]]
    assert clusters and all(r["label"] == "1" for r in intact if r["cluster"])
    assert all(clusters.count(c) >= 2 for c in set(clusters))  # a cluster holds 2-10 blasts


def test_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        write_cohort(tmp_path, patients=1, images_per_patient=1, profile="cll")


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


@pytest.mark.parametrize(
    "centres, radii, pieces",
    [
        ([(40, 30), (40, 62)], (18, 18), 2),  # two round nuclei pressed together: a waist, two cells
        ([(40, 60)], ((16, 28),), 1),  # an oval nucleus (1.75 : 1): one
        ([(40, 36), (40, 58), (40, 80)], (16, 16, 16), 3),  # a row of three pressed nuclei: three
    ],
)
def test_nucleus_is_cut_at_a_waist_not_across_an_oval(centres, radii, pieces):
    from scipy import ndimage as ndi

    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    blob = np.zeros((80, 120), bool)
    yy, xx = np.mgrid[:80, :120]
    for (cy, cx), r in zip(centres, radii):
        ry, rx = r if isinstance(r, tuple) else (r, r)
        blob |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    labels = split_fragments(blob, DetectConfig(), px_per_um=4.0)  # 18 px = 4.5 um: a blast's nucleus radius
    assert ndi.label(blob)[1] == 1 and int(labels.max()) == pieces


def test_neck_merge_keeps_an_uneven_outline_whole():
    """A dented nucleus: the distance map has two maxima but the seam between them is as thick as
    the thinner side, so the pieces merge back."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from pipeline.nucleus_split import merge_round_pieces

    blob = _disc((80, 100), 40, 45, 22) | _disc((80, 100), 40, 55, 22)
    distance = ndi.distance_transform_edt(blob)
    markers = np.zeros(blob.shape, int)
    markers[40, 40], markers[40, 60] = 1, 2
    pieces = watershed(-distance, markers, mask=blob)
    assert int(merge_round_pieces(pieces, distance, 0.95).max()) == 1
    waist = _disc((80, 100), 40, 28, 18) | _disc((80, 100), 40, 64, 18)  # tangent-ish: a narrow neck
    distance = ndi.distance_transform_edt(waist)
    markers = np.zeros(waist.shape, int)
    markers[40, 28], markers[40, 64] = 1, 2
    pieces = watershed(-distance, markers, mask=waist)
    assert int(merge_round_pieces(pieces, distance, 0.95).max()) == 2


def test_a_smudge_too_pale_for_the_nucleus_mask_is_still_called_smudge():
    """A faint burst net (a third of the usual stain: below the nucleus threshold) is found by the
    pale-net pass and called smudge; without that pass it is not found at all; the blast beside it
    stays one intact cell, and a round pale patch is not called anything."""
    from dataclasses import replace

    from pipeline.detect import DetectConfig

    rng = np.random.default_rng(5)
    od, stains = canvas(1100, 500)
    faint = np.zeros_like(od)
    smudge = draw_smudge_cell(faint, rng, 250, 250, 8 * PX_PER_UM, stains)
    od += (faint / 3).astype(np.float32)
    (blast,) = draw_blast_cluster(od, rng, [(600, 250, 7 * PX_PER_UM)], stains)
    yy, xx = np.mgrid[:500, :1100]
    disc = (yy - 250) ** 2 + (xx - 900) ** 2 <= (7 * PX_PER_UM) ** 2  # a round pale patch
    purple = float(stains.nucleus[0] - stains.nucleus[2])  # OD(R) - OD(B) per unit of chromatin
    od[disc] += (0.09 / purple) * stains.nucleus  # as pale as the net: above smudge_min_od, below nuclei
    image = _photograph(od, rng, STYLE)
    cells = detect_cells(image, um_per_pixel=UM_PER_PX).cells
    got = sorted((c.kind, round(np.hypot(c.x - smudge.x, c.y - smudge.y) / PX_PER_UM)) for c in cells)
    near = [(c.kind, c) for c in cells if np.hypot(c.x - smudge.x, c.y - smudge.y) < 8 * PX_PER_UM]
    assert [k for k, _ in near] == [KIND_SMUDGE], got
    assert [c.kind for c in cells if np.hypot(c.x - blast.x, c.y - blast.y) < 7 * PX_PER_UM] == [KIND_WBC]
    assert len(cells) == 2, got  # nothing on the round patch
    without = detect_cells(image, replace(DetectConfig(), smudge_min_um=60.0), um_per_pixel=UM_PER_PX).cells
    assert all(np.hypot(c.x - smudge.x, c.y - smudge.y) >= 8 * PX_PER_UM for c in without)


def _pressed_clump(with_lines: bool, line_green: float | None = None):
    """(blob, purple) of four round nuclei (7 um radius at 4 px/um) packed in a 2 x 2 clump, centres
    1.4 radii apart, so the clump is one solid blob whose distance map has one broad summit: only
    the pale lines where the nuclei meet, or the arcs of its outline, tell them apart."""
    from scipy import ndimage as ndi

    shape, r = (160, 160), 28
    centres = [(80 + dy * 0.7 * r, 80 + dx * 0.7 * r) for dy in (-1, 1) for dx in (-1, 1)]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dist = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    blob = ndi.binary_fill_holes((dist <= r).any(axis=0))
    purple = np.where(blob, 0.5, 0.0)
    green = np.where(blob, 1.0, 0.1)
    if with_lines:
        nearest = np.sort(dist, axis=0)
        lines = blob & (nearest[1] - nearest[0] < 2.0)
        purple[lines] = 0.3  # where two nuclei meet: a pale line ~1 um wide
        green[lines] = 0.6 if line_green is None else line_green
    if line_green is None:
        return blob, ndi.gaussian_filter(purple, 1.0).astype(np.float32)
    return blob, ndi.gaussian_filter(purple, 1.0).astype(np.float32), green.astype(np.float32)


def test_pale_lines_where_pressed_nuclei_meet_split_a_clump_its_necks_cannot(monkeypatch):
    import pipeline.nucleus_split as nucleus_split
    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    blob, purple = _pressed_clump(with_lines=True)
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=purple).max()) == 4
    # The four arcs of its outline part it too (tests/test_nucleus_arcs.py); without them, the
    # necks (no stain given, or no lines in it) do not show four nuclei, and the lines do.
    monkeypatch.setattr(nucleus_split, "split_at_arcs", lambda pieces, *args: pieces)
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=purple).max()) == 4
    assert int(split_fragments(blob, DetectConfig(), 4.0).max()) < 4
    blob, flat = _pressed_clump(with_lines=False)
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=flat).max()) < 4


@pytest.mark.parametrize("line_green, pieces", [(0.6, 4), (1.15, 1), (1.3, 1)])
def test_a_line_is_a_boundary_only_where_it_is_paler_in_green_too(line_green, pieces, monkeypatch):
    """The same pale lines in OD(R) - OD(B): where pressed cells meet there is less chromatin, so
    the line is paler in green too (0.6 against 1.0) and parts the clump; a red cell's rim over a
    nucleus makes a line as little purple but darker in green (1.15, 1.3): no boundary."""
    import pipeline.nucleus_split as nucleus_split
    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    monkeypatch.setattr(nucleus_split, "split_at_arcs", lambda pieces, *args: pieces)  # the lines alone
    blob, purple, green = _pressed_clump(with_lines=True, line_green=line_green)
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=purple, green=green).max()) == pieces


def test_a_blast_under_two_red_cells_rims_stays_one_cell(monkeypatch):
    """ALL-like seed 4, field 4: one blast (truth radius 46 px) whose edge two red cells overlap;
    their rims cross its nucleus as pale purple lines. They are no paler in green, so it stays
    one cell; read in purple alone they cut it in two."""
    import pipeline.nucleus_split as nucleus_split
    from pipeline.synth import make_image_rng
    from pipeline.synth_all import ALL_FIELD, make_all_smear

    image, _, truth = make_all_smear(make_image_rng(4, 4, 0), ALL_FIELD, (4, 4))
    blast = min(truth, key=lambda c: np.hypot(c.x - 589, c.y - 842))
    assert blast.kind == "lymphoblast" and blast.cluster == 0

    def on_it(cells):
        return [c for c in cells if np.hypot(c.x - blast.x, c.y - blast.y) <= blast.r]

    assert len(on_it(detect_cells(image).cells)) == 1
    lines = nucleus_split.find_boundary_lines
    monkeypatch.setattr(
        nucleus_split, "find_boundary_lines", lambda blob, purple, config, ppu, lenses=None, green=None: lines(
            blob, purple, config, ppu, lenses
        ),
    )  # fmt: skip
    assert len(on_it(detect_cells(image).cells)) == 2


def _lens_pieces(right_pieces: int):
    """(pieces, lens) of two overlapping nuclei: a disc on the left (piece 1), the lens where they
    overlap (a vertical band), and the crescent of the nucleus under it on the right, cut at its
    waist into `right_pieces` pieces stacked top to bottom."""
    shape = (80, 110)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    left, right = np.hypot(yy - 40, xx - 38) <= 28, np.hypot(yy - 40, xx - 72) <= 24
    lens = left & right
    pieces = np.zeros(shape, np.int32)
    pieces[left] = 1
    crescent = right & ~left
    bands = np.minimum((yy * right_pieces) // shape[0], right_pieces - 1)
    pieces[crescent] = 2 + bands[crescent]
    pieces[lens & (xx >= 55)] = 2 + bands[lens & (xx >= 55)]  # the lens's right half to the crescent
    return pieces, lens


@pytest.mark.parametrize("right_pieces, expected", [(2, 2), (3, 4)])
def test_the_two_pieces_of_a_crescent_along_one_lens_are_one_nucleus(right_pieces, expected):
    """A lens lies between two nuclei, one on each side. The crescent of the nucleus under the
    other, cut in two at its waist, is one nucleus again (2 pieces in all); a lens that four pieces
    reach is a junction of several nuclei and is left alone."""
    from pipeline.nucleus_split import merge_lens_sides

    pieces, lens = _lens_pieces(right_pieces)
    assert int(pieces.max()) == right_pieces + 1
    merged = merge_lens_sides(pieces, lens, max_extent=16.0 * 4)
    assert int(merged.max()) == expected
    assert len(np.unique(merged[pieces == 1])) == 1 and not np.isin(merged[pieces == 1], merged[pieces >= 2]).any()


def test_two_overlapping_blasts_whose_crescent_has_a_waist_give_two_cells(monkeypatch):
    """ALL-like seed 8, field 1: two overlapping blasts (cluster 3). The one underneath shows a
    crescent with a waist, which fell into two pieces: joined along the lens, two cells."""
    import pipeline.nucleus_split as nucleus_split
    from pipeline.synth import make_image_rng
    from pipeline.synth_all import ALL_FIELD, make_all_smear

    image, _, truth = make_all_smear(make_image_rng(8, 1, 0), ALL_FIELD, (8, 1))
    pair = [c for c in truth if np.hypot(c.x - 85, c.y - 190) < 60]
    assert len(pair) == 2 and pair[0].cluster == pair[1].cluster != 0

    def counts(cells):
        return [len([c for c in cells if np.hypot(c.x - t.x, c.y - t.y) <= t.r]) for t in pair]

    assert counts(detect_cells(image).cells) == [1, 1]
    monkeypatch.setattr(nucleus_split, "merge_lens_sides", lambda pieces, *args: pieces)
    assert counts(detect_cells(image).cells) != [1, 1]


def test_chromatin_texture_does_not_cut_one_nucleus():
    """One large round nucleus (18 um, a monocyte's) with mottled chromatin and pale nucleoli:
    its pale spots do not reach the outline, so they are no boundary and it stays one piece."""
    from scipy import ndimage as ndi

    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:120, :120]
    blob = np.hypot(yy - 60, xx - 60) <= 36
    texture = ndi.gaussian_filter(rng.normal(0, 1, blob.shape), 2.0)
    purple = np.where(blob, 0.5 + 0.15 * texture / texture.std(), 0.0)
    for cy, cx in ((50, 55), (70, 68)):
        purple[np.hypot(yy - cy, xx - cx) <= 4] = 0.3  # nucleoli
    purple = ndi.gaussian_filter(purple, 1.0).astype(np.float32)
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=purple).max()) == 1


def test_where_two_nuclei_overlap_the_darker_lens_is_not_a_third_cell():
    from scipy import ndimage as ndi

    from pipeline.nucleus_split import merge_overlaps

    yy, xx = np.mgrid[:100, :160]
    a, b = np.hypot(yy - 50, xx - 55) <= 30, np.hypot(yy - 50, xx - 105) <= 30
    purple = ndi.gaussian_filter(0.5 * a + 0.5 * b, 1.0)  # the lens holds two layers of chromatin
    pieces = np.where(a & ~b, 1, 0) + np.where(a & b, 2, 0) + np.where(b & ~a, 3, 0)
    merged = merge_overlaps(pieces, purple)
    assert int(merged.max()) == 2
    assert merged[50, 80] in (merged[50, 40], merged[50, 120]) and merged[50, 40] != merged[50, 120]
    assert int(merge_overlaps(np.where(a | b, np.where(xx < 80, 1, 2), 0), purple).max()) == 2  # no lens: kept


def _overlapping(centres, radius: float, shape):
    """(blob, purple, layers) of round nuclei lying partly one over another: light crosses every
    layer, so the stain adds up (Beer-Lambert) and an overlap reads twice as dark."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    layers = sum((np.hypot(yy - cy, xx - cx) <= radius).astype(int) for cy, cx in centres)
    return layers > 0, ndi.gaussian_filter(0.5 * layers.astype(float), 1.0).astype(np.float32), layers


@pytest.mark.parametrize("spread", [0.6, 0.7])
def test_where_packed_nuclei_overlap_the_dark_lenses_part_them(spread, monkeypatch):
    """Four nuclei (7 um radius at 4 px/um) in a 2 x 2 clump, each over its neighbours: the
    outline is one broad blob, but each overlap is a lens of double stain between two nuclei.
    (The arcs of its outline part it too, tests/test_nucleus_arcs.py: left out here.)"""
    import pipeline.nucleus_split as nucleus_split
    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    monkeypatch.setattr(nucleus_split, "split_at_arcs", lambda pieces, *args: pieces)

    r = 28
    centres = [(80 + dy * spread * r, 80 + dx * spread * r) for dy in (-1, 1) for dx in (-1, 1)]
    blob, purple, _ = _overlapping(centres, r, (160, 160))
    labels = split_fragments(blob, DetectConfig(), 4.0, purple=purple)
    assert int(labels.max()) == 4
    assert len({int(labels[round(cy + (cy - 80)), round(cx + (cx - 80))]) for cy, cx in centres}) == 4
    flat = np.where(blob, purple.max() / 2, 0).astype(np.float32)  # the same outline, one layer
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=flat).max()) < 4


@pytest.mark.parametrize("step", [1.2, 1.4])
def test_a_chain_of_overlapping_nuclei_gives_one_piece_per_nucleus(step):
    """Three nuclei in a row, each over the next: the middle one, between two lenses, stays one."""
    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import split_fragments

    blob, purple, _ = _overlapping([(50, 60 + i * step * 28) for i in range(3)], 28, (100, 260))
    assert int(split_fragments(blob, DetectConfig(), 4.0, purple=purple).max()) == 3


def test_a_lens_is_where_nuclei_overlap_and_a_darker_round_nucleus_is_none():
    from scipy import ndimage as ndi

    from pipeline.detect import DetectConfig
    from pipeline.nucleus_split import find_overlap_lenses, split_fragments

    blob, purple, layers = _overlapping([(50, 60), (50, 100)], 28, (100, 160))
    lens = find_overlap_lenses(blob, purple, 4.0)
    assert (
        lens.sum() > 0.5 * (layers == 2).sum() and not (lens & (layers == 1) & ~ndi.binary_dilation(layers == 2)).any()
    )
    # A lymphocyte's dark round nucleus pressed against a pale blast's: darker, but round.
    yy, xx = np.mgrid[:120, :200]
    pale = np.hypot(yy - 60, xx - 70) <= 28
    dark = (np.hypot(yy - 60, xx - 113) <= 16) & ~pale
    purple = ndi.gaussian_filter(0.4 * pale + 0.9 * dark, 1.0).astype(np.float32)
    assert not find_overlap_lenses(pale | dark, purple, 4.0).any()
    assert int(split_fragments(pale | dark, DetectConfig(), 4.0, purple=purple).max()) == 2


def test_a_compact_faint_net_is_a_smudge_and_a_smooth_pale_disc_is_not():
    """The pale pass takes a compact net (a round patch of streaky chromatin, as a burst cell's net
    can be) by its lacy inside, and leaves a smooth pale disc of the same level and size (a blurred
    cell, a stain blotch) alone."""
    od, stains = canvas(900, 450)
    yy, xx = np.mgrid[:450, :900]
    purple = float(stains.nucleus[0] - stains.nucleus[2])
    r = 7 * PX_PER_UM
    streaks = 0.5 + 0.5 * np.cos((xx + 0.3 * yy) / (0.6 * PX_PER_UM))
    # Threads from 0.06 to 0.12 OD(R) - OD(B), all above the pale threshold: a compact patch.
    net = ((yy - 225) ** 2 + (xx - 225) ** 2 <= r**2) * (1.0 + 1.0 * streaks**2)
    smooth = 1.4 * ((yy - 225) ** 2 + (xx - 675) ** 2 <= r**2)
    od += ((0.06 / purple) * (net + smooth))[..., None].astype(np.float32) * stains.nucleus
    image = _photograph(od, np.random.default_rng(8), STYLE)
    cells = detect_cells(image, um_per_pixel=UM_PER_PX).cells
    assert [(c.kind, round(c.x / 450)) for c in cells] == [(KIND_SMUDGE, 0)]


def test_pieces_of_one_burst_net_are_one_smudge_cell():
    from pipeline.detect import WorkingCell, join_smudge_pieces

    def cell(box, kind, area=100):
        r0, c0, r1, c1 = box
        return WorkingCell((c0 + c1) / 2, (r0 + r1) / 2, box, area, kind, False)

    pieces = [
        cell((0, 0, 40, 40), KIND_SMUDGE, 900),
        cell((30, 30, 60, 50), KIND_SMUDGE),
        cell((55, 45, 70, 70), KIND_SMUDGE),
    ]
    apart = cell((100, 100, 130, 130), KIND_SMUDGE)
    blast = cell((20, 20, 50, 50), KIND_WBC)
    joined = join_smudge_pieces([blast, *pieces, apart])
    assert sorted((c.kind, c.bbox) for c in joined) == sorted(
        [(KIND_WBC, blast.bbox), (KIND_SMUDGE, (0, 0, 70, 70)), (KIND_SMUDGE, apart.bbox)]
    )
    assert next(c.area for c in joined if c.bbox == (0, 0, 70, 70)) == 1100


def test_ragged_chromatin_is_a_smudge_only_when_paler_than_intact_nuclei():
    """The features (solidity, thread um, level) of a lobed neutrophil measured on a real
    smear: as ragged as a net, but as dark as the image's nuclei (it is the only one); the same
    outline at a third of their level is a burst cell's spread chromatin."""
    from pipeline.detect import DetectConfig
    from pipeline.smudge import is_smudge

    lobed = (0.44, 2.29, 0.50)
    assert not is_smudge(lobed, 0.50, DetectConfig())
    assert is_smudge(lobed[:2] + (0.17,), 0.50, DetectConfig())
    assert is_smudge((0.60, 1.2, 0.30), 0.50, DetectConfig())  # ragged threads, paler


def test_lavender_red_cells_leave_smudge_cells_found_and_nothing_else_called_smudge():
    """The same ALL-like field with lavender red cells (as a May-Gruenwald Giemsa stain shows them,
    PBC): red cells and their overlaps read faintly purple, so read plainly they would be faint
    nets everywhere; unmixed from the chromatin, every smudge cell of the field is still found and
    every smudge call lies on one."""
    from pipeline.synth import make_image_rng
    from pipeline.synth_all import ALL_FIELD, make_all_smear

    image, _, truth = make_all_smear(make_image_rng(3, 1, 0), ALL_FIELD, (3, 1), red_cell_tint=1.0)
    cells = detect_cells(image).cells
    smudges = [t for t in truth if t.smudge]
    calls = [c for c in cells if c.kind == KIND_SMUDGE]
    assert len(smudges) == 5
    for c in calls:
        assert min(np.hypot(c.x - t.x, c.y - t.y) - t.r for t in smudges) < 0, (c.x, c.y)
    found = [t for t in smudges if any(np.hypot(c.x - t.x, c.y - t.y) < t.r for c in calls)]
    assert len(found) == len(smudges)
