"""CSV cells that a spreadsheet will not run as formulas (OWASP's CSV injection rule), and the one CSV writer.

Lab staff open patients.csv and samples.csv in Excel or LibreOffice, which evaluate a cell starting
with `=`, `+`, `-` or `@` as a formula (`=HYPERLINK(...)`, `=cmd|...`), and treat a leading tab or
carriage return the same way. A patient id comes from a folder name or a manifest, so it is user
text: such a cell is written with a single quote in front, which spreadsheets show as text and
which a person reading the file recognises. Numbers that allray itself writes (int, float: -3.5)
are written as numbers; only strings are touched. Every CSV writer of allray (and of the review
app) goes through `csv_text` or `neutralise_cell`.
A missing value (None, NaN) is an empty cell, never the text `nan`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value):
    """`value` as safe to put in a CSV cell: a string starting with a formula character gets a leading
    single quote; NaN becomes None (an empty cell); numbers, None and other values are returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    if isinstance(value, numbers.Real) and math.isnan(value):  # float, and numpy's float32 too
        return None  # written as an empty cell: a missing number, never "nan"
    return value


def neutralise_row(row: Mapping | Sequence):
    """A dict or sequence row with every cell passed through `neutralise_cell`."""
    if isinstance(row, Mapping):
        return {k: neutralise_cell(v) for k, v in row.items()}
    return [neutralise_cell(v) for v in row]


def csv_text(columns: Sequence[str], rows: Iterable[Mapping | Sequence]) -> str:
    """A CSV document with header `columns` and `rows` (dicts keyed by column, or sequences in column
    order), every cell neutralised. Lines end in CRLF (RFC 4180, what Excel writes): with '\\n' alone,
    Python's csv leaves a field holding a bare CR unquoted, and a reader splits the row there."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([neutralise_cell(c) for c in columns])
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else row
        writer.writerow(neutralise_row(values))
    return buf.getvalue()
