"""Synthetic Giemsa-stained blood smears with ground truth: the project's demo data and fixtures.

A cohort is a set of patients; each patient gets a "microscope and staining" (`SmearStyle`: the
magnification, stain hue and strength, illumination, noise and blur) and a blast fraction
(about a third of patients are healthy). Each image is a smear of red cells, platelets and 2-6
white cells (lymphoblasts, lymphocytes, neutrophils, monocytes, eosinophils, basophils), now and
then a nucleated red cell (erythroblast) where the patient has blasts, some touching, some cut by
the image border. The cells are drawn in `pipeline.synth_cells`; this module holds the patient
styles and composes smears (placement, stains, the camera); `pipeline.synth_cohort` writes
cohorts of them with their ground truth (slides/ and truth/).

Reproducibility: every random draw comes from a generator derived from (seed, patient) or
(seed, patient, image) by `np.random.SeedSequence`, so any one image can be rebuilt alone, and a
cohort of N patients is the first N patients of any larger cohort with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline import taxonomy
from pipeline.synth_cells import (
    BASOPHIL,
    EOSINOPHIL,
    ERYTHROBLAST,
    LYMPHOBLAST,
    LYMPHOCYTE,
    MONOCYTE,
    NEUTROPHIL,
    PLATELET_RADIUS_UM,
    WBC_RADIUS_UM,
    Stains,
    draw_platelet,
    draw_red_cell,
    draw_white_cell,
)

RBC_DIAMETER_UM = 7.5  # the ruler of every smear: detectors estimate the scale from red cells
MIN_SIDE = 128  # px: the largest white cell is ~130 px across at the highest magnification
MAX_SIDE = 8192  # px: a larger synthetic field is a typo, not a plan
WBC_PER_IMAGE = (2, 6)
# Mix of non-blast white cells (roughly a normal differential, with lymphocytes over-represented
# because they are what blasts must be told apart from).
OTHER_KINDS = (NEUTROPHIL, LYMPHOCYTE, MONOCYTE, EOSINOPHIL, BASOPHIL)
OTHER_WEIGHTS = (0.42, 0.38, 0.12, 0.05, 0.03)
# Nucleated red cells: absent from healthy blood, a few per 100 white cells when the marrow is
# infiltrated (leukoerythroblastic blood). One per image with this probability (~1.5 per 100 WBC).
ERYTHROBLAST_PROB = 0.06
TOUCHING_PROB = 0.3  # per image: one white cell is placed against another
BORDER_PROB = 0.2  # per white cell: placed so the image border cuts it
PLATELETS_PER_MPX = 17.0  # ~8 platelets on an 800x600 field
# Patients come in blocks of three: one healthy, one low and one high blast fraction, so even a
# three-patient cohort spans the range, and adding patients never changes earlier ones.
LOW_BLAST, HIGH_BLAST = (0.1, 0.5), (0.5, 0.9)

# Optical density per unit density of each stained structure (Giemsa: azure B stains nuclei and
# basophilic cytoplasm purple/blue, eosin stains red cells pink). Derived from colours measured on
# the BCCD smears and atlas pictures, as -ln(transmitted fraction) per RGB channel.
PLASMA_OD = (0.062, 0.117, 0.117)
RBC_OD = (0.073, 0.248, 0.236)
# Red cells as a May-Gruenwald Giemsa stain shows them in PBC's analyser pictures: lavender, absorbing
# red light more than blue (measured there: OD 0.18, 0.27, 0.13 over red-cell pixels; scaled to
# RBC_OD's green). SmearStyle.red_cell_tint mixes it in.
RBC_OD_LAVENDER = (0.165, 0.248, 0.12)
NUCLEUS_OD = (0.80, 1.20, 0.33)
PLATELET_OD = (0.51, 0.80, 0.29)
CYTO_OD = {
    LYMPHOCYTE: (0.198, 0.151, 0.030),  # pale blue rim
    LYMPHOBLAST: (0.357, 0.274, 0.073),  # deeper blue: basophilic
    NEUTROPHIL: (0.051, 0.128, 0.051),  # pale pink/lilac
    MONOCYTE: (0.198, 0.198, 0.105),  # grey-blue
}


GRANULE_OD = {
    EOSINOPHIL: (0.085, 0.42, 0.55),  # eosin: orange-red, deeper than a red cell
    BASOPHIL: (0.72, 1.05, 0.36),  # azure: dark purple-black
}
ERYTHROBLAST_CYTO_OD = (0.11, 0.25, 0.19)  # haemoglobin with a grey-blue cast (polychromasia)


@dataclass(frozen=True)
class TruthCell:
    """A white cell as drawn: centre of its visible part and radius in px, label and kind."""

    x: float
    y: float
    r: float
    label: int | None  # 1 = lymphoblast, 0 = other white cell, None = not a white cell (erythroblast)
    kind: str  # its class: a taxonomy name, e.g. "lymphoblast", "neutrophil", "erythroblast", "smudge"
    smudge: bool = False  # a ruptured (smudge, basket) cell: truth kind "smudge", no label, not counted
    cluster: int = 0  # id (1..) within its image of the packed blast cluster holding it; 0 = alone


@dataclass(frozen=True)
class SmearStyle:
    """One patient's microscope, staining and camera."""

    rbc_diameter_px: float = 42.0  # magnification: red cells are 7.5 um across
    rbc_coverage: float = 0.5  # red-cell area / field area, before overlaps (smear thickness)
    azure: float = 1.0  # strength of the basic dye (nuclei, blue cytoplasm, platelets)
    eosin: float = 1.0  # strength of the acid dye (red cells, plasma)
    hue: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel OD factors: stain batch/pH
    red_cell_tint: float = 0.0  # red cells' colour: 0 pink (Giemsa, BCCD), 1 lavender (RBC_OD_LAVENDER)
    light: tuple[float, float, float] = (242.0, 240.0, 236.0)  # lamp white level per channel
    vignette: float = 0.15  # fraction of light lost in the corners
    gradient: tuple[float, float] = (0.0, 0.0)  # relative light change across the field, x and y
    noise_sigma: float = 3.0  # camera noise, grey levels
    blur_sigma: float = 0.7  # focus, px

    def __post_init__(self):
        _check_range("rbc_diameter_px", self.rbc_diameter_px, 8.0, 200.0)
        _check_range("rbc_coverage", self.rbc_coverage, 0.0, 1.5)
        _check_range("azure", self.azure, 0.1, 5.0)
        _check_range("eosin", self.eosin, 0.1, 5.0)
        _check_range("red_cell_tint", self.red_cell_tint, 0.0, 1.0)
        _check_range("vignette", self.vignette, 0.0, 0.9)
        _check_range("noise_sigma", self.noise_sigma, 0.0, 50.0)
        _check_range("blur_sigma", self.blur_sigma, 0.0, 10.0)
        for name, values, n in (("hue", self.hue, 3), ("light", self.light, 3), ("gradient", self.gradient, 2)):
            if len(values) != n:
                raise ValueError(f"SmearStyle.{name} needs {n} values, got {values!r}")


