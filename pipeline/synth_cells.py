"""Drawing of single blood cells into an optical-density canvas, for the synthetic smears.

A smear is built as optical density (OD) per RGB channel, as in Beer-Lambert transmitted-light
microscopy: each cell adds `density * stain_vector` to the canvas, and `pipeline.synth` turns the
sum into light as `illumination * exp(-OD)`. Overlapping cells therefore darken the way real
overlapping cells do, and a change of stain is a change of the stain vectors, nothing else.

Every cell is drawn only inside its own bounding window (clipped to the canvas), so drawing costs
scale with the cell's area, not the image's.

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i), as scikit-image reports
centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

LYMPHOBLAST = "lymphoblast"
LYMPHOCYTE = "lymphocyte"
NEUTROPHIL = "neutrophil"
MONOCYTE = "monocyte"
EOSINOPHIL = "eosinophil"
BASOPHIL = "basophil"
ERYTHROBLAST = "erythroblast"  # nucleated red cell: drawn with the white cells, not one of them
WBC_KINDS = (LYMPHOBLAST, LYMPHOCYTE, NEUTROPHIL, MONOCYTE, EOSINOPHIL, BASOPHIL)
NUCLEATED_KINDS = (*WBC_KINDS, ERYTHROBLAST)  # what a detector of nucleated cells finds

# Cell radius ranges in micrometres (half the diameters of haematology atlases). Size is
# diagnostic: blasts overlap neutrophils in size but are clearly larger than mature lymphocytes.
WBC_RADIUS_UM = {
    LYMPHOCYTE: (4.0, 5.0),  # 8-10 um small mature lymphocyte
    NEUTROPHIL: (6.0, 7.0),  # 12-14 um
    MONOCYTE: (7.5, 9.0),  # 15-18 um
    LYMPHOBLAST: (6.0, 9.0),  # 12-18 um
    EOSINOPHIL: (6.0, 7.5),  # 12-15 um
    BASOPHIL: (5.0, 6.5),  # 10-13 um: a little smaller than a neutrophil
    ERYTHROBLAST: (3.8, 5.0),  # 7.5-10 um late (ortho- and polychromatic) normoblasts seen in blood
}
PLATELET_RADIUS_UM = (1.0, 1.5)  # 2-3 um across


@dataclass(frozen=True)
class Stains:
    """Optical density per unit density, (3,) float32 RGB each, for one patient's staining."""

    plasma: np.ndarray
    rbc: np.ndarray
    nucleus: np.ndarray
    platelet: np.ndarray
    cyto_lymphocyte: np.ndarray
    cyto_blast: np.ndarray
    cyto_neutrophil: np.ndarray
    cyto_monocyte: np.ndarray
    # Added with the differential; None = derived from the vectors above (see `_vector`).
    granule_eosinophil: np.ndarray | None = None  # eosin-stained orange-red granules
    granule_basophil: np.ndarray | None = None  # azure-stained dark purple granules
    cyto_erythroblast: np.ndarray | None = None  # haemoglobin plus a little blue (polychromasia)


@dataclass(frozen=True)
class DrawnCell:
    """A white cell as drawn: centre of its visible part (px), radius (px) and kind."""

    x: float
    y: float
    r: float
    kind: str


