"""`allray train`: Ray Train (TorchTrainer, DDP) over the crops of `allray ingest`.

The recipe: the driver reads the small cell index (no crops), splits it by patient, checks that the
workers fit the cluster, then per architecture (and fold) runs a TorchTrainer whose workers stream
their shard of the crops from Parquet through Ray Data and call the plain-torch `train_one_epoch`
and `evaluate` of pipeline/training.py. Rank 0 reports each epoch's metrics with a checkpoint; a
queue carries the metrics to the driver, which prints progress and appends metrics.jsonl.

CELLS and RUN may be local paths or URIs (s3://, gs://, file://): Ray Train stores its checkpoints
through the filesystem `resolve` gives for RUN, and allray's own files there go through
pipeline.locations.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from jobs.runtime import ClusterTooSmallError, check_fits, run_record, start_ray
from jobs.train_worker import train_worker
from pipeline import schema
from pipeline.cellsets import KEY, read_cell_index, select_cells, shard_groups
from pipeline.config import TrainConfig
from pipeline.locations import (
    absolute,
    is_file,
    join_uri,
    list_names,
    read_text,
    remove_dir,
    resolve,
    upload_dir,
    write_json,  # fmt: skip
    write_text,
)
from pipeline.taxonomy import BINARY_CLASSES as BINARY

# CPU left free beside the training workers for the Ray Data tasks that read and filter their
# crops: without it two 1-CPU workers on a 2-CPU machine starve their own input and hang.
DATA_CPUS = 0.5
READ_TASK_CPUS = 0.25
# `--cache auto` keeps the selected crops in the object store when they take at most this share of
# its free memory: each epoch then starts at once instead of re-reading and re-filtering every shard
# (measured: 1-4 s per epoch and side before the first batch on 2 cores).
CACHE_SHARE = 0.25
# When what is left of the cluster cannot hold the workers (a node was lost), Ray Train waits
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (default 60 s) for them to be placed, then retries, by default
# forever (FailureConfig.controller_failure_limit=-1): give up after ALLRAY_TRAIN_START_RETRIES retries.
# Restarts after node preemptions (a drained or SIGTERM'd node) are counted apart from max_failures and
# are unlimited by default, so a failure that recurs because of a lost node would loop forever:
# ALLRAY_TRAIN_PREEMPTION_RETRIES bounds them (-1: unlimited).
START_RETRIES_ENV, START_RETRIES = "ALLRAY_TRAIN_START_RETRIES", 2
PREEMPTION_RETRIES_ENV, PREEMPTION_RETRIES = "ALLRAY_TRAIN_PREEMPTION_RETRIES", 10
METRIC_KEYS = ("arch", "fold", "epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_sensitivity",
               "val_specificity", "val_auc", "val_balanced_acc", "val_macro_f1", "val_per_class", "seconds",
               "samples_per_s", "threads")  # fmt: skip
# Averaged over folds (mean and sd) in a cross-validated run's summary.
FOLD_KEYS = ("val_acc", "val_sensitivity", "val_specificity", "val_auc", "val_balanced_acc", "val_macro_f1")


def default_run_dir() -> str:
    return str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def resolve_cpus_per_worker(config: TrainConfig, cluster_cpus: float) -> float:
    """CPUs per worker: as asked, or up to 1 each while leaving DATA_CPUS for data loading."""
    if config.cpus_per_worker is not None:
        return config.cpus_per_worker
    share = (cluster_cpus - DATA_CPUS) / config.workers
    # Below half a CPU a worker is pointless: report that the ask does not fit.
    return min(1.0, share) if share >= 0.5 else 1.0


def check_train_folders(config: TrainConfig) -> None:
    """Refuse, in one line, CELLS that are not ingest outputs (slides, a run, a report) and an --out that is
    another kind of allray folder (an ingest output, a report), before anything is read or started."""
    from pipeline.folders import FolderKind, require_kind

    for cells in config.cells:  # a missing folder gets the "holds no cells: run `allray ingest`" line
        require_kind("CELLS", absolute(cells), (FolderKind.INGEST_OUTPUT, FolderKind.MISSING), "cells")
    if config.out:
        require_kind("--out", absolute(config.out), (FolderKind.MISSING, FolderKind.OTHER, FolderKind.RUN), "train_out")


def run_train(config: TrainConfig, address: str | None = None, verbose: bool = False, quiet: bool = False) -> dict:
    """Train every architecture of `config`; returns the run summary (also RUN/summary.json)."""
    import numpy as np
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.checkpoint import CheckpointMeta
    from pipeline.config import parse_classes
    from pipeline.models import default_image_size, default_lr, resolve_name
    from pipeline.multiclass import resolve_model_classes, training_targets
    from pipeline.splits import cell_groups, kfold_groups, split_cells
    from pipeline.training import MEAN, STD

    check_train_folders(config)
    run_dir = absolute(config.out or default_run_dir())
    if list_names(run_dir) and not config.resume:
        raise ValueError(f"run folder {run_dir} already holds a run: pass --resume to continue it, or a new --out")
    if config.resume and not is_file(join_uri(run_dir, "config.json")):
        raise ValueError(f"--resume: {run_dir} holds no run to resume (no config.json)")
    cells = [absolute(c) for c in config.cells]
    index = read_cell_index(cells)
    table = index.table
    cell_classes = table.column(schema.CELL_CLASS).to_pylist()
    class_names = resolve_model_classes(parse_classes(config.classes), cell_classes)
    targets, usable = training_targets(cell_classes, class_names)
    n_unfit = int((~usable).sum())
    table, targets = table.filter(pa.array(usable)), targets[usable]
    cell_classes = [c for c, u in zip(cell_classes, usable) if u]
    # Strata of the split: the binary label, or the cell's class label (a coarse label its own stratum).
    labels = targets if class_names == BINARY else np.unique(cell_classes, return_inverse=True)[1].astype(np.int64)
    if table.num_rows == 0 or len(np.unique(labels)) < 2:
        raise ValueError(
            f"need labelled cells of at least two classes to train ({', '.join(class_names)}); found "
            f"{table.num_rows} usable labelled cells ({int((targets == 1).sum()) if class_names == BINARY else '-'} "
            f"blasts, {n_unfit} fitting none of the classes) in {', '.join(cells)}: ingest with --labels, or an "
            "ALL-IDB layout, or class folders"
        )
    patients = table.column(schema.PATIENT_ID).to_pylist()
    images = table.column(schema.IMAGE).to_pylist()
    keys = np.asarray(table.column(KEY).to_pylist(), dtype=object)
    contents = table.column(schema.SOURCE_SHA256).to_pylist()  # copies of one image stay on one side
    base_split = split_cells(patients, images, labels, config.split, config.val_fraction, config.seed, contents)
    folds = [(base_split.train_idx, base_split.val_idx)]
    if config.folds > 1:
        groups, _, _ = cell_groups(patients, images, config.split, contents)
        folds = kfold_groups(groups, labels, config.folds, config.seed)

    startup_s = start_ray(address, verbose)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    cpus_per_worker = resolve_cpus_per_worker(config, cluster_cpus)
    check_fits(config.workers, cpus_per_worker, 1.0 if config.gpu else 0.0, DATA_CPUS, "allray train")

    resolved = {**config.to_dict(), "cells": cells, "out": run_dir, "resolved_out": run_dir,
                "cpus_per_worker_resolved": cpus_per_worker, "cluster_cpus": cluster_cpus}  # fmt: skip
    write_json(run_dir, "config.json", {**resolved, "command": " ".join(sys.argv)})
    split_record = {**base_split.summary(), "train_groups": list(base_split.train_groups),
                    "val_groups": list(base_split.val_groups), "folds": config.folds}  # fmt: skip
    write_json(run_dir, "split.json", split_record)

    metrics_path = join_uri(run_dir, "metrics.jsonl")
    all_metrics = [json.loads(line) for line in read_text(metrics_path).splitlines()] if is_file(metrics_path) else []
    results: dict[str, dict] = {}
    # On the driver's node: placed anywhere, it may die with a lost worker node, and every restarted
    # worker then fails on its first put (seen: an endless restart loop on 2 nodes).
    queue = Queue(
        actor_options={
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        }
    )
    crop_bytes = index.crop_bytes_per_cell * keys.size  # train and val sides together
    cache = _should_cache(config.cache, crop_bytes)
    for arch in config.archs():
        fold_results = []
        for fold, (train_idx, val_idx) in enumerate(folds):
            name = arch if len(folds) == 1 else f"{arch}-fold{fold}"
            model_name = resolve_name(arch)
            meta = CheckpointMeta(
                arch=arch, model_name=model_name, image_size=config.image_size or default_image_size(model_name),
                mean=MEAN, std=STD, crop_settings=index.crop_settings, class_names=class_names,
                data_id=index.data_id, fold=fold, cells=tuple(cells), split={**base_split.summary(), "fold": fold,
                "n_train": int(train_idx.size), "n_val": int(val_idx.size)},
            )  # fmt: skip
            lr = config.lr if config.lr is not None else default_lr(model_name, meta.n_outputs)
            loop_config = {
                "arch": arch, "fold": fold, "epochs": config.epochs, "batch_size": config.batch_size,
                "lr": lr, "seed": config.seed, "weights": config.weights, "image_size": config.image_size,
                # --cpus-per-worker C: round(C) torch threads; else each worker takes its share of
                # its node (train_worker.choose_threads).
                "threads": max(1, round(config.cpus_per_worker)) if config.cpus_per_worker is not None else None,
                "spare_cpus": DATA_CPUS, "meta": meta, "queue": queue,
            }  # fmt: skip
            if not quiet:
                how = "kept in Ray's object store" if cache else "streamed from Parquet every epoch"
                print(
                    f"train {name}: {train_idx.size} train / {val_idx.size} val cells, "
                    f"{crop_bytes / 2**20:.0f} MiB of crops {how}",
                    file=sys.stderr,
                )
            datasets = _datasets(index.files, _targets_of(keys, targets, train_idx),
                                 _targets_of(keys, targets, val_idx), cache, config.seed)  # fmt: skip
            printer = _MetricPrinter(queue, metrics_path, all_metrics, quiet)
            printer.start()
            try:
                result = _fit(name, run_dir, loop_config, datasets, config, cpus_per_worker)
            finally:
                printer.stop()
            fold_results.append(_best_of(result, join_uri(run_dir, name), all_metrics, arch, fold))
        results[arch] = {**_combine_folds(fold_results), "lr": lr}  # the Adam learning rate used
    summary = {
        "archs": results, "split": base_split.summary(), "folds": config.folds, "data_id": index.data_id,
        "n_cells_trainable": table.num_rows, "n_cells_unlabelled": index.n_unlabelled,
        "n_cells_smudge_excluded": index.n_smudge, "n_cells_unfit_classes": n_unfit, "class_names": list(class_names),
        "classes_option": config.classes, "workers": config.workers, "gpu": config.gpu,
        "cpus_per_worker": cpus_per_worker, "ray_startup_seconds": round(startup_s, 2), "run_dir": run_dir,
        "crops_cached": cache,
    }  # fmt: skip
    summary["run"] = run_record(resolved, {"data_id": index.data_id, "cells": cells})
    write_json(run_dir, "summary.json", summary)
    from pipeline.plots import plot_curves

    plot_curves(all_metrics, {a: r.get("confusion") for a, r in results.items()}, join_uri(run_dir, "curves.png"),
                class_names=class_names)  # fmt: skip
    return summary


def _targets_of(keys, targets, idx) -> dict[str, int]:
    """{cell key: training target} of the cells at `idx` (what select_cells keeps and labels)."""
    return {str(k): int(t) for k, t in zip(keys[idx], targets[idx])}


def _should_cache(mode: str, crop_bytes: float) -> bool:
    """Whether to keep the crops in Ray's object store across epochs (see CACHE_SHARE)."""
    if mode != "auto":
        return mode == "yes"
    import ray

    return crop_bytes <= CACHE_SHARE * ray.available_resources().get("object_store_memory", 0)