def choose_style(rng: np.random.Generator) -> SmearStyle:
    """A random patient style: magnification, stain, illumination and camera settings."""
    hue = np.clip(1 + rng.normal(0, 0.06, 3), 0.85, 1.15)
    light = np.clip(rng.uniform(225, 250) * (1 + rng.normal(0, 0.025, 3)), 200, 255)
    return SmearStyle(
        rbc_diameter_px=_round(rng.uniform(30, 55)),
        rbc_coverage=_round(rng.uniform(0.35, 0.75)),
        azure=_round(rng.uniform(0.8, 1.25)),
        eosin=_round(rng.uniform(0.75, 1.25)),
        hue=tuple(_round(v) for v in hue),
        light=tuple(_round(v) for v in light),
        vignette=_round(rng.uniform(0.05, 0.3)),
        gradient=tuple(_round(v) for v in rng.normal(0, 0.06, 2)),
        noise_sigma=_round(rng.uniform(1.5, 5.0)),
        blur_sigma=_round(rng.uniform(0.4, 1.1)),
    )


def choose_patient_style(seed: int, patient: int) -> SmearStyle:
    """The style of `patient` (0-based) in a cohort made with `seed`."""
    return choose_style(_rng(seed, 0, patient))


def make_image_rng(seed: int, patient: int, image: int) -> np.random.Generator:
    """The generator that draws image `image` (0-based, per patient) of `patient`: rebuild any one
    image as make_smear(make_image_rng(s, p, i), size, choose_blast_fraction(s, p),
    choose_patient_style(s, p))."""
    return _rng(seed, 1, patient, image)