def window(shape: tuple[int, int], cx: float, cy: float, reach: float):
    """The canvas slice around (cx, cy) within `reach` px, and x/y offsets from the centre.

    Returns (slices, xs (1, w) float32, ys (h, 1) float32), or None when the window lies outside
    the canvas.
    """
    h, w = shape
    x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)) + 1, w)
    y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def soft_blob(
    xs, ys, radius: float, rng: np.random.Generator, wobble: float = 0.0, aspect: float = 1.0, angle: float = 0.0
) -> np.ndarray:
    """Coverage in [0, 1] of an irregular ellipse centred at offset (0, 0): (h, w) float32.

    The ellipse has semi-axes radius*sqrt(aspect) (along `angle`) and radius/sqrt(aspect), so its
    area is that of the circle of `radius`, and `radius` stays the cell's equivalent radius.
    `wobble` is the amplitude of low-order harmonics on the outline (real cells are not circles);
    the 1-px ramp at the edge anti-aliases the outline the way optics blur it.
    """
    c, s = np.cos(angle), np.sin(angle)
    k = np.float32(np.sqrt(aspect))
    u = (xs * c + ys * s) / k
    v = (-xs * s + ys * c) * k
    dist = np.hypot(u, v)
    edge = np.float32(radius)
    if wobble > 0:
        theta = np.arctan2(v, u)
        bumps = np.zeros_like(theta)
        for k in (2, 3, 4):
            phase = rng.uniform(0, 2 * np.pi)
            bumps += np.float32(rng.normal(0, wobble / k)) * np.cos(k * theta + phase)
        edge = edge * (1 + bumps)
    return np.clip(edge - dist + 0.5, 0, 1).astype(np.float32)


