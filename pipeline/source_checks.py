"""Checking manifest and labels rows: invalid values and rows that match no image, by line number.

Kept apart from the readers in pipeline/sources.py: each check takes one parsed CSV row (a dict
of stripped strings plus its line number under LINE) and returns what is wrong with it in words,
or None. `RowReport` gathers the problems as `path:N: what is wrong` (header = line 1) and the
counts of matched and unmatched rows for the ingest summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath

LINE = "#line"  # key under which a CSV row keeps its line number in the file (header = 1)


def normalise_image_path(text: str) -> str:
    """An image path as the source listing names it: '/'-separated (Windows '\\' too), no './'."""
    parts = [p for p in text.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    return PurePosixPath(*parts).as_posix() if parts else ""


def _number(text: str, name: str, positive: bool = False) -> str | None:
    try:
        value = float(text)
    except ValueError:
        return f"{name} {text!r} is not a number"
    if not math.isfinite(value):
        return f"{name} {text!r} is not a finite number"
    if positive and value <= 0:
        return f"{name} {text!r} must be above 0"
    return None


def _binary_label(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        return f"label {text!r} must be 0 or 1"
    return None


def check_label_row(row: dict[str, str]) -> str | None:
    """What is wrong with a labels row (image, x, y[, r], label and/or class), or None."""
    if not row.get("image"):
        return "no image named"
    for name in ("x", "y"):
        problem = _number(row.get(name, ""), name)
        if problem:
            return problem
    if row.get("r"):
        problem = _number(row["r"], "r", positive=True)
        if problem:
            return problem
    if row.get("class") and not row.get("label"):
        return None  # the class column labels the cell (checked against the taxonomy by the reader)
    return _binary_label(row.get("label", ""))


def check_manifest_row(row: dict[str, str]) -> str | None:
    """What is wrong with a manifest row (image, patient_id, sample_id[, label]), or None."""
    if not row.get("image"):
        return "no image named"
    if row.get("label") and row["label"] not in ("0", "1"):
        return f"label {row['label']!r} must be 0 or 1 (or empty)"
    return None


@dataclass
class RowReport:
    """The rows of one CSV that could not be used, and how many were."""

    path: str
    kind: str  # "manifest" or "labels"
    problems: list[str] = field(default_factory=list)
    matched: int = 0

    def add(self, row: dict[str, str], what: str) -> None:
        self.problems.append(f"{self.path}:{row.get(LINE, '?')}: {what}")

    def counts(self) -> dict[str, int]:
        """Summary fields: `<kind>_rows_matched`, `<kind>_rows_unmatched`."""
        return {f"{self.kind}_rows_matched": self.matched, f"{self.kind}_rows_unmatched": len(self.problems)}


def match_rows(rows: list[dict[str, str]], images: set[str], report: RowReport) -> list[dict[str, str]]:
    """The rows that name an image of the source (problems added to `report` for the others).

    Rows are matched on the normalised path; a manifest lists each image once."""
    used, first_line = [], {}
    for row in rows:
        image = normalise_image_path(row["image"])
        if image not in images:
            report.add(row, f"no image {image} under the source folder (paths are relative to SRC)")
            continue
        if report.kind == "manifest" and image in first_line:
            report.add(row, f"{image} is listed again (first at line {first_line[image]})")
            continue
        first_line.setdefault(image, row.get(LINE, "?"))
        used.append(row)
    report.matched = len(used)
    return used