def _datasets(
    files: list[str], train_keys: dict[str, int], val_keys: dict[str, int], cache: bool, seed: int = 0
) -> dict:
    """The train and val Datasets of {crop, label} rows; materialized once when `cache`.

    Each training block is a random group of shards, its rows shuffled (pipeline.cellsets.shard_groups
    says why); every epoch reorders the blocks and each worker mixes them in its shuffle buffer.
    Validation reads a shard a block, in file order.
    """
    import ray

    from pipeline.store import PATH_COLUMN

    def side(groups: list[list[str]], keys: dict[str, int], shuffle_seed: int | None):
        # Tasks, not actors: a task frees its CPU share when done, an actor would hold it for good
        # and starve the reads (seen hanging on 2 cores). One block per group, read as one batch.
        paths = [{PATH_COLUMN: f} for group in groups for f in group]
        ds = ray.data.from_items(paths, override_num_blocks=max(1, len(groups)))
        ds = ds.map_batches(
            select_cells, fn_kwargs={"targets": keys, "shuffle_seed": shuffle_seed}, batch_size=None,
            num_cpus=READ_TASK_CPUS, batch_format="numpy",
        )  # fmt: skip
        # Cached blocks are owned by this driver: one lost with a node is rebuilt from its lineage.
        return ds.materialize() if cache else ds

    rows_per_file = (len(train_keys) + len(val_keys)) / max(1, len(files))
    train = side(shard_groups(files, rows_per_file, seed), train_keys, seed)
    # Blocks in another order every epoch, the same orders for the same seed (unseeded, Ray picks
    # an order at random and a seeded run would not repeat once the cells fill several blocks).
    order = ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    return {"train": train.randomize_block_order(seed=order), "val": side([[f] for f in files], val_keys, None)}


