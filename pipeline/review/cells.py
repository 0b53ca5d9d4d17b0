"""The cells of an infer output as the review sees them: read once (no crops), grouped by patient.

A cell's predicted class comes from the model's class columns where the predictions have them
(schema.PREDICTED_CLASS, CLASS_PROB), else from the binary call: lymphoblast / other from
schema.PREDICTED with confidence max(p, 1 - p). A cell the detector called a smudge starts as smudge.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline import schema, taxonomy
from pipeline.cellsets import cell_key
from pipeline.report import UNKNOWN

NOT_A_CELL = "not_a_cell"  # a review outcome only: the detection is no cell (debris, stain); left out of everything
UNREVIEWED = ""  # what undo restores when a cell had no decision before
# The classes a reviewer can move a cell to, with their keys (number keys as analysers have them).
REVIEW_KEYS: dict[str, str] = {
    "1": taxonomy.LYMPHOBLAST, "2": taxonomy.NEUTROPHIL, "3": taxonomy.LYMPHOCYTE, "4": taxonomy.MONOCYTE,
    "5": taxonomy.EOSINOPHIL, "6": taxonomy.BASOPHIL, "7": taxonomy.IG, "8": taxonomy.ERYTHROBLAST,
    "9": taxonomy.PLATELET, "0": taxonomy.OTHER, "s": taxonomy.SMUDGE, "x": NOT_A_CELL,
}  # fmt: skip
REVIEW_CLASSES: tuple[str, ...] = tuple(REVIEW_KEYS.values())
CLASS_TITLES = {**{n: taxonomy.NODES[n].title for n in REVIEW_CLASSES if n in taxonomy.NODES}, NOT_A_CELL: "not a cell"}
_INDEX_COLUMNS = [schema.PATIENT_ID, schema.SAMPLE_ID, schema.IMAGE, schema.CELL_ID, schema.X, schema.Y,
                  schema.BBOX_X0, schema.BBOX_Y0, schema.BBOX_X1, schema.BBOX_Y1, schema.KIND, schema.BLAST_PROB,
                  schema.PREDICTED, schema.MODEL_ID, schema.SOURCE_SHA256]  # fmt: skip
_CLASS_COLUMNS = [schema.PREDICTED_CLASS, schema.CLASS_PROB]
CROP_CACHE_PATIENTS = 4  # patients whose crops stay in memory (a page's gallery asks for them one by one)


@dataclass(frozen=True)
class ReviewConfig:
    """What `allray review` was asked for."""

    report: str  # the infer output folder
    db: str = ""  # SQLAlchemy URL; empty: sqlite:///REPORT/review.sqlite
    host: str = "127.0.0.1"
    port: int = 8765
    reviewer: str = ""
    unsure_below: float = 0.8  # confidence under which a cell goes to the "unidentified" bin
    token: str = ""  # required off 127.0.0.1 (generated when empty)
    page_size: int = 200  # crops per gallery and page (a patient's page stays quick with thousands of cells)

    def __post_init__(self):
        if not 0.0 <= self.unsure_below <= 1.0:
            raise ValueError(f"--unsure-below must be in [0, 1], got {self.unsure_below!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port!r}")

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{Path(self.report).resolve() / 'review.sqlite'}"

    @property
    def needs_token(self) -> bool:
        return self.host != "127.0.0.1"


@dataclass
class PatientCells:
    """One patient's cells, sorted least confident first (the order galleries show them in)."""

    patient_id: str
    keys: list[str]
    image: list[str]
    x: np.ndarray  # (n,) float: centre, source pixels
    y: np.ndarray
    r: np.ndarray  # (n,) float: half the larger side of the bounding box, source pixels
    predicted: list[str]  # class before review
    confidence: np.ndarray  # (n,) float in [0, 1]
    model_ids: set[str] = field(default_factory=set)
    n_samples: int = 0

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


@dataclass
class ReviewReport:
    """The cells of one infer output, grouped by patient, and the facts the review needs about it."""

    path: Path
    patients: dict[str, PatientCells]
    has_classes: bool  # the model predicts taxonomy classes (the differential), not just blast / other
    fingerprint: str  # identity of the report: a review database belongs to exactly one
    blast_alert_pct: float
    min_cells: int
    model_id: str
    patient_of: dict[str, str]  # cell key -> patient id
    _crops: OrderedDict = field(default_factory=OrderedDict)

    def crop(self, key: str) -> bytes | None:
        """The PNG bytes of one cell's crop (its patient's crops are read together and kept a while)."""
        pid = self.patient_of.get(key)
        if pid is None:
            return None
        if pid not in self._crops:
            self._crops[pid] = _read_crops(self.path, pid)
            while len(self._crops) > CROP_CACHE_PATIENTS:
                self._crops.popitem(last=False)
        self._crops.move_to_end(pid)
        return self._crops[pid].get(key)


def _dataset(report: Path) -> pads.Dataset:
    pred = report / schema.PREDICTIONS_DIR
    files = sorted(str(p) for p in pred.glob("*.parquet")) if pred.is_dir() else []
    if not files:
        raise ValueError(f"{pred}: no predictions (*.parquet): give the folder `allray infer --out` wrote")
    return pads.dataset(files, format="parquet")


