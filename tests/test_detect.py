"""White-cell detection: planted cells on tiny painted smears, and a few real BCCD images."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from pipeline.detect import (
    RBC_DIAMETER_UM,
    DetectConfig,
    Detection,
    detect_cells,
    estimate_um_per_pixel,
)
from pipeline.schema import KIND_SMUDGE, KIND_WBC

# The shared data sit next to the repo (/work/main -> /work/shared) or next to its worktree folder.
_ROOTS = Path(__file__).resolve().parents[2:4]
BCCD = next(
    (r / "shared" / "data" / "bccd" for r in _ROOTS if (r / "shared" / "data" / "bccd").exists()),
    _ROOTS[0] / "shared" / "data" / "bccd",
)

# Painted smears: red cells 30 px across, so 0.25 um per pixel.
RBC_PX = 30.0
UM_PER_PX = RBC_DIAMETER_UM / RBC_PX
LIGHT = np.array([236.0, 232.0, 228.0])
# Optical density per unit density (R, G, B) of each stained structure, Giemsa-like.
OD_RBC = np.array([0.07, 0.25, 0.24])
OD_NUCLEUS = np.array([0.80, 1.20, 0.33])
OD_CYTOPLASM = np.array([0.20, 0.15, 0.03])
OD_PLATELET = np.array([0.50, 0.80, 0.29])
# Red cells as a May-Gruenwald Giemsa stain photographed warm shows them (PBC): lavender, absorbing
# red light a little more than blue, so one layer reads slightly purple and two overlapping more.
OD_RBC_LAVENDER = np.array([0.22, 0.32, 0.14])


class Painter:
    """Builds one smear in optical density, cell by cell; `photograph` turns it into RGB."""

    def __init__(self, height: int, width: int):
        self.od = np.zeros((height, width, 3))
        self.rows, self.cols = np.indices((height, width), dtype=float)

    def disc(self, x: float, y: float, r: float, od: np.ndarray, density: float = 1.0) -> None:
        cover = np.clip(r - np.hypot(self.cols - x, self.rows - y) + 0.5, 0, 1)
        self.od += cover[..., None] * od * density

    def red_cell(self, x: float, y: float, r: float = RBC_PX / 2, od: np.ndarray = OD_RBC) -> None:
        rho2 = ((self.cols - x) ** 2 + (self.rows - y) ** 2) / r**2
        cover = np.clip(r - np.sqrt(rho2) * r + 0.5, 0, 1) * (1 - 0.5 * np.exp(-rho2 / 0.25))
        self.od += cover[..., None] * od

    def white_cell(self, x: float, y: float, r_um: float = 5.0, nucleus_fraction: float = 0.8) -> None:
        r = r_um / UM_PER_PX
        self.disc(x, y, r, OD_CYTOPLASM)
        self.disc(x, y, r * nucleus_fraction, OD_NUCLEUS, 0.9)

    def lobed_cell(self, x: float, y: float, r_um: float = 7.5, lobes: int = 4) -> None:
        """A neutrophil: `lobes` nucleus blobs on an arc ~11 um wide, ~1.5 um apart (their joining
        threads invisible), in one pale cytoplasm."""
        r = r_um / UM_PER_PX
        self.disc(x, y, r, OD_CYTOPLASM * 0.4)
        for k in range(lobes):
            a = -math.pi / 2 + (k - (lobes - 1) / 2) * 1.1
            self.disc(x + 0.55 * r * math.cos(a), y + 0.55 * r * math.sin(a), 0.2 * r, OD_NUCLEUS)

    def smudge(self, x: float, y: float, rng: np.random.Generator) -> None:
        """A ruptured cell: pale chromatin smeared into a ragged star, with no cytoplasm."""
        cover = np.clip(10.0 - np.hypot(self.cols - x, self.rows - y) + 0.5, 0, 1)
        for a in rng.uniform(0, 2 * math.pi, 5):
            for t in np.linspace(6, 24, 7):
                arm = np.clip(
                    3.5 - np.hypot(self.cols - x - t * math.cos(a), self.rows - y - t * math.sin(a)) + 0.5, 0, 1
                )
                cover = np.maximum(cover, arm)
        self.od += cover[..., None] * OD_NUCLEUS * 0.5

    def platelet(self, x: float, y: float) -> None:
        self.disc(x, y, 1.3 / UM_PER_PX, OD_PLATELET)

    def photograph(self, rng: np.random.Generator, noise: float = 2.0) -> np.ndarray:
        """(H, W, 3) uint8 RGB: light through the painted OD, slightly blurred and noisy."""
        rgb = LIGHT * np.exp(-ndi.gaussian_filter(self.od, (0.7, 0.7, 0)))
        return np.clip(rgb + rng.normal(0, noise, rgb.shape) + 0.5, 0, 255).astype(np.uint8)


def scatter_red_cells(
    painter: Painter, rng: np.random.Generator, n: int, keep_clear: list[tuple[float, float, float]], od=OD_RBC
):
    """Place up to n non-overlapping red cells, away from the (x, y, r) discs in keep_clear."""
    h, w = painter.od.shape[:2]
    placed = list(keep_clear)
    r = RBC_PX / 2
    for _ in range(n * 30):
        if len(placed) - len(keep_clear) >= n:
            break
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if all(math.hypot(x - px, y - py) > r + pr + 2 for px, py, pr in placed):
            placed.append((x, y, r))
            painter.red_cell(x, y, od=od)


def nearest(detection: Detection, x: float, y: float) -> tuple[float, object]:
    """Distance (px) from (x, y) to the nearest detected centre, and that cell."""
    best = min(detection.cells, key=lambda c: math.hypot(c.x - x, c.y - y))
    return math.hypot(best.x - x, best.y - y), best


def smear_with(cells: list[tuple[float, float]], seed: int, size=(260, 360), platelets=()) -> np.ndarray:
    """A painted smear with lymphocyte-like white cells at `cells`, platelets, and red cells around."""
    rng = np.random.default_rng(seed)
    painter = Painter(*size)
    for x, y in platelets:
        painter.platelet(x, y)
    keep = [(x, y, 5.0 / UM_PER_PX) for x, y in cells] + [(x, y, 8.0) for x, y in platelets]
    scatter_red_cells(painter, rng, 40, keep)
    for x, y in cells:
        painter.white_cell(x, y)
    return painter.photograph(rng)


def test_planted_white_cells_are_found_and_platelets_are_not():
    cells = [(60.0, 60.0), (250.0, 70.0), (110.0, 190.0), (290.0, 200.0)]
    platelets = [(170.0, 40.0), (180.0, 130.0), (30.0, 140.0), (330.0, 130.0)]
    detection = detect_cells(smear_with(cells, seed=1, platelets=platelets))
    assert len(detection.cells) == len(cells)
    for x, y in cells:
        distance, cell = nearest(detection, x, y)
        assert distance < 3.0, f"cell at ({x}, {y}) found {distance:.1f} px away"
        assert cell.kind == KIND_WBC
        x0, y0, x1, y1 = cell.bbox
        assert x0 <= cell.x < x1 and y0 <= cell.y < y1
        # A 10 um cell (~40 px across) with its cytoplasm: area close to the painted disc.
        assert 0.7 < cell.area / (math.pi * (5.0 / UM_PER_PX) ** 2) < 1.3
    for x, y in platelets:
        assert nearest(detection, x, y)[0] > 20.0


def test_two_touching_white_cells_give_two():
    r = 5.0 / UM_PER_PX
    cells = [(150.0, 130.0), (150.0 + 1.9 * r, 130.0)]  # bodies overlap by 5% of the diameters
    detection = detect_cells(smear_with(cells, seed=2))
    assert len(detection.cells) == 2
    for x, y in cells:
        assert nearest(detection, x, y)[0] < 0.3 * r


@pytest.mark.parametrize("red_od", [OD_RBC_LAVENDER, OD_RBC], ids=["lavender", "pink"])
def test_red_cells_are_neither_nuclei_smudges_nor_cytoplasm(red_od):
    # A lymphocyte ringed by touching red cells, and pairs of overlapping red cells elsewhere
    # (lavender ones read twice as purple as one): one white cell, no smudge, its box the cell's
    # own (a pink red cell's pale centre is no cytoplasm either).
    rng = np.random.default_rng(5)
    painter = Painter(260, 360)
    r = RBC_PX / 2
    cx, cy, cell_r = 180.0, 130.0, 5.0 / UM_PER_PX
    for k in range(6):  # red cells pressed against the white cell all round
        a = k * math.pi / 3
        painter.red_cell(cx + (cell_r + r - 2) * math.cos(a), cy + (cell_r + r - 2) * math.sin(a), od=red_od)
    pairs = [(40, 40), (40, 200), (320, 40), (320, 210)]
    for x, y in pairs:  # overlapping pairs, half a cell apart
        painter.red_cell(x, y, od=red_od)
        painter.red_cell(x + r, y + 4, od=red_od)
    keep = [(cx, cy, cell_r + 2 * r)] + [(x + r / 2, y + 2, 1.6 * r) for x, y in pairs]
    scatter_red_cells(painter, rng, 30, keep, od=red_od)  # and single red cells between
    painter.white_cell(cx, cy)
    detection = detect_cells(painter.photograph(rng), um_per_pixel=UM_PER_PX)
    assert [c.kind for c in detection.cells] == [KIND_WBC]
    cell = detection.cells[0]
    assert math.hypot(cell.x - cx, cell.y - cy) < 2.0
    x0, y0, x1, y1 = cell.bbox
    # The painted cell spans 2 * cell_r = 40 px; with the red cells around it joined, the box
    # would span 2 * (cell_r + RBC_PX) - 4 = 96 px.
    assert max(x1 - x0, y1 - y0) <= 2 * cell_r + RBC_PX, cell.bbox


def test_lobed_nucleus_is_one_cell():
    rng = np.random.default_rng(3)
    painter = Painter(240, 320)
    scatter_red_cells(painter, rng, 30, [(160.0, 120.0, 7.5 / UM_PER_PX)])
    painter.lobed_cell(160.0, 120.0)
    detection = detect_cells(painter.photograph(rng))
    assert len(detection.cells) == 1
    assert nearest(detection, 160.0, 120.0)[0] < 0.3 * 7.5 / UM_PER_PX


# An eosinophil's cytoplasm, packed with eosin granules: pink (green absorbed, little red), as
# measured on BCCD eosinophils (OD about 0.05-0.12 red, 0.3-0.45 green, 0-0.1 blue).
OD_PINK_CYTOPLASM = np.array([0.08, 0.36, 0.10])


def paint_two_lobed_cell(cytoplasm: np.ndarray, seed: int) -> tuple[np.ndarray, tuple[float, float]]:
    """A 17 um cell holding two round lobes 7.2 um across, pressed together (an eosinophil's
    spectacles); each lobe alone is as round and as wide as a small lymphocyte's nucleus."""
    rng = np.random.default_rng(seed)
    painter = Painter(240, 320)
    x, y, r_lobe = 160.0, 120.0, 3.6 / UM_PER_PX
    scatter_red_cells(painter, rng, 30, [(x, y, 8.5 / UM_PER_PX)])
    painter.disc(x, y, 8.5 / UM_PER_PX, cytoplasm)
    for dx in (-r_lobe, r_lobe):
        painter.disc(x + dx, y, r_lobe, OD_NUCLEUS, 0.9)
    return painter.photograph(rng), (x, y)


