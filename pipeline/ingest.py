"""The ingest stage: one image in, its cell rows (or a quarantine reason) out; a batch in, a shard out.

`ingest_image` is the pure per-image function (bytes -> rows). `IngestStage` is the batch callable
that Ray Data's `map_batches` runs: it reads each file, calls `ingest_image`, catches every error
per image (a bad file never fails the batch), commits the batch as one shard, and returns one small
status row per image for the driver's progress and summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import locations, schema
from pipeline.config import CropSettings
from pipeline.crops import assign_labels, background_colour, cut_crop, window_pixels
from pipeline.detect import detect_cells
from pipeline.io import ImageReadError, decode_image, encode_png, sha256_hex
from pipeline.single_cell import cut_single_cell, measure_pad_fraction
from pipeline.sources import SINGLE_CELL, ImageTask
from pipeline.store import new_shard_id, write_shard

# Half a typical white-cell diameter (~12 um): how far a listed centre may be from a detection
# when the labels file gives no radius (ALL-IDB1 .xyc centroids have none).
LABEL_MATCH_RADIUS_UM = 6.0

# Columns of the status rows IngestStage returns to the driver (one per image, small).
TASK_COLUMN = "task"  # tasks travel as one JSON column: nullable ints survive Arrow/numpy intact
STATUS_COLUMNS = (schema.IMAGE, schema.STATUS, schema.N_CELLS, "n_labelled", "n_smudge", schema.REASON)


@dataclass
class ImageOutcome:
    """What became of one image: its cell rows, or a quarantine reason."""

    cells: list[dict]
    reason: str | None = None
    note: str | None = None
    um_per_pixel: float | None = None
    scale_source: str | None = None


def ingest_image(task: ImageTask, data: bytes, settings: CropSettings, sha: str, settings_json: str) -> ImageOutcome:
    """Cell rows (dicts keyed by schema columns) for one image's bytes; raises ImageReadError."""
    loaded = decode_image(data)
    pixels = loaded.pixels
    h, w = pixels.shape[:2]
    base = {
        schema.PATIENT_ID: task.patient_id,
        schema.SAMPLE_ID: task.sample_id,
        schema.IMAGE: task.image,
        schema.IMAGE_WIDTH: w,
        schema.IMAGE_HEIGHT: h,
        schema.SOURCE_SHA256: sha,
        schema.INGEST_SETTINGS: settings_json,
        schema.CROP_SIZE: settings.crop_size,
    }
    if task.kind == SINGLE_CELL:
        cut = cut_single_cell(pixels, settings)  # the slides' window; raises ScaleNotMeasured (quarantine)
        row = dict(
            base,
            **{
                schema.CELL_ID: 0,
                schema.X: cut.x,
                schema.Y: cut.y,
                schema.BBOX_X0: cut.bbox[0],
                schema.BBOX_Y0: cut.bbox[1],
                schema.BBOX_X1: cut.bbox[2],
                schema.BBOX_Y1: cut.bbox[3],
                schema.AREA: cut.area,
                schema.DIAMETER_UM: None if cut.area is None else 2.0 * math.sqrt(cut.area / math.pi) * cut.um_per_pixel,
                schema.KIND: schema.KIND_SINGLE_CELL,
                schema.AT_BORDER: False,
                schema.CROP: encode_png(cut.crop),
                schema.LABEL: task.default_label,
                schema.LABEL_SOURCE: task.label_source if task.default_label is not None else None,
                schema.UM_PER_PIXEL: cut.um_per_pixel,
                schema.SCALE_SOURCE: cut.scale_source,
                schema.PAD_FRACTION: cut.pad_fraction,
            },
        )
        return ImageOutcome([row], note=loaded.note, um_per_pixel=cut.um_per_pixel, scale_source=cut.scale_source)

    detection = detect_cells(pixels, settings.detect, um_per_pixel=settings.um_per_pixel)
    upp = detection.um_per_pixel
    window = window_pixels(settings.crop_um, upp)
    fill = background_colour(pixels)
    points = json.loads(task.points_json) if task.points_json else None
    labels = assign_labels(
        [(c.x, c.y) for c in detection.cells], points, task.default_label, LABEL_MATCH_RADIUS_UM / upp
    )
    rows = []
    for cell_id, (cell, label) in enumerate(zip(detection.cells, labels)):
        crop = cut_crop(pixels, cell.x, cell.y, window, settings.crop_size, fill)
        rows.append(
            dict(
                base,
                **{
                    schema.CELL_ID: cell_id,
                    schema.X: cell.x,
                    schema.Y: cell.y,
                    schema.BBOX_X0: cell.bbox[0],
                    schema.BBOX_Y0: cell.bbox[1],
                    schema.BBOX_X1: cell.bbox[2],
                    schema.BBOX_Y1: cell.bbox[3],
                    schema.AREA: cell.area,
                    schema.DIAMETER_UM: 2.0 * math.sqrt(cell.area / math.pi) * upp,
                    schema.KIND: cell.kind,
                    schema.AT_BORDER: cell.at_border,
                    schema.CROP: encode_png(crop),
                    schema.LABEL: label,
                    schema.LABEL_SOURCE: task.label_source if label is not None else None,
                    schema.UM_PER_PIXEL: upp,
                    schema.SCALE_SOURCE: detection.scale_source,
                    schema.PAD_FRACTION: measure_pad_fraction(w, h, cell.x, cell.y, window),
                },
            )
        )
    return ImageOutcome(rows, note=loaded.note, um_per_pixel=upp, scale_source=detection.scale_source)


