"""What `allray infer` reads: the model (a checkpoint, or a run's best), the crop settings it was
trained with, and the source of its cells: slides to detect and crop exactly as ingest does
(SlidesSource), or an ingest output whose crops are classified as they are (CellsSource); each
builds its part of the Ray Data pipeline that jobs/infer.py runs.

Every file is read through pipeline.locations (local paths or URIs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline import schema
from pipeline.checkpoint import META_FILE, CheckpointError
from pipeline.classify import meta_value
from pipeline.config import CropSettings, InferConfig
from pipeline.locations import absolute, is_dir, is_file, join_uri, list_names, read_json
from pipeline.redact import REDACTED, redact_text

LIGHT_TASK_CPUS = 0.1  # Parquet reads and shard writes: I/O, never worth holding a whole core


def find_model(model: str | None) -> str:
    """The checkpoint location for --model: a checkpoint, a run (its best arch), or the newest run in ./runs."""
    if model is None:
        runs = sorted(
            (p for p in Path("runs").glob("*") if (p / "summary.json").exists()), key=lambda p: p.stat().st_mtime
        )
        if not runs:
            raise ValueError("no trained model found in ./runs: train one with `allray train`, or pass --model RUN")
        model = str(runs[-1])
    model = absolute(model)
    if is_file(join_uri(model, META_FILE)):
        return model
    if is_file(join_uri(model, "best", META_FILE)):  # an architecture's folder of a run: its best checkpoint
        return join_uri(model, "best")
    archs = _run_archs(model)

    def score(item):
        r = item[1]
        return r.get("val_acc_mean") if "folds" in r else (r.get("best") or {}).get("val_acc") or 0.0

    arch, result = max(archs.items(), key=lambda item: score(item) or 0.0)
    ckpt = result["checkpoint"] if "checkpoint" in result else result["folds"][0]["checkpoint"]
    # Moved since, or recorded with its credentials redacted: look inside the run as given.
    if REDACTED in ckpt or not is_file(join_uri(ckpt, META_FILE)):
        ckpt = join_uri(model, arch, "best")
    return ckpt


def _run_archs(model: str) -> dict:
    """The `archs` of the finished run at `model`; a one-line ValueError for any other kind of folder."""
    from pipeline.folders import FolderKind, folder_kind, wrong_kind_message

    kind = folder_kind(model)
    summary_path = join_uri(model, "summary.json")
    try:
        archs = read_json(summary_path).get("archs") if kind == FolderKind.RUN and is_file(summary_path) else None
    except ValueError as err:  # damaged JSON: name the file
        raise ValueError(
            f"{redact_text(summary_path)} is damaged ({err}): re-run `allray train`, or pass one of "
            "the run's checkpoints (<run>/<arch>/best)"
        ) from None
    if not archs:
        if kind == FolderKind.RUN:
            raise ValueError(
                f"--model {redact_text(model)} is a training run that has not finished (no summary.json "
                "with its architectures): wait for it, resume it with `allray train --resume --out RUN`, "
                "or pass one of its checkpoints (<run>/<arch>/best)"
            )
        raise ValueError(wrong_kind_message("--model", model, kind, "model"))
    return archs


def check_slides(slides: str) -> None:
    """Refuse, in one line, a SLIDES that is a run, a checkpoint or a report (a missing one is refused by
    discovery): a run's curves.png would otherwise be counted as a smear."""
    from pipeline.folders import FolderKind, require_kind

    require_kind("SLIDES", absolute(slides), (FolderKind.OTHER, FolderKind.INGEST_OUTPUT, FolderKind.MISSING), "slides")


def is_ingest_output(location: str) -> bool:
    """True where `location` is an ingest output (its image ledger and cells folders)."""
    return is_dir(join_uri(location, schema.IMAGES_DIR)) and is_dir(join_uri(location, schema.CELLS_DIR))


def model_crop_settings(ckpt: str, meta) -> CropSettings:
    """The CropSettings a model's training crops were cut with (an object in CheckpointMeta, a dict in
    an older meta.json); CheckpointError when they are not usable."""
    stored = meta_value(meta, "crop_settings")
    if isinstance(stored, CropSettings):
        return stored
    try:
        return CropSettings.from_json(json.dumps(stored))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt}: crop settings in meta.json are not usable: {err}") from None


@dataclass(frozen=True)
class ClassifyStage:
    """How the classifier runs: its constructor arguments, actor pool and resources per actor."""

    kwargs: dict
    pool: object  # ray.data.ActorPoolStrategy
    cpus: float
    gpus: float


