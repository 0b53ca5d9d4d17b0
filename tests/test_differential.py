"""The per-patient differential: exact counts, percentages and 95% intervals on hand-built prediction batches."""

from __future__ import annotations

import csv

import pytest

from pipeline import schema, taxonomy
from pipeline.differential import N_WBC, differential_columns, differential_row, per_hundred_interval
from pipeline.report import BLAST_PCT, N_BLASTS, N_SMUDGE, CountAccumulator, patient_columns, write_count_tables

LB, NEU, LYM, MON, ERY, PLT = "lymphoblast", "neutrophil", "lymphocyte", "monocyte", "erythroblast", "platelet"
MODEL = (LB, NEU, LYM, MON, ERY, PLT)
WBC, SMUDGE = schema.KIND_WBC, schema.KIND_SMUDGE


def cohort() -> CountAccumulator:
    """P1: two images, sample S0; P2: one image. Classes as a K-class model would call them."""
    acc = CountAccumulator(blast_alert_pct=20.0, min_cells=3, classes=MODEL)
    # P1/img a: 2 blasts, 2 neutrophils, 1 erythroblast, 1 platelet, 1 smudge cell (by kind: its class is ignored)
    acc.add_cells("P1", "S0", "a", [1, 1, 0, 0, 0, 0, 0], [WBC] * 6 + [SMUDGE], [LB, LB, NEU, NEU, ERY, PLT, NEU])
    # P1/img b: 1 neutrophil, 1 lymphocyte
    acc.add_cells("P1", "S0", "b", [0, 0], [WBC, WBC], [NEU, LYM])
    # P2/img c: 3 lymphocytes, 1 monocyte: no blasts
    acc.add_cells("P2", "S0", "c", [0, 0, 0, 0], [WBC] * 4, [LYM, LYM, LYM, MON])
    return acc


def test_differential_counts_percentages_and_intervals_are_exact():
    rows = {r[schema.PATIENT_ID]: r for r in cohort().patients()}
    p1 = rows["P1"]
    # blast % stays as before: blasts over every counted (non-smudge) cell, 2 of 8
    assert (p1[schema.N_CELLS], p1[N_BLASTS], p1[BLAST_PCT], p1[N_SMUDGE]) == (8, 2, 25.0, 1)
    # the differential: 6 white cells (2 blasts, 3 neutrophils, 1 lymphocyte); the erythroblast apart
    assert p1[N_WBC] == 6
    assert [p1[f"n_{c}"] for c in (LB, NEU, LYM, MON)] == [2, 3, 1, 0]
    assert [p1[f"{c}_pct"] for c in (LB, NEU, LYM, MON)] == [33.33, 50.0, 16.67, 0.0]
    assert (p1["lymphoblast_ci_low"], p1["lymphoblast_ci_high"]) == (9.68, 70.0)  # Wilson 2 of 6, by hand
    assert (p1["neutrophil_ci_low"], p1["neutrophil_ci_high"]) == (18.76, 81.24)
    assert (p1["monocyte_ci_low"], p1["monocyte_ci_high"]) == (0.0, 39.03)
    # per 100 white cells: 1 erythroblast and 1 smudge cell over 6 white cells
    for name in (ERY, taxonomy.SMUDGE):
        assert (p1[f"n_{name}"], p1[f"{name}_pct"]) == (1, 16.67)
        assert (p1[f"{name}_ci_low"], p1[f"{name}_ci_high"]) == (2.64, 105.39)
    assert "n_platelet" not in p1 and "platelet_pct" not in p1  # platelets are not counted
    p2 = rows["P2"]
    assert [p2[f"n_{c}"] for c in (LB, NEU, LYM, MON)] == [0, 0, 3, 1] and p2[N_WBC] == 4
    assert (p2["lymphocyte_pct"], p2["lymphocyte_ci_low"], p2["lymphocyte_ci_high"]) == (75.0, 30.06, 95.44)
    assert (p2["n_erythroblast"], p2["erythroblast_pct"], p2["erythroblast_ci_low"]) == (0, 0.0, 0.0)
    samples = cohort().samples()
    assert [(s[schema.PATIENT_ID], s[N_WBC], s["n_neutrophil"]) for s in samples] == [("P1", 6, 3), ("P2", 4, 0)]


def test_a_binary_models_differential_is_lymphoblast_vs_other():
    acc = CountAccumulator(min_cells=1)  # binary: the calls alone
    acc.add_cells("P1", None, "a", [1, 0, 0, 1, 0], [WBC, WBC, WBC, WBC, SMUDGE])
    (row,) = acc.patients()
    assert differential_columns(taxonomy.BINARY_CLASSES) == (
        N_WBC,
        "n_lymphoblast",
        "lymphoblast_pct",
        "lymphoblast_ci_low",
        "lymphoblast_ci_high",
        "n_other",
        "other_pct",
        "other_ci_low",
        "other_ci_high",
        "n_smudge",
        "smudge_pct",
        "smudge_ci_low",
        "smudge_ci_high",
    )
    assert (row[N_WBC], row["n_lymphoblast"], row["n_other"], row[N_SMUDGE]) == (4, 2, 2, 1)
    assert row["lymphoblast_pct"] == row[BLAST_PCT] == 50.0
    assert "n_erythroblast" not in row  # a binary model cannot see them: no column claiming zero


def test_no_white_cells_leaves_the_per_hundred_ratio_open():
    row = differential_row({ERY: 2}, MODEL)
    assert row[N_WBC] == 0 and row["n_erythroblast"] == 2
    assert row["erythroblast_ci_high"] is None  # unbounded: 2 per 0 white cells
    # 0 of 10 + 0 cells: Wilson 0-27.75 % as a share, so 0-38.41 per 100 white cells (q / (1 - q))
    assert per_hundred_interval(0, 10) == (0.0, 38.41)


def test_count_tables_carry_the_differential_columns(tmp_path):
    acc = cohort()
    write_count_tables(tmp_path, acc.patients(), acc.samples(), {}, classes=MODEL)
    with (tmp_path / "patients.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == patient_columns(MODEL)
        rows = {r[schema.PATIENT_ID]: r for r in reader}
    assert rows["P1"]["n_neutrophil"] == "3" and rows["P1"]["erythroblast_pct"] == "16.67"
    binary = CountAccumulator()
    binary.add_cells("P9", None, "z", [1, 0], [WBC, WBC])
    with pytest.raises(ValueError, match="expected"):  # rows of a binary model do not fit a 6-class header
        write_count_tables(tmp_path, binary.patients(), [], {}, classes=MODEL)
