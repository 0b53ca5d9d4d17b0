"""`allray infer`: label the white cells of new slides and report lymphoblast counts per patient.

The recipe, streaming end to end:
    slides:  tasks -> map_batches(SlideStage)        detect + crop exactly as ingest does
    or cells: read_parquet(an ingest output)          crops already cut: no detection redone
          -> map_batches(ImageClassifier | CellClassifier) on an actor pool (one GPU each with --gpu)
          -> map_batches(PredictionWriter)           predictions shards + one small row per image
          -> driver: per-patient counts, a few overlays and blast crops; nothing per cell is kept.

SLIDES, --model and --out may be local paths or URIs (s3://, gs://, file://); every file is read
and written through pipeline.locations.

This module is the Ray wiring: cluster sizing, the pipeline and the driver's loop over its results.
What is read (the model, SlidesSource, CellsSource) is in jobs/infer_inputs.py; the report written
at the end in jobs/infer_report.py.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from jobs.infer_inputs import (
    LIGHT_TASK_CPUS,
    CellsSource,
    ClassifyStage,
    SlidesSource,
    check_slides,
    find_model,
    is_ingest_output,
    model_crop_settings,
)
from jobs.infer_report import write_outputs
from jobs.progress import ProgressLine
from jobs.runtime import ClusterTooSmallError, check_fits, cluster_cpus_gpus, run_record, start_ray
from pipeline import schema
from pipeline.checkpoint import load_checkpoint
from pipeline.classify import meta_value
from pipeline.config import InferConfig
from pipeline.locations import absolute, make_dir

GALLERY_PER_PATIENT = 24
GALLERY_PER_CLASS = 16  # crops per predicted class in the report's class strips, most confident first


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
        if is_ingest_output(src)
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
    return write_outputs(out_dir, acc, galleries, overlay_pick, source.image_paths, quarantine, {
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


def _push(heap: list, item: tuple, k: int) -> None:
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _model_id(ckpt: str, meta: dict) -> str:
    from pipeline.classify import model_identity

    return model_identity(ckpt, meta)


if __name__ == "__main__":  # `python -m jobs.infer ...` under `ray job submit`
    from jobs.cli import main

    main(["infer", *sys.argv[1:]])
