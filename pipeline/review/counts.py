"""A patient's counts before and after review, with the same columns and flags as patients.csv."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import schema, taxonomy
from pipeline.report import BLAST_PCT, count_row
from pipeline.review.cells import NOT_A_CELL, REVIEW_CLASSES, PatientCells


@dataclass(frozen=True)
class PatientCounts:
    """One patient's counts with the review's decisions applied (or not: `before_review`)."""

    row: dict  # report.count_row columns: n_images, n_cells, n_blasts, blast_pct, ci_low, ci_high, flag, n_smudge
    per_class: dict[str, int]  # cells per current class, every class of REVIEW_CLASSES (zeros included)
    n_unsure: int  # cells in the unidentified bin: below the confidence threshold and not yet decided
    n_reviewed: int  # cells with a decision
    n_changed: int  # cells whose decision differs from the prediction

    @property
    def blast_pct(self) -> float:
        return self.row[BLAST_PCT]

    def differential(self) -> list[tuple[str, int, float]]:
        """(class, count, % of white cells) of the white classes with cells, in taxonomy order."""
        n = self.row[schema.N_CELLS]
        return [(c, k, round(100 * k / n, 2) if n else 0.0) for c, k in self.per_class.items()
                if k and c in taxonomy.NODES and taxonomy.is_white(c)]  # fmt: skip


def current_classes(cells: PatientCells, decisions: dict[str, str]) -> list[str]:
    """Each cell's class now: the decision where there is one, else the prediction."""
    return [decisions.get(k, p) for k, p in zip(cells.keys, cells.predicted)]


def unsure_mask(cells: PatientCells, decisions: dict[str, str], unsure_below: float) -> list[bool]:
    """Which cells are in the unidentified bin (confidence below the threshold, no decision yet)."""
    return [bool(c < unsure_below) and k not in decisions for k, c in zip(cells.keys, cells.confidence)]


def count_patient(cells: PatientCells, decisions: dict[str, str], unsure_below: float, blast_alert_pct: float,
                  min_cells: int) -> PatientCounts:  # fmt: skip
    """The counts of one patient with `decisions` applied (pass {} for the counts before review)."""
    classes = current_classes(cells, decisions)
    per_class = dict.fromkeys(REVIEW_CLASSES, 0)
    for c in classes:
        per_class[c] = per_class.get(c, 0) + 1
    white = sum(k for c, k in per_class.items() if c != NOT_A_CELL and c in taxonomy.NODES and taxonomy.is_white(c))
    row = count_row(
        len(set(cells.image)),
        white,
        per_class.get(taxonomy.LYMPHOBLAST, 0),
        per_class.get(taxonomy.SMUDGE, 0),
        blast_alert_pct,
        min_cells,
    )
    mine = [k for k in cells.keys if k in decisions]
    changed = sum(decisions[k] != p for k, p in zip(cells.keys, cells.predicted) if k in decisions)
    return PatientCounts(row, per_class, sum(unsure_mask(cells, decisions, unsure_below)), len(mine), changed)
