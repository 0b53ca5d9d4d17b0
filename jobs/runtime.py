"""Starting or joining Ray quietly, checking that a job's ask fits the cluster before it starts, and
recording what ran.

Ray's own logs stay where Ray puts them (its session folder); the terminal gets allray's progress
and one-line errors, unless --verbose.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import UTC, datetime

# The packages whose versions decide what a run computes (recorded with every output).
RECORDED_PACKAGES = ("allray", "ray", "torch", "torchvision", "pyarrow", "numpy", "scikit-image")


class ClusterTooSmallError(RuntimeError):
    """The job asks for more CPUs/GPUs than the cluster has; the message says what to change."""


def start_ray(address: str | None = None, verbose: bool = False, num_cpus: int | None = None) -> float:
    """Connect to `address` (or $RAY_ADDRESS), else start a local Ray; returns seconds it took."""
    import ray

    if ray.is_initialized():
        return 0.0
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = time.perf_counter()
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # Ray's C++ core prints warnings-as-errors to the driver's terminal (e.g. actor constructor
        # arguments held in the object store); --verbose, or setting this yourself, brings them back.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        warnings.filterwarnings("ignore", module="ray")
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False if address is None else None,
        logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=verbose,
        configure_logging=True,
    )
    quiet_ray_data(verbose)
    return time.perf_counter() - started


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's progress bars and execution logs only with --verbose (allray prints its own)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    ctx.verbose_stats_logs = False
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def cluster_cpus_gpus() -> tuple[float, float]:
    """(CPUs, GPUs) the connected Ray cluster has in total."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def check_fits(workers: int, cpus_per_worker: float, gpus_per_worker: float, spare_cpus: float, what: str) -> None:
    """Fail at once, with a message saying what to change, when `workers` cannot all be placed.

    `spare_cpus` is what must stay free beside the workers (e.g. for the Ray Data tasks that feed
    them): without it, workers holding every CPU starve their own input and hang silently.
    """
    cpus, gpus = cluster_cpus_gpus()
    need_cpus = workers * cpus_per_worker + spare_cpus
    if gpus_per_worker and workers * gpus_per_worker > gpus:
        raise ClusterTooSmallError(
            f"{what} asks for {workers} GPU worker(s) but the cluster has {gpus:g} GPU(s): "
            f"use --workers {int(gpus // gpus_per_worker) or 1} with --gpu, drop --gpu to train on CPUs, "
            f"or add GPU nodes"
        )
    if need_cpus > cpus + 1e-9:
        fit = int(max(cpus - spare_cpus, 0) // cpus_per_worker) if cpus_per_worker else 0
        hint = f"use --workers {fit}" if fit >= 1 else "use a cluster with more CPUs"
        raise ClusterTooSmallError(
            f"{what} asks for {workers} worker(s) x {cpus_per_worker:g} CPU + {spare_cpus:g} CPU for data loading "
            f"= {need_cpus:g} CPUs, but the cluster has {cpus:g}: {hint}, pass --cpus-per-worker "
            f"{max((cpus - spare_cpus) / workers, 0.1):.2g}, or connect to a bigger cluster with --address"
        )


def package_versions() -> dict[str, str | None]:
    """Python's version and those of RECORDED_PACKAGES as installed (None for one that is not)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cluster_record() -> dict:
    """The connected Ray cluster: its total resources and how many nodes are alive."""
    import ray

    return {"resources": ray.cluster_resources(), "alive_nodes": sum(1 for n in ray.nodes() if n.get("Alive"))}


def run_record(config: dict, identities: dict) -> dict:
    """What made an output, for its summary.json: the command line, the resolved config, package
    versions, the Ray cluster, and the identities (hashes) of the data and model it used. Credentials in
    the command line or in a location (s3://KEY:SECRET@bucket/x) are redacted (pipeline.redact)."""
    from pipeline.redact import redact

    return redact(
        {
            "command": shlex.join(sys.argv),
            "cwd": os.getcwd(),
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config,
            "versions": package_versions(),
            "ray_cluster": cluster_record(),
            "identities": identities,
        }
    )