@pytest.mark.parametrize("seed", [4, 5])
def test_two_round_lobes_in_pink_granular_cytoplasm_are_one_eosinophil(seed):
    image, (x, y) = paint_two_lobed_cell(OD_PINK_CYTOPLASM, seed)
    detection = detect_cells(image)
    assert len(detection.cells) == 1
    assert nearest(detection, x, y)[0] < 2.0 / UM_PER_PX


def test_two_round_nuclei_in_blue_cytoplasm_stay_two_cells():
    """The same two round nuclei in basophilic (blue) cytoplasm, a lymphocyte's or a blast's:
    nothing shows them to be one granulocyte's lobes, and packed blasts look like this."""
    image, (x, y) = paint_two_lobed_cell(OD_CYTOPLASM * 1.5, seed=4)
    detection = detect_cells(image)
    assert len(detection.cells) == 2
    r_lobe = 3.6 / UM_PER_PX
    for dx in (-r_lobe, r_lobe):
        assert nearest(detection, x + dx, y)[0] < 0.5 * r_lobe


def test_a_lymphocyte_against_a_monocyte_stays_two_cells():
    """A synthetic smear (seed 1, patient 20, image 0) where a lymphocyte lies against a monocyte:
    the monocyte's nucleus fills little of its cell, like a granulocyte's lobes, but its
    cytoplasm is grey-blue, so the two stay apart."""
    from pipeline import synth

    style, blasts = synth.choose_patient_style(1, 20), synth.choose_blast_fraction(1, 20)
    image, truth = synth.make_smear(synth.make_image_rng(1, 20, 0), (800, 600), blasts, style)
    pair = [t for t in truth if t.kind in ("monocyte", "lymphocyte")]
    assert sorted(t.kind for t in pair) == ["lymphocyte", "monocyte"]
    assert math.hypot(pair[0].x - pair[1].x, pair[0].y - pair[1].y) < pair[0].r + pair[1].r  # they touch
    cells = detect_cells(image).cells
    for t in pair:
        inside = [c for c in cells if math.hypot(c.x - t.x, c.y - t.y) <= t.r]
        assert len(inside) == 1, f"the {t.kind} at ({t.x:.0f}, {t.y:.0f}) holds {len(inside)} detections"


