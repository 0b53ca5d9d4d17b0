"""Reports: Wilson intervals, per-patient counts and flags, CSV/JSON round-trips, overlays, the HTML page."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline import schema
from pipeline.report import (
    BLAST_PCT,
    CI_HIGH,
    CI_LOW,
    FLAG,
    FLAG_ALERT,
    FLAG_FEW,
    FLAG_OK,
    N_BLASTS,
    N_IMAGES,
    N_SAMPLES,
    N_SMUDGE,
    UNKNOWN,
    CountAccumulator,
    format_terminal_summary,
    patient_columns,
    sample_columns,
    wilson_interval,
    write_count_tables,
)
from pipeline.report_html import draw_overlay, write_html_report

WBC, SMUDGE = schema.KIND_WBC, schema.KIND_SMUDGE


# --- Wilson interval ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (2, 5, 0.1176, 0.7693),
        (1, 100, 0.0018, 0.0545),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_matches_hand_computed_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=6e-5)


def test_wilson_contains_the_estimate_and_stays_in_unit_interval():
    for n in range(1, 80):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
            assert low < high
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    # More cells, tighter interval at the same proportion.
    assert np.diff(wilson_interval(30, 100)) < np.diff(wilson_interval(3, 10))


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(k, n)


# --- accumulator ----------------------------------------------------------------------------------


def hand_built(alert: float = 40.0, min_cells: int = 3) -> CountAccumulator:
    """P1: samples S1 (img a: 3 cells + 1 smudge; img b: no cells) and S2 (img c: 2 cells);
    P2: S3 (img e: 4 cells); P3: 2 cells; P4: one image, no cells; a null patient: 1 blast."""
    acc = CountAccumulator(blast_alert_pct=alert, min_cells=min_cells)
    for p, s, i in [
        ("P1", "S1", "a"),
        ("P1", "S1", "b"),
        ("P1", "S2", "c"),
        (None, None, "d"),
        ("P2", "S3", "e"),
        ("P3", "S4", "f"),
        ("P4", "S5", "g"),
    ]:
        acc.add_image(p, s, i)
    acc.add_cells("P1", "S1", "a", [1, 0, 1, 1], [WBC, WBC, WBC, SMUDGE])
    acc.add_cells("P1", "S2", "c", np.array([0, 0], np.int8), [WBC, WBC])
    acc.add_cells(None, None, "d", [1], [WBC])
    acc.add_cells("P2", "S3", "e", [0, 0, 0, 0], [WBC] * 4)
    acc.add_cells("P3", "S4", "f", [0, 0], [WBC, schema.KIND_SINGLE_CELL])
    return acc


def by_id(rows, key=schema.PATIENT_ID):
    return {r[key]: r for r in rows}


def test_accumulator_counts_a_hand_built_cohort():
    rows = by_id(hand_built().patients())
    assert set(rows) == {"P1", "P2", "P3", "P4", UNKNOWN}
    p1 = rows["P1"]
    assert (p1[N_SAMPLES], p1[N_IMAGES], p1[schema.N_CELLS], p1[N_BLASTS], p1[N_SMUDGE]) == (2, 3, 5, 2, 1)
    assert (p1[BLAST_PCT], p1[CI_LOW], p1[CI_HIGH]) == (40.0, 11.76, 76.93)
    unknown = rows[UNKNOWN]
    assert (unknown[N_SAMPLES], unknown[N_IMAGES], unknown[schema.N_CELLS], unknown[N_BLASTS]) == (1, 1, 1, 1)
    assert unknown[BLAST_PCT] == 100.0
    p4 = rows["P4"]
    assert (p4[N_IMAGES], p4[schema.N_CELLS], p4[BLAST_PCT], p4[CI_LOW], p4[CI_HIGH]) == (1, 0, 0.0, 0.0, 100.0)
    assert all(tuple(r) == patient_columns() for r in rows.values())

    samples = {(r[schema.PATIENT_ID], r[schema.SAMPLE_ID]): r for r in hand_built().samples()}
    assert len(samples) == 6
    s1 = samples[("P1", "S1")]
    assert (s1[N_IMAGES], s1[schema.N_CELLS], s1[N_BLASTS], s1[N_SMUDGE], s1[BLAST_PCT]) == (2, 3, 2, 1, 66.67)
    assert samples[("P1", "S2")][N_IMAGES] == 1 and (UNKNOWN, UNKNOWN) in samples
    assert all(tuple(r) == sample_columns() for r in samples.values())


def test_flags_and_their_precedence():
    rows = by_id(hand_built(alert=40.0, min_cells=3).patients())
    assert rows["P1"][FLAG] == FLAG_ALERT  # 40.00 % at a 40 % alert: >= is an alarm
    assert rows[UNKNOWN][FLAG] == FLAG_ALERT  # 1 cell, but 100 % blasts: the alert is never hidden
    assert rows["P2"][FLAG] == FLAG_OK
    assert rows["P3"][FLAG] == FLAG_FEW and rows["P4"][FLAG] == FLAG_FEW
    assert by_id(hand_built(alert=40.01).patients())["P1"][FLAG] == FLAG_OK
    assert by_id(hand_built(min_cells=6).patients())["P1"][FLAG] == FLAG_ALERT
    assert by_id(hand_built(alert=50.0, min_cells=6).patients())["P1"][FLAG] == FLAG_FEW
    assert by_id(hand_built(min_cells=0).patients())["P4"][FLAG] == FLAG_FEW  # no cells is never ok


def test_rows_sorted_by_blast_fraction_then_cell_count():
    rows = hand_built().patients()
    assert [r[schema.PATIENT_ID] for r in rows] == [UNKNOWN, "P1", "P2", "P3", "P4"]
    pcts = [r[BLAST_PCT] for r in hand_built().samples()]
    assert pcts == sorted(pcts, reverse=True)


def test_cell_batch_equals_cell_by_cell_for_every_column_type():
    rng = np.random.default_rng(0)
    n = 500
    pids = rng.choice(["A", "B", None], n).tolist()
    sids = rng.choice(["s1", "s2"], n).tolist()
    images = [f"img{i}" for i in rng.integers(0, 40, n)]
    pred = rng.integers(0, 2, n)
    kinds = rng.choice([WBC, WBC, WBC, SMUDGE], n).tolist()
    one_by_one = CountAccumulator()
    for row in zip(pids, sids, images, pred, kinds):
        one_by_one.add_cells(row[0], row[1], row[2], [row[3]], [row[4]])
    expected = (one_by_one.patients(), one_by_one.samples())
    as_numpy = CountAccumulator()
    nan_ids = np.array([np.nan if p is None else p for p in pids], dtype=object)  # pandas' null
    as_numpy.add_cell_batch(nan_ids, np.array(sids), np.array(images), pred.astype(np.int8), np.array(kinds))
    as_arrow = CountAccumulator()
    for lo in range(0, n, 128):  # several batches add up
        sl = slice(lo, lo + 128)
        as_arrow.add_cell_batch(
            pa.chunked_array([pa.array(pids[sl])]),
            pa.array(sids[sl]),
            pa.array(images[sl]),
            pa.array(pred[sl], pa.int8()),
            pa.array(kinds[sl]),
        )
    assert (as_numpy.patients(), as_numpy.samples()) == expected
    assert (as_arrow.patients(), as_arrow.samples()) == expected
    assert sum(r[schema.N_CELLS] + r[N_SMUDGE] for r in expected[0]) == n


@pytest.mark.parametrize(
    "args, match",
    [
        ((["P"], ["S"], ["i"], [2], [WBC]), "0 or 1"),
        ((["P"], ["S"], ["i"], [None], [WBC]), "null"),
        ((["P", "P"], ["S"], ["i"], [1], [WBC]), "equal length"),
    ],
)
def test_cell_batch_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        CountAccumulator().add_cell_batch(*args)


@pytest.mark.parametrize("kwargs", [{"blast_alert_pct": 0}, {"blast_alert_pct": 120}, {"min_cells": -1}])
def test_accumulator_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        CountAccumulator(**kwargs)


# --- CSV / JSON -----------------------------------------------------------------------------------


def test_count_tables_round_trip(tmp_path):
    acc = hand_built()
    patients, samples = acc.patients(), acc.samples()
    meta = {"model": "lenet-abc", "threshold": 0.5, "out": tmp_path}
    write_count_tables(tmp_path, patients, samples, meta)
    doc = json.loads((tmp_path / "patients.json").read_text())
    assert doc["patients"] == patients and doc["meta"] == {**meta, "out": str(tmp_path)}
    for name, columns, rows in (
        ("patients.csv", patient_columns(), patients),
        ("samples.csv", sample_columns(), samples),
    ):
        with open(tmp_path / name, newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == columns
            back = list(reader)
        assert len(back) == len(rows)
        for got, want in zip(back, rows):
            # an empty CSV field is a null (the upper end of a per-100 ratio over no white cells)
            assert {k: None if v == "" else type(want[k])(v) for k, v in got.items()} == want
    assert not list(tmp_path.glob("*.tmp"))


def test_count_tables_refuse_rows_of_another_shape(tmp_path):
    patients = hand_built().patients()
    with pytest.raises(ValueError, match="expected"):
        write_count_tables(tmp_path, [{**patients[0], "extra": 1}], [], {})


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


def test_terminal_summary_fits_a_screen():
    acc = CountAccumulator(min_cells=10)
    rng = np.random.default_rng(1)
    for p in range(35):
        calls = (rng.random(30) < p / 40).astype(int)
        acc.add_cells(f"patient-{p:02d}", "s", f"{p}.png", calls, [WBC] * 30)
    rows = acc.patients()
    text = format_terminal_summary(rows, {"model": "vgg-9", "elapsed_s": 3.0})
    lines = text.splitlines()
    assert len(lines) <= 30
    assert "... 15 more" in text and "1,050 cells" in text and "350" in text  # 1050 cells / 3 s
    assert lines[4].startswith(rows[0][schema.PATIENT_ID])  # highest blast fraction first
    n_alert = sum(r[FLAG] == FLAG_ALERT for r in rows)
    assert f"{n_alert} {FLAG_ALERT}" in text


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
