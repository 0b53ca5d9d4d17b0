"""Draw examples/all_field.png: a crowded synthetic ALL-like field (`allray synth --profile all`)
with its detections: white cells in yellow (a red dot where a packed blob was split), smudge
cells in magenta, truth centres as small green (intact) and cyan (smudge) dots.

    python examples/all_field.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.detect import detect_cells  # noqa: E402
from pipeline.synth import make_image_rng  # noqa: E402
from pipeline.synth_all import ALL_FIELD, make_all_smear  # noqa: E402

SEED, PATIENT = 1, 3


def main() -> None:
    image, _, truth = make_all_smear(make_image_rng(SEED, PATIENT, 0), ALL_FIELD, (SEED, PATIENT))
    detection = detect_cells(image)
    im = Image.fromarray(image)
    d = ImageDraw.Draw(im)
    for c in detection.cells:
        smudge = c.kind == "smudge"
        d.rectangle(c.bbox, outline=(230, 0, 230) if smudge else (255, 200, 0), width=4)
        if smudge:
            d.text((c.bbox[0] + 4, c.bbox[1] + 2), "smudge", fill=(230, 0, 230))
        if c.n_split > 1:
            d.ellipse((c.x - 6, c.y - 6, c.x + 6, c.y + 6), fill=(230, 0, 0))
    for t in truth:
        d.ellipse((t.x - 4, t.y - 4, t.x + 4, t.y + 4), fill=(0, 190, 255) if t.smudge else (0, 200, 0))
    small = im.resize((800, 639), Image.LANCZOS).quantize(colors=64)  # < 300 KB
    small.save(REPO / "examples" / "all_field.png", optimize=True)
    print(
        f"{len(detection.cells)} detections ({sum(c.kind == 'smudge' for c in detection.cells)} smudge), "
        f"{len(truth)} truth cells ({sum(t.smudge for t in truth)} smudge) -> examples/all_field.png"
    )


if __name__ == "__main__":
    main()
