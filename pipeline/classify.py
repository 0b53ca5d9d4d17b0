"""Batch classifiers: load a checkpoint once, label batches of crops. Usable with or without Ray.

`CellClassifier` takes a batch with one row per cell (a CROP column) and adds BLAST_PROB, PREDICTED,
PREDICTED_CLASS, CLASS_PROB and MODEL_ID. `ImageClassifier` does the same for batches with one row
per image whose cells travel packed as Arrow IPC bytes (see pipeline/predictions.py), so that an
image and all its cells stay one row from detection to the written report.

A model gives one logit per cell (binary: sigmoid = P(lymphoblast), as every checkpoint before the
differential) or K logits over its `class_names` (softmax). Either way a cell is called a blast
exactly as before (blast_prob >= threshold), so blast % keeps its meaning; the predicted class is
lymphoblast for a called blast, else the most probable of the model's other classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import schema, taxonomy
from pipeline.checkpoint import MODEL_FILE, CheckpointError, load_checkpoint
from pipeline.locations import join_uri, read_bytes

# The columns a classifier adds, in this order.
OUTPUT_COLUMNS = (schema.BLAST_PROB, schema.PREDICTED, schema.PREDICTED_CLASS, schema.CLASS_PROB, schema.MODEL_ID)


def meta_value(meta, name: str, default=None):
    """A checkpoint meta field, from a CheckpointMeta (attribute) or a meta.json dict (key)."""
    # The one place that reads meta both ways: once every branch has CheckpointMeta, getattr alone.
    if isinstance(meta, dict):
        return meta.get(name, default)
    return getattr(meta, name, default)


def model_classes(meta) -> tuple[str, ...]:
    """The model's output classes (taxonomy names, output order); binary for a checkpoint without them."""
    names = meta_value(meta, "class_names")
    if not names:
        return taxonomy.BINARY_CLASSES
    try:
        return taxonomy.check_model_classes(names)
    except ValueError as err:
        raise CheckpointError(f"the model's classes cannot be mapped onto the cell classes: {err}") from None


def model_identity(checkpoint_dir: str | Path, meta) -> str:
    """'<model name>@<first 12 hex of the weights' sha256>': which model labelled a cell."""
    digest = hashlib.sha256(read_bytes(join_uri(checkpoint_dir, MODEL_FILE))).hexdigest()[:12]
    return f"{meta_value(meta, 'model_name')}@{digest}"


