"""`allray infer`: label the white cells of new slides and report lymphoblast counts per patient.

The recipe, streaming end to end:
    slides:  tasks -> map_batches(SlideStage)        detect + crop exactly as ingest does
    or cells: read_parquet(an ingest output)          crops already cut: no detection redone
          -> map_batches(ImageClassifier | CellClassifier) on an actor pool (one GPU each with --gpu)
          -> map_batches(PredictionWriter)           predictions shards + one small row per image
          -> driver: per-patient counts, a few overlays and blast crops; nothing per cell is kept.

SLIDES, --model and --out may be local paths or URIs (s3://, gs://, file://); every file is read
and written through pipeline.locations.
"""

from __future__ import annotations

import heapq
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from jobs.progress import ProgressLine
from jobs.runtime import ClusterTooSmallError, check_fits, cluster_cpus_gpus, run_record, start_ray
from pipeline import schema
from pipeline.checkpoint import META_FILE, CheckpointError, load_checkpoint
from pipeline.classify import meta_value
from pipeline.config import CropSettings, InferConfig
from pipeline.locations import (
    absolute,
    is_dir,
    is_file,
    join_uri,
    list_names,
    make_dir,
    read_bytes,
    read_json,
    resolve,  # fmt: skip
    write_json,
)
from pipeline.redact import REDACTED, redact_text

OVERLAYS_PER_PATIENT = 3
GALLERY_PER_PATIENT = 24
GALLERY_PER_CLASS = 16  # crops per predicted class in the report's class strips, most confident first
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