def _read_crops(report: Path, patient_id: str) -> dict[str, bytes]:
    ds = _dataset(report)
    cond = pc.field(schema.PATIENT_ID).is_null() if patient_id == UNKNOWN else pc.field(schema.PATIENT_ID) == patient_id
    t = ds.to_table(columns=[schema.SOURCE_SHA256, schema.CELL_ID, schema.CROP], filter=cond)
    return {cell_key(s, c): crop for s, c, crop in zip(t.column(0).to_pylist(), t.column(1).to_pylist(),
                                                         t.column(2).to_pylist())}  # fmt: skip


def load_report(report: str | Path) -> ReviewReport:
    """The cells of the infer output at `report` (predictions/*.parquet, summary.json); ValueError if unusable."""
    path = Path(report)
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder; give the folder `allray infer --out` wrote")
    ds = _dataset(path)
    names = set(ds.schema.names)
    missing = [c for c in _INDEX_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path / schema.PREDICTIONS_DIR}: predictions lack column(s) {', '.join(missing)}; re-run `allray infer`"
        )
    has_classes = all(c in names for c in _CLASS_COLUMNS)
    t = ds.to_table(columns=_INDEX_COLUMNS + (_CLASS_COLUMNS if has_classes else []))
    info = _read_info(path)
    if has_classes and t.num_rows and t.column(schema.PREDICTED_CLASS).null_count == t.num_rows:
        has_classes = False  # the columns are there but the model was binary
    model_classes = {c.strip() for c in str(info.get("classes") or "").split(",") if c.strip()}
    if has_classes and model_classes and model_classes <= set(taxonomy.BINARY_CLASSES):
        has_classes = False  # a blast / other model: its predicted_class says no more than `predicted`
    keys = [cell_key(s, c) for s, c in zip(t.column(schema.SOURCE_SHA256).to_pylist(),
                                           t.column(schema.CELL_ID).to_pylist())]  # fmt: skip
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"{path / schema.PREDICTIONS_DIR}: the same cell (image hash + cell id) appears twice; "
            "the predictions are not one infer output"
        )
    predicted, confidence = _predicted(t, has_classes)
    pids = [UNKNOWN if p is None else str(p) for p in t.column(schema.PATIENT_ID).to_pylist()]
    bbox = [t.column(c).to_numpy(zero_copy_only=False).astype(float) for c in
            (schema.BBOX_X0, schema.BBOX_Y0, schema.BBOX_X1, schema.BBOX_Y1)]  # fmt: skip
    radius = np.nan_to_num(np.maximum(bbox[2] - bbox[0], bbox[3] - bbox[1]) / 2.0)
    x = t.column(schema.X).to_numpy(zero_copy_only=False).astype(float)
    y = t.column(schema.Y).to_numpy(zero_copy_only=False).astype(float)
    images = t.column(schema.IMAGE).to_pylist()
    samples = t.column(schema.SAMPLE_ID).to_pylist()
    models = t.column(schema.MODEL_ID).to_pylist()
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pids):
        groups.setdefault(p, []).append(i)
    patients = {}
    for pid in sorted(groups):
        idx = np.asarray(groups[pid])
        idx = idx[np.lexsort((np.asarray([keys[i] for i in idx]), confidence[idx]))]  # least confident first
        patients[pid] = PatientCells(pid, [keys[i] for i in idx], [images[i] for i in idx], x[idx], y[idx],
                                     radius[idx], [predicted[i] for i in idx], confidence[idx],
                                     {str(models[i]) for i in idx if models[i] is not None},
                                     len({samples[i] for i in idx}))  # fmt: skip
    digest = hashlib.sha256()
    for k, m in sorted(zip(keys, models), key=lambda km: km[0]):
        digest.update(f"{k}|{m}\n".encode())
    model_ids = sorted({str(m) for m in models if m is not None})
    return ReviewReport(path, patients, has_classes, digest.hexdigest(), float(info.get("blast_alert_pct", 20.0)),
                        int(info.get("min_cells", 50)), ", ".join(model_ids) or str(info.get("model", "")),
                        {k: p for k, p in zip(keys, pids)})  # fmt: skip


def _read_info(path: Path) -> dict:
    summary = path / schema.SUMMARY_FILE
    if not summary.is_file():
        return {}
    try:
        return json.loads(summary.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{summary}: not readable JSON ({err}); re-run `allray infer`") from None


def _predicted(t: pa.Table, has_classes: bool) -> tuple[list[str], np.ndarray]:
    """The class each cell starts the review in, and the model's confidence in it."""
    kinds = t.column(schema.KIND).to_pylist()
    prob = np.nan_to_num(t.column(schema.BLAST_PROB).to_numpy(zero_copy_only=False).astype(float), nan=0.5)
    calls = t.column(schema.PREDICTED).to_pylist()
    binary = [taxonomy.LYMPHOBLAST if c == 1 else taxonomy.OTHER for c in calls]
    confidence = np.maximum(prob, 1.0 - prob)
    if has_classes:
        names = t.column(schema.PREDICTED_CLASS).to_pylist()
        cprob = t.column(schema.CLASS_PROB).to_numpy(zero_copy_only=False).astype(float)
        for i, name in enumerate(names):
            if name is not None:
                binary[i] = taxonomy.lookup(name) or str(name)
                confidence[i] = 0.0 if np.isnan(cprob[i]) else cprob[i]
    out = [taxonomy.SMUDGE if k == schema.KIND_SMUDGE else c for k, c in zip(kinds, binary)]
    confidence = np.where(np.asarray([k == schema.KIND_SMUDGE for k in kinds], dtype=bool), 1.0, confidence)
    return out, confidence