def test_cell_cut_by_the_border_is_kept_and_flagged():
    detection = detect_cells(smear_with([(8.0, 120.0), (220.0, 130.0)], seed=4))
    assert len(detection.cells) == 2
    cut, whole = sorted(detection.cells, key=lambda c: c.x)
    assert cut.at_border and cut.bbox[0] == 0
    assert not whole.at_border
    # The centre is that of the visible part: inside the picture, right of the painted centre.
    assert 8.0 < cut.x < 8.0 + 5.0 / UM_PER_PX


def test_scale_is_measured_from_red_cells_and_detection_is_scale_invariant():
    image = smear_with([(90.0, 90.0), (260.0, 170.0)], seed=5)
    measured = estimate_um_per_pixel(image)
    assert measured is not None and abs(measured / UM_PER_PX - 1) < 0.1
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.BILINEAR))
    assert abs(estimate_um_per_pixel(big) / (UM_PER_PX / 2) - 1) < 0.1
    small, large = detect_cells(image), detect_cells(big)
    assert small.scale_source == large.scale_source == "red_cells"
    assert len(small.cells) == len(large.cells) == 2
    for a, b in zip(small.cells, large.cells):
        assert math.hypot(2 * a.x + 0.5 - b.x, 2 * a.y + 0.5 - b.y) < 4.0
        assert 0.8 < b.area / (4 * a.area) < 1.25