def texture(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation, (h, w) float32."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def draw_red_cell(od: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, stains: Stains) -> None:
    """Add one red cell (a biconcave disc: dense rim, pale centre) to `od` in place."""
    win = window(od.shape[:2], cx, cy, r * 1.2 + 1)
    if win is None:
        return
    sl, xs, ys = win
    aspect = rng.uniform(1.0, 1.15)  # crowded cells deform slightly
    angle = rng.uniform(0, np.pi)
    cover = soft_blob(xs, ys, r, rng, wobble=0.02, aspect=aspect, angle=angle)
    rho2 = (xs * xs + ys * ys) / np.float32(r * r)
    pallor = rng.uniform(0.45, 0.75)
    depth = 1 - pallor * np.exp(-rho2 / 0.25) + 0.12 * np.exp(-((np.sqrt(rho2) - 0.85) ** 2) / 0.01)
    density = cover * depth * np.float32(rng.uniform(0.85, 1.1))
    od[sl] += density[..., None] * stains.rbc


def draw_platelet(od: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, stains: Stains) -> None:
    """Add one platelet (small, irregular, granular purple body) to `od` in place."""
    win = window(od.shape[:2], cx, cy, r * 1.4 + 2)
    if win is None:
        return
    sl, xs, ys = win
    cover = soft_blob(xs, ys, r, rng, wobble=0.15, aspect=rng.uniform(1.0, 1.5), angle=rng.uniform(0, np.pi))
    grain = 1 + 0.35 * texture(cover.shape, 0.8, rng)
    density = cover * np.clip(grain, 0.2, None) * np.float32(rng.uniform(0.4, 0.6))
    od[sl] += density[..., None] * stains.platelet


def draw_white_cell(
    od: np.ndarray, rng: np.random.Generator, kind: str, cx: float, cy: float, r: float, stains: Stains
) -> DrawnCell | None:
    """Add one white cell of `kind` to `od` in place; return it with its visible centre.

    Returns None when no part of the cell lands on the canvas.
    """
    win = window(od.shape[:2], cx, cy, r * 1.25 + 2)
    if win is None:
        return None
    sl, xs, ys = win
    body = soft_blob(xs, ys, r, rng, wobble=0.04, aspect=rng.uniform(1.0, 1.08), angle=rng.uniform(0, np.pi))
    mass = float(body.sum())
    if mass < 1:
        return None
    cyto_vec, cyto_density, nucleus_density = _DRAWERS[kind](xs, ys, r, rng, stains)
    od[sl] += (body * cyto_density)[..., None] * cyto_vec
    od[sl] += nucleus_density[..., None] * stains.nucleus
    # The visible centre: where a detector that sees only the picture would put the cell.
    vx = cx + float((body * xs).sum()) / mass
    vy = cy + float((body * ys).sum()) / mass
    return DrawnCell(x=vx, y=vy, r=r, kind=kind)


def _lymphocyte(xs, ys, r, rng, stains):
    """Small round dense nucleus filling most of the cell; thin pale-blue rim."""
    rn = r * rng.uniform(0.78, 0.88)
    ox, oy = _offset(rng, (r - rn) * 0.6)
    nuc = soft_blob(xs - ox, ys - oy, rn, rng, wobble=0.05, aspect=rng.uniform(1.0, 1.1), angle=rng.uniform(0, np.pi))
    # Coarse chromatin clumps: large, strong blotches.
    clumps = texture(nuc.shape, max(rn * 0.12, 1.0), rng)
    density = rng.uniform(1.0, 1.2) * np.clip(1 + 0.2 * clumps, 0.5, None)
    cyto = 1.0 + 0.1 * texture(nuc.shape, 1.5, rng)
    return stains.cyto_lymphocyte, cyto, nuc * density


def _lymphoblast(xs, ys, r, rng, stains):
    """Large round-ish nucleus (high N:C), fine pale chromatin, nucleoli, thin basophilic rim."""
    rn = r * rng.uniform(0.8, 0.9)
    ox, oy = _offset(rng, (r - rn) * 0.5)
    nuc = soft_blob(xs - ox, ys - oy, rn, rng, wobble=0.07, aspect=rng.uniform(1.0, 1.12), angle=rng.uniform(0, np.pi))
    if rng.random() < 0.25:  # a cleft or notch, seen in some blasts
        a = rng.uniform(0, 2 * np.pi)
        notch = soft_blob(xs - ox - rn * np.cos(a), ys - oy - rn * np.sin(a), rn * 0.25, rng)
        nuc = nuc * (1 - notch)
    fine = texture(nuc.shape, 0.8, rng)
    density = rng.uniform(0.65, 0.8) * (1 + 0.1 * fine)
    for _ in range(rng.choice([0, 1, 1, 2])):
        d = rng.uniform(0, 0.45) * rn
        a = rng.uniform(0, 2 * np.pi)
        spot = soft_blob(
            xs - ox - d * np.cos(a), ys - oy - d * np.sin(a), rn * rng.uniform(0.1, 0.16), rng, wobble=0.05
        )
        density = density * (1 - 0.4 * spot)  # nucleoli are paler than the chromatin around them
    cyto = 1.0 + 0.08 * texture(nuc.shape, 2.0, rng)
    return stains.cyto_blast, cyto, nuc * density


def _neutrophil(xs, ys, r, rng, stains):
    """2-5 dense nucleus lobes on an arc, joined by thin strands, in granular pale cytoplasm."""
    n_lobes = int(rng.choice([2, 3, 4, 5], p=[0.15, 0.4, 0.35, 0.1]))
    arc = r * rng.uniform(0.4, 0.5)
    step = rng.uniform(1.0, 1.3)
    start = rng.uniform(0, 2 * np.pi) - step * (n_lobes - 1) / 2
    angles = start + step * np.arange(n_lobes) + rng.normal(0, 0.12, n_lobes)
    radii = arc * rng.uniform(0.85, 1.15, n_lobes)
    px, py = radii * np.cos(angles), radii * np.sin(angles)
    nuc = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), np.float32)
    for i in range(n_lobes):
        # Lobes are elongated along the arc, like beads on a bent string.
        lobe = soft_blob(
            xs - px[i],
            ys - py[i],
            r * rng.uniform(0.32, 0.38),
            rng,
            wobble=0.08,
            aspect=rng.uniform(1.1, 1.4),
            angle=angles[i] + np.pi / 2,
        )
        nuc = np.maximum(nuc, lobe)
        if i:  # chromatin strand to the previous lobe
            nuc = np.maximum(nuc, _strand(xs, ys, px[i - 1], py[i - 1], px[i], py[i], r * 0.05))
    clumps = texture(nuc.shape, max(r * 0.06, 1.0), rng)
    density = rng.uniform(0.95, 1.1) * np.clip(1 + 0.18 * clumps, 0.5, None)
    granules = 1.0 + 0.3 * texture(nuc.shape, 0.7, rng)
    return stains.cyto_neutrophil, granules, nuc * density


