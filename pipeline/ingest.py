"""The ingest stage: one image in, its cell rows (or a quarantine reason) out; a batch in, a shard out.

`ingest_image` is the pure per-image function (bytes -> rows). `IngestStage` is the batch callable
that Ray Data's `map_batches` runs: it reads each file, calls `ingest_image`, catches every error
per image (a bad file never fails the batch), commits the batch as one shard, and returns one small
status row per image for the driver's progress and summary.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from pipeline import locations, schema, taxonomy
from pipeline.config import CropSettings
from pipeline.crops import assign_labels, background_colour, cut_crop, window_pixels
from pipeline.detect import detect_cells
from pipeline.io import (
    DEFAULT_MAX_MEGAPIXELS,
    ImageReadError,
    check_decode_budget,
    decode_image,
    encode_png,
    sha256_hex,
)
from pipeline.single_cell import (
    AUTO,
    POOLED,
    POOLED_FORMATS,
    PooledScale,
    cut_single_cell,
    measure_pad_fraction,
    pool_single_cell_scale,
)
from pipeline.sources import SINGLE_CELL, ImageTask
from pipeline.store import new_shard_id, write_shard

# Half a typical white-cell diameter (~12 um): how far a listed centre may be from a detection
# when the labels file gives no radius (ALL-IDB1 .xyc centroids have none).
LABEL_MATCH_RADIUS_UM = 6.0

# Columns of the status rows IngestStage returns to the driver (one per image, small).
TASK_COLUMN = "task"  # tasks travel as one JSON column: nullable ints survive Arrow/numpy intact
STATUS_COLUMNS = (schema.IMAGE, schema.STATUS, schema.N_CELLS, "n_labelled", "n_smudge", schema.REASON, "replaced")
# Workers that may die on one image (killed for memory, a crash in a decoder) before it is
# quarantined instead of tried again: each attempt leaves a marker file until its shard commits.
MAX_ATTEMPTS = 2


def as_class(value: str | int | None) -> str | None:
    """A label as a class name: class names stay, ALL-IDB's 0/1 (int or text) become other/lymphoblast."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) or str(value) in ("0", "1"):
        return taxonomy.class_of_binary(int(value))
    return str(value)


def label_columns(value: str | int | None, label_source: str | None) -> dict:
    """The CELL_CLASS, LABEL (derived: taxonomy.binary_label) and LABEL_SOURCE of a cell row."""
    cls = as_class(value)
    return {schema.CELL_CLASS: cls, schema.LABEL: taxonomy.binary_label(cls),
            schema.LABEL_SOURCE: label_source if cls is not None else None}  # fmt: skip


@dataclass
class ImageOutcome:
    """What became of one image: its cell rows, or a quarantine reason."""

    cells: list[dict]
    reason: str | None = None
    note: str | None = None
    um_per_pixel: float | None = None
    scale_source: str | None = None


def apply_pooled_scale(
    tasks: list[ImageTask],
    settings: CropSettings,
    mode: str,
    source_format: str,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> tuple[list[ImageTask], PooledScale | None]:
    """The tasks with the source's pooled single-cell scales (per image size) set on their
    single-cell images (pipeline.single_cell), and the pool; unchanged (and None) when the scale is
    given, when `mode` (auto for `source_format`) says "each", or without single-cell images.
    Reads a sample of the images: call before Ray starts."""
    single = [i for i, t in enumerate(tasks) if t.kind == SINGLE_CELL]
    pooled_mode = mode == POOLED or (mode == AUTO and source_format in POOLED_FORMATS)
    if not pooled_mode or settings.um_per_pixel is not None or not single:
        return tasks, None

    def read_pixels(k: int) -> np.ndarray | None:
        try:
            data = locations.read_bytes(tasks[single[k]].path)
            check_decode_budget(data, max_megapixels)
            return decode_image(data).pixels
        except Exception:  # noqa: BLE001 - any bad file
            return None  # a bad file is left out of the sample; ingest quarantines it on its own

    pooled = pool_single_cell_scale([tasks[i].image for i in single], read_pixels)
    scales = pooled.scales()
    if not scales:
        return tasks, pooled
    out = list(tasks)
    for i in single:
        out[i] = replace(tasks[i], pooled_scales=scales)
    return out, pooled


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
        cut = cut_single_cell(
            pixels, settings, task.pooled_scales
        )  # the slides' window; raises ScaleNotMeasured (quarantine)
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
                schema.DIAMETER_UM: None
                if cut.area is None
                else 2.0 * math.sqrt(cut.area / math.pi) * cut.um_per_pixel,
                schema.KIND: schema.KIND_SINGLE_CELL,
                schema.AT_BORDER: False,
                schema.CROP: encode_png(cut.crop),
                **label_columns(task.default_label, task.label_source),
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
                    schema.N_SPLIT: cell.n_split,
                    schema.CROP: encode_png(crop),
                    **label_columns(label, task.label_source),
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

    def __init__(self, settings_json: str, out: str, run_id: str, known: dict[str, str] | None = None,
                 versions: dict[str, list[str]] | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                 memory_bytes: int | None = None):  # fmt: skip
        self.settings = CropSettings.from_json(settings_json)
        self.settings_json = settings_json
        self.out = out
        self.run_id = run_id
        self.known = known or {}
        self.versions = versions or {}  # image -> the shards holding its earlier versions
        self.max_megapixels = max_megapixels
        self.memory_bytes = memory_bytes
        if max_megapixels > DEFAULT_MAX_MEGAPIXELS:  # PIL refuses at twice its MAX_IMAGE_PIXELS
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6 / 2)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        tasks = [ImageTask.from_json(str(text)) for text in batch[TASK_COLUMN]]
        shard = new_shard_id(self.run_id)
        attempts = Attempts(self.out)
        cell_rows, quarantine_rows, ledger_rows, statuses = [], [], [], []
        for task in tasks:
            outcome, sha = process_task(
                task,
                self.settings,
                self.settings_json,
                self.known,
                max_megapixels=self.max_megapixels,
                memory_bytes=self.memory_bytes,
                before_decode=lambda sha, image=task.image: attempts.begin(image, sha),
            )
            if sha is not None and self.known.get(task.image) == sha:
                statuses.append((task.image, schema.STATUS_SKIPPED, 0, 0, 0, None, False))
                continue
            status = schema.STATUS_QUARANTINED if outcome.reason else schema.STATUS_INGESTED
            older = self.versions.get(task.image)
            for row in outcome.cells:
                row[schema.RUN_ID], row[schema.SHARD] = self.run_id, shard
            cell_rows.extend(outcome.cells)
            if outcome.reason:
                quarantine_rows.append(
                    {
                        schema.IMAGE: task.image,
                        schema.REASON: outcome.reason,
                        schema.SOURCE_SHA256: sha,
                        schema.RUN_ID: self.run_id,
                        schema.SHARD: shard,
                    }
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
                    schema.SUPERSEDES: older,
                }
            )
            labelled = sum(r.get(schema.CELL_CLASS) is not None for r in outcome.cells)
            smudge = sum(r[schema.KIND] == schema.KIND_SMUDGE for r in outcome.cells)
            replaced = bool(older) and status == schema.STATUS_INGESTED
            statuses.append((task.image, status, len(outcome.cells), labelled, smudge, outcome.reason, replaced))
        if ledger_rows:
            write_shard(
                self.out,
                shard,
                pa.Table.from_pylist(cell_rows, schema=schema.CELL_SCHEMA),
                pa.Table.from_pylist(quarantine_rows, schema=schema.QUARANTINE_SCHEMA),
                pa.Table.from_pylist(ledger_rows, schema=schema.IMAGE_SCHEMA),
            )
        attempts.finish()
        return {name: [s[i] for s in statuses] for i, name in enumerate(STATUS_COLUMNS)}