def test_scale_given_by_the_caller_is_used():
    detection = detect_cells(smear_with([(120.0, 120.0)], seed=6), um_per_pixel=UM_PER_PX)
    assert detection.scale_source == "user" and detection.um_per_pixel == UM_PER_PX
    assert len(detection.cells) == 1
    with pytest.raises(ValueError, match="um_per_pixel"):
        detect_cells(np.zeros((10, 10, 3), np.uint8), um_per_pixel=-1.0)


def test_smudge_cell_is_kept_as_smudge():
    rng = np.random.default_rng(7)
    painter = Painter(240, 320)
    scatter_red_cells(painter, rng, 25, [(160.0, 120.0, 40.0), (60.0, 60.0, 5.0 / UM_PER_PX)])
    painter.white_cell(60.0, 60.0)
    painter.smudge(160.0, 120.0, rng)
    detection = detect_cells(painter.photograph(rng))
    kinds = {nearest(detection, x, y)[1].kind for x, y in [(60.0, 60.0), (160.0, 120.0)]}
    assert len(detection.cells) == 2
    assert kinds == {KIND_WBC, KIND_SMUDGE}


def test_blank_image_gives_no_cells_and_the_default_scale():
    config = DetectConfig()
    detection = detect_cells(np.full((200, 300, 3), 230, np.uint8), config)
    assert detection.cells == ()
    assert detection.scale_source == "default" and detection.um_per_pixel == config.default_um_per_pixel