def _monocyte(xs, ys, r, rng, stains):
    """Large cell, kidney-shaped lacy nucleus, grey-blue cytoplasm with a few vacuoles."""
    rn = r * rng.uniform(0.55, 0.65)
    a = rng.uniform(0, 2 * np.pi)
    off = r * rng.uniform(0.1, 0.2)
    ox, oy = off * np.cos(a), off * np.sin(a)
    aspect = rng.uniform(1.3, 1.6)
    nuc = soft_blob(xs - ox, ys - oy, rn, rng, wobble=0.05, aspect=aspect, angle=a + np.pi / 2)
    # The indent faces the cell centre: a disc bitten out of the nucleus on that side.
    bite, depth = rn * rng.uniform(0.8, 1.0), rn * rng.uniform(0.15, 0.3)
    d = rn / np.sqrt(aspect) + bite - depth  # the short semi-axis faces the cell centre
    bx, by = ox - d * np.cos(a), oy - d * np.sin(a)
    nuc = nuc * (1 - soft_blob(xs - bx, ys - by, bite, rng, wobble=0.05))
    lace = texture(nuc.shape, 1.5, rng)
    density = rng.uniform(0.8, 0.95) * np.clip(1 + 0.2 * lace, 0.4, None)
    cyto = 1.0 + 0.1 * texture(nuc.shape, 3.0, rng)
    for _ in range(int(rng.integers(0, 4))):
        d, b = rng.uniform(0.5, 0.85) * r, rng.uniform(0, 2 * np.pi)
        cyto = cyto * (1 - 0.7 * soft_blob(xs - d * np.cos(b), ys - d * np.sin(b), r * rng.uniform(0.05, 0.09), rng))
    return stains.cyto_monocyte, cyto, nuc * density


def _offset(rng: np.random.Generator, max_shift: float) -> tuple[float, float]:
    """A random (dx, dy) of length up to `max_shift`: nuclei sit a little off-centre."""
    d, a = rng.uniform(0, max_shift), rng.uniform(0, 2 * np.pi)
    return d * np.cos(a), d * np.sin(a)


def _strand(xs, ys, x0, y0, x1, y1, width) -> np.ndarray:
    """Coverage (h, w) float32 of a thick segment from (x0, y0) to (x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    dist = np.hypot(xs - x0 - t * dx, ys - y0 - t * dy)
    return np.clip(width - dist + 0.5, 0, 1).astype(np.float32)


def _eosinophil(xs, ys, r, rng, stains):
    """Two (sometimes three) oval nucleus lobes like spectacles, cytoplasm packed with coarse orange granules.

    Lobe size as in real eosinophils (PBC, CC BY 4.0: Acevedo et al. 2020): each lobe ~0.4 of the
    cell across (5-6 um in a 13 um cell), oval and lying along the cell's edge, so the nucleus
    covers about a third of the cell. Measured the detector's way (chromatin at half its 90th
    percentile), 100 PBC eosinophils hold 45-142 um^2 (5th-95th percentile; median 70, and ~1.5x
    less if PBC's red cells read as small as BCCD's), where lobes 0.30-0.36 of the cell (before
    session 11) gave 14-28 um^2: less than a small lymphocyte's nucleus."""
    n_lobes = int(rng.choice([2, 3], p=[0.8, 0.2]))
    a = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(1.9, 2.5) if n_lobes == 2 else rng.uniform(1.2, 1.5)
    # (lobe equivalent radius, lobe centre's distance from the cell's), both x the cell's radius:
    # the lobes lie out towards the cell's edge, pressed together at a narrow neck.
    size, reach = ((0.38, 0.46), (0.46, 0.54)) if n_lobes == 2 else ((0.33, 0.39), (0.42, 0.5))
    nuc = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), np.float32)
    prev = None
    for i in range(n_lobes):
        b = a + step * (i - (n_lobes - 1) / 2)
        d = r * rng.uniform(*reach)
        px, py = d * np.cos(b), d * np.sin(b)
        nuc = np.maximum(
            nuc,
            soft_blob(
                xs - px,
                ys - py,
                r * rng.uniform(*size),
                rng,
                wobble=0.06,
                aspect=rng.uniform(1.2, 1.6),
                angle=b + np.pi / 2 + rng.uniform(-0.4, 0.4),  # long axis along the cell's edge
            ),
        )
        if prev is not None:
            nuc = np.maximum(nuc, _strand(xs, ys, prev[0], prev[1], px, py, r * 0.05))
        prev = (px, py)
    clumps = texture(nuc.shape, max(r * 0.06, 1.0), rng)
    # Dense, clumped chromatin: PBC's eosinophils are as dark as its lymphocytes and neutrophils
    # (median 90th percentile of OD(R) - OD(B) over the chromatin 0.97, 0.95, 1.01); at 0.9-1.05
    # (before session 11), under the granules' orange, the lobes read 0.66 of an ALL-like field's
    # nuclei where its lymphocytes read 1.13.
    density = rng.uniform(1.15, 1.35) * np.clip(1 + 0.15 * clumps, 0.5, None)
    # Granules ~0.5-1 um: large, round and even, unlike a neutrophil's fine dust.
    granules = 1.0 + 0.45 * np.clip(texture(nuc.shape, max(r * 0.05, 1.2), rng), -1.5, 2.0)
    granules = np.clip(granules, 0.3, None) * (1 - 0.95 * nuc)  # the lobes lie clear of granules, purple
    return _vector(stains, "granule_eosinophil"), granules, nuc * density


