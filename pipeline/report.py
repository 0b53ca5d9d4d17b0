"""Per-patient blast counts: Wilson intervals, flags, the count accumulator, CSV/JSON writers.

`allray infer` streams predictions through a `CountAccumulator` (which keeps counts, never cell
rows, so a cohort of any size fits in memory) and writes its rows with `write_count_tables`;
`pipeline.report_html` draws the human-readable page from the same rows.

Report columns (patients.csv / samples.csv, in this order) are report-only, so they live here
beside the code that fills them; `schema` supplies the shared ones (patient_id, sample_id, n_cells).

`info` (the run facts shown by `format_terminal_summary` and the HTML header) is a plain dict; the
keys of `INFO_LABELS` are shown in that order with those labels, any other key after them as is.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema, taxonomy
from pipeline.csvsafe import csv_text
from pipeline.differential import count_class, differential_columns, differential_row
from pipeline.locations import join_uri, write_text
from pipeline.redact import redact, redact_text

FLAG_OK, FLAG_ALERT, FLAG_FEW = "ok", "blasts_above_alert", "too_few_cells"
FLAGS = (FLAG_ALERT, FLAG_FEW, FLAG_OK)
UNKNOWN = "(unknown)"  # how a null patient (or sample) id is reported

N_SAMPLES = "n_samples"
N_IMAGES = "n_images"
N_BLASTS = "n_blasts"
BLAST_PCT = "blast_pct"  # 100 * n_blasts / n_cells, 2 decimals
CI_LOW = "ci_low"  # 95% Wilson interval of blast_pct, percent, 2 decimals
CI_HIGH = "ci_high"
FLAG = "flag"  # one of FLAGS
N_SMUDGE = "n_smudge"  # smudge cells seen: left out of n_cells and n_blasts
# The counts every row of patients.csv and samples.csv carries, after its ids.
_COUNT_COLUMNS = (N_IMAGES, schema.N_CELLS, N_BLASTS, BLAST_PCT, CI_LOW, CI_HIGH, FLAG, N_SMUDGE)
PATIENT_COLUMNS = (schema.PATIENT_ID, N_SAMPLES, *_COUNT_COLUMNS)
SAMPLE_COLUMNS = (schema.PATIENT_ID, schema.SAMPLE_ID, *_COUNT_COLUMNS)


def patient_columns(classes: Sequence[str] = taxonomy.BINARY_CLASSES) -> tuple[str, ...]:
    """patients.csv columns: PATIENT_COLUMNS, then the differential of a model with `classes`."""
    return (*PATIENT_COLUMNS, *(c for c in differential_columns(classes) if c not in PATIENT_COLUMNS))


def sample_columns(classes: Sequence[str] = taxonomy.BINARY_CLASSES) -> tuple[str, ...]:
    """samples.csv columns: SAMPLE_COLUMNS, then the differential of a model with `classes`."""
    return (*SAMPLE_COLUMNS, *(c for c in differential_columns(classes) if c not in SAMPLE_COLUMNS))


INFO_LABELS = {
    "model": "Model",
    "classes": "Model classes",
    "threshold": "Blast probability threshold",
    "blast_alert_pct": "Alert at blast %",
    "min_cells": "Minimum cells per patient",
    "started": "Run started",
    "elapsed_s": "Run time (s)",
    "cells_per_s": "Cells / s",
    "n_images": "Images read",
    "n_quarantined": "Files quarantined",
    "run_id": "Run id",
}
TOTAL_LABELS = ("Patients", "Images counted", "White cells counted", "Blasts called", "Smudge cells (not counted)")
_TERMINAL_FACTS = {
    "model": "model {}",
    "threshold": "threshold {}",
    "elapsed_s": "{} s",
    "cells_per_s": "{} cells/s",
    "n_quarantined": "{} files quarantined",
}
SUMMARY_ROWS = 20  # a terminal screen; the rest are in patients.csv


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n, as fractions in [0, 1]; (0.0, 1.0) when n == 0.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest at k = 0 or
    k = n, which is exactly where small blast counts sit.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Pin the ends exactly: float error must not turn "no blasts" into a lower bound of 1e-17.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def count_row(
    n_images: int, n_cells: int, n_blasts: int, n_smudge: int, blast_alert_pct: float, min_cells: int
) -> dict:
    """The count columns shared by patient and sample rows (all but the id columns)."""
    blast_pct = round(100 * n_blasts / n_cells, 2) if n_cells else 0.0
    low, high = wilson_interval(n_blasts, n_cells)
    # The flag reads the rounded value a person sees, so "20.00 %" is never shown as ok at a 20 % alert;
    # the alert wins over too_few_cells because a high count on few cells still needs eyes on it.
    if n_cells and blast_pct >= blast_alert_pct:
        flag = FLAG_ALERT
    elif n_cells < max(min_cells, 1):  # no cells is never "ok", whatever min_cells says
        flag = FLAG_FEW
    else:
        flag = FLAG_OK
    return {
        N_IMAGES: n_images,
        schema.N_CELLS: n_cells,
        N_BLASTS: n_blasts,
        BLAST_PCT: blast_pct,
        CI_LOW: round(100 * low, 2),
        CI_HIGH: round(100 * high, 2),
        FLAG: flag,
        N_SMUDGE: n_smudge,
    }


@dataclass
class _Tally:
    """What one (patient, sample) adds up to: the image ids seen and three counts."""

    images: set[str] = field(default_factory=set)
    n_cells: int = 0
    n_blasts: int = 0
    n_smudge: int = 0
    classes: Counter = field(default_factory=Counter)  # cells per differential class


class CountAccumulator:
    """Streams per-cell and per-image facts in; per-patient and per-sample count rows out.
    Holds only small aggregates (counts and sets of image/sample ids), never cell rows."""

    def __init__(
        self, blast_alert_pct: float = 20.0, min_cells: int = 50, classes: Sequence[str] = taxonomy.BINARY_CLASSES
    ):
        if not 0 < blast_alert_pct <= 100:
            raise ValueError(f"blast_alert_pct must be in (0, 100], got {blast_alert_pct!r}")
        if int(min_cells) != min_cells or min_cells < 0:
            raise ValueError(f"min_cells must be a whole number >= 0, got {min_cells!r}")
        self.blast_alert_pct, self.min_cells = float(blast_alert_pct), int(min_cells)
        self.classes = tuple(classes)  # the model's classes: which differential columns the rows get
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def add_image(self, patient_id: str | None, sample_id: str | None, image: str) -> None:
        """Count `image` as read (call for every readable image, even one with no cells)."""
        self._tally(_name(patient_id), _name(sample_id)).images.add(str(image))

    def add_cells(
        self,
        patient_id,
        sample_id,
        image,
        predicted: Sequence[int],
        kinds: Sequence[str],
        classes: Sequence[str] | None = None,
    ) -> None:
        """Add the cells of one image (scalar ids) or of several (ids as sequences as long as predicted)."""
        n = len(predicted)
        columns = [[v] * n if v is None or isinstance(v, str) else v for v in (patient_id, sample_id, image)]
        self.add_cell_batch(*columns, predicted, kinds, classes)

    def add_cell_batch(self, patient_ids, sample_ids, images, predicted, kinds, classes=None) -> None:
        """Add cells of many images: five columns of equal length (lists, numpy or Arrow arrays).

        predicted holds 0/1 calls; a cell of kind schema.KIND_SMUDGE counts as n_smudge only.
        classes (optional, as long): each cell's predicted class, for the differential; without it a
        cell counts as lymphoblast or other by its call (a binary model's differential).
        """
        cols = [_to_arrow(c) for c in (patient_ids, sample_ids, images, predicted, kinds)]
        lengths = {len(c) for c in cols}
        if len(lengths) != 1:
            raise ValueError(
                f"add_cell_batch needs columns of equal length, got lengths {[len(c) for c in cols]} "
                "(patient_ids, sample_ids, images, predicted, kinds)"
            )
        pid, sid, image, pred, kind = cols
        if not len(pred):
            return
        if pred.null_count or image.null_count:
            raise ValueError(
                f"add_cell_batch got {pred.null_count} null predictions and {image.null_count} null "
                "images: every counted cell needs a 0/1 call and an image"
            )
        calls = np.asarray(pred.to_numpy(zero_copy_only=False))
        bad = calls[(calls != 0) & (calls != 1)]
        if bad.size:
            raise ValueError(f"predicted must be 0 or 1, got {sorted(set(bad.tolist()))[:5]!r}")
        smudge = pc.fill_null(pc.equal(kind.cast(pa.string()), schema.KIND_SMUDGE), False).to_numpy(
            zero_copy_only=False
        )
        counted = ~smudge
        table = pa.table(
            {
                "_p": pc.fill_null(pid.cast(pa.string()), UNKNOWN),
                "_s": pc.fill_null(sid.cast(pa.string()), UNKNOWN),
                "_i": image.cast(pa.string()),
                "_cell": counted.astype(np.int64),
                "_blast": (counted & (calls == 1)).astype(np.int64),
                "_smudge": smudge.astype(np.int64),
            }
        )
        # One Python step per image, not per cell: a batch of 10^5 cells costs a few group sums.
        groups = (
            table.group_by(["_p", "_s", "_i"])
            .aggregate([("_cell", "sum"), ("_blast", "sum"), ("_smudge", "sum")])
            .to_pydict()
        )
        for p, s, i, cells, blasts, _smudges in zip(
            groups["_p"], groups["_s"], groups["_i"], groups["_cell_sum"], groups["_blast_sum"], groups["_smudge_sum"]
        ):
            tally = self._tally(p, s)
            tally.images.add(i)
            tally.n_cells += cells
            tally.n_blasts += blasts
        self._add_classes(table, calls, smudge, classes)

    def _add_classes(self, table: pa.Table, calls: np.ndarray, smudge: np.ndarray, classes) -> None:
        """Count each cell in its differential class (smudge by kind, else its predicted class)."""
        if classes is None:
            names = np.where(calls == 1, taxonomy.LYMPHOBLAST, taxonomy.OTHER).astype(object)
        else:
            names = np.asarray(_to_arrow(classes).cast(pa.string()).to_pylist(), dtype=object)
            if len(names) != len(calls):
                raise ValueError(f"add_cell_batch got {len(names)} classes for {len(calls)} cells")
        names[smudge] = taxonomy.SMUDGE
        counted = [count_class(n) for n in names.tolist()]
        groups = (
            table.select(["_p", "_s"])
            .append_column("_c", pa.array(counted, pa.string()))
            .group_by(["_p", "_s", "_c"])
            .aggregate([("_c", "count")])
            .to_pydict()
        )
        for p, s, c, n in zip(groups["_p"], groups["_s"], groups["_c"], groups["_c_count"]):
            if c is not None:
                tally = self._tally(p, s)
                tally.classes[c] += n
                if c == taxonomy.SMUDGE:
                    tally.n_smudge += n

    def patients(self) -> list[dict]:
        """One row per patient (PATIENT_COLUMNS), highest blast_pct first."""
        merged: dict[str, tuple[_Tally, set[str]]] = {}
        for (p, s), t in self._tallies.items():
            total, sample_ids = merged.setdefault(p, (_Tally(), set()))
            sample_ids.add(s)
            total.images |= t.images
            total.n_cells += t.n_cells
            total.n_blasts += t.n_blasts
            total.n_smudge += t.n_smudge
            total.classes.update(t.classes)
        rows = [
            {schema.PATIENT_ID: p, N_SAMPLES: len(sample_ids), **self._counts(t)}
            for p, (t, sample_ids) in merged.items()
        ]
        return sort_rows(rows)

    def samples(self) -> list[dict]:
        """One row per (patient, sample) (SAMPLE_COLUMNS), highest blast_pct first."""
        rows = [{schema.PATIENT_ID: p, schema.SAMPLE_ID: s, **self._counts(t)} for (p, s), t in self._tallies.items()]
        return sort_rows(rows)

    def _tally(self, patient: str, sample: str) -> _Tally:
        return self._tallies.setdefault((patient, sample), _Tally())

    def _counts(self, t: _Tally) -> dict:
        row = count_row(len(t.images), t.n_cells, t.n_blasts, t.n_smudge, self.blast_alert_pct, self.min_cells)
        return {**row, **{k: v for k, v in differential_row(t.classes, self.classes).items() if k not in row}}


def sort_rows(rows: list[dict]) -> list[dict]:
    """`rows` highest blast_pct first; ties by more cells, then by id, so the order is reproducible."""
    return sorted(
        rows,
        key=lambda r: (-r[BLAST_PCT], -r[schema.N_CELLS], str(r[schema.PATIENT_ID]), str(r.get(schema.SAMPLE_ID, ""))),
    )


def write_count_tables(
    out: str | Path,
    patients: list[dict],
    samples: list[dict],
    meta: dict,
    classes: Sequence[str] = taxonomy.BINARY_CLASSES,
) -> None:
    """Write out/patients.csv, out/patients.json ({"patients": [...], "meta": meta}) and out/samples.csv.

    `out` is a local folder or a URI. CSV headers are patient_columns / sample_columns of the model's
    `classes` (the base columns, then the differential).
    Each file is written beside its final name and renamed, so a program watching `out` never parses
    half a file.
    """
    p_cols, s_cols = patient_columns(classes), sample_columns(classes)
    _check_columns("patients", patients, p_cols)
    _check_columns("samples", samples, s_cols)
    _write_csv(join_uri(out, "patients.csv"), p_cols, patients)
    _write_csv(join_uri(out, "samples.csv"), s_cols, samples)
    # default=str: meta holds resolved settings, which may include Paths or datetimes.
    text = json.dumps({"patients": patients, "meta": redact(meta)}, indent=2, allow_nan=False, default=str)
    write_text(join_uri(out, "patients.json"), text + "\n")


def describe_info(patients: list[dict], info: dict) -> list[tuple[str, str]]:
    """(label, value) pairs of a run's facts: totals over `patients`, then `info` (INFO_LABELS first)."""
    totals = [(label, f"{value:,}") for label, value in zip(TOTAL_LABELS, _totals(patients))]
    facts = _run_facts(patients, info)
    return totals + [(INFO_LABELS.get(k, k), v) for k, v in facts.items()]


def format_terminal_summary(patients: list[dict], info: dict, max_rows: int = SUMMARY_ROWS) -> str:
    """A one-screen plain-text summary: run facts, up to `max_rows` patients, flag totals."""
    n_patients, n_images, n_cells, n_blasts, n_smudge = _totals(patients)
    facts = _run_facts(patients, info)
    run = [form.format(facts[k]) for k, form in _TERMINAL_FACTS.items() if k in facts]
    lines = [
        f"{n_patients:,} patients, {n_images:,} images, {n_cells:,} cells, {n_blasts:,} blasts called "
        f"({n_smudge:,} smudge cells not counted)"
    ] + ([", ".join(run)] if run else [])
    width = min(max([len(str(r[schema.PATIENT_ID])) for r in patients] + [7]), 24)
    lines += [
        "",
        f"{'patient':<{width}}  {'images':>6}  {'cells':>7}  {'blasts':>6}  {'blast %':>7}  {'95% CI':>11}  flag",
    ]
    for r in patients[:max_rows]:
        pid = str(r[schema.PATIENT_ID])
        pid = pid if len(pid) <= width else pid[: width - 1] + "~"
        ci = f"{r[CI_LOW]:.1f}-{r[CI_HIGH]:.1f}"
        mark = "  <-- ALERT" if r[FLAG] == FLAG_ALERT else ""
        lines.append(
            f"{pid:<{width}}  {r[N_IMAGES]:>6,}  {r[schema.N_CELLS]:>7,}  {r[N_BLASTS]:>6,}  "
            f"{r[BLAST_PCT]:>7.2f}  {ci:>11}  {r[FLAG]}{mark}"
        )
    if len(patients) > max_rows:
        lines.append(f"... {len(patients) - max_rows} more (all in patients.csv)")
    tally = {f: sum(r[FLAG] == f for r in patients) for f in FLAGS}
    lines += ["", "flags: " + ", ".join(f"{n} {f}" for f, n in tally.items())]
    return "\n".join(lines)


def _totals(patients: list[dict]) -> tuple[int, int, int, int, int]:
    """Patients, images, cells, blasts and smudge cells over all `patients` rows (TOTAL_LABELS order)."""
    return (len(patients), *(sum(r[k] for r in patients) for k in (N_IMAGES, schema.N_CELLS, N_BLASTS, N_SMUDGE)))


def _run_facts(patients: list[dict], info: dict) -> dict[str, str]:
    """`info` as display strings, INFO_LABELS keys first, cells/s worked out when only the time is given."""
    facts = {k: v for k, v in info.items() if v is not None}
    if "cells_per_s" not in facts and facts.get("elapsed_s"):
        facts["cells_per_s"] = _totals(patients)[2] / float(facts["elapsed_s"])
    keys = [k for k in INFO_LABELS if k in facts] + [k for k in facts if k not in INFO_LABELS]
    return {str(k): _show(facts[k]) for k in keys}


def _name(value) -> str:
    """An id as reported: str, with None / NaN (pandas' null; numpy's float32 NaN from a Ray batch) as UNKNOWN."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return UNKNOWN
    return str(value)


def _to_arrow(column) -> pa.Array:
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pa.array(column, from_pandas=True)  # from_pandas: NaN in an id column means null


def _show(value) -> str:
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return UNKNOWN  # a missing value is never shown as "None" or "nan"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return redact_text(str(value))  # facts include the model's and the slides' locations


def _check_columns(name: str, rows: list[dict], columns: tuple[str, ...]) -> None:
    for row in rows:
        if tuple(row) != columns and set(row) != set(columns):
            raise ValueError(f"{name} row has columns {sorted(row)}, expected {list(columns)}")


def _write_csv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    # csvsafe: an id like `=HYPERLINK(...)` must not run as a formula in the spreadsheet a lab opens.
    write_text(path, csv_text(columns, rows))
