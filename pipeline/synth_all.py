"""ALL-like synthetic smears (`allray synth --profile all`): crowded fields of acute lymphoblastic
leukaemia, with truth.

What real ALL smears show, and what is drawn here (`pipeline.synth_cells` draws the cells):
- crowded fields: 10-40 white cells per 1712x1368 field at the ALL-IDB scale (red cells ~36-52 px);
- lymphoblasts in packed clusters of 2-10 (and some alone): round or oval nuclei, a thin rim of
  cytoplasm or none, neighbours sharing a straight or slightly curved boundary with a notch at
  each end; cluster shapes (chains, clumps), sizes and overlaps vary, and now and then one blast
  lies over another;
- smudge (basket) cells: ruptured cells, their chromatin a pale lacy or streaky net;
- red cells that overlap white cells, and the other white cells of blood;
- per patient: stain strength and hue, focus, noise, and JPEG compression (the images are .jpg).

Truth (see `pipeline.synth_cohort.write_cohort`): every white cell and smudge cell, smudge cells with
kind "smudge" and no label, and the id of the packed cluster each blast belongs to (0 = alone).
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

from pipeline.synth_cells import (
    LYMPHOBLAST,
    SMUDGE_RADIUS_UM,
    WBC_RADIUS_UM,
    draw_blast_cluster,
    draw_red_cell,
    draw_smudge_cell,
    draw_white_cell,
)

ALL_FIELD = (1712, 1368)  # px: an ALL-IDB1 field; white-cell counts scale with the field's area
WBC_PER_FIELD = (10, 40)
CLUSTER_SIZES = np.arange(1, 11)  # blasts per group: 1 = alone, 2-10 = a packed cluster
CLUSTER_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.11, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03])
ALL_BLAST = (0.4, 0.95)  # blast fraction of intact white cells per patient
SMUDGE_SHARE = (0.05, 0.3)  # smudge cells per white cell, per patient
RBC_ON_WBC = (0.05, 0.3)  # share of red cells allowed to lie over a white cell, per patient
JPEG_QUALITY = (50, 95)


def choose_all_patient(seed: int, patient: int):
    """(SmearStyle, blast fraction, smudge share, red-over-white share, JPEG quality) of an ALL-like patient."""
    from pipeline.synth import SmearStyle, _rng, _round

    rng = _rng(seed, 4, patient)
    hue = np.clip(1 + rng.normal(0, 0.08, 3), 0.8, 1.2)
    light = np.clip(rng.uniform(215, 250) * (1 + rng.normal(0, 0.03, 3)), 190, 255)
    style = SmearStyle(
        rbc_diameter_px=_round(rng.uniform(36, 52)),
        rbc_coverage=_round(rng.uniform(0.3, 0.7)),
        azure=_round(rng.uniform(0.7, 1.4)),
        eosin=_round(rng.uniform(0.7, 1.3)),
        hue=tuple(_round(v) for v in hue),
        light=tuple(_round(v) for v in light),
        vignette=_round(rng.uniform(0.05, 0.3)),
        gradient=tuple(_round(v) for v in rng.normal(0, 0.06, 2)),
        noise_sigma=_round(rng.uniform(1.5, 6.0)),
        blur_sigma=_round(rng.uniform(0.4, 2.0)),
    )
    return (
        style,
        _round(rng.uniform(*ALL_BLAST)),
        _round(rng.uniform(*SMUDGE_SHARE)),
        _round(rng.uniform(*RBC_ON_WBC)),
        int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)),
    )


def make_all_smear(
    rng: np.random.Generator, size: tuple[int, int], seed_patient: tuple[int, int], red_cell_tint: float | None = None
):
    """One ALL-like smear: (RGB (H, W, 3) uint8 as decoded from its JPEG, JPEG bytes, [TruthCell]).

    seed_patient = (seed, patient) picks the patient's style; only `rng` draws the field.
    `red_cell_tint`, given, replaces the style's (SmearStyle.red_cell_tint: 1 = lavender red cells):
    the same field, cells and truth in another stain.
    """
    from pipeline.synth import (
        OTHER_KINDS,
        OTHER_WEIGHTS,
        RBC_DIAMETER_UM,
        TruthCell,
        _check_size,
        _draw_platelets,
        _mix_stains,
        _photograph,
    )

    width, height = _check_size(size)
    style, blast_fraction, smudge_share, rbc_on_wbc, quality = choose_all_patient(*seed_patient)
    if red_cell_tint is not None:
        style = replace(style, red_cell_tint=red_cell_tint)
    px_per_um = style.rbc_diameter_px / RBC_DIAMETER_UM
    stains = _mix_stains(style)
    groups = _place_groups(
        rng, width, height, blast_fraction, smudge_share, px_per_um, style, OTHER_KINDS, OTHER_WEIGHTS
    )
    discs = [(x, y, r) for _, members, _ in groups for x, y, r in members]
    od = np.empty((height, width, 3), np.float32)
    od[:] = stains.plasma
    _draw_red_cells_over(od, rng, discs, style, stains, rbc_on_wbc)
    _draw_platelets(od, rng, [(x, y, r, "") for x, y, r in discs], px_per_um, stains)
    truth, cluster = [], 0
    for kind, members, on_top in groups:
        if kind == LYMPHOBLAST and len(members) > 1:
            cluster += 1
            drawn = draw_blast_cluster(od, rng, members, stains, on_top)
            truth += [TruthCell(d.x, d.y, d.r, 1, LYMPHOBLAST, cluster=cluster) for d in drawn]
        elif kind == "smudge":
            d = draw_smudge_cell(od, rng, *members[0], stains)
            if d is not None:
                truth.append(TruthCell(d.x, d.y, d.r, 0, "smudge", smudge=True))
        else:
            d = draw_white_cell(od, rng, kind, *members[0], stains)
            if d is not None:
                truth.append(TruthCell(d.x, d.y, d.r, int(kind == LYMPHOBLAST), kind))
    buf = io.BytesIO()
    Image.fromarray(_photograph(od, rng, style), "RGB").save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data, truth


def _place_groups(rng, width, height, blast_fraction, smudge_share, px_per_um, style, other_kinds, other_weights):
    """[(kind, [(cx, cy, r_px)], on_top)]: blast clusters, single white cells and smudge cells,
    every centre inside the image, groups apart from each other by a third of a red cell."""
    area = width * height / (ALL_FIELD[0] * ALL_FIELD[1])
    n = max(1, round(rng.uniform(*WBC_PER_FIELD) * area))
    n_smudge = int(rng.binomial(n, smudge_share / (1 + smudge_share)))
    kinds = [
        LYMPHOBLAST if rng.random() < blast_fraction else other_kinds[rng.choice(len(other_kinds), p=other_weights)]
        for _ in range(n - n_smudge)
    ]
    n_blast = kinds.count(LYMPHOBLAST)
    plan = [(k, 1) for k in kinds if k != LYMPHOBLAST] + [("smudge", 1)] * n_smudge
    while n_blast > 0:
        k = int(min(n_blast, rng.choice(CLUSTER_SIZES, p=CLUSTER_WEIGHTS / CLUSTER_WEIGHTS.sum())))
        plan.append((LYMPHOBLAST, k))
        n_blast -= k
    plan = [plan[i] for i in rng.permutation(len(plan))]
    plan.sort(key=lambda p: -p[1])  # big clusters first, while there is room
    gap = style.rbc_diameter_px / 3
    placed, out = [], []
    for kind, k in plan:
        if kind == "smudge":
            members, on_top = [(0.0, 0.0, rng.uniform(*SMUDGE_RADIUS_UM) * px_per_um)], frozenset()
        else:
            members, on_top = _make_cluster(rng, k, kind, px_per_um)
        cx0, cy0 = np.mean([m[0] for m in members]), np.mean([m[1] for m in members])
        extent = max(np.hypot(m[0] - cx0, m[1] - cy0) + m[2] for m in members) * (1.3 if kind == "smudge" else 1.0)
        for _attempt in range(60):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            moved = [(x + mx - cx0, y + my - cy0, r) for mx, my, r in members]
            if not all(0 <= mx < width and 0 <= my < height for mx, my, _ in moved):
                continue
            if all(np.hypot(x - px, y - py) > extent + pe + gap for px, py, pe in placed):
                placed.append((x, y, extent))
                out.append((kind, moved, on_top))
                break
    return out


def _make_cluster(rng, k, kind, px_per_um):
    """k discs [(x, y, r_px)] packed against each other (k = 1: one cell), and the members that
    lie over the one before them."""
    members, on_top = [], set()
    for i in range(k):
        r = rng.uniform(*WBC_RADIUS_UM[kind]) * px_per_um
        if i == 0:
            members.append((0.0, 0.0, r))
            continue
        for _attempt in range(50):
            over = rng.random() < 0.1
            j = i - 1 if over else int(rng.integers(i))
            ox, oy, orad = members[j]
            a = rng.uniform(0, 2 * np.pi)
            d = (orad + r) * (rng.uniform(0.6, 0.72) if over else rng.uniform(0.72, 0.97))
            x, y = ox + d * np.cos(a), oy + d * np.sin(a)
            if all(np.hypot(x - mx, y - my) >= (mr + r) * 0.72 for n_, (mx, my, mr) in enumerate(members) if n_ != j):
                members.append((x, y, r))
                if over:
                    on_top.add(i)
                break
    return members, frozenset(on_top)


def _draw_red_cells_over(od, rng, discs, style, stains, rbc_on_wbc):
    """Red cells over the field; most keep clear of white cells (as in a thin smear), a share
    `rbc_on_wbc` may lie over one, up to ~half its radius in."""
    height, width = od.shape[:2]
    r_mean = style.rbc_diameter_px / 2
    n = rng.poisson(style.rbc_coverage * width * height / (np.pi * r_mean**2))
    xs = rng.uniform(-r_mean, width + r_mean, n)
    ys = rng.uniform(-r_mean, height + r_mean, n)
    radii = r_mean * np.clip(rng.normal(1.0, 0.06, n), 0.8, 1.2)
    over = rng.random(n) < rbc_on_wbc
    keep = np.ones(n, bool)
    if discs:
        w = np.asarray(discs, np.float64)
        dist = np.hypot(xs[:, None] - w[None, :, 0], ys[:, None] - w[None, :, 1])
        clear = np.all(dist > w[None, :, 2] + 0.75 * radii[:, None], axis=1)
        on_wbc = np.all(dist > 0.5 * w[None, :, 2], axis=1)
        keep = clear | (over & on_wbc)
    for x, y, r in zip(xs[keep], ys[keep], radii[keep]):
        draw_red_cell(od, rng, x, y, r, stains)