def _basophil(xs, ys, r, rng, stains):
    """Lobed nucleus half hidden under coarse, uneven, very dark purple granules."""
    ox, oy = _offset(rng, r * 0.15)
    nuc = soft_blob(
        xs - ox,
        ys - oy,
        r * rng.uniform(0.5, 0.6),
        rng,
        wobble=0.12,
        aspect=rng.uniform(1.1, 1.4),
        angle=rng.uniform(0, np.pi),
    )
    density = rng.uniform(0.7, 0.85) * np.clip(1 + 0.15 * texture(nuc.shape, 1.5, rng), 0.5, None)
    # Granules sit over the nucleus too: blotchy dark dots over the whole cell, unevenly spread.
    dots = np.clip(texture(nuc.shape, max(r * 0.06, 1.0), rng) + 0.5, 0, None)
    patches = np.clip(0.8 + 0.4 * texture(nuc.shape, r * 0.3, rng), 0.3, 1.3)
    granules = 0.3 + 0.75 * dots * patches
    return _vector(stains, "granule_basophil"), granules, nuc * density


def _erythroblast(xs, ys, r, rng, stains):
    """Red-cell-sized, no central pallor, a small round very dense (pyknotic) nucleus, often off-centre."""
    rn = r * rng.uniform(0.42, 0.55)
    ox, oy = _offset(rng, (r - rn) * 0.6)
    nuc = soft_blob(xs - ox, ys - oy, rn, rng, wobble=0.03, aspect=rng.uniform(1.0, 1.1), angle=rng.uniform(0, np.pi))
    density = rng.uniform(1.25, 1.45) * np.clip(1 + 0.06 * texture(nuc.shape, 1.0, rng), 0.7, None)
    cyto = rng.uniform(0.9, 1.1) * (1.0 + 0.05 * texture(nuc.shape, 2.0, rng))
    return _vector(stains, "cyto_erythroblast"), cyto, nuc * density


def _vector(stains: Stains, name: str) -> np.ndarray:
    """A stain vector of the differential's cells; when not given, mixed from the base dyes' vectors."""
    value = getattr(stains, name)
    if value is not None:
        return value
    if name == "granule_eosinophil":  # eosin, stronger and more orange than a red cell
        return (stains.rbc * np.asarray((0.9, 1.6, 2.1), np.float32)).astype(np.float32)
    if name == "granule_basophil":  # azure, as dark as chromatin
        return (stains.nucleus * np.float32(0.9)).astype(np.float32)
    return (0.85 * stains.rbc + 0.35 * stains.cyto_lymphocyte).astype(np.float32)  # erythroblast


