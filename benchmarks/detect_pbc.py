"""White-cell detection on real single cells of many kinds: the PBC images (one centred cell each).

    python benchmarks/detect_pbc.py                  # all 3,200 shared PBC images, per class
    python benchmarks/detect_pbc.py --half odd       # the odd-numbered files of each class only
    python benchmarks/detect_pbc.py --verbose        # ... plus every failing file and what was found
    python benchmarks/detect_pbc.py --overlays /tmp/ov   # ... and a PNG of each failure, boxes drawn

BCCD (normal smears, one camera) is the only real source with white-cell boxes here, and the
detector's rules were made on it and on synthetic smears. PBC (CellaVision DM96, Hospital Clinic
of Barcelona, May-Grünwald Giemsa: another lab, analyser and stain) gives 400 real cells per class
with the class known and the cell at the centre, so it says per class whether a real cell is found
as one cell, parted into several, called smudge, or missed, and whether a platelet is taken for a
white cell. Nothing in the detector was fitted to it; `--half even` / `--half odd` keep one half for
looking at failures and the other for scoring, should anyone tune on it.

Scoring, per image: the detections whose centre lies within `--radius-um` (6 um: well inside any
white cell, closer than a touching neighbour's centre) of the image centre.
- White cells (basophil, eosinophil, ig, lymphocyte, monocyte, neutrophil) and erythroblasts
  (nucleated red cells, counted per 100 white cells in the differential): "one" when exactly one
  detection of kind wbc is there and no smudge; "split" when two or more are (or one and a smudge
  piece); "smudge" when only a smudge detection is; "none" when no detection's centre is there: the
  cell was missed, or found with its centre pulled more than 6 um off (a crop cut around it would
  be off-centre by as much).
- Platelets: "false wbc" when a detection of kind wbc is there.
- Every class: the share of images with a smudge detection anywhere. These are blood cells of
  people without haematological disease, so smudge (burst) cells should be rare: most such
  detections are false ones.
The scale is measured from each image's red cells, as `allray ingest` does on a smear; with
`--um-per-pixel` it is given instead (0.1142 is PBC's pooled scale, benchmarks/single_cell_scale.py).

Acevedo A. et al., "A dataset of microscopic peripheral blood cell images for development of
automatic recognition systems", Data in Brief 30 (2020) 105474, doi:10.17632/snkd93bnjr.1, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw  # noqa: E402

from pipeline.detect import DetectConfig, detect_cells  # noqa: E402
from pipeline.io import decode_image, has_image_extension  # noqa: E402
from pipeline.schema import KIND_SMUDGE, KIND_WBC  # noqa: E402

PBC = next(
    (
        p
        for p in (REPO.parent / "shared" / "data" / "pbc", REPO.parent.parent / "shared" / "data" / "pbc")
        if p.exists()
    ),
    REPO.parent / "shared" / "data" / "pbc",
)
NUCLEATED = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil", "erythroblast")
OUTCOMES = ("one", "split", "smudge", "none")


def score_image(
    path: Path, radius_um: float, um_per_pixel: float | None, overlays: str | None = None
) -> tuple[str, int, int, float, int]:
    """(outcome, wbc detections near the centre, smudge detections near it, um/px used, smudge
    detections anywhere) of one image; with `overlays`, a failing image is drawn there (wbc boxes
    green, smudge red, the centre disc blue)."""
    image = decode_image(path.read_bytes()).pixels
    found = detect_cells(image, DetectConfig(), um_per_pixel=um_per_pixel)
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    r = radius_um / found.um_per_pixel
    near = [c for c in found.cells if (c.x - cx) ** 2 + (c.y - cy) ** 2 <= r * r]
    wbc = sum(c.kind == KIND_WBC for c in near)
    smudge = sum(c.kind == KIND_SMUDGE for c in near)
    if wbc == 1 and smudge == 0:
        outcome = "one"
    elif wbc >= 2 or (wbc == 1 and smudge):
        outcome = "split"
    elif smudge:
        outcome = "smudge"
    else:
        outcome = "none"
    failed = wbc > 0 if path.parent.name == "platelet" else outcome != "one"
    if overlays and failed:
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 0, 255), width=2)
        for c in found.cells:
            draw.rectangle(c.bbox, outline=(0, 200, 0) if c.kind == KIND_WBC else (255, 0, 0), width=2)
            draw.ellipse((c.x - 3, c.y - 3, c.x + 3, c.y + 3), fill=(0, 200, 0) if c.kind == KIND_WBC else (255, 0, 0))
        Path(overlays).mkdir(parents=True, exist_ok=True)
        picture.save(Path(overlays) / f"{path.parent.name}_{path.stem}_{outcome}.png")
    return outcome, wbc, smudge, found.um_per_pixel, sum(c.kind == KIND_SMUDGE for c in found.cells)


def files_of(folder: Path, half: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if has_image_extension(p.name))
    return files if half == "all" else files[half == "odd" :: 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbc", default=str(PBC), help="PBC folder of class folders")
    parser.add_argument("--half", choices=("all", "even", "odd"), default="all", help="which files of each class")
    parser.add_argument("--radius-um", type=float, default=6.0, help="detections this near the centre count")
    parser.add_argument("--um-per-pixel", type=float, default=None, help="give the scale instead of measuring it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--verbose", action="store_true", help="list every failing file")
    parser.add_argument("--overlays", default=None, metavar="DIR", help="write failure overlays (PNG) here")
    args = parser.parse_args()
    root = Path(args.pbc)
    classes = [c for c in (*NUCLEATED, "platelet") if (root / c).is_dir()]
    if not classes:
        raise SystemExit(f"{root}: no PBC class folders ({', '.join(NUCLEATED)}, platelet)")
    scale = "measured per image" if args.um_per_pixel is None else f"{args.um_per_pixel} um/px given"
    print(f"PBC detection, {args.half} files, scale {scale}, detections within {args.radius_um} um of the centre")
    print(f"{'class':<13} {'images':>6} " + " ".join(f"{o:>7}" for o in OUTCOMES) + "   (% of images)")
    with ProcessPoolExecutor(args.jobs) as pool:
        for name in classes:
            files = files_of(root / name, args.half)
            n = len(files)
            results = list(
                pool.map(
                    score_image, files, [args.radius_um] * n, [args.um_per_pixel] * n, [args.overlays] * n, chunksize=8
                )
            )
            if name == "platelet":
                false = [(f, r) for f, r in zip(files, results) if r[1] > 0]
                print(f"{name:<13} {n:>6}   false wbc {100 * len(false) / n:5.1f}% ({len(false)})", end="")
                failing = false
            else:
                counts = {o: sum(r[0] == o for r in results) for o in OUTCOMES}
                print(f"{name:<13} {n:>6} " + " ".join(f"{100 * counts[o] / n:7.1f}" for o in OUTCOMES), end="")
                failing = [(f, r) for f, r in zip(files, results) if r[0] != "one"]
            print(f"   smudge anywhere: {sum(r[4] > 0 for r in results) / n:5.1%} of images")
            if args.verbose:
                for f, (outcome, wbc, smudge, upp, _) in failing:
                    print(f"    {f.name}: {outcome} ({wbc} wbc, {smudge} smudge near the centre; {upp:.4f} um/px)")


if __name__ == "__main__":
    main()
