"""Fault tests of issue 5: ingest, train and infer across a 2-node Ray cluster on this one machine,
surviving the loss of the worker node.

A head (2 CPUs) and a worker node (1 CPU) are started with `ray start --block` as subprocesses,
each with its own temp dir and free ports (never Ray's defaults, never another engineer's Ray), with
`RAY_AUTH_MODE=token` for every node and for this driver. A worker node is killed by SIGTERM to its
`ray start --block` parent, which stops exactly that node (Ray first drains it for WORKER_DRAIN_S, a
preemption notice), or, for ingest, also by SIGKILL to it and every process under it (a crash).
After a kill the next test starts a fresh worker node. Each test prints what was killed, when, and
what came out (see it with `pytest -s`). Ray is left shut down at the end.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import write_truth_cells
from local_cluster import HEAD_CPUS, LocalCluster, Node, connected_cluster
from local_cluster import log as _log

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multinode]


@pytest.fixture(scope="module")
def cluster(request):
    """A head (2 CPUs) and one worker node (1 CPU); this driver connected to it, Ray shut down after."""
    with connected_cluster(request, "allray-mn-") as c:
        yield c


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """48 synthetic 800x600 smears of 4 patients: ingest and infer take ~15 s on 3 CPUs here."""
    from pipeline.synth_cohort import write_cohort

    out = tmp_path_factory.mktemp("mn-cohort")
    write_cohort(out, patients=4, images_per_patient=12, seed=11, size=(800, 600))
    return out


# ---------------------------------------------------------------------------------------- helpers


def _free_cpus() -> dict[str, float]:
    """Free CPUs per live node (Ray's internal state API: the public one needs the dashboard)."""
    from ray._private.state import available_resources_per_node

    return {node: res.get("CPU", 0.0) for node, res in available_resources_per_node().items()}


def _actors_on(node_id: str) -> list[str]:
    """Class names of the live actors on a node (Ray's internal GCS table: no dashboard needed)."""
    from ray._private.state import actors

    return sorted(a["ActorClassName"] for a in actors(actor_state_name="ALIVE").values()
                  if a["Address"]["NodeID"] == node_id)  # fmt: skip


def _cpus_line() -> str:
    return ", ".join(f"{node[:8]} {free:g} free" for node, free in sorted(_free_cpus().items()))


def _wait_for(condition, timeout_s: float, what: str, every_s: float = 0.2, cancel: threading.Event | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (cancel and cancel.is_set()):
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{'the job ended' if cancel and cancel.is_set() else f'timed out after {timeout_s:g} s'} "
                         f"while waiting for {what}")  # fmt: skip


class KillWhen:
    """A thread that kills `node` once `condition()` is true (after `before()`, if given)."""

    def __init__(self, cluster: LocalCluster, node: Node, condition, why: str, timeout_s: float = 120,
                 crash: bool = False, before=None):  # fmt: skip
        self.at: float | None = None
        self.error: BaseException | None = None
        self.job_ended = threading.Event()

        def run():
            try:
                _wait_for(condition, timeout_s, f"the moment to kill {node.name} ({why})", cancel=self.job_ended)
                _log(
                    f"just before the kill: free CPUs per node: {_cpus_line()}; actors on {node.name}: "
                    f"{', '.join(_actors_on(node.node_id)) or 'none'}"
                )
                if before:
                    before()
                self.at = cluster.kill(node, why, crash=crash)
            except BaseException as err:  # noqa: BLE001 - reported by the test through .check()
                self.error = err

        self.thread = threading.Thread(target=run, daemon=True, name=f"kill-{node.name}")
        self.thread.start()

    def check(self) -> float:
        """Call once the job returned: the kill time, or the reason it never came."""
        self.job_ended.set()
        self.thread.join(timeout=120)
        if self.error:
            raise self.error
        assert self.at is not None, "the node was never killed: the job ended before the moment came"
        return self.at


@contextmanager
def cpus_held_on_head(cpus: float):
    """An idle actor pinned to the head holding `cpus`: the stand-in for the head's other work.

    Ray Train places its workers with PACK (on as few nodes as it can): with the head partly
    held, the two workers must spread over both nodes. `release()` frees the CPUs.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote
    class Holder:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    head = ray.get_runtime_context().get_node_id()  # the driver is connected through the head
    pinned = NodeAffinitySchedulingStrategy(head, soft=False)
    for attempt in range(3):
        holder = Holder.options(num_cpus=cpus, scheduling_strategy=pinned).remote()
        try:
            assert ray.get(holder.node.remote(), timeout=60) == head
            break
        except ray.exceptions.RayActorError as err:
            # Seen once in ~10 runs, right after a node crash: the fresh worker process for this
            # actor died before it ran. Scaffolding, not what is tested: try again.
            _log(f"the CPU-holding actor died before it ran ({str(err).splitlines()[0]}); retrying")
            if attempt == 2:
                raise

    class Handle:
        released = False

        def release(self):
            if not self.released:
                ray.kill(holder)
                self.released = True
                _log(f"released the {cpus:g} CPUs held on the head")

    handle = Handle()
    _log(f"holding {cpus:g} of the head's {HEAD_CPUS} CPUs; free CPUs per node: {_cpus_line()}")
    try:
        yield handle
    finally:
        handle.release()


def _ledger_files(out: Path) -> int:
    return len(list((out / "images").glob("*.parquet"))) if (out / "images").is_dir() else 0


def _registered_checkpoint_epoch(arch_dir: Path) -> int | None:
    """Epoch of the latest checkpoint Ray Train has registered for a run (None before the first)."""
    try:
        snapshot = json.loads((arch_dir / "checkpoint_manager_snapshot.json").read_text())
        return snapshot["latest_checkpoint_result"]["metrics"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    except ValueError:  # a line being appended right now
        return []


def _check_exactly_once(out: Path, images: list[str]) -> dict:
    """Every image once in the ledger, its cells (or its quarantine row) once, no stray files."""
    import pyarrow.compute as pc

    from pipeline import schema
    from pipeline.store import read_table

    ledger = read_table(out, schema.IMAGES_DIR)
    cells = read_table(out)
    quarantine = read_table(out, schema.QUARANTINE_DIR)
    listed = ledger.column(schema.IMAGE).to_pylist()
    assert sorted(listed) == sorted(images), (
        f"ledger: {len(listed)} rows for {len(images)} images; twice: "
        f"{sorted({i for i in listed if listed.count(i) > 1})[:5]}, missing: {sorted(set(images) - set(listed))[:5]}"
    )
    keys = list(zip(cells.column(schema.IMAGE).to_pylist(), cells.column(schema.CELL_ID).to_pylist()))
    assert len(keys) == len(set(keys)), "a cell is in the cell table twice"
    assert sum(ledger.column(schema.N_CELLS).to_pylist()) == cells.num_rows
    quarantined = ledger.filter(pc.equal(ledger.column(schema.STATUS), schema.STATUS_QUARANTINED))
    assert sorted(quarantine.column(schema.IMAGE).to_pylist()) == sorted(quarantined.column(schema.IMAGE).to_pylist())
    committed = {p.stem for p in (out / "images").glob("*.parquet")}
    for sub in ("cells", "quarantine"):
        stray = [p.name for p in (out / sub).glob("*") if p.stem not in committed]
        assert not stray, f"{sub}/ holds files of no committed shard: {stray[:3]}"
    return {"images": len(listed), "cells": cells.num_rows, "quarantined": quarantined.num_rows,
            "shards": len(committed)}  # fmt: skip


# ------------------------------------------------------------------------------------------ tests


def test_batch_committed_twice_is_kept_once(cohort, tmp_path):
    """What a re-run batch leaves (Ray retries a batch whose node was lost after it committed), and
    a batch cut off before its ledger: after ingest's clean-up every image is there once."""
    import numpy as np

    from pipeline.config import IngestConfig
    from pipeline.ingest import TASK_COLUMN, IngestStage
    from pipeline.sources import discover_images
    from pipeline.store import drop_duplicate_commits, open_output

    out = tmp_path / "cells"
    tasks = discover_images(cohort / "slides").tasks[:5]
    open_output(out)
    settings = IngestConfig(src=str(cohort / "slides"), out=str(out)).crops.to_json()

    def batch(n, chosen):  # shard names sort in the order the batches ran (run ids sort by time)
        stage = IngestStage(settings, str(out), f"20260101T00000{n}-aaaaaa")
        stage({TASK_COLUMN: np.array([t.to_json() for t in chosen])})

    batch(0, tasks[:3])  # committed
    batch(1, tasks[:3])  # the same batch again: every image twice
    batch(2, tasks[2:5])  # overlaps the first in one image
    batch(3, tasks[3:5])
    sorted((out / "images").glob("*.parquet"))[-1].unlink()  # the last lost its ledger: its cells are orphans
    assert drop_duplicate_commits(out) == 4
    open_output(out)
    report = _check_exactly_once(out, [t.image for t in tasks])
    _log(f"double commits resolved: {report}")


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "crash"])
def test_ingest_survives_losing_the_worker_node(cluster, cohort, tmp_path, crash):
    from jobs.ingest import run_ingest
    from pipeline.config import IngestConfig
    from pipeline.sources import discover_images

    worker = cluster.live_worker()
    out = tmp_path / "cells"
    images = [t.image for t in discover_images(cohort / "slides").tasks]
    config = IngestConfig(src=str(cohort / "slides"), out=str(out), labels=str(cohort / "truth" / "cells.csv"))

    # Kill once the first shards are committed while an ingest actor works on the worker node.
    def busy_and_committed() -> bool:
        return _ledger_files(out) >= 1 and _free_cpus().get(worker.node_id, 1) < 0.01

    killer = KillWhen(
        cluster,
        worker,
        busy_and_committed,
        crash=crash,
        why="ingest part-way: first shard committed, an ingest actor busy on this node",
    )
    started = time.time()
    try:
        summary = run_ingest(config, quiet=True)
        outcome = "the run completed"
    except Exception as err:  # noqa: BLE001 - the issue allows a re-run to finish the job
        _log(f"ingest failed after the kill ({type(err).__name__}: {str(err)[:300]}); re-running")
        summary = run_ingest(config, quiet=True)
        outcome = "a re-run completed"
    killed_at = killer.check()
    report = _check_exactly_once(out, images)
    _log(f"ingest: killed {killed_at - started:.1f} s in, with {summary['images_seen']} images; {outcome} after "
         f"{time.time() - started:.1f} s: {summary['images_ingested']} ingested, {summary['images_skipped']} "
         f"skipped, {summary['images_quarantined']} quarantined, {summary['cells_written']} cells; orphan files "
         f"removed {summary['orphan_files_removed']}, duplicate commits removed "
         f"{summary['duplicate_commits_removed']}; on disk: {report}")  # fmt: skip
    assert summary["images_seen"] == len(images) == report["images"]
    assert report["quarantined"] == 0