def _ingest_options():
    """Ray Data's options for the workers' reads, in order: without it the same seed gave other
    batches in 2 of 3 runs (blocks came in another order, a partial batch mid-epoch), so a run's
    --seed did not reproduce it."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _fit(name: str, run_dir: str, loop_config: dict, datasets: dict, config: TrainConfig, cpus_per_worker: float):
    from ray.train import CheckpointConfig, ControllerError, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_retries = int(os.environ.get(START_RETRIES_ENV, START_RETRIES))
    storage_fs, storage_path = resolve(run_dir)  # Ray Train writes checkpoints to RUN/<name>/ through this
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if config.gpu else {})},
        ),  # fmt: skip
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(
                max_failures=config.max_failures,
                controller_failure_limit=start_retries,
                max_preemption_failures=int(os.environ.get(PREEMPTION_RETRIES_ENV, PREEMPTION_RETRIES)),
            ),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_score", checkpoint_score_order="max"
            ),
        ),
        datasets=datasets,
        # Validation is not split: rank 0 scores the whole validation side each epoch.
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=_ingest_options()),
    )
    try:
        return trainer.fit()
    except ControllerError as err:
        if type(err.controller_failure).__name__ != "WorkerGroupStartupTimeoutError":
            raise
        wait_s = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60"))  # Ray Train v2's default
        raise ClusterTooSmallError(
            f"allray train {name}: the cluster cannot place {config.workers} worker(s) x {cpus_per_worker:g} CPU "
            f"(a node lost, or its CPUs taken): gave up after {start_retries + 1} tries of {wait_s:g} s; add nodes "
            f"and continue with --resume --out {run_dir} (it starts from the last checkpoint)"
        ) from None


def _best_of(result, arch_dir: str, all_metrics: list[dict], arch: str, fold: int) -> dict:
    """Copy the best checkpoint to arch_dir/best and return its metrics and the final epoch's."""
    from pipeline.checkpoint import OPTIMIZER_FILE, read_meta

    if result.error is not None:
        raise RuntimeError(f"training {arch} failed: {result.error}")
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_score", -1.0))
    checkpoint, best_metrics = best
    best_dir = join_uri(arch_dir, "best")
    remove_dir(best_dir)
    with checkpoint.as_directory() as d:  # a local copy when the checkpoint lives on remote storage
        upload_dir(d, best_dir, skip=(OPTIMIZER_FILE,))
        meta = read_meta(d)
    rows = [m for m in all_metrics if m["arch"] == arch and m.get("fold", 0) == fold]
    final = max(rows, key=lambda m: m["epoch"]) if rows else {}
    return {
        "best_epoch": best_metrics.get("epoch"), "best": {k: best_metrics.get(k) for k in METRIC_KEYS[3:]},
        "final": {k: final.get(k) for k in METRIC_KEYS[2:]}, "checkpoint": best_dir,
        "params": meta.params, "confusion": meta.confusion, "class_names": list(meta.class_names),
        "seconds": round(sum(m.get("seconds") or 0 for m in rows), 1),
    }  # fmt: skip


