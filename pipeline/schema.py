"""The cell table, the image ledger and the quarantine table: column names and Arrow schemas.

This module is the one source of truth for column names. Everything else imports the constants
below instead of writing string literals, so a renamed column is a one-line change.

Key: a cell is identified by (IMAGE, CELL_ID); IMAGE is the path relative to the ingest source
(POSIX), CELL_ID the 0-based index of the cell within that image.
"""

from __future__ import annotations

import pyarrow as pa

# --- cell table (DIR/cells/*.parquet): one row per white cell -----------------------------------
PATIENT_ID = "patient_id"
SAMPLE_ID = "sample_id"
IMAGE = "image"
CELL_ID = "cell_id"
X = "x"  # centre of the cell, source pixels (float)
Y = "y"
BBOX_X0 = "bbox_x0"  # bounding box in source pixels, half-open [x0, x1)
BBOX_Y0 = "bbox_y0"
BBOX_X1 = "bbox_x1"
BBOX_Y1 = "bbox_y1"
AREA = "area"  # segmented cell area, source pixels
DIAMETER_UM = "diameter_um"  # equivalent-circle diameter in micrometres (size is diagnostic)
KIND = "kind"  # one of CELL_KINDS
AT_BORDER = "at_border"  # the cell touches the image border (partly outside the picture)
CROP = "crop"  # lossless PNG bytes, (crop_size, crop_size, 3) uint8 RGB
CROP_SIZE = "crop_size"
LABEL = "label"  # 1 = lymphoblast, 0 = other white cell, null = unknown
# Class name of the cell (a node of pipeline/taxonomy.py), null = unknown. LABEL stays derived
# from it (taxonomy.binary_label), so binary outputs and models keep their meaning.
CELL_CLASS = "cell_class"
LABEL_SOURCE = "label_source"  # where the label came from: one of LABEL_SOURCES, null if none
UM_PER_PIXEL = "um_per_pixel"  # scale of the source image used for the crop window
SCALE_SOURCE = "scale_source"  # how UM_PER_PIXEL was found: one of SCALE_SOURCES
# Share of the crop window outside the source image (filled with background): single-cell images
# smaller than the slides' window; null for rows written before it was recorded.
PAD_FRACTION = "pad_fraction"
IMAGE_WIDTH = "image_width"
IMAGE_HEIGHT = "image_height"
SOURCE_SHA256 = "source_sha256"  # hash of the source file's bytes (provenance, re-run skip)
INGEST_SETTINGS = "ingest_settings"  # JSON of the IngestConfig that cut this crop
RUN_ID = "run_id"  # the ingest run that wrote the row
SHARD = "shard"  # the shard (one batch of images) the row was written in
N_SPLIT = "n_split"  # cells the detector split this cell's chromatin blob into (1 = not split; null: no detection)

KIND_WBC = "wbc"
KIND_SMUDGE = "smudge"  # ruptured cell: kept as a row, left out of counts
KIND_SINGLE_CELL = "single_cell"  # the image is one centred cell (ALL-IDB2): no detection ran
CELL_KINDS = (KIND_WBC, KIND_SMUDGE, KIND_SINGLE_CELL)

LABEL_SOURCES = ("labels_csv", "xyc", "filename", "manifest", "class_folder")
# "whole_image": single-cell images resized whole (outputs of older versions; no longer written).
SCALE_SOURCES = ("red_cells", "user", "default", "whole_image")