@pytest.fixture(scope="module")
def truth_cells(tmp_path_factory) -> Path:
    return write_truth_cells(tmp_path_factory.mktemp("mn-truth") / "cells", patients=6, images_per_patient=3)


# Two workers of 0.75 CPU beside 0.5 for data loading: on the 3-CPU cluster they fit; with 1.25 of
# the head's 2 CPUs held they must take one node each; the head alone (2 CPUs) holds both only once
# those CPUs are free again.
TRAIN_CPUS_PER_WORKER = 0.75
HEAD_HELD_CPUS = 1.25


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "crash"])
def test_train_resumes_from_checkpoint_after_losing_a_node(cluster, truth_cells, tmp_path, crash):
    """SIGTERM: Ray Train sees a preemption (FailureConfig.max_preemption_failures); a crash: a
    worker-group failure (FailureConfig.max_failures). Either way it restarts from the checkpoint."""
    from jobs.train import run_train
    from pipeline.config import TrainConfig

    worker = cluster.live_worker()
    run = tmp_path / "run"
    epochs = 4
    seen: dict = {}

    def checkpoint_registered():
        seen["epoch"] = _registered_checkpoint_epoch(run / "lenet")
        return seen["epoch"] is not None

    with cpus_held_on_head(HEAD_HELD_CPUS) as held:
        killer = KillWhen(
            cluster,
            worker,
            checkpoint_registered,
            before=held.release,
            crash=crash,
            why="after the first epoch's checkpoint; the head can now hold both workers",
        )
        started = time.time()
        summary = run_train(TrainConfig(cells=(str(truth_cells),), out=str(run), arch="lenet", epochs=epochs,
                                        workers=2, cpus_per_worker=TRAIN_CPUS_PER_WORKER, batch_size=16),
                            quiet=True)  # fmt: skip
        killed_at = killer.check()
    rows = _metrics(run)
    for r in rows:
        _log(f"  metrics: epoch {r['epoch']} resumed_from {r.get('resumed_from')} val_acc {r['val_acc']:.3f}")
    resumed = [r for r in rows if r.get("resumed_from") is not None]
    _log(f"train: killed {killed_at - started:.1f} s in, checkpoint of epoch {seen['epoch']} registered; finished "
         f"after {time.time() - started:.1f} s; resumed from epoch {resumed[0]['resumed_from'] if resumed else None}; "
         f"best epoch {summary['archs']['lenet']['best_epoch']}")  # fmt: skip
    assert resumed, "no epoch ran after a restart from the checkpoint"
    start = resumed[0]["resumed_from"]
    assert start >= seen["epoch"] + 1  # from the checkpoint registered before the kill, or a later one
    # The first attempt's rows (up to the kill; an epoch whose checkpoint did not make it may be there
    # too), then the resumed attempt's: from `start` to the last epoch, each once, all saying so.
    after = rows[rows.index(resumed[0]) :]
    assert [r["epoch"] for r in after] == list(range(start, epochs))
    assert all(r["resumed_from"] == start for r in after)
    assert {r["epoch"] for r in rows[: rows.index(resumed[0])]} >= set(range(start))
    assert (run / "lenet" / "best" / "model.pt").is_file()


