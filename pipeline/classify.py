"""Batch classifiers: load a checkpoint once, label batches of crops. Usable with or without Ray.

`CellClassifier` takes a batch with one row per cell (a CROP column) and adds BLAST_PROB, PREDICTED
and MODEL_ID. `ImageClassifier` does the same for batches with one row per image whose cells travel
packed as Arrow IPC bytes (see pipeline/predictions.py), so that an image and all its cells stay one
row from detection to the written report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import schema
from pipeline.checkpoint import MODEL_FILE, CheckpointMeta, load_checkpoint
from pipeline.locations import join_uri, read_bytes


def model_identity(checkpoint_dir: str | Path, meta: CheckpointMeta) -> str:
    """'<model name>@<first 12 hex of the weights' sha256>': which model labelled a cell."""
    digest = hashlib.sha256(read_bytes(join_uri(checkpoint_dir, MODEL_FILE))).hexdigest()[:12]
    return f"{meta.model_name}@{digest}"


class CellClassifier:
    """Callable: batch dict with CROP (PNG bytes) -> the same batch plus BLAST_PROB, PREDICTED, MODEL_ID."""

    def __init__(self, checkpoint_dir: str, device: str = "cpu", threshold: float = 0.5, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(checkpoint_dir)
        self.model.to(self.device)
        self.image_size = int(self.meta.image_size)
        self.threshold = float(threshold)
        self.model_id = model_identity(checkpoint_dir, self.meta)
        # fp16 autocast on GPU: inference is memory-bound there; CPU stays float32.
        self.amp = self.device.type == "cuda"

    def predict(self, crops) -> np.ndarray:
        """(N,) float32 blast probabilities of PNG crops."""
        import torch

        from pipeline.training import decode_crops

        if len(crops) == 0:
            return np.zeros(0, dtype=np.float32)
        x = decode_crops(list(crops), self.image_size).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            logits = self.model(x).float()
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32)

    def __call__(self, batch):
        """Label a batch: a dict of columns or a pyarrow Table (which keeps null labels null)."""
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            probs = self.predict(batch.column(schema.CROP).to_pylist())
            batch = batch.append_column(schema.BLAST_PROB, pa.array(probs, pa.float32()))
            batch = batch.append_column(schema.PREDICTED, pa.array((probs >= self.threshold).astype(np.int8)))
            return batch.append_column(schema.MODEL_ID, pa.array([self.model_id] * len(probs), pa.string()))
        probs = self.predict(batch[schema.CROP])
        out = dict(batch)
        out[schema.BLAST_PROB] = probs
        out[schema.PREDICTED] = (probs >= self.threshold).astype(np.int8)
        out[schema.MODEL_ID] = np.full(len(probs), self.model_id, dtype=object)
        return out


class ImageClassifier(CellClassifier):
    """Callable for one-row-per-image batches: classifies every packed cell of the batch in one go."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa

        from pipeline.predictions import CELLS_IPC, pack_cells, unpack_cells

        tables = [unpack_cells(b) for b in batch[CELLS_IPC]]
        crops = [c for t in tables for c in t.column(schema.CROP).to_pylist()]
        probs = self.predict(crops)
        packed, start = [], 0
        for t in tables:
            p = probs[start : start + t.num_rows]
            start += t.num_rows
            t = t.append_column(schema.BLAST_PROB, pa.array(p, pa.float32()))
            t = t.append_column(schema.PREDICTED, pa.array((p >= self.threshold).astype(np.int8), pa.int8()))
            t = t.append_column(schema.MODEL_ID, pa.array([self.model_id] * t.num_rows, pa.string()))
            packed.append(pack_cells(t))
        out = dict(batch)
        out[CELLS_IPC] = np.array(packed, dtype=object)
        return out