CELL_SCHEMA = pa.schema(
    [
        pa.field(PATIENT_ID, pa.string()),
        pa.field(SAMPLE_ID, pa.string()),
        pa.field(IMAGE, pa.string(), nullable=False),
        pa.field(CELL_ID, pa.int32(), nullable=False),
        pa.field(X, pa.float32()),
        pa.field(Y, pa.float32()),
        pa.field(BBOX_X0, pa.int32()),
        pa.field(BBOX_Y0, pa.int32()),
        pa.field(BBOX_X1, pa.int32()),
        pa.field(BBOX_Y1, pa.int32()),
        pa.field(AREA, pa.int32()),
        pa.field(DIAMETER_UM, pa.float32()),
        pa.field(KIND, pa.string()),
        pa.field(AT_BORDER, pa.bool_()),
        pa.field(CROP, pa.binary()),
        pa.field(CROP_SIZE, pa.int16()),
        pa.field(LABEL, pa.int8()),
        pa.field(CELL_CLASS, pa.dictionary(pa.int8(), pa.string())),
        pa.field(LABEL_SOURCE, pa.string()),
        pa.field(UM_PER_PIXEL, pa.float32()),
        pa.field(SCALE_SOURCE, pa.string()),
        pa.field(PAD_FRACTION, pa.float32()),
        pa.field(IMAGE_WIDTH, pa.int32()),
        pa.field(IMAGE_HEIGHT, pa.int32()),
        pa.field(SOURCE_SHA256, pa.string()),
        pa.field(INGEST_SETTINGS, pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field(SHARD, pa.string()),
        pa.field(N_SPLIT, pa.int16()),
    ]
)

# --- image ledger (DIR/images/*.parquet): one row per input image handled ---------------------
# Written last for each shard: a shard is committed exactly when its ledger file exists, which is
# what makes an interrupted run safe to repeat (see pipeline/store.py).
STATUS = "status"  # one of STATUSES
N_CELLS = "n_cells"
REASON = "reason"  # why an image was quarantined (null otherwise)
NOTE = "note"  # anything worth knowing that is not an error (e.g. "multi-page TIFF: first page")
# The shards whose rows for this image this commit replaces (its earlier versions): readers see only
# the versions no commit replaces, so one image path has one current version (pipeline/store.py).
SUPERSEDES = "supersedes"

STATUS_INGESTED = "ingested"
STATUS_QUARANTINED = "quarantined"
STATUS_SKIPPED = "skipped"  # only in a run's stream, never stored: the ledger already holds it
STATUSES = (STATUS_INGESTED, STATUS_QUARANTINED, STATUS_SKIPPED)

IMAGE_SCHEMA = pa.schema(
    [
        pa.field(IMAGE, pa.string(), nullable=False),
        pa.field(PATIENT_ID, pa.string()),
        pa.field(SAMPLE_ID, pa.string()),
        pa.field(SOURCE_SHA256, pa.string()),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(N_CELLS, pa.int32()),
        pa.field(REASON, pa.string()),
        pa.field(NOTE, pa.string()),
        pa.field(UM_PER_PIXEL, pa.float32()),
        pa.field(SCALE_SOURCE, pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field(SHARD, pa.string()),
        pa.field(SUPERSEDES, pa.list_(pa.string())),
    ]
)

# --- quarantine (DIR/quarantine/*.parquet): one row per input that could not be used ----------
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(IMAGE, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(SOURCE_SHA256, pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field(SHARD, pa.string()),
    ]
)

# Sub-directories of an ingest output DIR.
CELLS_DIR = "cells"
IMAGES_DIR = "images"
QUARANTINE_DIR = "quarantine"
SUMMARY_FILE = "summary.json"
# The settings that shape an output's cells and crops, written once by its first run (pipeline/geometry.py).
GEOMETRY_FILE = "geometry.json"
# Markers of images being processed, one file per attempt: a worker that dies leaves its marker.
ATTEMPTS_DIR = "attempts"

# Ground-truth CSV columns (written by `allray synth`, read by `ingest --labels`).
# kind: wbc / smudge (smudge rows have no label and are not counted); cluster: id within the image
# of the packed blast cluster the cell belongs to, empty when alone; class: a taxonomy name (label
# empty where the cell is not a white cell: erythroblasts, smudge cells).
TRUTH_COLUMNS = ("image", "x", "y", "r", "label", "kind", "cluster", "class")
PATIENT_TRUTH_COLUMNS = ("patient_id", "n_wbc", "n_blast", "blast_pct")
MANIFEST_COLUMNS = ("image", "patient_id", "sample_id")  # optional 4th: label

# --- predictions (REPORT/predictions/*.parquet): one row per detected cell of `allray infer` -----
BLAST_PROB = "blast_prob"  # model probability that the cell is a lymphoblast
PREDICTED = "predicted"  # 1 = called lymphoblast (blast_prob >= threshold), 0 = other
PREDICTED_CLASS = "predicted_class"  # the model's most probable class (a taxonomy class name)
CLASS_PROB = "class_prob"  # its probability
KNOWN_CLASS = "class"  # the class the input gave (for evaluation), else null
MODEL_ID = "model_id"  # identity of the checkpoint that labelled the cell (arch + hash)

_PREDICTION_CELL_COLUMNS = (PATIENT_ID, SAMPLE_ID, IMAGE, CELL_ID, X, Y, BBOX_X0, BBOX_Y0, BBOX_X1, BBOX_Y1, AREA,
                            DIAMETER_UM, KIND, AT_BORDER, CROP)  # fmt: skip
PREDICTION_SCHEMA = pa.schema(
    [CELL_SCHEMA.field(name) for name in _PREDICTION_CELL_COLUMNS]
    + [
        pa.field(BLAST_PROB, pa.float32()),
        pa.field(PREDICTED, pa.int8()),
        pa.field(PREDICTED_CLASS, pa.string()),
        pa.field(CLASS_PROB, pa.float32()),
        pa.field(LABEL, pa.int8()),  # known label where the input had one (for evaluation), else null
        pa.field(KNOWN_CLASS, pa.string()),
        pa.field(MODEL_ID, pa.string()),
        CELL_SCHEMA.field(SOURCE_SHA256),
    ]
)
PREDICTIONS_DIR = "predictions"