class Attempts:
    """Marker files of the images a worker is processing, in OUT/attempts/: one per attempt, deleted
    when the batch's shard is committed. A marker left over means a worker died on that image; after
    MAX_ATTEMPTS of them the image is quarantined instead of killing another worker."""

    def __init__(self, out: str) -> None:
        self.folder = locations.join_uri(out, schema.ATTEMPTS_DIR)
        self.counts = Counter(name.split(".", 1)[0] for name in locations.list_names(self.folder))
        self.keys: list[str] = []

    @staticmethod
    def key(image: str, sha: str) -> str:
        return hashlib.sha256(f"{image}\x00{sha}".encode()).hexdigest()[:24]

    def begin(self, image: str, sha: str) -> str | None:
        """Record an attempt at (image, content); a quarantine reason when too many died already."""
        key = self.key(image, sha)
        self.keys.append(key)
        if self.counts[key] >= MAX_ATTEMPTS:
            return (f"the worker processing this image died {self.counts[key]} times (killed for memory or a "
                    "crash in a decoder); not tried again")  # fmt: skip
        locations.write_bytes(locations.join_uri(self.folder, f"{key}.{uuid.uuid4().hex[:8]}"), b"")
        return None

    def finish(self) -> None:
        """Delete the markers of this batch's images (their outcome is committed)."""
        mine = set(self.keys)
        for name in locations.list_names(self.folder):
            if name.split(".", 1)[0] in mine:
                fs, path = locations.resolve(locations.join_uri(self.folder, name))
                try:
                    fs.delete_file(path)
                except FileNotFoundError:
                    pass


def process_task(
    task: ImageTask,
    settings: CropSettings,
    settings_json: str,
    known: dict[str, str] | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    memory_bytes: int | None = None,
    before_decode: Callable[[str], str | None] | None = None,
) -> tuple[ImageOutcome, str | None]:
    """Read and ingest one task, never raising: (outcome, sha256 or None if unreadable).

    When `known` maps the task's image to this very content hash, the image is not processed
    (the caller records it as skipped). An image over `max_megapixels` or whose estimated peak
    memory is over `memory_bytes` is quarantined from its header, before any pixel is decoded.
    `before_decode(sha)` may return a reason to quarantine the image instead of decoding it.
    """
    try:
        data = read_bytes(task.path)
    except ImageReadError as err:
        return ImageOutcome([], reason=str(err)), None
    sha = sha256_hex(data)
    if known and known.get(task.image) == sha:
        return ImageOutcome([]), sha
    try:
        check_decode_budget(data, max_megapixels, memory_bytes)
        refused = before_decode(sha) if before_decode else None
        if refused:
            return ImageOutcome([], reason=refused), sha
        return ingest_image(task, data, settings, sha, settings_json), sha
    except ImageReadError as err:
        return ImageOutcome([], reason=str(err)), sha
    except MemoryError:
        return ImageOutcome([], reason="image too large for this worker's memory"), sha
    except Exception as err:  # noqa: BLE001 - one image's failure must never fail its shard
        return ImageOutcome([], reason=f"processing failed: {type(err).__name__}: {err}"), sha