def default_classifiers(
    cpus: float, gpus: float, gpu: bool, from_cells: bool, reserve: float, shards: int | None = None
) -> int:
    """Classifier actors when --workers is not given: one per GPU with --gpu; on CPUs, as many as
    the cores left beside I/O on crops that are already cut (no more than their `shards`: an actor
    without a shard to read would idle), and about one per 8 cores on slides, where detection
    (~0.3 s a smear) costs far more than labelling its few cells (~10 ms each)."""
    if gpu:
        return max(1, int(gpus))
    if from_cells:
        return max(1, min(round(cpus - reserve), shards if shards is not None else math.inf))
    return max(1, int(cpus // 8))


def check_slides(slides: str) -> None:
    """Refuse, in one line, a SLIDES that is a run, a checkpoint or a report (a missing one is refused by
    discovery): a run's curves.png would otherwise be counted as a smear."""
    from pipeline.folders import FolderKind, require_kind

    require_kind("SLIDES", absolute(slides), (FolderKind.OTHER, FolderKind.INGEST_OUTPUT, FolderKind.MISSING), "slides")


def _is_ingest_output(location: str) -> bool:
    return is_dir(join_uri(location, schema.IMAGES_DIR)) and is_dir(join_uri(location, schema.CELLS_DIR))


def run_infer(
    config: InferConfig | str,
    model: str | None = None,
    out: str | None = None,
    *,
    address: str | None = None,
    verbose: bool = False,
    quiet: bool = False,
    **settings,
) -> dict:
    """Run inference; returns the run summary (also written to OUT/summary.json).

    config: the InferConfig, or (as before it existed) SLIDES with `model`, `out` and any other
    InferConfig field as keywords (fmt= for format).
    """
    import ray

    from pipeline.classify import model_classes
    from pipeline.lock import claim_empty_output
    from pipeline.predictions import PredictionWriter
    from pipeline.report import CountAccumulator
    from pipeline.store import images_identity, ledger_identity

    if not isinstance(config, InferConfig):
        if "fmt" in settings:
            settings["format"] = settings.pop("fmt")
        config = InferConfig(slides=config, model=model, out=out, **settings)
    check_slides(config.slides)
    ckpt = find_model(config.model)
    _, meta = load_checkpoint(ckpt)  # refuses a damaged or mismatched checkpoint before any work
    crop_settings = model_crop_settings(ckpt, meta)
    classes = model_classes(meta)
    out_dir = absolute(config.out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    _out_lock = claim_empty_output(out_dir, "infer")  # one writer per report folder, held until the run ends
    src = absolute(config.slides)
    source = (
        CellsSource.open(src, ckpt, crop_settings)
        if _is_ingest_output(src)
        else SlidesSource.open(src, config, crop_settings)
    )
    from_cells = isinstance(source, CellsSource)

    startup_s = start_ray(address, verbose)
    cpus, gpus = cluster_cpus_gpus()
    reserve = LIGHT_TASK_CPUS * 2 + (0.0 if from_cells else 1.0)  # detection needs a whole core
    n_actors = config.workers or default_classifiers(
        cpus, gpus, config.gpu, from_cells, reserve, shards=len(source.files) if from_cells else None
    )
    actor_cpus = 1.0 if config.gpu else min(1.0, (cpus - reserve) / n_actors)
    if actor_cpus < 0.25:
        raise ClusterTooSmallError(
            f"allray infer asks for {n_actors} classifier worker(s) beside {reserve:g} CPU for detection and I/O, "
            f"but the cluster has {cpus:g} CPUs: use --workers {max(1, int((cpus - reserve) / 0.5))} or a bigger cluster"
        )
    check_fits(n_actors, actor_cpus, 1.0 if config.gpu else 0.0, reserve, "allray infer")

    run_id = datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    make_dir(out_dir)
    started = time.perf_counter()
    classify = ClassifyStage(
        kwargs={
            "checkpoint_dir": ckpt,
            "device": "cuda" if config.gpu else "cpu",
            "threshold": config.threshold,
            "threads": max(1, int(actor_cpus)),
        },
        pool=ray.data.ActorPoolStrategy(size=n_actors),
        cpus=actor_cpus,
        gpus=1 if config.gpu else 0,
    )
    ds, total = source.build(classify, config, cpus, reserve)
    # The one writer lives on the driver's node and holds no CPU: lost with a worker node, it would be
    # restarted and rewrite shards; holding a share, the pools it joins no longer fit what is left.
    ds = ds.map_batches(
        PredictionWriter,
        fn_constructor_kwargs={"out": out_dir, "run_id": run_id},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0,
        label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},
        batch_format="pyarrow" if from_cells else "numpy",
    )

    acc = CountAccumulator(blast_alert_pct=config.blast_alert, min_cells=config.min_cells, classes=classes)
    quarantine: list[dict] = source.known_images(acc)
    inputs: list[tuple[str, str | None]] = []  # (image, content sha256) of every slide image read
    gallery: dict[str, list] = {}
    class_gallery: dict[str, list] = {}
    overlay_pick: dict[str, dict[str, int]] = {}  # patient -> image -> blasts called (one int per image)
    n_cells = n_images = 0
    progress = None if quiet else ProgressLine("infer", total, unit="images" if not from_cells else "cells")
    first_s = first_cells = None  # when the first labelled cells came back: start-up (model loads) is over
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if first_s is None:
            first_s = time.perf_counter() - started
        for row in batch.to_pylist():
            p, s, im = row[schema.PATIENT_ID], row[schema.SAMPLE_ID], row[schema.IMAGE]
            if not from_cells:
                inputs.append((im, row[schema.SOURCE_SHA256]))
            if row[schema.STATUS] == schema.STATUS_QUARANTINED:
                quarantine.append({schema.IMAGE: im, schema.REASON: row[schema.REASON]})
                n_images += 1
                continue
            if row[schema.STATUS] == schema.STATUS_INGESTED:
                acc.add_image(p, s, im)
                n_images += 1
            acc.add_cells(p, s, im, row["predicted"], row["kinds"], row["classes"])
            n_cells += row[schema.N_CELLS]
            key = p or "(unknown)"
            for crop, prob in zip(row["blast_crops"], row["blast_probs"]):
                _push(gallery.setdefault(key, []), (prob, crop, im), GALLERY_PER_PATIENT)
            for crop, name, prob in zip(row["class_crops"], row["class_picks"], row["class_probs"]):
                _push(class_gallery.setdefault(name, []), (prob, crop, f"{key}: {im}"), GALLERY_PER_CLASS)
            blasts_in_image = overlay_pick.setdefault(key, {})
            blasts_in_image[im] = blasts_in_image.get(im, 0) + sum(row["predicted"])
        if first_cells is None:
            first_cells = n_cells  # the rate after the first result counts only the cells after it
        if progress:
            progress.update(n_cells if from_cells else n_images, f"{n_cells} cells" if not from_cells else "")
    if progress:
        progress.close()
    seconds = time.perf_counter() - started
    if not from_cells and n_images != len(source.tasks):  # every slide image is reported exactly once
        raise RuntimeError(
            f"infer accounted for {n_images} of {len(source.tasks)} images: this is a bug, please report it"
        )
    model_id = _model_id(ckpt, meta)
    resolved = {**config.to_dict(), "slides": src, "model": ckpt, "out": out_dir, "workers": n_actors,
                "manifest": absolute(config.manifest) if config.manifest else None}  # fmt: skip
    identities = {"model_id": model_id, "model_data_id": meta_value(meta, "data_id"), "input": src,
                  "input_data_id": ledger_identity(src) if from_cells else images_identity(inputs)}  # fmt: skip
    galleries = {"blasts": gallery, "classes": class_gallery}
    return _write_outputs(out_dir, acc, galleries, overlay_pick, source.image_paths, quarantine, {
        "model": ckpt, "model_id": model_id, "arch": meta_value(meta, "arch"), "classes": ", ".join(classes),
        "threshold": config.threshold, "blast_alert_pct": config.blast_alert, "min_cells": config.min_cells,
        "slides": src, "input": "ingest output (no detection)" if from_cells else "slides",
        "n_images": len(source.image_paths) or n_images,
        "n_quarantined": len(quarantine), "elapsed_s": round(seconds, 2),
        "cells_per_s": round(n_cells / seconds, 1) if seconds > 0 else None, "ray_startup_seconds": round(startup_s, 2),
        "first_result_s": round(first_s, 2) if first_s is not None else None,
        "cells_per_s_after_first_result": round((n_cells - first_cells) / (seconds - first_s), 1)
        if first_s is not None and seconds > first_s and n_cells > first_cells else None,
        "workers": n_actors, "gpu": config.gpu, "run_id": run_id, "command": " ".join(sys.argv),
        **getattr(source, "facts", {}),
    }, run_record(resolved, identities))  # fmt: skip


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


def _push(heap: list, item: tuple, k: int) -> None:
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _model_id(ckpt: str, meta: dict) -> str:
    from pipeline.classify import model_identity

    return model_identity(ckpt, meta)


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


def _write_outputs(out_dir: str, acc, galleries: dict, overlay_pick: dict, image_paths: dict, quarantine: list,
                   info: dict, record: dict) -> dict:  # fmt: skip
    import pyarrow.dataset as pads

    from pipeline.io import decode_image
    from pipeline.report import format_terminal_summary, write_count_tables
    from pipeline.report_html import draw_overlay, write_html_report

    patients, samples = acc.patients(), acc.samples()
    write_count_tables(out_dir, patients, samples, info, classes=acc.classes)
    # The images with the most blasts called are the ones a reviewer should see first.
    chosen = {p: heapq.nlargest(OVERLAYS_PER_PATIENT, ((n, im) for im, n in images.items()))
              for p, images in overlay_pick.items()}  # fmt: skip
    picks = {im for items in chosen.values() for _, im in items}
    overlays: dict[str, list] = {}
    pred_dir = join_uri(out_dir, schema.PREDICTIONS_DIR)
    if picks and is_dir(pred_dir):
        cols = [schema.IMAGE, schema.BBOX_X0, schema.BBOX_Y0, schema.BBOX_X1, schema.BBOX_Y1, schema.PREDICTED,
                schema.BLAST_PROB, schema.KIND]  # fmt: skip
        fs, pred_path = resolve(pred_dir)
        table = pads.dataset(pred_path, filesystem=fs, format="parquet").to_table(
            columns=cols, filter=pads.field(schema.IMAGE).isin(sorted(picks))
        )
        by_image: dict[str, list] = {}
        for row in table.to_pylist():
            by_image.setdefault(row[schema.IMAGE], []).append(row)
        for patient, items in chosen.items():
            for n_blasts, im in items:
                path = image_paths.get(im)
                if path is None:
                    continue
                try:
                    pixels = decode_image(read_bytes(path)).pixels
                except (OSError, ValueError):
                    continue
                caption = f"{im}: {len(by_image.get(im, []))} cells, {n_blasts} called blasts"
                overlays.setdefault(patient, []).append((caption, draw_overlay(pixels, by_image.get(im, []))))
    gallery_items, class_items = (
        {
            k: [(crop, prob, im) for prob, crop, im in sorted(items, reverse=True)]
            for k, items in galleries[name].items()
        }
        for name in ("blasts", "classes")
    )
    write_html_report(
        out_dir, patients, overlays, gallery_items, quarantine, info, class_gallery=class_items, classes=acc.classes
    )
    summary = {**info, "patients": len(patients), "n_blasts": sum(p["n_blasts"] for p in patients),
               "flags": {f: sum(p["flag"] == f for p in patients) for f in {p["flag"] for p in patients}},
               "report": join_uri(out_dir, "report.html"), "quarantined": quarantine, "run": record}  # fmt: skip
    write_json(out_dir, "summary.json", summary)
    summary["terminal"] = format_terminal_summary(patients, info)
    return summary


if __name__ == "__main__":  # `python -m jobs.infer ...` under `ray job submit`
    from jobs.cli import main

    main(["infer", *sys.argv[1:]])
