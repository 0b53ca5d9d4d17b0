"""How well the scale of single-cell images is measured from the few red cells they show.

    .venv/bin/python benchmarks/single_cell_scale.py [--seeds 3] [--pbc 60]

- Synthetic: ALL-IDB2-like single cells (25.7 um squares, a third shrunk to ~103 px and re-encoded
  as JPEG) cut from synthetic cohorts whose scale is known: the error of the measured um/px,
  per seed: failures (quarantined), median error (bias), median absolute error, 90th percentile.
  For comparison, the slide estimator (`estimate_um_per_pixel`) on the same images.
- Real smears cut into single cells: around each WBC box of BCCD smears (../shared/data/bccd, MIT),
  a square as wide (in red-cell diameters) as an ALL-IDB2 image is, measured alone, against the
  slide estimator on the whole smear: the two must agree, or models trained on single cells would
  see cells at another size than on slides.
- Real: PBC images (one analyser, one magnification: ../shared/data/pbc, CC BY 4.0) have no
  known scale, but one: the spread of the measured red-cell diameter from image to image is the
  estimator's own noise on real pictures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.scale import estimate_single_cell_um_per_pixel, estimate_um_per_pixel  # noqa: E402
from pipeline.synth_cohort import write_cohort  # noqa: E402
from pipeline.synth_single import write_single_cells  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data"
PBC, BCCD = SHARED / "pbc", SHARED / "bccd"


def _errors(estimator, folder: Path, cells) -> tuple[int, np.ndarray]:
    errors, fails = [], 0
    for c in cells:
        measured = estimator(np.asarray(Image.open(folder / c.name).convert("RGB")))
        if measured is None:
            fails += 1
        else:
            errors.append(measured / c.um_per_pixel - 1)
    return fails, np.asarray(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--pbc", type=int, default=60, help="PBC images to measure (0: none)")
    ap.add_argument("--pbc-dir", type=Path, default=PBC)
    ap.add_argument("--bccd", type=int, default=40, help="BCCD smears to cut single cells from (0: none)")
    args = ap.parse_args()
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            write_cohort(Path(tmp) / "c", patients=args.patients, images_per_patient=4, seed=100 + seed)
            cells = write_single_cells(Path(tmp) / "c", Path(tmp) / "s")
            for name, est in (("single-cell", estimate_single_cell_um_per_pixel), ("slide", estimate_um_per_pixel)):
                t = time.perf_counter()
                fails, e = _errors(est, Path(tmp) / "s", cells)
                per = (time.perf_counter() - t) / len(cells)
                print(
                    f"seed {100 + seed}, {len(cells)} images, {name} estimator: {fails} not measured; error median "
                    f"{np.median(e):+.1%}, median |error| {np.median(abs(e)):.1%}, 90th pct |error| "
                    f"{np.percentile(abs(e), 90):.1%} ({per * 1000:.0f} ms/image)"
                )
    if args.bccd and BCCD.is_dir():
        _bccd(args.bccd)
    files = sorted(args.pbc_dir.glob("*/*.jpg")) if args.pbc else []
    if files:
        rng = np.random.default_rng(0)
        files = [files[i] for i in rng.choice(len(files), min(args.pbc, len(files)), replace=False)]
        for name, est in (("single-cell", estimate_single_cell_um_per_pixel), ("slide", estimate_um_per_pixel)):
            d = np.asarray([7.5 / (est(np.asarray(Image.open(f).convert("RGB"))) or np.nan) for f in files])
            ok = d[~np.isnan(d)]
            print(
                f"PBC, {len(files)} images, {name} estimator: {np.isnan(d).sum()} not measured; red-cell diameter "
                f"median {np.median(ok):.1f} px, spread (median |d / median - 1|) "
                f"{np.median(abs(ok / np.median(ok) - 1)):.1%}"
            )


def _bccd(n: int) -> None:
    import xml.etree.ElementTree as ET

    ratios, fails = [], 0
    for xml in sorted(BCCD.glob("*.xml"))[:n]:
        image = np.asarray(Image.open(xml.with_suffix(".jpg")).convert("RGB"))
        slide = estimate_um_per_pixel(image)
        if slide is None:
            continue
        side = int(round(25.7 / slide))  # an ALL-IDB2-wide square (25.7 um) at the smear's scale
        for box in ET.parse(xml).findall("object"):
            if box.findtext("name") != "WBC":
                continue
            b = box.find("bndbox")
            x = (float(b.findtext("xmin")) + float(b.findtext("xmax"))) / 2
            y = (float(b.findtext("ymin")) + float(b.findtext("ymax"))) / 2
            x0, y0 = max(0, int(x - side / 2)), max(0, int(y - side / 2))
            cell = np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side])
            measured = estimate_single_cell_um_per_pixel(cell)
            if measured is None:
                fails += 1
            else:
                ratios.append(measured / slide - 1)
    r = np.asarray(ratios)
    print(
        f"BCCD, {len(r) + fails} single cells cut from {n} smears: {fails} not measured; single-cell vs slide "
        f"estimate: median {np.median(r):+.1%}, median |difference| {np.median(abs(r)):.1%}, 90th pct "
        f"{np.percentile(abs(r), 90):.1%}"
    )


if __name__ == "__main__":
    main()