def class_probabilities(logits: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """(N, K) float32 probabilities over `class_names` from a model's output.

    One logit per cell ((N,) or (N, 1)) is binary: P(lymphoblast) = sigmoid, the rest is "other",
    and `class_names` must be taxonomy.BINARY_CLASSES. (N, K) logits are a softmax over K classes.
    """
    logits = np.asarray(logits, dtype=np.float64)
    classes = tuple(class_names)
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim == 1:
        if classes != taxonomy.BINARY_CLASSES:
            raise CheckpointError(
                f"the model gives one logit per cell but declares classes {classes!r} "
                f"(one logit means {taxonomy.BINARY_CLASSES!r})"
            )
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise CheckpointError(
            f"the model gives outputs of shape {logits.shape} but declares {len(classes)} classes {classes!r}"
        )
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def call_cells(probs: np.ndarray, class_names: Sequence[str], threshold: float) -> dict[str, np.ndarray]:
    """Per cell: BLAST_PROB, PREDICTED (int8), PREDICTED_CLASS (object str), CLASS_PROB from (N, K) probs.

    PREDICTED is 1 exactly when P(lymphoblast) >= threshold (0.0 when the model has no lymphoblast
    class); PREDICTED_CLASS is lymphoblast then, else the most probable of the other classes.
    """
    probs = np.asarray(probs, dtype=np.float32)
    classes = tuple(class_names)
    n = probs.shape[0]
    if taxonomy.LYMPHOBLAST in classes:
        b = classes.index(taxonomy.LYMPHOBLAST)
        blast = probs[:, b].copy()
    else:
        b, blast = None, np.zeros(n, np.float32)
    predicted = (blast >= threshold).astype(np.int8)
    rest = probs.copy()
    if b is not None:
        rest[:, b] = -1.0  # never the "other" choice
    best = rest.argmax(axis=1) if n else np.zeros(0, np.int64)
    best = np.where(predicted == 1, b if b is not None else 0, best)
    names = np.asarray(classes, dtype=object)[best] if n else np.zeros(0, dtype=object)
    return {
        schema.BLAST_PROB: blast,
        schema.PREDICTED: predicted,
        schema.PREDICTED_CLASS: names,
        schema.CLASS_PROB: probs[np.arange(n), best].astype(np.float32),
    }


class CellClassifier:
    """Callable: batch with CROP (PNG bytes) -> the same batch plus OUTPUT_COLUMNS."""

    def __init__(self, checkpoint_dir: str, device: str = "cpu", threshold: float = 0.5, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(checkpoint_dir)
        self.model.to(self.device)
        self.image_size = int(meta_value(self.meta, "image_size"))
        # The normalisation the model was trained with, as stored in its checkpoint.
        self.mean = tuple(float(v) for v in meta_value(self.meta, "mean"))
        self.std = tuple(float(v) for v in meta_value(self.meta, "std"))
        self.class_names = model_classes(self.meta)
        self.threshold = float(threshold)
        self.model_id = model_identity(checkpoint_dir, self.meta)
        # fp16 autocast on GPU: inference is memory-bound there; CPU stays float32.
        self.amp = self.device.type == "cuda"

    def predict_proba(self, crops) -> np.ndarray:
        """(N, K) float32 probabilities over self.class_names of PNG crops."""
        import torch

        from pipeline.training import decode_crops

        if len(crops) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        x = decode_crops(list(crops), self.image_size, mean=self.mean, std=self.std)
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            logits = self.model(x).float()
        return class_probabilities(logits.cpu().numpy(), self.class_names)

    def predict(self, crops) -> np.ndarray:
        """(N,) float32 blast probabilities of PNG crops."""
        return self.label(crops)[schema.BLAST_PROB]

    def label(self, crops) -> dict[str, np.ndarray]:
        """OUTPUT_COLUMNS but MODEL_ID for PNG crops (see `call_cells`)."""
        return call_cells(self.predict_proba(crops), self.class_names, self.threshold)

    def __call__(self, batch):
        """Label a batch: a dict of columns or a pyarrow Table (which keeps null labels null)."""
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            return append_calls(batch, self.label(batch.column(schema.CROP).to_pylist()), self.model_id)
        calls = self.label(batch[schema.CROP])
        out = dict(batch)
        out.update(calls)
        out[schema.MODEL_ID] = np.full(len(calls[schema.BLAST_PROB]), self.model_id, dtype=object)
        return out


def append_calls(table, calls: dict[str, np.ndarray], model_id: str):
    """`table` (pyarrow) with the OUTPUT_COLUMNS of `calls` appended (typed as PREDICTION_SCHEMA)."""
    import pyarrow as pa

    n = table.num_rows
    types = {
        schema.BLAST_PROB: pa.float32(),
        schema.PREDICTED: pa.int8(),
        schema.PREDICTED_CLASS: pa.string(),
        schema.CLASS_PROB: pa.float32(),
    }
    for name, kind in types.items():
        table = table.append_column(name, pa.array(calls[name], kind) if n else pa.array([], kind))
    return table.append_column(schema.MODEL_ID, pa.array([model_id] * n, pa.string()))


class ImageClassifier(CellClassifier):
    """Callable for one-row-per-image batches: classifies every packed cell of the batch in one go."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.predictions import CELLS_IPC, pack_cells, unpack_cells

        tables = [unpack_cells(b) for b in batch[CELLS_IPC]]
        crops = [c for t in tables for c in t.column(schema.CROP).to_pylist()]
        calls = self.label(crops)
        packed, start = [], 0
        for t in tables:
            part = {k: v[start : start + t.num_rows] for k, v in calls.items()}
            start += t.num_rows
            packed.append(pack_cells(append_calls(t, part, self.model_id)))
        out = dict(batch)
        out[CELLS_IPC] = np.array(packed, dtype=object)
        return out