def choose_blast_fraction(seed: int, patient: int) -> float:
    """The blast fraction (0-1) of `patient` in a cohort made with `seed`; 0.0 = healthy."""
    block_rng = _rng(seed, 2, patient // 3)
    role = block_rng.permutation(3)[patient % 3]  # 0 healthy, 1 low, 2 high
    if role == 0:
        return 0.0
    low, high = LOW_BLAST if role == 1 else HIGH_BLAST
    return _round(_rng(seed, 3, patient).uniform(low, high))


def make_smear(
    rng: np.random.Generator, size: tuple[int, int], blast_fraction: float, style: SmearStyle
) -> tuple[np.ndarray, list[TruthCell]]:
    """One smear image (H, W, 3) uint8 RGB and its white cells. size = (width, height).

    The list holds every white cell drawn (2-6; fewer only where a small field cannot hold them),
    each with its true centre inside the image; each is a lymphoblast with probability
    `blast_fraction`; then, in smears with blasts, sometimes a nucleated red cell (ERYTHROBLAST_PROB).
    Only `rng` is drawn from.
    """
    width, height = _check_size(size)
    if not 0.0 <= blast_fraction <= 1.0:
        raise ValueError(f"blast_fraction must be within [0, 1], got {blast_fraction!r}")
    px_per_um = style.rbc_diameter_px / RBC_DIAMETER_UM
    stains = _mix_stains(style)
    wbcs = _place_white_cells(rng, width, height, blast_fraction, px_per_um, style)

    od = np.empty((height, width, 3), np.float32)
    od[:] = stains.plasma
    _draw_red_cells(od, rng, wbcs, style, stains)
    _draw_platelets(od, rng, wbcs, px_per_um, stains)
    truth = []
    for cx, cy, r, kind in wbcs:
        drawn = draw_white_cell(od, rng, kind, cx, cy, r, stains)
        if drawn is not None:
            truth.append(TruthCell(x=drawn.x, y=drawn.y, r=drawn.r, label=taxonomy.binary_label(kind), kind=kind))
    return _photograph(od, rng, style), truth


# --- composition -----------------------------------------------------------------------------


def _place_white_cells(rng, width, height, blast_fraction, px_per_um, style):
    """White cells to draw: [(cx, cy, r_px, kind)], centres inside the image, none overlapping
    except pairs placed on purpose to touch."""
    n = int(rng.integers(WBC_PER_IMAGE[0], WBC_PER_IMAGE[1] + 1))
    kinds = [
        LYMPHOBLAST if rng.random() < blast_fraction else OTHER_KINDS[rng.choice(len(OTHER_KINDS), p=OTHER_WEIGHTS)]
        for _ in range(n)
    ]
    if blast_fraction > 0 and rng.random() < ERYTHROBLAST_PROB:
        kinds.append(ERYTHROBLAST)
    gap = 0.4 * style.rbc_diameter_px  # separate cells stay clearly apart for the detector
    touching_slot = int(rng.integers(1, n)) if rng.random() < TOUCHING_PROB else -1
    placed: list[tuple[float, float, float, str]] = []
    for k, kind in enumerate(kinds):
        r = rng.uniform(*WBC_RADIUS_UM[kind]) * px_per_um
        for _attempt in range(100):
            if k == touching_slot and placed:
                ox, oy, orad, _ = placed[int(rng.integers(len(placed)))]
                a, d = rng.uniform(0, 2 * np.pi), (orad + r) * rng.uniform(0.93, 1.0)
                cx, cy = ox + d * np.cos(a), oy + d * np.sin(a)
                partner = (ox, oy)
            else:
                cx, cy = _choose_centre(rng, width, height, r)
                partner = None
            if not (0 <= cx < width and 0 <= cy < height):
                continue
            if all((px, py) == partner or np.hypot(cx - px, cy - py) > r + pr + gap for px, py, pr, _ in placed):
                placed.append((float(cx), float(cy), float(r), kind))
                break
    return placed


def _choose_centre(rng, width, height, r):
    """A white-cell centre: usually clear of the border, sometimes close enough to be cut."""
    if rng.random() < BORDER_PROB:
        # 0.35 r inside one border keeps ~70% of the cell visible; near a corner, ~half.
        inset = rng.uniform(0.35, 0.9) * r
        side = int(rng.integers(4))
        length = width if side < 2 else height
        along = rng.uniform(min(0.5 * r, length / 2), max(length - 0.5 * r, length / 2))
        across = inset if side % 2 == 0 else (height if side < 2 else width) - inset
        return (along, across) if side < 2 else (across, along)
    lo_x, hi_x = min(r, width / 2), max(width - r, width / 2)
    lo_y, hi_y = min(r, height / 2), max(height - r, height / 2)
    return rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)


