"""Prediction rows: the known class carried from the cell table, the per-class crop picks for the report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.predictions import known_class, top_per_class, with_known_class


def test_known_class_comes_from_cell_class_else_from_the_binary_label():
    assert known_class("neutrophil", 0) == "neutrophil"
    assert known_class("erythroblast", None) == "erythroblast"
    assert (known_class(None, 1), known_class(None, 0), known_class(None, None)) == ("lymphoblast", "other", None)
    old = pa.table({schema.LABEL: pa.array([1, 0, None], pa.int8())})  # an ingest output from before the classes
    assert with_known_class(old).column(schema.KNOWN_CLASS).to_pylist() == ["lymphoblast", "other", None]
    new = pa.table({schema.LABEL: pa.array([None, 0], pa.int8()),
                    schema.CELL_CLASS: pa.array(["erythroblast", None]).dictionary_encode()})
    assert with_known_class(new).column(schema.KNOWN_CLASS).to_pylist() == ["erythroblast", "other"]


def test_top_per_class_keeps_the_most_confident_cells_of_each_class_and_no_smudge():
    classes = ["neutrophil", "lymphoblast", "neutrophil", "neutrophil", "lymphocyte", "neutrophil"]
    probs = np.array([0.7, 0.9, 0.95, 0.6, 0.8, 0.99])
    kinds = [schema.KIND_WBC] * 5 + [schema.KIND_SMUDGE]
    assert top_per_class(classes, probs, kinds, 2) == [2, 0, 1, 4]
