"""The white-cell differential of a patient or sample: counts per class, percentages and 95% intervals.

As labs report it: each white-cell class as a percentage of the white cells (`n_wbc`, the cells
whose class is a white cell), and the cells that are not white cells (nucleated red cells) or not
classifiable (smudge cells) counted apart, per 100 white cells. Platelets are not counted.

Columns, per class (taxonomy.column_names): n_<class>, <class>_pct, <class>_ci_low, <class>_ci_high;
the same names `allray synth` writes in truth/patients.csv (without the intervals). Which classes
appear follows the model: a binary model's differential is lymphoblast vs other; smudge cells are
always counted (the detector finds them whatever the model); erythroblasts when the model has the
class. The blast percentage and its flags (pipeline.report) are computed as before, not from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline import taxonomy

N_WBC = "n_wbc"  # white cells: the differential's denominator


def white_classes(model_classes: Sequence[str]) -> tuple[str, ...]:
    """The white-cell classes of a model's differential, in taxonomy order (coarse "other"/"wbc" last)."""
    classes = set(model_classes)
    leaves = [c for c in taxonomy.WHITE_CLASSES if c in classes]
    return (*leaves, *(c for c in (taxonomy.OTHER, taxonomy.WBC) if c in classes))


def apart_classes(model_classes: Sequence[str]) -> tuple[str, ...]:
    """The classes counted per 100 white cells: smudge always, erythroblast when the model has it."""
    return tuple(c for c in taxonomy.APART_CLASSES if c in model_classes or c == taxonomy.SMUDGE)


def differential_columns(model_classes: Sequence[str]) -> tuple[str, ...]:
    """n_wbc, then the four columns of each white class, then of each class counted apart."""
    cols = [N_WBC]
    for name in (*white_classes(model_classes), *apart_classes(model_classes)):
        cols += taxonomy.column_names(name)
    return tuple(cols)


def count_class(name: str | None) -> str | None:
    """The differential class a cell's class is counted as (None: not counted, e.g. platelets).

    A class the model has but the differential does not list (none today) is not counted either.
    """
    if name is None or name == taxonomy.PLATELET or name not in taxonomy.NODES:
        return None
    return name


def differential_row(counts: Mapping[str, int], model_classes: Sequence[str]) -> dict:
    """The differential columns (differential_columns order) of per-class counts.

    counts: cells per class name (white and apart classes; others are ignored). Percentages and
    interval ends are percent, 2 decimals: white classes of n_wbc (Wilson), apart classes per 100
    white cells (`per_hundred_interval`).
    """
    from pipeline.report import wilson_interval

    whites = white_classes(model_classes)
    n_wbc = sum(int(counts.get(c, 0)) for c in whites)
    row: dict = {N_WBC: n_wbc}
    for name in whites:
        k = int(counts.get(name, 0))
        low, high = wilson_interval(k, n_wbc)
        row.update(zip(taxonomy.column_names(name), (k, _pct(k, n_wbc), round(100 * low, 2), round(100 * high, 2))))
    for name in apart_classes(model_classes):
        k = int(counts.get(name, 0))
        low, high = per_hundred_interval(k, n_wbc)
        row.update(zip(taxonomy.column_names(name), (k, _pct(k, n_wbc), low, high)))
    return row


def per_hundred_interval(k: int, n_wbc: int) -> tuple[float, float | None]:
    """95% interval of k cells per 100 white cells, as (low, high) rounded to 2 decimals.

    Given k + n_wbc cells, k is binomial with q = r / (1 + r) for the ratio r = k / n_wbc, so the
    Wilson interval of q maps to r's as q / (1 - q). high is None (unbounded) when n_wbc == 0.
    """
    from pipeline.report import wilson_interval

    low, high = wilson_interval(k, k + n_wbc)
    to_ratio = lambda q: 100 * q / (1 - q)  # noqa: E731
    return round(to_ratio(low), 2), (round(to_ratio(high), 2) if high < 1 else None)


def _pct(k: int, n: int) -> float:
    return round(100 * k / n, 2) if n else 0.0