def read_bytes(path: str) -> bytes:
    """All bytes of a local file or URI; raises ImageReadError naming the OS problem."""
    try:
        return locations.read_bytes(path)
    except (OSError, ValueError) as err:
        raise ImageReadError(f"cannot read file: {err}") from None


class IngestStage:
    """Batch callable for `map_batches`: ingest a batch of ImageTask columns, commit it as one shard."""

    def __init__(self, settings_json: str, out: str, run_id: str, known: dict[str, str] | None = None):
        self.settings = CropSettings.from_json(settings_json)
        self.settings_json = settings_json
        self.out = out
        self.run_id = run_id
        self.known = known or {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        tasks = [ImageTask.from_json(str(text)) for text in batch[TASK_COLUMN]]
        shard = new_shard_id(self.run_id)
        cell_rows, quarantine_rows, ledger_rows, statuses = [], [], [], []
        for task in tasks:
            outcome, sha = process_task(task, self.settings, self.settings_json, self.known)
            if sha is not None and self.known.get(task.image) == sha:
                statuses.append((task.image, schema.STATUS_SKIPPED, 0, 0, 0, None))
                continue
            status = schema.STATUS_QUARANTINED if outcome.reason else schema.STATUS_INGESTED
            for row in outcome.cells:
                row[schema.RUN_ID], row[schema.SHARD] = self.run_id, shard
            cell_rows.extend(outcome.cells)
            if outcome.reason:
                quarantine_rows.append(
                    {schema.IMAGE: task.image, schema.REASON: outcome.reason, schema.SOURCE_SHA256: sha,
                     schema.RUN_ID: self.run_id, schema.SHARD: shard}
                )
            ledger_rows.append(
                {
                    schema.IMAGE: task.image,
                    schema.PATIENT_ID: task.patient_id,
                    schema.SAMPLE_ID: task.sample_id,
                    schema.SOURCE_SHA256: sha,
                    schema.STATUS: status,
                    schema.N_CELLS: len(outcome.cells),
                    schema.REASON: outcome.reason,
                    schema.NOTE: outcome.note,
                    schema.UM_PER_PIXEL: outcome.um_per_pixel,
                    schema.SCALE_SOURCE: outcome.scale_source,
                    schema.RUN_ID: self.run_id,
                    schema.SHARD: shard,
                }
            )
            labelled = sum(r[schema.LABEL] is not None for r in outcome.cells)
            smudge = sum(r[schema.KIND] == schema.KIND_SMUDGE for r in outcome.cells)
            statuses.append((task.image, status, len(outcome.cells), labelled, smudge, outcome.reason))
        if ledger_rows:
            write_shard(
                self.out,
                shard,
                pa.Table.from_pylist(cell_rows, schema=schema.CELL_SCHEMA),
                pa.Table.from_pylist(quarantine_rows, schema=schema.QUARANTINE_SCHEMA),
                pa.Table.from_pylist(ledger_rows, schema=schema.IMAGE_SCHEMA),
            )
        return {name: [s[i] for s in statuses] for i, name in enumerate(STATUS_COLUMNS)}


def process_task(
    task: ImageTask, settings: CropSettings, settings_json: str, known: dict[str, str] | None = None
) -> tuple[ImageOutcome, str | None]:
    """Read and ingest one task, never raising: (outcome, sha256 or None if unreadable).

    When `known` maps the task's image to this very content hash, the image is not processed
    (the caller records it as skipped).
    """
    try:
        data = read_bytes(task.path)
    except ImageReadError as err:
        return ImageOutcome([], reason=str(err)), None
    sha = sha256_hex(data)
    if known and known.get(task.image) == sha:
        return ImageOutcome([]), sha
    try:
        return ingest_image(task, data, settings, sha, settings_json), sha
    except ImageReadError as err:
        return ImageOutcome([], reason=str(err)), sha
    except MemoryError:
        return ImageOutcome([], reason="image too large for this worker's memory"), sha
    except Exception as err:  # noqa: BLE001 - one image's failure must never fail its shard
        return ImageOutcome([], reason=f"processing failed: {type(err).__name__}: {err}"), sha
