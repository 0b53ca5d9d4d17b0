"""`allray ingest`: Ray Data reads smear images, finds white cells, cuts crops, writes Parquet shards.

The recipe: discover images (driver) -> Dataset of tasks -> map_batches(IngestStage) on an actor
pool, each batch committed as one shard by the stage itself -> stream the per-image status rows
back for progress and the summary. Run under a cluster with
`ray job submit --working-dir . -- python -m jobs.ingest SRC --out DIR`.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from jobs.progress import ProgressLine
from jobs.runtime import ClusterTooSmallError, run_record, start_ray
from pipeline import schema
from pipeline.config import IngestConfig
from pipeline.geometry import NEW, REBUILD, check_geometry, write_geometry
from pipeline.ingest import TASK_COLUMN, IngestStage, apply_pooled_scale
from pipeline.locations import absolute, write_json
from pipeline.lock import lock_output
from pipeline.sources import discover_images
from pipeline.store import (
    clear_output,
    compact,
    drop_duplicate_commits,
    duplicate_content,
    ledger_identity,
    note_duplicate_content,
    open_output,
)

DEFAULT_WORKER_MEMORY = 4 * 2**30  # bytes per ingest worker: images of up to ~170 MP (8-bit) fit


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_ingest(config: IngestConfig, address: str | None = None, verbose: bool = False, quiet: bool = False) -> dict:
    """Ingest config.src into config.out; returns the summary (also written to out/summary.json).

    SRC, OUT and the CSVs may be local paths or URIs (s3://, gs://, file://). The output's lock is
    held from before any check to the end (one writer per output folder, pipeline/lock.py)."""
    check_ingest_folders(config)
    with lock_output(absolute(config.out), "ingest"):
        return _run_ingest_locked(config, address, verbose, quiet)


def _run_ingest_locked(config: IngestConfig, address: str | None, verbose: bool, quiet: bool) -> dict:
    import ray

    geometry = check_geometry(config.out, config.crops, config.rebuild)  # before any work
    discovery = discover_images(config.src, config.format, config.manifest, config.labels,
                                follow_links=config.follow_links, allow_unmatched=config.allow_unmatched)  # fmt: skip
    tasks, pooled_scale = apply_pooled_scale(discovery.tasks, config.crops, config.single_cell_scale,
                                             discovery.format, config.max_megapixels)  # fmt: skip
    if geometry == REBUILD:
        clear_output(config.out)
    if geometry in (NEW, REBUILD):
        write_geometry(config.out, config.crops)
    first = open_output(config.out)
    duplicates = drop_duplicate_commits(config.out)
    replaced_rows = compact(config.out)
    state = open_output(config.out)
    run_id = new_run_id()
    startup_s = start_ray(address, verbose)
    started = time.perf_counter()

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    workers = max(1, min(config.workers or cpus, cpus, len(tasks)))
    cluster_memory = resources.get("memory", 0.0)  # what Ray schedules tasks' `memory` against
    memory = _worker_memory(config, cluster_memory, workers)
    if cluster_memory and memory * workers > cluster_memory:
        workers = int(cluster_memory // memory)
        if workers < 1:
            raise ClusterTooSmallError(
                f"allray ingest asks for {memory / 2**30:.1f} GiB per worker but the cluster has "
                f"{cluster_memory / 2**30:.1f} GiB for tasks: lower --worker-memory-gb"
            )
    # Enough shards that every worker gets several (load balance), never more than the configured size.
    per_shard = max(1, min(config.images_per_shard, math.ceil(len(tasks) / (4 * workers))))
    n_blocks = math.ceil(len(tasks) / per_shard)
    items = [{TASK_COLUMN: t.to_json()} for t in tasks]
    stage_args = {"settings_json": config.crops.to_json(), "out": absolute(config.out), "run_id": run_id,
                  "known": state.known, "versions": state.versions, "max_megapixels": config.max_megapixels,
                  "memory_bytes": memory}  # fmt: skip
    # A fixed pool of actors, each importing the detector once: an autoscaling pool starts with one
    # actor and grows only once a queue has built up, leaving cores idle at the start.
    ds = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        IngestStage,
        fn_constructor_kwargs=stage_args,
        batch_size=per_shard,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        memory=memory if cluster_memory else None,
        batch_format="numpy",
    )

    counts: Counter = Counter()
    reasons: list[dict] = []
    progress = None if quiet else ProgressLine("ingest", len(tasks))
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        for row in rows:
            status = row[schema.STATUS]
            counts[status] += 1
            counts["cells"] += row[schema.N_CELLS]
            counts["labelled"] += row["n_labelled"]
            counts["smudge"] += row["n_smudge"]
            if status == schema.STATUS_INGESTED and row[schema.N_CELLS] == 0:
                counts["without_cells"] += 1
            counts["replaced"] += bool(row["replaced"])
            if status == schema.STATUS_QUARANTINED:
                reasons.append({schema.IMAGE: row[schema.IMAGE], schema.REASON: row[schema.REASON]})
        if progress:
            progress.update(sum(counts[s] for s in schema.STATUSES), f"{counts['cells']} cells")
    if progress:
        progress.close()
    seconds = time.perf_counter() - started
    # A node lost mid-run can leave a batch's uncommitted files (orphans), or, when Ray re-ran a
    # batch that had committed, its images committed twice: clean both up now, not at the next run.
    orphans = first.orphans_removed + state.orphans_removed + open_output(config.out).orphans_removed
    duplicates += drop_duplicate_commits(config.out)
    replaced_rows += compact(config.out)  # the replaced versions leave the files: readers may take them whole
    same_content = duplicate_content(config.out)
    note_duplicate_content(config.out, same_content)

    seen = len(tasks)
    handled = sum(counts[s] for s in schema.STATUSES)
    if handled != seen:  # every image must come back exactly once; anything else is a bug
        raise RuntimeError(f"ingest accounted for {handled} of {seen} images: this is a bug, please report it")
    summary = {
        "images_seen": seen,
        "images_ingested": counts[schema.STATUS_INGESTED],
        "images_skipped": counts[schema.STATUS_SKIPPED],
        "images_quarantined": counts[schema.STATUS_QUARANTINED],
        "images_replaced": counts["replaced"],
        "images_without_cells": counts["without_cells"],
        "cells_written": counts["cells"],
        "seconds": round(seconds, 3),
        "images_per_s": round((seen - counts[schema.STATUS_SKIPPED]) / seconds, 3) if seconds > 0 else None,
        "cells_labelled": counts["labelled"],
        "cells_unlabelled": counts["cells"] - counts["labelled"],
        "cells_smudge": counts["smudge"],
        "quarantined": reasons,
        "files_ignored": len(discovery.ignored),
        "files_ignored_examples": discovery.ignored[:10],
        "links_not_followed": len(discovery.links_not_followed),
        "links_not_followed_examples": discovery.links_not_followed[:10],
        "images_with_same_content": sum(len(g) for g in same_content),
        "same_content_examples": same_content[:10],
        **discovery.row_counts,
        "rows_not_used": discovery.row_problems[:20],
        "source_format": discovery.format,
        "single_cell_scale": None if pooled_scale is None else pooled_scale.to_dict(),
        "workers": workers,
        "images_per_shard": per_shard,
        "ray_startup_seconds": round(startup_s, 3),
        "orphan_files_removed": orphans,
        "duplicate_commits_removed": duplicates,
        "replaced_versions_removed": replaced_rows,
        "rebuilt": geometry == REBUILD,
        "worker_memory_gb": round(memory / 2**30, 2),
        "run_id": run_id,
        "command": " ".join(sys.argv),
    }
    resolved = resolved_config(config)
    summary["run"] = run_record(resolved, {"source": resolved["src"], "images_seen": seen,
                                           "cells_data_id": ledger_identity(config.out)})  # fmt: skip
    write_json(config.out, schema.SUMMARY_FILE, summary)
    # One per run, beside the summary of the latest: DIR may be filled by several runs.
    write_json(config.out, f"config-{run_id}.json", {**resolved, "run": summary["run"]})
    return summary


def check_ingest_folders(config: IngestConfig) -> None:
    """Refuse, in one line, a SRC that is another allray output (an ingest output, a run, a report: its
    PNGs are not smears) and an --out that is a run, a checkpoint or a report, before any work."""
    from pipeline.folders import FolderKind, require_kind

    require_kind("SRC", absolute(config.src), (FolderKind.OTHER, FolderKind.MISSING, FolderKind.FILE), "source")
    require_kind(
        "--out", absolute(config.out), (FolderKind.OTHER, FolderKind.MISSING, FolderKind.INGEST_OUTPUT), "ingest_out"
    )


def _worker_memory(config: IngestConfig, cluster_memory: float, workers: int) -> int:
    """Bytes declared to Ray per ingest worker (and the budget each image must fit)."""
    if config.worker_memory_gb is not None:
        return int(config.worker_memory_gb * 2**30)
    fits = int(cluster_memory / max(1, workers)) if cluster_memory else DEFAULT_WORKER_MEMORY
    return max(2**28, min(DEFAULT_WORKER_MEMORY, fits))


def resolved_config(config: IngestConfig) -> dict:
    """The config with every location absolute (a URI as given), so it means the same from anywhere."""
    paths = {key: absolute(value) for key in ("src", "out", "manifest", "labels")
             if (value := getattr(config, key)) is not None}  # fmt: skip
    return {**config.to_dict(), **paths}


if __name__ == "__main__":  # `python -m jobs.ingest ...` under `ray job submit`
    from jobs.cli import main

    main(["ingest", *sys.argv[1:]])