@pytest.mark.parametrize("kind", ["grey", "grey2d", "dark", "tiny", "saturated"])
def test_odd_images_do_not_crash(kind):
    image = smear_with([(120.0, 120.0)], seed=8)
    if kind == "grey":
        image = np.repeat(image.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    elif kind == "grey2d":
        image = image.mean(axis=2).astype(np.uint8)
    elif kind == "dark":
        image = (image // 12).astype(np.uint8)
    elif kind == "tiny":
        image = image[:3, :2]
    elif kind == "saturated":
        image = np.where(image > 128, 255, 0).astype(np.uint8)
    detection = detect_cells(image)
    assert isinstance(detection, Detection)
    assert all(c.area > 0 for c in detection.cells)


def test_wrong_input_is_rejected_with_its_shape_or_dtype():
    with pytest.raises(ValueError, match="float64"):
        detect_cells(np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match=r"\(20, 20, 5\)"):
        detect_cells(np.zeros((20, 20, 5), np.uint8))


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_nucleus_um", -1.0),
        ("max_nucleus_um", 500.0),
        ("neck_ratio", 1.5),
        ("working_rbc_px", "32"),
        ("nucleus_relative_threshold", 0.0),
        ("default_um_per_pixel", float("nan")),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        DetectConfig(**{field: value})


def test_config_rejects_sizes_out_of_order():
    with pytest.raises(ValueError, match="one_nucleus_um"):
        DetectConfig(min_nucleus_um=12.0, one_nucleus_um=10.0)


def read_wbc_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    boxes = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        if obj.findtext("name") == "WBC":
            b = obj.find("bndbox")
            boxes.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


@pytest.mark.skipif(not BCCD.exists(), reason=f"real BCCD smears not found at {BCCD}")
def test_real_bccd_val_images_have_every_white_cell_found():
    ids = (BCCD / "val.txt").read_text().split()[:5]
    for image_id in ids:
        image = np.asarray(Image.open(BCCD / f"{image_id}.jpg").convert("RGB"))
        detection = detect_cells(image)
        assert detection.scale_source == "red_cells"
        # BCCD red cells are ~100 px across (0.075 um/px); the measurement reads them a bit small.
        assert 0.06 < detection.um_per_pixel < 0.11
        for x0, y0, x1, y1 in read_wbc_boxes(BCCD / f"{image_id}.xml"):
            inside = [c for c in detection.cells if x0 <= c.x < x1 and y0 <= c.y < y1]
            assert len(inside) == 1, f"{image_id}: box {(x0, y0, x1, y1)} holds {len(inside)} detections"


@pytest.mark.skipif(not BCCD.exists(), reason=f"real BCCD smears not found at {BCCD}")
@pytest.mark.parametrize("image_id", ["BloodImage_00299", "BloodImage_00359", "BloodImage_00387"])
def test_a_real_eosinophils_two_lobes_are_one_cell(image_id):
    """Real BCCD train images of an eosinophil whose two round lobes lie pressed together in its
    granular pink cytoplasm: one white cell, not two."""
    image = np.asarray(Image.open(BCCD / f"{image_id}.jpg").convert("RGB"))
    cells = detect_cells(image).cells
    for x0, y0, x1, y1 in read_wbc_boxes(BCCD / f"{image_id}.xml"):
        inside = [c for c in cells if x0 <= c.x < x1 and y0 <= c.y < y1]
        assert len(inside) == 1, f"{image_id}: box {(x0, y0, x1, y1)} holds {len(inside)} detections"


@pytest.mark.skipif(not BCCD.exists(), reason=f"real BCCD smears not found at {BCCD}")
@pytest.mark.parametrize("image_id", ["BloodImage_00190", "BloodImage_00292", "BloodImage_00325"])
def test_a_ragged_lobed_neutrophil_as_dark_as_any_nucleus_is_no_smudge(image_id):
    """Real BCCD train images whose one white cell, a neutrophil, has lobes spread far apart (an
    outline as ragged as a burst net's): its chromatin is dense, so it is an intact white cell."""
    image = np.asarray(Image.open(BCCD / f"{image_id}.jpg").convert("RGB"))
    cells = detect_cells(image).cells
    for x0, y0, x1, y1 in read_wbc_boxes(BCCD / f"{image_id}.xml"):
        inside = [c.kind for c in cells if x0 <= c.x < x1 and y0 <= c.y < y1]
        assert inside == [KIND_WBC], f"{image_id}: box {(x0, y0, x1, y1)} holds {inside}"


@pytest.mark.skipif(not BCCD.exists(), reason=f"real BCCD smears not found at {BCCD}")
@pytest.mark.parametrize("image_id", ["BloodImage_00281", "BloodImage_00283", "BloodImage_00382", "BloodImage_00395"])
def test_pale_platelet_clumps_where_red_cells_read_a_little_purple_are_no_white_cells(image_id):
    # In these BCCD train images the red cells reach OD(R) > OD(B) in places, and a pale granular
    # platelet clump passed as a white cell; the nucleus threshold now rises by what two
    # overlapping red cells read there. Every detection is an annotated white cell, each found once.
    image = np.asarray(Image.open(BCCD / f"{image_id}.jpg").convert("RGB"))
    cells = [c for c in detect_cells(image).cells if c.kind == KIND_WBC]
    boxes = read_wbc_boxes(BCCD / f"{image_id}.xml")
    assert len(cells) == len(boxes)
    for x0, y0, x1, y1 in boxes:
        assert sum(x0 <= c.x < x1 and y0 <= c.y < y1 for c in cells) == 1