def _combine_folds(fold_results: list[dict]) -> dict:
    if len(fold_results) == 1:
        return fold_results[0]
    import statistics

    out = {"folds": fold_results, "params": fold_results[0]["params"], "confusion": fold_results[0]["confusion"],
           "class_names": fold_results[0].get("class_names")}  # fmt: skip
    for key in FOLD_KEYS:
        values = [f["best"][key] for f in fold_results if f["best"].get(key) is not None]
        out[f"{key}_mean"] = statistics.fmean(values) if values else None
        out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    out["seconds"] = sum(f["seconds"] for f in fold_results)
    return out


class _MetricPrinter:
    """Drains the workers' metric queue on a thread: prints progress, appends metrics.jsonl.

    The file is rewritten whole with every row (a few hundred lines at most): object stores such as
    S3 cannot append.
    """

    def __init__(self, queue, path: str, sink: list[dict], quiet: bool):
        self.queue, self.path, self.sink, self.quiet = queue, path, sink, quiet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._drain(block=False)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(block=True)

    def _drain(self, block: bool) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                m = self.queue.get(block=block, timeout=0.5) if block else self.queue.get_nowait()
            except Empty:
                return
            except Exception:  # noqa: BLE001 - the queue actor is gone at shutdown
                return
            row = {k: m.get(k) for k in METRIC_KEYS} | {k: v for k, v in m.items() if k in ("resumed_from",)}
            self.sink.append(row)
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.sink))
            if not self.quiet:
                print(_progress_line(row), file=sys.stderr, flush=True)


