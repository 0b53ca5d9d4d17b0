"""Reports: Wilson intervals, per-patient counts and flags, CSV/JSON round-trips, the terminal summary.

The picture side of a report (overlays, the HTML page, its differential section) is tested in
tests/test_report_html.py.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pytest

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


# --- terminal summary -----------------------------------------------------------------------------


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
