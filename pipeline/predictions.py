"""Inference stages around the classifier: slides to packed cells, predictions to shards.

Batches stay one row per image from detection to the written shard: an image's cells travel packed
as Arrow IPC bytes (CELLS_IPC), so an image's status, its cells and its counts never part ways, and
every image ends in exactly one summary row (ingested, possibly with zero cells, or quarantined).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pyarrow as pa

from pipeline import schema, taxonomy
from pipeline.config import CropSettings
from pipeline.ingest import process_task
from pipeline.locations import join, resolve
from pipeline.sources import ImageTask
from pipeline.store import new_shard_id, write_table_atomic

CELLS_IPC = "cells_ipc"
TOP_BLASTS = 12  # crops called blasts kept per image for the report's gallery
TOP_PER_CLASS = 3  # crops kept per image and predicted class for the report's class gallery
# The per-image head columns, then what the driver aggregates (source_sha256 names the input images).
_HEAD_COLUMNS = (schema.PATIENT_ID, schema.SAMPLE_ID, schema.IMAGE, schema.STATUS, schema.REASON, schema.SOURCE_SHA256)
SUMMARY_COLUMNS = (
    *_HEAD_COLUMNS,
    schema.N_CELLS,
    "predicted",
    "kinds",
    "blast_crops",
    "blast_probs",
    "classes",
    "class_crops",
    "class_picks",
    "class_probs",
)
_CLASSIFIER_COLUMNS = (schema.BLAST_PROB, schema.PREDICTED, schema.PREDICTED_CLASS, schema.CLASS_PROB, schema.MODEL_ID)
_CELL_COLUMNS = [f.name for f in schema.PREDICTION_SCHEMA if f.name not in _CLASSIFIER_COLUMNS]


def known_class(cell_class: str | None, label: int | None) -> str | None:
    """The class a cell is known to be: its cell_class, else what its binary label stands for."""
    return cell_class if cell_class is not None else taxonomy.class_of_binary(label)


def with_known_class(cells: pa.Table) -> pa.Table:
    """`cells` with KNOWN_CLASS filled from CELL_CLASS (where the cell table has it) or LABEL."""
    if schema.KNOWN_CLASS in cells.column_names:
        return cells
    n = cells.num_rows
    classes = cells.column(schema.CELL_CLASS).to_pylist() if schema.CELL_CLASS in cells.column_names else [None] * n
    labels = cells.column(schema.LABEL).to_pylist() if schema.LABEL in cells.column_names else [None] * n
    return cells.append_column(
        schema.KNOWN_CLASS, pa.array([known_class(c, lb) for c, lb in zip(classes, labels)], pa.string())
    )


def pack_cells(table: pa.Table) -> bytes:
    """Arrow IPC stream bytes of a table (one image's cells)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack_cells(data: bytes) -> pa.Table:
    """The table packed by `pack_cells`."""
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


class SlideStage:
    """Callable: batch of ImageTask JSON -> one row per image with its cells packed (detect + crop)."""

    def __init__(self, settings_json: str):
        self.settings = CropSettings.from_json(settings_json)
        self.settings_json = settings_json
        self.cell_schema = pa.schema([schema.PREDICTION_SCHEMA.field(n) for n in _CELL_COLUMNS])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from pipeline.ingest import TASK_COLUMN

        rows = {k: [] for k in (*_HEAD_COLUMNS, schema.NOTE, CELLS_IPC)}
        for text in batch[TASK_COLUMN]:
            task = ImageTask.from_json(str(text))
            outcome, sha = process_task(task, self.settings, self.settings_json)
            cells = [
                {
                    **{k: r.get(k) for k in _CELL_COLUMNS},
                    schema.KNOWN_CLASS: known_class(r.get(schema.CELL_CLASS), r.get(schema.LABEL)),
                }
                for r in outcome.cells
            ]
            rows[schema.PATIENT_ID].append(task.patient_id)
            rows[schema.SAMPLE_ID].append(task.sample_id)
            rows[schema.IMAGE].append(task.image)
            rows[schema.STATUS].append(schema.STATUS_QUARANTINED if outcome.reason else schema.STATUS_INGESTED)
            rows[schema.REASON].append(outcome.reason)
            rows[schema.SOURCE_SHA256].append(sha)
            rows[schema.NOTE].append(outcome.note)
            rows[CELLS_IPC].append(pack_cells(pa.Table.from_pylist(cells, schema=self.cell_schema)))
        return rows


class PredictionWriter:
    """Callable: classified rows -> a predictions shard on disk, and one small summary row per image.

    Accepts one-row-per-image batches (CELLS_IPC) from SlideStage, or one-row-per-cell batches from
    an existing ingest output. Summary rows carry only counts and a few top blast crops, so the
    driver aggregates millions of cells without holding them.
    """

    def __init__(self, out: str, run_id: str):
        self.out = out
        self.run_id = run_id
        fs, base = resolve(out)
        fs.create_dir(join(base, schema.PREDICTIONS_DIR), recursive=True)

    def __call__(self, batch) -> dict[str, list]:
        if isinstance(batch, pa.Table):  # one row per cell, from an ingest output
            tables, heads = _group_by_image(with_known_class(batch))
        else:
            tables = [unpack_cells(b) for b in batch[CELLS_IPC]]
            heads = [{k: batch[k][i] for k in _HEAD_COLUMNS} for i in range(len(tables))]
        tables = [t.select([f.name for f in schema.PREDICTION_SCHEMA]).cast(schema.PREDICTION_SCHEMA) for t in tables]
        all_cells = pa.concat_tables(tables) if tables else schema.PREDICTION_SCHEMA.empty_table()
        if all_cells.num_rows:
            fs, base = resolve(self.out)
            path = join(base, schema.PREDICTIONS_DIR, f"{new_shard_id(self.run_id)}.parquet")
            write_table_atomic(fs, path, all_cells)
        summary = {k: [] for k in SUMMARY_COLUMNS}
        for head, t in zip(heads, tables):
            for k in _HEAD_COLUMNS:
                summary[k].append(_text_or_none(head[k]))
            probs = t.column(schema.BLAST_PROB).to_numpy()
            predicted = t.column(schema.PREDICTED).to_numpy()
            kinds = t.column(schema.KIND).to_pylist()
            blasts = [i for i in np.argsort(-probs) if predicted[i] == 1 and kinds[i] != schema.KIND_SMUDGE]
            top = blasts[:TOP_BLASTS]
            crops = t.column(schema.CROP).to_pylist()
            summary[schema.N_CELLS].append(t.num_rows)
            summary["predicted"].append(predicted.astype(int).tolist())
            summary["kinds"].append(kinds)
            summary["blast_crops"].append([crops[i] for i in top])
            summary["blast_probs"].append([float(probs[i]) for i in top])
            classes = t.column(schema.PREDICTED_CLASS).to_pylist()
            summary["classes"].append(classes)
            picks = top_per_class(classes, t.column(schema.CLASS_PROB).to_numpy(), kinds, TOP_PER_CLASS)
            summary["class_crops"].append([crops[i] for i in picks])
            summary["class_picks"].append([classes[i] for i in picks])
            summary["class_probs"].append([float(t.column(schema.CLASS_PROB)[i].as_py()) for i in picks])
        return summary


def _text_or_none(value) -> str | None:
    """A head value as text; None for a missing one: numpy batches turn a null id into NaN, which str() makes "nan"."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):  # np.float32 is no float
        return None
    return str(value)


def top_per_class(classes: list, probs: np.ndarray, kinds: list, k: int) -> list[int]:
    """Indices of up to `k` cells per predicted class, most confident first (smudge cells left out)."""
    picks: dict[str, list[int]] = {}
    for i in np.argsort(-np.asarray(probs), kind="stable"):
        i = int(i)
        if kinds[i] != schema.KIND_SMUDGE and classes[i] is not None and len(picks.setdefault(classes[i], [])) < k:
            picks[classes[i]].append(i)
    return [i for idx in picks.values() for i in idx]


def _group_by_image(cells: pa.Table) -> tuple[list[pa.Table], list[dict]]:
    images = cells.column(schema.IMAGE).to_pylist()
    order: dict[str, list[int]] = {}
    for i, name in enumerate(images):
        order.setdefault(name, []).append(i)
    tables, heads = [], []
    for name, idx in order.items():
        t = cells.take(pa.array(idx))
        tables.append(t)
        heads.append({schema.PATIENT_ID: t.column(schema.PATIENT_ID)[0].as_py(),
                      schema.SAMPLE_ID: t.column(schema.SAMPLE_ID)[0].as_py(), schema.IMAGE: name,
                      schema.STATUS: "cells", schema.REASON: None,
                      schema.SOURCE_SHA256: t.column(schema.SOURCE_SHA256)[0].as_py()})  # fmt: skip
    return tables, heads