def _fmt(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "  -  "
    return f"{100 * v:5.1f}%" if pct else f"{v:.3f}"


def _progress_line(m: dict) -> str:
    fold = f" fold {m['fold']}" if m.get("fold") else ""
    return (
        f"train {m['arch']}{fold} epoch {m['epoch'] + 1}: loss {_fmt(m['train_loss'])}/{_fmt(m['val_loss'])} "
        f"acc {_fmt(m['train_acc'], True)}/{_fmt(m['val_acc'], True)} (train/val) "
        f"macro F1 {_fmt(m.get('val_macro_f1'))} AUC {_fmt(m['val_auc'])}  {m['samples_per_s']:.0f} samples/s  "
        f"{m['seconds']:.1f} s"
    )


def comparison_table(summary: dict) -> str:
    """The study's result as a terminal table: arch, params, best val acc, macro F1, blast sens, spec, AUC, time."""
    lines = [f"{'arch':<8} {'params':>10} {'best ep':>7} {'val acc':>10} {'macro F1':>11} {'sens':>7} {'spec':>7} "
             f"{'AUC':>6} {'time':>7}"]  # fmt: skip
    for arch, r in summary["archs"].items():
        if "folds" in r:
            acc = f"{100 * (r['val_acc_mean'] or 0):.1f}±{100 * (r['val_acc_sd'] or 0):.1f}"
            f1 = (
                "  -  "
                if r.get("val_macro_f1_mean") is None
                else f"{r['val_macro_f1_mean']:.3f}±{r.get('val_macro_f1_sd') or 0:.3f}"
            )
            lines.append(f"{arch:<8} {r['params'] or 0:>10,} {'-':>7} {acc:>10} {f1:>11} "
                         f"{_fmt(r['val_sensitivity_mean'], True):>7} {_fmt(r['val_specificity_mean'], True):>7} "
                         f"{_fmt(r['val_auc_mean']):>6} {r['seconds']:>6.0f}s")  # fmt: skip
            continue
        b = r["best"]
        lines.append(
            f"{arch:<8} {r['params'] or 0:>10,} {(r['best_epoch'] or 0) + 1:>7} {_fmt(b['val_acc'], True):>10} "
            f"{_fmt(b.get('val_macro_f1')):>11} {_fmt(b['val_sensitivity'], True):>7} "
            f"{_fmt(b['val_specificity'], True):>7} {_fmt(b['val_auc']):>6} {r['seconds']:>6.0f}s"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m jobs.train ...` under `ray job submit`
    from jobs.cli import main

    main(["train", *sys.argv[1:]])
