"""Report pictures and pages: overlays, the HTML page (complete, escaped, self-contained), a realistic
sample report as headless Chromium renders it, and the differential section with its class strips."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import schema
from pipeline.report import N_IMAGES, CountAccumulator, write_count_tables
from pipeline.report_html import draw_overlay, write_html_report

WBC, SMUDGE = schema.KIND_WBC, schema.KIND_SMUDGE


# --- overlay --------------------------------------------------------------------------------------


def box(x0, y0, x1, y1, predicted, prob, kind=WBC) -> dict:
    return {
        schema.BBOX_X0: x0,
        schema.BBOX_Y0: y0,
        schema.BBOX_X1: x1,
        schema.BBOX_Y1: y1,
        schema.PREDICTED: predicted,
        schema.BLAST_PROB: prob,
        schema.KIND: kind,
    }


def test_overlay_is_a_downscaled_jpeg_with_red_blast_boxes():
    image = np.full((600, 800, 3), 215, np.uint8)
    cells = [
        box(100, 200, 300, 400, 1, 0.93),
        box(500, 200, 700, 400, 0, 0.12),
        box(350, 450, 450, 550, 1, 0.8, SMUDGE),
    ]
    data = draw_overlay(image, cells, max_side=400)
    pic = Image.open(io.BytesIO(data))
    assert pic.format == "JPEG" and pic.size == (400, 300)
    px = np.asarray(pic.convert("RGB")).astype(int)

    def colour(x, y):  # mean of a 3x3 patch on a box edge (JPEG blurs single pixels)
        return px[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)

    r, g, b = colour(51, 150)  # left edge of the blast box, at half scale
    assert r > 170 and g < 80 and b < 80
    r, g, b = colour(251, 150)  # left edge of the other cell: green
    assert g > 120 and r < 80 and b < 110
    r, g, b = colour(176, 250)  # the smudge box: grey though it was called a blast
    assert abs(r - g) < 25 and abs(g - b) < 25 and r < 190
    assert np.abs(colour(100, 150) - 215).max() < 12  # inside the box the slide is untouched
    assert Image.open(io.BytesIO(draw_overlay(image, cells, max_side=1000))).size == (800, 600)


def test_overlay_rejects_non_rgb8_image():
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(np.zeros((10, 10), np.uint8), [])


# --- HTML -----------------------------------------------------------------------------------------

HOSTILE = "<script>alert('x')</script>"
VOID = {"meta", "img", "br", "wbr", "link", "input", "hr"}


class PageParser(HTMLParser):
    """Collects tags, checks nesting, counts patient rows and images, keeps the visible text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text, self.imgs, self.patient_rows = [], [], [], [], 0
        self.tags: set[str] = set()
        self.table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self.table = attrs.get("id")
        if tag == "tr" and self.table == "patients" and "tbody" in self.stack:
            self.patient_rows += 1
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)
        if tag == "table":
            self.table = None

    def handle_data(self, data):
        self.text.append(data)


