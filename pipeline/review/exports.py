"""What the review writes: signed reports, patients_reviewed.csv, and the labels and audit CSVs.

CSV cells that a spreadsheet would run as a formula are neutralised (OWASP: a leading = + - @ tab
or CR gets a leading apostrophe) by the project's one rule, pipeline/csvsafe.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from pipeline import taxonomy
from pipeline.csvsafe import neutralise_cell as neutralise
from pipeline.report import PATIENT_COLUMNS
from pipeline.review.cells import NOT_A_CELL, REVIEW_CLASSES, ReviewReport
from pipeline.review.counts import PatientCounts
from pipeline.review.store import AUDIT_COLUMNS

SIGNED_DIR = "signed"
REVIEWED_CSV = "patients_reviewed.csv"
LABEL_COLUMNS = ("image", "x", "y", "r", "label")  # what `allray ingest --labels` reads
CLASS_COLUMN = "class"
REVIEWED_EXTRA = ("reviewer", "signed_at", "model_id", "n_changed", "n_reviewed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

templates = Environment(loader=PackageLoader("pipeline.review", "templates"), autoescape=select_autoescape(["html"]))


def safe_filename(patient_id: str) -> str:
    """A file name (no extension) made from a patient id: letters, digits, . _ - only; a short hash
    of the id is added whenever characters were replaced, so two ids never share a file."""
    clean = _UNSAFE.sub("_", patient_id).strip("._")[:80]
    if clean == patient_id and clean:
        return clean
    return f"{clean or 'patient'}-{hashlib.sha256(patient_id.encode()).hexdigest()[:8]}"


def signed_record(report: ReviewReport, patient_id: str, before: PatientCounts, after: PatientCounts, reviewer: str,
                  at: str) -> dict:  # fmt: skip
    """What signed/<patient>.json holds: counts before and after review, who, when, model, cells changed."""

    def counts(c: PatientCounts) -> dict:
        out = {k: c.row[k] for k in PATIENT_COLUMNS if k in c.row}
        out["n_samples"] = report.patients[patient_id].n_samples
        out["per_class"] = {k: v for k, v in c.per_class.items() if v}
        return out

    return {
        "patient_id": patient_id,
        "reviewer": reviewer,
        "signed_at": at,
        "model_id": report.model_id,
        "report": str(report.path.resolve()),
        "n_cells_reviewed": after.n_reviewed,
        "n_cells_changed": after.n_changed,
        "before_review": counts(before),
        "after_review": counts(after),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_signed(report_dir: Path, record: dict) -> tuple[Path, Path]:
    """Write signed/<safe id>.json and .html for one signed patient."""
    out = report_dir / SIGNED_DIR
    out.mkdir(exist_ok=True)
    name = safe_filename(record["patient_id"])
    js, page = out / f"{name}.json", out / f"{name}.html"
    _write_atomic(js, json.dumps(record, indent=2, sort_keys=True))
    titles = {c: taxonomy.NODES[c].title if c in taxonomy.NODES else "not a cell" for c in REVIEW_CLASSES}
    _write_atomic(page, templates.get_template("signed.html").render(r=record, titles=titles))
    return js, page


def remove_signed(report_dir: Path, patient_id: str) -> None:
    """Remove a reopened patient's signed files (the audit trail keeps the sign-off)."""
    name = safe_filename(patient_id)
    for ext in (".json", ".html"):
        (report_dir / SIGNED_DIR / f"{name}{ext}").unlink(missing_ok=True)


def write_reviewed_csv(report_dir: Path, signoffs: dict[str, dict]) -> Path:
    """patients_reviewed.csv: the verified counts of every patient signed off now (patients.csv columns + who)."""
    path = report_dir / REVIEWED_CSV
    columns = [*PATIENT_COLUMNS, *REVIEWED_EXTRA]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for pid in sorted(signoffs):
            rec = signoffs[pid]["record"]
            after = rec["after_review"]
            row = {**after, "patient_id": pid, "n_samples": after.get("n_samples", ""), "reviewer": rec["reviewer"],
                   "signed_at": rec["signed_at"], "model_id": rec["model_id"], "n_changed": rec["n_cells_changed"],
                   "n_reviewed": rec["n_cells_reviewed"]}  # fmt: skip
            w.writerow([neutralise(row.get(c, "")) for c in columns])
    os.replace(tmp, path)
    return path


def reviewed_labels(report: ReviewReport, decisions: dict[str, str], signed: set[str]) -> list[dict]:
    """One row per reviewed cell (decided, or in a signed-off patient) that a labels CSV can carry.

    Every row has its class; a cell the reviewer moved to a class with no blast/other label
    (smudge, erythroblast, platelet) has an empty label. Cells marked "not a cell" are left out:
    ingest has no class for them."""
    rows = []
    for pid, cells in report.patients.items():
        for i, key in enumerate(cells.keys):
            if key not in decisions and pid not in signed:
                continue
            cls = decisions.get(key, cells.predicted[i])
            if cls == NOT_A_CELL or cls not in taxonomy.NODES:
                continue
            label = taxonomy.binary_label(cls)
            row = {"image": cells.image[i], "x": round(float(cells.x[i]), 2), "y": round(float(cells.y[i]), 2),
                   "r": round(float(cells.r[i]), 2), "label": "" if label is None else label,
                   CLASS_COLUMN: cls}  # fmt: skip
            rows.append(row)
    rows.sort(key=lambda r: (r["image"], r["x"], r["y"]))
    return rows


def needs_class_column(rows: list[dict], has_classes: bool) -> bool:
    """A class model's export always has the class column; a blast/other model's only when a
    reviewed cell was moved to a class its label cannot say (smudge, erythroblast, platelet)."""
    return has_classes or any(r["label"] == "" for r in rows)


def write_labels_csv(path: str | Path, rows: list[dict], has_classes: bool) -> int:
    """Write the labels CSV (`image,x,y,r,label[,class]`); returns the number of rows."""
    columns = [*LABEL_COLUMNS, *([CLASS_COLUMN] if needs_class_column(rows, has_classes) else [])]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([neutralise(r.get(c, "")) for c in columns])
    return len(rows)


def write_audit_csv(path: str | Path, rows: list[dict]) -> int:
    """Write the audit trail as CSV (oldest first); returns the number of rows."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(AUDIT_COLUMNS)
        for r in rows:
            w.writerow([neutralise("" if r.get(c) is None else r[c]) for c in AUDIT_COLUMNS])
    return len(rows)
