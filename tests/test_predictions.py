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
    new = pa.table(
        {
            schema.LABEL: pa.array([None, 0], pa.int8()),
            schema.CELL_CLASS: pa.array(["erythroblast", None]).dictionary_encode(),
        }
    )
    assert with_known_class(new).column(schema.KNOWN_CLASS).to_pylist() == ["erythroblast", "other"]


def test_top_per_class_keeps_the_most_confident_cells_of_each_class_and_no_smudge():
    classes = ["neutrophil", "lymphoblast", "neutrophil", "neutrophil", "lymphocyte", "neutrophil"]
    probs = np.array([0.7, 0.9, 0.95, 0.6, 0.8, 0.99])
    kinds = [schema.KIND_WBC] * 5 + [schema.KIND_SMUDGE]
    assert top_per_class(classes, probs, kinds, 2) == [2, 0, 1, 4]


def test_slides_path_without_ray_carries_classes_and_known_labels(tmp_path):
    """SlideStage -> ImageClassifier -> PredictionWriter in-process: every detected cell in the shard with its
    predicted class and its known class (from the labels of the task), the summary's classes per image."""
    import json

    import pyarrow.dataset as pads
    import torch
    from test_classify import old_checkpoint

    from pipeline.classify import ImageClassifier
    from pipeline.config import CropSettings
    from pipeline.ingest import TASK_COLUMN
    from pipeline.io import encode_png
    from pipeline.models import build_model
    from pipeline.predictions import PredictionWriter, SlideStage
    from pipeline.sources import ImageTask
    from pipeline.synth import choose_patient_style, make_image_rng, make_smear

    image, truth = make_smear(make_image_rng(3, 1, 0), (640, 480), 0.5, choose_patient_style(3, 1))
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(image))
    points = [[c.x, c.y, c.r, c.label] for c in truth if c.label is not None]
    task = ImageTask(
        path=str(path),
        image="P1/S1/a.png",
        patient_id="P1",
        sample_id="S1",
        points_json=json.dumps(points),
        label_source="labels_csv",
    )
    torch.manual_seed(0)
    ckpt = old_checkpoint(tmp_path / "ckpt", build_model("lenet", 126).eval())
    rows = SlideStage(CropSettings().to_json())({TASK_COLUMN: np.array([task.to_json()], dtype=object)})
    batch = ImageClassifier(str(ckpt))({k: np.array(v, dtype=object) for k, v in rows.items()})
    summary = PredictionWriter(str(tmp_path / "out"), "run-1")(batch)
    cells = pads.dataset(str(tmp_path / "out" / schema.PREDICTIONS_DIR), format="parquet").to_table()
    assert cells.num_rows == summary[schema.N_CELLS][0] >= len(points) - 1
    calls = cells.column(schema.PREDICTED).to_pylist()
    assert cells.column(schema.PREDICTED_CLASS).to_pylist() == ["lymphoblast" if c else "other" for c in calls]
    assert summary["classes"][0] == cells.column(schema.PREDICTED_CLASS).to_pylist()
    labels = cells.column(schema.LABEL).to_pylist()
    assert cells.column(schema.KNOWN_CLASS).to_pylist() == [{1: "lymphoblast", 0: "other"}.get(v) for v in labels]
    assert {1, 0} <= set(labels)  # the smear holds blasts and other cells, matched to the truth points
    assert len(summary["class_crops"][0]) == len(summary["class_picks"][0]) <= 2 * 3