def jpeg(colour, size=(60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def png(colour, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def hostile_page(tmp_path) -> tuple[Path, list[bytes]]:
    acc = CountAccumulator(min_cells=2)
    for pid, calls in (("A", [1, 1, 0]), (HOSTILE, [0, 0, 0, 1]), ("C & D", [0])):
        acc.add_image(pid, "s", f"{pid}.png")
        acc.add_cells(pid, "s", f"{pid}.png", calls, [WBC] * len(calls))
    images = [jpeg((200, 0, 0)), jpeg((0, 200, 0)), jpeg((0, 0, 200)), png((9, 9, 9)), png((99, 9, 9))]
    overlays = {"A": [("A.png", images[0]), ("A2.png", images[1])], HOSTILE: [(HOSTILE, images[2])]}
    gallery = {"A": [(images[3], 0.91, "A.png #0"), (images[4], 0.62, f"{HOSTILE} #1")]}
    quarantine = [{schema.IMAGE: "bad/<b>x</b>.tif", schema.REASON: "truncated & <i>unreadable</i>"}]
    info = {
        "model": "lenet-1234",
        "threshold": 0.5,
        "blast_alert_pct": 20.0,
        "min_cells": 2,
        "elapsed_s": 2.0,
        "started": "2025-01-01 10:00",
        "comment": HOSTILE,
    }
    path = write_html_report(tmp_path, acc.patients(), overlays, gallery, quarantine, info)
    return path, images


def test_html_page_is_complete_escaped_and_self_contained(tmp_path):
    path, images = hostile_page(tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []  # every element closed, in order
    assert parser.patient_rows == 3
    assert len(parser.imgs) == len(images)
    assert sorted(base64.b64decode(src.split(",", 1)[1]) for src in parser.imgs) == sorted(images)
    assert {src.split(";")[0] for src in parser.imgs} == {"data:image/jpeg", "data:image/png"}
    assert "script" not in parser.tags and "b" in parser.tags  # <b> of ours, none of theirs
    text = "".join(parser.text)
    assert HOSTILE in text and "bad/<b>x</b>.tif" in text and "truncated & <i>unreadable</i>" in text
    assert "C & D" in text and "p = 0.91" in text and "lenet-1234" in text
    assert "http://" not in page and "https://" not in page and "<link" not in page


# --- a realistic sample report, and the page as a browser renders it ----------------------------


def write_sample_report(out: Path, seed: int = 3, n_patients: int = 6) -> Path:
    """A report of synthetic patients: two drawn smears each (overlays, blast crops), more counted."""
    from pipeline.synth import choose_patient_style, make_image_rng, make_smear

    rng = np.random.default_rng(seed)
    acc = CountAccumulator(blast_alert_pct=20.0, min_cells=50)
    overlays, gallery = {}, {}
    # Blast fractions and slide counts chosen to show every flag: alert, alert on few cells, a low
    # count under the alert, too few cells, healthy.
    fractions, extra_images = [0.0, 0.72, 0.35, 0.12, 0.0, 0.55], [16, 24, 3, 22, 2, 14]
    for p in range(n_patients):
        pid, frac = f"P{p:03d}", fractions[p % len(fractions)]
        for i in range(2):
            name = f"{pid}/S0/img{i:03d}.png"
            image, truth = make_smear(make_image_rng(seed, p, i), (720, 540), frac, choose_patient_style(seed, p))
            probs = [float(rng.beta(9, 2) if c.label else rng.beta(2, 9)) for c in truth]
            cells = [
                box(int(c.x - c.r), int(c.y - c.r), int(c.x + c.r), int(c.y + c.r), int(q >= 0.5), q)
                for c, q in zip(truth, probs)
            ]
            kinds = [WBC] * len(cells)
            if i == 1 and cells:
                kinds[-1] = cells[-1][schema.KIND] = SMUDGE
            acc.add_image(pid, "S0", name)
            acc.add_cells(pid, "S0", name, [c[schema.PREDICTED] for c in cells], kinds)
            overlays.setdefault(pid, []).append((name, draw_overlay(image, cells, max_side=720)))
            for k, (c, cell) in enumerate(zip(truth, cells)):
                if cell[schema.PREDICTED] and cell[schema.KIND] == WBC:
                    x0, y0 = max(0, int(c.x - 1.3 * c.r)), max(0, int(c.y - 1.3 * c.r))
                    crop = Image.fromarray(image[y0 : int(c.y + 1.3 * c.r), x0 : int(c.x + 1.3 * c.r)]).resize((96, 96))
                    buf = io.BytesIO()
                    crop.save(buf, format="PNG")
                    gallery.setdefault(pid, []).append((buf.getvalue(), cell[schema.BLAST_PROB], f"{name} #{k}"))
        n = extra_images[p % len(extra_images)]
        per_image = rng.integers(2, 7, n)
        images = np.repeat([f"{pid}/S1/img{i:03d}.png" for i in range(n)], per_image)
        calls = (rng.random(len(images)) < np.clip(frac + rng.normal(0, 0.03), 0, 1)).astype(np.int8)
        acc.add_cell_batch([pid] * len(images), ["S1"] * len(images), images, calls, [WBC] * len(images))
    patients = acc.patients()
    n_cells = sum(r[schema.N_CELLS] for r in patients)
    quarantine = [
        {schema.IMAGE: "P002/S1/img099.tif", schema.REASON: "cannot decode: truncated TIFF strip"},
        {schema.IMAGE: "P004/notes.txt", schema.REASON: "not an image: starts with text 'Patient notes'"},
    ]
    info = {
        "model": "resnet-3f2a9c1b",
        "threshold": 0.5,
        "blast_alert_pct": 20.0,
        "min_cells": 50,
        "started": "2025-06-02 14:31",
        "elapsed_s": 2.7,
        "cells_per_s": n_cells / 2.7,
        "n_images": sum(r[N_IMAGES] for r in patients) + len(quarantine),
        "n_quarantined": len(quarantine),
    }
    write_count_tables(out, patients, acc.samples(), info)
    return write_html_report(out, patients, overlays, gallery, quarantine, info)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip(
        "chromium is not on PATH: install Debian's `chromium` package (the Makefile's test target does) "
        "to check that report.html renders in a browser"
    )


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = find_chromium()
    page = write_sample_report(tmp_path / "report")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    parser = PageParser()
    parser.feed(dom)
    assert parser.patient_rows == 6
    n_gallery = dom.count('class="crop"')
    assert n_gallery > 0 and len(parser.imgs) == 6 * 2 + n_gallery
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1200, 3)
    assert pixels.std() > 20  # not a blank page
    assert ((pixels[..., 0] > 150) & (pixels[..., 1] < 80)).sum() > 500  # red flags and blast boxes drawn


# --- the differential section ---------------------------------------------------------------------

DIFF_CLASSES = ("lymphoblast", "neutrophil", "lymphocyte", "erythroblast")


def differential_page(tmp_path) -> tuple[Path, str]:
    acc = CountAccumulator(min_cells=1, classes=DIFF_CLASSES)
    acc.add_cells("A", "s", "a.png", [1, 0, 0, 0], [WBC] * 4, ["lymphoblast", "neutrophil", "neutrophil", "lymphocyte"])
    acc.add_cells(HOSTILE, "s", "h.png", [0, 0, 0], [WBC, WBC, SMUDGE], ["lymphocyte", "erythroblast", "neutrophil"])
    strips = {
        "neutrophil": [(png((1, 1, 1)), 0.97, "A: a.png"), (png((2, 2, 2)), 0.61, f"{HOSTILE}: h.png")],
        "lymphocyte": [(png((3, 3, 3)), 0.88, "A: a.png")],
        "erythroblast": [(png((4, 4, 4)), 0.7, "h.png")],
    }
    info = {"model": "resnet-1", "threshold": 0.5, "blast_alert_pct": 20.0, "min_cells": 1}
    path = write_html_report(tmp_path, acc.patients(), {}, {}, [], info, class_gallery=strips, classes=DIFF_CLASSES)
    return path, path.read_text(encoding="utf-8")


def test_html_differential_table_and_class_strips(tmp_path):
    path, page = differential_page(tmp_path)
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == [] and "script" not in parser.tags
    section = page[page.index("id='differential'") : page.index("id='classes'")]
    rows = section.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert len(rows) == 2  # one row per patient, highest blast % first (A: 1 of 4)
    assert "&gt;A&lt;" not in rows[0] and ">A</a>" in rows[0]
    # A: 4 white cells, 25 % blasts (Wilson 4.6-69.9), 50 % neutrophils, 25 % lymphocytes, no erythroblasts
    assert "<b>25.0</b> <small>(4.6&ndash;69.9)</small>" in rows[0] and "<b>50.0</b>" in rows[0]
    assert html_escape(HOSTILE) in rows[1] and HOSTILE not in page
    # the hostile patient: 1 lymphocyte the only white cell; 1 erythroblast and 1 smudge cell per 1 white cell
    assert rows[1].count("<b>100.0</b>") == 3
    headers = section.split("<thead>")[1].split("</thead>")[0]
    assert [h for h in ("lymphoblast", "neutrophil", "lymphocyte", "erythroblast", "smudge") if h in headers] == [
        "lymphoblast",
        "neutrophil",
        "lymphocyte",
        "erythroblast",
        "smudge",
    ]
    strips = page[page.index("id='classes'") :]
    order = [strips.index(f"<h3>{t}") for t in ("neutrophil", "lymphocyte", "erythroblast")]
    assert order == sorted(order)  # strips in differential order
    assert strips.index("p = 0.97") < strips.index("p = 0.61")  # most confident first
    assert len(parser.imgs) == 4


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
