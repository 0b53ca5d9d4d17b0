"""Typed settings of each command: frozen dataclasses, validated on construction.

Click options map one to one onto these fields, and the resolved config is written next to every
output (`config.json`), so a run can always be traced back to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from pipeline import taxonomy
from pipeline.detect import DetectConfig
from pipeline.sources import FORMATS


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class CropSettings:
    """How crops are cut: the part of the ingest config a model depends on (stored in checkpoints)."""

    # The largest white cells (monocytes, lymphoblasts) are ~18-20 um across: 24 um holds them
    # whole with a rim of context, while a small lymphocyte (~8 um) still looks small in it.
    crop_um: float = 24.0
    # 128 px over 24 um = 0.19 um/px: nuclear texture survives, and 128 suits all three archs.
    crop_size: int = 128
    # None = measure each image's scale from its red cells (7.5 um); set to force one scale.
    um_per_pixel: float | None = None
    detect: DetectConfig = field(default_factory=DetectConfig)

    def __post_init__(self) -> None:
        _check(4.0 <= self.crop_um <= 200.0, f"crop_um={self.crop_um!r} must be between 4 and 200 micrometres")
        _check(16 <= self.crop_size <= 1024, f"crop_size={self.crop_size!r} must be between 16 and 1024 pixels")
        _check(
            self.um_per_pixel is None or 0.005 <= self.um_per_pixel <= 10.0,
            f"um_per_pixel={self.um_per_pixel!r} must be between 0.005 and 10 (or unset to measure it)",
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of these settings: stored with every cell as provenance."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CropSettings:
        """Settings back from `to_json` output."""
        data = json.loads(text)
        detect = DetectConfig(**data.pop("detect", {}))
        return cls(detect=detect, **data)


# --single-cell-scale: pooled per image size over the source's single-cell images, each image's own,
# or auto: pooled for class-folder exports (an analyser at one magnification), else each
SINGLE_CELL_SCALES = ("auto", "pooled", "each")


@dataclass(frozen=True)
class IngestConfig:
    """Settings of `allray ingest`."""

    src: str = "slides"
    out: str = "cells"
    format: str = "auto"
    manifest: str | None = None
    labels: str | None = None
    crops: CropSettings = field(default_factory=CropSettings)
    # Images per task and per Parquet shard: large enough for ~100 cells a file, small enough
    # that a killed run loses little work and both cores stay busy on a small collection.
    images_per_shard: int = 16
    # Concurrent ingest tasks; None = as many as the cluster has CPUs.
    workers: int | None = None
    # Delete everything already in `out` and re-cut it: the one way to change an output's geometry.
    rebuild: bool = False
    # Read files and folders that symlinks under src point to, even outside src (loops still cut).
    follow_links: bool = False
    # Images above this are refused from their header: PIL's decompression-bomb cap, for every format.
    max_megapixels: float = 800.0
    # Memory declared to Ray per ingest worker and the budget an image must fit; None = 4 GiB, or
    # less when the cluster's memory does not hold that much per worker.
    worker_memory_gb: float | None = None
    # Manifest or label rows that match no image or hold invalid values are skipped and counted,
    # instead of failing the run.
    allow_unmatched: bool = False
    # Single-cell images: one scale pooled over the source (pipeline.single_cell), or each its own.
    single_cell_scale: str = "auto"

    def __post_init__(self) -> None:
        _check(self.format in FORMATS, f"format={self.format!r}: choose one of {', '.join(FORMATS)}")
        _check(self.single_cell_scale in SINGLE_CELL_SCALES,
               f"single_cell_scale={self.single_cell_scale!r}: choose one of {', '.join(SINGLE_CELL_SCALES)}")  # fmt: skip
        _check(1 <= self.max_megapixels <= 100_000, f"max_megapixels={self.max_megapixels!r} must be 1..100000")
        _check(self.worker_memory_gb is None or 0.25 <= self.worker_memory_gb <= 4096,
               f"worker_memory_gb={self.worker_memory_gb!r} must be 0.25..4096")  # fmt: skip
        _check(1 <= self.images_per_shard <= 10_000, f"images_per_shard={self.images_per_shard!r} must be 1..10000")
        _check(self.workers is None or self.workers >= 1, f"workers={self.workers!r} must be at least 1")

    def to_dict(self) -> dict:
        """Plain dict of every field (nested settings included), for config.json."""
        return dataclasses.asdict(self)


ARCH_ALL = "all"
STUDY_ARCHS = ("lenet", "vgg", "resnet")  # the originating study's three families
SPLIT_MODES = ("patient", "image", "random")
CACHE_MODES = ("auto", "yes", "no")
CLASS_MODES = ("auto", "binary")  # or NAME,NAME,... (taxonomy classes)


def parse_classes(text: str) -> str | tuple[str, ...]:
    """`--classes` as meant: "auto", "binary" or a checked tuple of class names (in the order given).

    Names are taxonomy names or synonyms; "other,lymphoblast" in any order is "binary" (one logit).
    Raises ValueError naming the bad value and the known classes.
    """
    text = (text or "").strip()
    if text.lower() in CLASS_MODES:
        return text.lower()
    names = tuple(taxonomy.parse_class(v, "--classes") for v in text.split(",") if v.strip())
    if set(names) == set(taxonomy.BINARY_CLASSES) and len(names) == 2:
        return "binary"
    return taxonomy.check_model_classes(names)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of `allray train`."""

    cells: tuple[str, ...] = ("cells",)
    out: str = ""  # empty = a new runs/<date-time>
    arch: str = ARCH_ALL  # "all" = the study's three families in turn, or one registry name
    # The study trained 300 epochs on 130 crops; on thousands of crops 30 suffice.
    epochs: int = 30
    batch_size: int = 32  # the study's batch size
    lr: float | None = None  # None = the model's default (pipeline.models.default_lr: 1e-3, as the study)
    workers: int = 1
    gpu: bool = False
    # None = fit the workers on the cluster: up to 1 CPU each, leaving some for data loading.
    cpus_per_worker: float | None = None
    split: str = "patient"  # patient-grouped: cells of one patient on both sides would leak
    val_fraction: float = 0.25
    folds: int = 1  # >1 = K-fold cross-validation, reported as mean +- sd
    seed: int = 0
    weights: str = "none"  # "none" trains from scratch (weights cannot be downloaded everywhere)
    image_size: int | None = None  # None = the architecture's default input size
    resume: bool = False
    # Restarts of a run from its last checkpoint after a worker or node is lost.
    max_failures: int = 2
    # Keep the selected crops in Ray's object store across epochs ("auto": when they take at most
    # a quarter of its free memory), or stream them from Parquet every epoch.
    cache: str = "auto"
    # The model's classes: "auto" (those in the labels; binary where they are only blast/other),
    # "binary" (blast vs other, one logit) or NAME,NAME,... (one softmax head over these).
    classes: str = "auto"

    def __post_init__(self) -> None:
        _check(len(self.cells) >= 1, "give at least one ingest output folder (CELLS)")
        parse_classes(self.classes)  # raises ValueError naming a bad class
        _check(1 <= self.epochs <= 100_000, f"epochs={self.epochs!r} must be at least 1")
        _check(1 <= self.batch_size <= 65_536, f"batch_size={self.batch_size!r} must be at least 1")
        _check(self.lr is None or 0 < self.lr < 10, f"lr={self.lr!r} must be in (0, 10)")
        _check(self.workers >= 1, f"workers={self.workers!r} must be at least 1")
        _check(
            self.cpus_per_worker is None or 0 < self.cpus_per_worker <= 256,
            f"cpus_per_worker={self.cpus_per_worker!r} must be positive",
        )
        _check(self.split in SPLIT_MODES, f"split={self.split!r}: choose one of {', '.join(SPLIT_MODES)}")
        _check(0 < self.val_fraction < 1, f"val_fraction={self.val_fraction!r} must be in (0, 1)")
        _check(1 <= self.folds <= 20, f"folds={self.folds!r} must be between 1 and 20")
        _check(self.max_failures >= 0, f"max_failures={self.max_failures!r} must be >= 0")
        _check(self.cache in CACHE_MODES, f"cache={self.cache!r}: choose one of {', '.join(CACHE_MODES)}")

    def archs(self) -> tuple[str, ...]:
        """The architectures this run trains, in order."""
        return STUDY_ARCHS if self.arch == ARCH_ALL else (self.arch,)

    def to_dict(self) -> dict:
        """Plain dict of every field, for config.json."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InferConfig:
    """Settings of `allray infer`."""

    slides: str = "slides"  # slide folders, a manifest's images, or an ingest output (crops reused)
    model: str | None = None  # a checkpoint or a run (its best arch); None = the newest run in ./runs
    out: str | None = None  # None = a new reports/<date-time>
    gpu: bool = False
    workers: int | None = None  # classifier actors; None = fit them to the cluster and the input
    batch_size: int = 64  # cells per classifier batch: large enough to keep a core (or GPU) busy
    threshold: float = 0.5  # blast probability at which a cell is called a blast
    blast_alert: float = 20.0  # WHO's 20% blast threshold for acute leukaemia
    min_cells: int = 50  # fewer counted cells: the count is flagged too_few_cells
    manifest: str | None = None
    format: str = "auto"
    # As for ingest: links are not followed out of SLIDES, and bad manifest rows fail the run.
    follow_links: bool = False
    allow_unmatched: bool = False
    # The slides' scale: None = measured from their red cells (never the training images' scale).
    um_per_pixel: float | None = None
    single_cell_scale: str = "auto"  # as for ingest

    def __post_init__(self) -> None:
        _check(bool(str(self.slides).strip()), "give the slides to label (SLIDES)")
        _check(self.um_per_pixel is None or 0.005 <= self.um_per_pixel <= 10.0,
               f"um_per_pixel={self.um_per_pixel!r} must be between 0.005 and 10 (or unset to measure it)")  # fmt: skip
        _check(self.single_cell_scale in SINGLE_CELL_SCALES,
               f"single_cell_scale={self.single_cell_scale!r}: choose one of {', '.join(SINGLE_CELL_SCALES)}")  # fmt: skip
        _check(0.0 < self.threshold < 1.0, f"threshold={self.threshold!r} must be between 0 and 1")
        _check(0.0 < self.blast_alert <= 100.0, f"blast_alert={self.blast_alert!r} must be in (0, 100]")
        _check(
            int(self.min_cells) == self.min_cells and self.min_cells >= 0,
            f"min_cells={self.min_cells!r} must be a whole number >= 0",
        )
        _check(1 <= self.batch_size <= 65_536, f"batch_size={self.batch_size!r} must be between 1 and 65536")
        _check(self.workers is None or self.workers >= 1, f"workers={self.workers!r} must be at least 1")
        _check(self.format in FORMATS, f"format={self.format!r}: choose one of {', '.join(FORMATS)}")
        _check(
            self.format != "manifest" or self.manifest is not None,
            "format=manifest needs a manifest CSV (columns image,patient_id,sample_id)",
        )

    def to_dict(self) -> dict:
        """Plain dict of every field, for the run record."""
        return dataclasses.asdict(self)