def test_train_stops_in_bounded_time_when_survivors_cannot_hold_workers(cluster, truth_cells, tmp_path, monkeypatch):
    from jobs.runtime import ClusterTooSmallError
    from jobs.train import run_train
    from pipeline.config import TrainConfig

    wait_s, retries = 8, 1
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(wait_s))  # reaches Ray Train's controller
    monkeypatch.setenv("ALLRAY_TRAIN_START_RETRIES", str(retries))
    worker = cluster.live_worker()
    run = tmp_path / "run"
    with cpus_held_on_head(HEAD_HELD_CPUS):
        killer = KillWhen(
            cluster,
            worker,
            lambda: bool(_metrics(run)),
            why="after the first epoch, the head's CPUs still held: 0.75 free for 2 x 0.75",
        )
        started = time.time()
        with pytest.raises(ClusterTooSmallError, match="cannot place 2 worker") as failure:
            run_train(TrainConfig(cells=(str(truth_cells),), out=str(run), arch="lenet", epochs=50, workers=2,
                                  cpus_per_worker=TRAIN_CPUS_PER_WORKER, batch_size=16), quiet=True)  # fmt: skip
        killed_at = killer.check()
    after_kill = time.time() - killed_at
    _log(
        f"train: killed {killed_at - started:.1f} s in; run stopped {after_kill:.1f} s after the kill with: "
        f"{failure.value}"
    )
    assert after_kill < (retries + 1) * wait_s + 60
    assert "--resume" in str(failure.value)