@dataclass
class SlidesSource:
    """Slide images to detect and crop exactly as ingest does, then classify."""

    tasks: list
    image_paths: dict[str, str]
    settings: CropSettings  # the model's: slides are cut exactly as its training crops were
    files: tuple = ()
    facts: dict = field(default_factory=dict)  # what discovery left out: links not followed, manifest rows

    @classmethod
    def open(cls, src: str, config: InferConfig, settings: CropSettings) -> SlidesSource:
        from pipeline.ingest import apply_pooled_scale
        from pipeline.sources import discover_images

        found = discover_images(src, config.format, config.manifest, follow_links=config.follow_links,
                                allow_unmatched=config.allow_unmatched)  # fmt: skip
        facts = {**found.row_counts, "links_not_followed": len(found.links_not_followed)}
        if found.row_problems:
            facts["rows_not_used"] = found.row_problems[:20]
        if found.links_not_followed:
            facts["links_not_followed_examples"] = found.links_not_followed[:10]
        # The model fixes the window (crop_um, crop_size); the scale is the slides' own: measured, or
        # infer's --um-per-pixel, never the one its training images were forced to.
        settings = replace(settings, um_per_pixel=config.um_per_pixel)
        tasks, pooled = apply_pooled_scale(found.tasks, settings, config.single_cell_scale, found.format)
        if pooled is not None:
            facts["single_cell_scale"] = pooled.to_dict()
        return cls(tasks=tasks, image_paths={t.image: t.path for t in tasks}, settings=settings, facts=facts)

    def known_images(self, acc) -> list[dict]:
        """Nothing is known before the run: every image reports itself (returns the quarantine so far)."""
        return []

    def build(self, classify: ClassifyStage, config: InferConfig, cpus: float, reserve: float):
        """(dataset of one classified row per image, images to expect): tasks -> SlideStage -> ImageClassifier."""
        import ray

        from pipeline.classify import ImageClassifier
        from pipeline.ingest import TASK_COLUMN
        from pipeline.predictions import SlideStage

        items = [{TASK_COLUMN: t.to_json()} for t in self.tasks]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * int(cpus))))
        ds = ds.map_batches(SlideStage, fn_constructor_kwargs={"settings_json": self.settings.to_json()},
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(cpus - reserve + 1))),
                            num_cpus=1, batch_size=4, batch_format="numpy")  # fmt: skip
        ds = ds.map_batches(
            ImageClassifier,
            fn_constructor_kwargs=classify.kwargs,
            compute=classify.pool,
            num_cpus=classify.cpus,
            num_gpus=classify.gpus,
            batch_size=8,
            batch_format="numpy",
        )
        return ds, len(self.tasks)


@dataclass
class CellsSource:
    """An ingest output: its crops are classified as they are (no detection redone)."""

    src: str
    files: list
    ledger: object  # pyarrow Table of the image ledger
    image_paths: dict[str, str]
    tasks: tuple = ()

    @classmethod
    def open(cls, src: str, ckpt: str, settings: CropSettings) -> CellsSource:
        from pipeline.store import read_table, shard_files

        ledger = read_table(src, schema.IMAGES_DIR)
        cell_settings = read_table(src, columns=[schema.INGEST_SETTINGS]).column(0).unique().to_pylist()
        wanted = json.loads(settings.to_json())
        if any(json.loads(text) != wanted for text in cell_settings):
            raise CheckpointError(
                f"the cells in {src} were cut with other settings than model {ckpt} was trained on "
                f"(model: {settings.to_json()}); run `allray infer` on the slides themselves instead"
            )
        ingest_src = _ingest_source(src)
        image_paths = {}
        if ingest_src is not None:
            image_paths = {im: join_uri(ingest_src, im) for im in ledger.column(schema.IMAGE).to_pylist()}
        return cls(src=src, files=shard_files(src), ledger=ledger, image_paths=image_paths)

    def known_images(self, acc) -> list[dict]:
        """Count every ingested image of the ledger (with or without cells); the stored quarantine."""
        from pipeline.store import read_table

        ledger = self.ledger
        ok = ledger.filter(ledger.column(schema.STATUS).to_numpy(zero_copy_only=False) == schema.STATUS_INGESTED)
        for p, s, im in zip(*(ok.column(c).to_pylist() for c in (schema.PATIENT_ID, schema.SAMPLE_ID, schema.IMAGE))):
            acc.add_image(p, s, im)
        q = read_table(self.src, schema.QUARANTINE_DIR)
        return [{schema.IMAGE: i, schema.REASON: r} for i, r in
                zip(q.column(schema.IMAGE).to_pylist(), q.column(schema.REASON).to_pylist())]  # fmt: skip

    def build(self, classify: ClassifyStage, config: InferConfig, cpus: float, reserve: float):
        """(dataset of classified cells, cells to expect): shard paths -> read_shards -> CellClassifier."""
        import ray

        from pipeline.classify import CellClassifier
        from pipeline.store import PATH_COLUMN, read_shards

        files = self.files
        ds = ray.data.from_items([{PATH_COLUMN: f} for f in files], override_num_blocks=max(1, len(files)))
        # A few reads at a time keep the classifiers fed; uncapped, a 0.1-CPU task lets Ray start a
        # worker process per shard at once (seen: 8+ on 2 cores), which takes CPU from the classifiers.
        ds = ds.map_batches(
            read_shards,
            batch_size=1,
            num_cpus=LIGHT_TASK_CPUS,
            batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=max(1, min(2, len(files)))),
        )
        ds = ds.map_batches(
            CellClassifier,
            fn_constructor_kwargs=classify.kwargs,
            compute=classify.pool,
            num_cpus=classify.cpus,
            num_gpus=classify.gpus,
            batch_size=config.batch_size,
            batch_format="pyarrow",
        )
        return ds, sum(n or 0 for n in self.ledger.column(schema.N_CELLS).to_pylist())


def _ingest_source(cells_dir: str) -> str | None:
    """The SRC an ingest output was made from (its newest config-*.json), for overlays."""
    configs = [n for n in list_names(cells_dir) if n.startswith("config-") and n.endswith(".json")]
    if not configs:
        return None
    src = read_json(join_uri(cells_dir, configs[-1])).get("src") or ""
    if not src or REDACTED in src:  # recorded without its credentials: not readable as recorded
        return None
    try:
        return src if is_dir(src) else None
    except OSError:  # storage refusing or out of reach: the report is written without overlays
        return None
