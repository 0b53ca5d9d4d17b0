"""The README's picture of report.html's differential section (examples/report_differential.png).

    .venv/bin/python examples/report_differential.py [REPORT_DIR]

With REPORT_DIR (an `allray infer` output), its report.html is shown; without, a sample page is
built from synthetic smears (`pipeline.synth`) whose cells are "called" by their true class with
simulated confidence and a few deliberate errors, so every part of the section has content. The
page is opened in headless Chromium with everything but the differential table and the class strips
hidden, and the screenshot is written as a palette PNG (small enough for the README).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import schema, taxonomy  # noqa: E402
from pipeline.report import CountAccumulator  # noqa: E402
from pipeline.report_html import write_html_report  # noqa: E402

CLASSES = ("lymphoblast", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "erythroblast")
ONLY_DIFFERENTIAL = (
    "<style>header, main > section:not(#differential):not(#classes), main > .note, footer "
    "{ display: none !important; } #differential h2 { margin-top: 0; }</style>"
)


def sample_report(out: Path, seed: int = 4, patients: int = 5) -> Path:
    """A report of synthetic patients with simulated K-class calls: counts from 12 smears each."""
    from pipeline.crops import cut_crop
    from pipeline.synth import choose_blast_fraction, choose_patient_style, make_image_rng, make_smear

    rng = np.random.default_rng(seed)
    acc = CountAccumulator(min_cells=20, classes=CLASSES)
    strips: dict[str, list] = {}
    for p in range(patients):
        pid, style, frac = f"P{p:03d}", choose_patient_style(seed, p), choose_blast_fraction(seed, p)
        for i in range(12):
            image, truth = make_smear(make_image_rng(seed, p, i), (640, 480), frac, style)
            called, probs = [], []
            for c in truth:
                wrong = rng.random() < 0.06  # a few honest-looking mistakes
                name = str(rng.choice(CLASSES)) if wrong else c.kind
                called.append(name)
                probs.append(float(rng.uniform(0.4, 0.7) if wrong else rng.beta(12, 1.5)))
                crop = cut_crop(image, c.x, c.y, int(round(2.6 * c.r / 0.85)), 96)
                buf = io.BytesIO()
                Image.fromarray(crop).save(buf, format="PNG")
                strips.setdefault(name, []).append((probs[-1], buf.getvalue(), f"{pid}: img{i:03d}"))
            name = f"{pid}/S0/img{i:03d}.png"
            acc.add_image(pid, "S0", name)
            acc.add_cells(
                pid,
                "S0",
                name,
                [int(c == taxonomy.LYMPHOBLAST) for c in called],
                [schema.KIND_WBC] * len(called),
                called,
            )
    gallery = {
        k: [(crop, prob, cap) for prob, crop, cap in sorted(v, key=lambda t: -t[0])[:8]] for k, v in strips.items()
    }
    info = {"model": "sample (simulated calls)", "threshold": 0.5, "blast_alert_pct": 20.0, "min_cells": 20}
    return write_html_report(out, acc.patients(), {}, {}, [], info, class_gallery=gallery, classes=CLASSES)


def main() -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        page = Path(sys.argv[1]) / "report.html" if len(sys.argv) > 1 else sample_report(tmp / "report")
        shown = tmp / "differential.html"
        shown.write_text(page.read_text(encoding="utf-8").replace("</head>", ONLY_DIFFERENTIAL + "</head>", 1))
        shot = tmp / "shot.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp / 'profile'}",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                "--window-size=1180,980",
                shown.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pic = Image.open(shot).convert("RGB")
        out = ROOT / "examples" / "report_differential.png"
        pic.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        print(f"{out}: {pic.size[0]}x{pic.size[1]}, {out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