def _calibrated_model(cohort: Path, out: Path) -> Path:
    """A random LeNet whose calls are far from the 0.5 threshold and split the cohort's cells about
    evenly: any count that differs between two runs is then a cell lost or doubled, not float noise."""
    import torch

    from pipeline.checkpoint import CheckpointMeta, save_checkpoint
    from pipeline.config import CropSettings
    from pipeline.ingest import process_task
    from pipeline.models import build_model, default_image_size
    from pipeline.sources import discover_images
    from pipeline.training import MEAN, STD, decode_crops

    settings = CropSettings()
    crops = []
    for task in discover_images(cohort / "slides").tasks[::6]:
        outcome, _ = process_task(task, settings, settings.to_json())
        crops += [cell["crop"] for cell in outcome.cells]
    torch.manual_seed(0)
    size = default_image_size("lenet")
    model = build_model("lenet", size).eval()
    with torch.no_grad():
        model.classifier.bias -= model(decode_crops(crops, size)).median()
        model.classifier.weight.mul_(1000.0)
        model.classifier.bias.mul_(1000.0)
    save_checkpoint(out, model.state_dict(), CheckpointMeta(arch="lenet", model_name="lenet", image_size=size,
                    mean=MEAN, std=STD, crop_settings=settings, epoch=0))  # fmt: skip
    return out