_DRAWERS = {
    LYMPHOBLAST: _lymphoblast,
    LYMPHOCYTE: _lymphocyte,
    NEUTROPHIL: _neutrophil,
    MONOCYTE: _monocyte,
    EOSINOPHIL: _eosinophil,
    BASOPHIL: _basophil,
    ERYTHROBLAST: _erythroblast,
}


# --- ALL-like smears: packed blast clusters and smudge cells (`allray synth --profile all`) -------

SMUDGE_RADIUS_UM = (5.0, 11.0)  # spread chromatin: often wider than an intact nucleus (~10-14 um)


def draw_blast_cluster(
    od: np.ndarray,
    rng: np.random.Generator,
    members: list[tuple[float, float, float]],
    stains: Stains,
    on_top: frozenset[int] = frozenset(),
) -> list[DrawnCell]:
    """Add a packed cluster of lymphoblasts to `od` in place; return them with their visible centres.

    members: [(cx, cy, r_px)], overlapping discs. Packed cells deform against each other: each
    pixel belongs to the member of least power distance (d^2 - r^2, plus a smooth wobble that
    bends the shared boundary slightly), so neighbours share a straight or slightly curved edge
    with a notch where it meets the outline. A thin pale membrane line between neighbours and a
    thin rim of cytoplasm are drawn or not, per cluster. Members listed in `on_top` lie over the
    member before them instead (additive densities: light crosses both cells).
    """
    gap = rng.choice([0.0, 0.0, 0.5, 1.0])  # px of membrane line between neighbours (often none)
    rim_frac = rng.choice([0.0, rng.uniform(0.03, 0.1)])  # thin rim of cytoplasm, or none
    # Each member's power distance d^2 - r^2 gets a smooth wobble (a few long plane waves), so
    # shared boundaries bend a little instead of being perfectly straight.
    bend = rng.uniform(0.0, 0.08) * float(np.mean([m[2] for m in members]))
    waves = [(rng.normal(0, 1.0 / m[2], (3, 2)), rng.uniform(0, 2 * np.pi, 3)) for m in members]

    def power(j, xs, ys):
        ox, oy, orad = members[j]
        dx, dy = xs - np.float32(ox), ys - np.float32(oy)
        k, phase = waves[j]
        wob = sum(np.cos(np.float32(k[n, 0]) * xs + np.float32(k[n, 1]) * ys + np.float32(phase[n])) for n in range(3))
        return dx * dx + dy * dy - np.float32(orad * orad) + np.float32(2 * orad * bend / 3) * wob

    drawn = []
    for i, (cx, cy, r) in enumerate(members):
        win = window(od.shape[:2], cx, cy, r * 1.3 + 3)
        if win is None:
            continue
        sl, xs, ys = win
        shape = (ys.shape[0], xs.shape[1])
        gx, gy = xs + np.float32(cx), ys + np.float32(cy)  # canvas coordinates
        own_power = power(i, gx, gy)
        # Signed distance (px) to the nearest shared boundary: > 0 inside member i's own part.
        inside = np.full(shape, np.inf, np.float32)
        for j, (ox, oy, orad) in enumerate(members):
            if j == i or (i in on_top and j == i - 1) or (j in on_top and i == j - 1):
                continue
            sep = float(np.hypot(cx - ox, cy - oy))
            if sep > r + orad + 4:
                continue
            inside = np.minimum(inside, (power(j, gx, gy) - own_power) / np.float32(2 * max(sep, 1.0)))
        cover = soft_blob(xs, ys, r, rng, wobble=0.04, aspect=rng.uniform(1.0, 1.3), angle=rng.uniform(0, np.pi))
        own = cover * np.clip(inside - gap / 2 + 0.5, 0, 1)
        mass = float(own.sum())
        if mass < 1:
            continue
        rim_px = rim_frac * r
        nuc = soft_blob(xs, ys, r * (1 - rim_frac), rng, wobble=0.05) * np.clip(inside - gap / 2 - rim_px + 0.5, 0, 1)
        nuc = nuc * (own > 0)
        density = rng.uniform(0.65, 0.85) * (1 + 0.1 * texture(shape, 0.8, rng))
        for _ in range(rng.choice([0, 1, 1, 2])):  # nucleoli: paler spots
            d, a = rng.uniform(0, 0.45) * r, rng.uniform(0, 2 * np.pi)
            spot = soft_blob(
                xs - np.float32(d * np.cos(a)),
                ys - np.float32(d * np.sin(a)),
                r * rng.uniform(0.08, 0.14),
                rng,
                wobble=0.05,
            )
            density = density * (1 - 0.4 * spot)
        od[sl] += (own * (1.0 + 0.08 * texture(shape, 2.0, rng)))[..., None] * stains.cyto_blast
        od[sl] += (nuc * density)[..., None] * stains.nucleus
        drawn.append(
            DrawnCell(
                x=cx + float((own * xs).sum()) / mass, y=cy + float((own * ys).sum()) / mass, r=r, kind=LYMPHOBLAST
            )
        )
    return drawn