def _draw_red_cells(od, rng, wbcs, style, stains):
    """Scatter red cells over the field (and past its edges), keeping white cells mostly clear."""
    height, width = od.shape[:2]
    r_mean = style.rbc_diameter_px / 2
    n = rng.poisson(style.rbc_coverage * width * height / (np.pi * r_mean**2))
    xs = rng.uniform(-r_mean, width + r_mean, n)
    ys = rng.uniform(-r_mean, height + r_mean, n)
    radii = r_mean * np.clip(rng.normal(1.0, 0.06, n), 0.8, 1.2)
    keep = _clear_of(xs, ys, wbcs, 0.75 * radii)  # red cells may just overlap a white cell's rim
    for x, y, r in zip(xs[keep], ys[keep], radii[keep]):
        draw_red_cell(od, rng, x, y, r, stains)


def _draw_platelets(od, rng, wbcs, px_per_um, stains):
    """Scatter a few platelets, away from white cells so they never read as part of one."""
    height, width = od.shape[:2]
    n = rng.poisson(PLATELETS_PER_MPX * width * height / 1e6)
    xs, ys = rng.uniform(0, width, n), rng.uniform(0, height, n)
    radii = rng.uniform(*PLATELET_RADIUS_UM, n) * px_per_um
    keep = _clear_of(xs, ys, wbcs, 3 * radii + 4)
    for x, y, r in zip(xs[keep], ys[keep], radii[keep]):
        draw_platelet(od, rng, x, y, r, stains)


def _clear_of(xs, ys, wbcs, margin):
    """Mask (n,) bool of points farther than (r + margin) from every white-cell centre."""
    if not wbcs:
        return np.ones(len(xs), bool)
    w = np.asarray([c[:3] for c in wbcs], np.float64)
    dist = np.hypot(xs[:, None] - w[None, :, 0], ys[:, None] - w[None, :, 1])
    return np.all(dist > w[None, :, 2] + np.asarray(margin)[..., None], axis=1)


def _mix_stains(style: SmearStyle) -> Stains:
    """The stain vectors (3,) float32 of one style: base OD scaled by dye strength and hue."""
    hue = np.asarray(style.hue, np.float32)

    def vec(od, strength):
        return (np.asarray(od, np.float32) * np.float32(strength) * hue).astype(np.float32)

    return Stains(
        plasma=vec(PLASMA_OD, style.eosin),
        rbc=vec(np.add(RBC_OD, style.red_cell_tint * np.subtract(RBC_OD_LAVENDER, RBC_OD)), style.eosin),
        nucleus=vec(NUCLEUS_OD, style.azure),
        platelet=vec(PLATELET_OD, style.azure),
        cyto_lymphocyte=vec(CYTO_OD[LYMPHOCYTE], style.azure),
        cyto_blast=vec(CYTO_OD[LYMPHOBLAST], style.azure),
        cyto_neutrophil=vec(CYTO_OD[NEUTROPHIL], style.azure),
        cyto_monocyte=vec(CYTO_OD[MONOCYTE], style.azure),
        granule_eosinophil=vec(GRANULE_OD[EOSINOPHIL], style.eosin),
        granule_basophil=vec(GRANULE_OD[BASOPHIL], style.azure),
        cyto_erythroblast=vec(ERYTHROBLAST_CYTO_OD, style.eosin),
    )


def _photograph(od, rng, style):
    """Light through the smear, as the camera sees it: (H, W, 3) uint8 RGB."""
    height, width = od.shape[:2]
    # Vignetting centred near (not at) the middle, plus a linear gradient: uneven lamp alignment.
    cx = width * (0.5 + rng.normal(0, 0.08))
    cy = height * (0.5 + rng.normal(0, 0.08))
    u = ((np.arange(width, dtype=np.float32) - cx) / (width / 2))[None, :]
    v = ((np.arange(height, dtype=np.float32) - cy) / (height / 2))[:, None]
    gx, gy = style.gradient
    light = (1 - style.vignette * (u * u + v * v) / 2) * (1 + gx * u / 2 + gy * v / 2)
    rgb = np.exp(-od)
    rgb *= light[..., None]
    rgb *= np.asarray(style.light, np.float32)
    if style.blur_sigma > 0:
        rgb = ndi.gaussian_filter(rgb, (style.blur_sigma, style.blur_sigma, 0), truncate=3.0)
    if style.noise_sigma > 0:
        rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(style.noise_sigma)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


# --- small things ----------------------------------------------------------------------------


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Generator for one stream of a cohort: (0, p) styles, (1, p, i) images, (2, b) blocks,
    (3, p) blast fractions."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _round(v: float) -> float:
    """Round a drawn setting so the recorded style (cohort.json) reproduces it exactly."""
    return round(float(v), 4)


def _check_size(size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height) in pixels, got {size!r}") from None
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ValueError(f"size {width}x{height} is out of range: each side must be within [{MIN_SIDE}, {MAX_SIDE}] px")
    return width, height


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"SmearStyle.{name}={value!r} is outside [{low}, {high}]")