def _report(out: Path) -> dict:
    import pyarrow.dataset as pads

    with (out / "patients.csv").open() as fh:
        patients = {row["patient_id"]: row for row in csv.DictReader(fh)}
    with (out / "samples.csv").open() as fh:
        samples = sorted(tuple(row.items()) for row in csv.DictReader(fh))
    table = pads.dataset(str(out / "predictions"), format="parquet").to_table(columns=["image", "cell_id"])
    keys = list(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    return {"patients": patients, "samples": samples, "predictions": len(keys), "unique": len(set(keys))}


def test_infer_survives_losing_the_worker_node(cluster, cohort, tmp_path):
    from jobs.infer import run_infer

    model = _calibrated_model(cohort, tmp_path / "model")
    cluster.live_worker()
    started = time.time()
    run_infer(str(cohort / "slides"), str(model), str(tmp_path / "plain"), min_cells=5, quiet=True)
    plain = _report(tmp_path / "plain")
    _log(
        f"infer without a fault: {time.time() - started:.1f} s, {plain['predictions']} cells, per patient "
        f"(cells, blasts): { {p: (r['n_cells'], r['n_blasts']) for p, r in plain['patients'].items()} }"
    )

    worker = cluster.live_worker()
    out = tmp_path / "faulted"

    def written() -> int:
        return len(list((out / "predictions").glob("*.parquet"))) if (out / "predictions").is_dir() else 0

    killer = KillWhen(
        cluster,
        worker,
        lambda: written() >= 1 and _free_cpus().get(worker.node_id, 1) < 0.01,
        why="infer part-way: first predictions written, a detection/classifier actor busy on this node",
    )
    started = time.time()
    run_infer(str(cohort / "slides"), str(model), str(out), min_cells=5, quiet=True)
    killed_at = killer.check()
    faulted = _report(out)
    _log(f"infer with the fault: killed {killed_at - started:.1f} s in; finished after {time.time() - started:.1f} s, "
         f"{faulted['predictions']} cells, per patient (cells, blasts): "
         f"{ {p: (r['n_cells'], r['n_blasts']) for p, r in faulted['patients'].items()} }")  # fmt: skip
    assert faulted["predictions"] == faulted["unique"] == plain["predictions"] == plain["unique"]
    assert faulted["patients"] == plain["patients"]
    assert faulted["samples"] == plain["samples"]
    assert 0 < sum(int(r["n_blasts"]) for r in plain["patients"].values()) < plain["predictions"]