def draw_smudge_cell(
    od: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, stains: Stains
) -> DrawnCell | None:
    """Add one smudge (basket) cell to `od` in place: a ruptured cell whose chromatin is spread into
    a pale lacy or streaky net, with a ragged outline, no cytoplasm rim and no membrane, sometimes
    trailing strands. Returns it with its visible centre, or None when it lands off the canvas."""
    win = window(od.shape[:2], cx, cy, r * 1.9 + 3)
    if win is None:
        return None
    sl, xs, ys = win
    shape = (ys.shape[0], xs.shape[1])
    # Ragged outline: the edge radius wanders with a smooth 2-D field, not just low harmonics.
    aspect, angle = rng.uniform(1.0, 1.6), rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xs * c + ys * s) / np.sqrt(aspect), (-xs * s + ys * c) * np.sqrt(aspect)
    rag = texture(shape, max(r * 0.12, 1.0), rng)
    cover = np.clip(r * (1 + rng.uniform(0.12, 0.25) * rag) - np.hypot(u, v) + 0.5, 0, 1)
    # Chromatin pattern: a lacy net (where a smooth noise field crosses zero) or streaks (wavy
    # parallel threads along one direction), or a mix.
    strand_px = max(r * rng.uniform(0.05, 0.1), 0.8)
    net = np.exp(-((texture(shape, strand_px * 1.5, rng) / 0.45) ** 2))
    phase = 3.0 * texture(shape, r * 0.4, rng)
    streak = 0.5 + 0.5 * np.cos((-xs * s + ys * c) / strand_px + phase)
    mix = rng.uniform(0, 1)
    pattern = (1 - mix) * net + mix * streak**2
    density = rng.uniform(0.3, 0.55) * (0.3 + 0.7 * pattern) * cover
    if rng.random() < 0.4:  # a denser remnant of the nucleus, off-centre
        d, a = rng.uniform(0, 0.4) * r, rng.uniform(0, 2 * np.pi)
        core = soft_blob(xs - d * np.cos(a), ys - d * np.sin(a), r * rng.uniform(0.2, 0.4), rng, wobble=0.2)
        density = density + rng.uniform(0.1, 0.3) * core
    for _ in range(int(rng.choice([0, 0, 1, 2, 3]))):  # trailing strands out of the net
        a = rng.uniform(0, 2 * np.pi)
        length = r * rng.uniform(0.4, 0.9)
        bend = rng.normal(0, 0.3)
        x0, y0 = 0.8 * r * np.cos(a), 0.8 * r * np.sin(a)
        x1, y1 = (0.8 * r + length) * np.cos(a + bend), (0.8 * r + length) * np.sin(a + bend)
        density = density + rng.uniform(0.25, 0.45) * _strand(xs, ys, x0, y0, x1, y1, rng.uniform(0.3, 0.8))
    mass = float(cover.sum())
    if mass < 1:
        return None
    od[sl] += density[..., None].astype(np.float32) * stains.nucleus
    return DrawnCell(
        x=cx + float((cover * xs).sum()) / mass, y=cy + float((cover * ys).sum()) / mass, r=r, kind="smudge"
    )
