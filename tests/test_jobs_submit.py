"""Issue 5: the `jobs/` modules run under `ray job submit --working-dir . -- python -m jobs.<command>`
with the CLI's arguments, and every command's `--address` works against an existing cluster.

A head (with Ray's dashboard and job server on 127.0.0.1 and a free port) and a second node are
started on this machine as in test_multinode.py (`RAY_AUTH_MODE=token`, killed by pid at the end).
Jobs are submitted with Ray's own CLI, from the repository root, exactly as the README shows; the
CLI finds the cluster's token through `RAY_AUTH_MODE=token` and ~/.ray/auth_token (or $RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_cluster import HEAD_CPUS, RAY_BIN, WORKER_CPUS, connected_cluster, log

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.multinode]

REPO = Path(__file__).resolve().parents[1]
ALLRAY_BIN = str(Path(sys.executable).with_name("allray"))
CLUSTER = {"CPU": float(HEAD_CPUS + WORKER_CPUS), "nodes": 2}  # a new local Ray here would have 2 CPUs, 1 node
UPLOAD_LIMIT_BYTES = 5 * 1024 * 1024  # the repository without .venv, outputs and caches is well under 1 MB


@pytest.fixture(scope="module")
def cluster(request):
    """A head (2 CPUs, dashboard and job server on 127.0.0.1) and a worker node (1 CPU)."""
    with connected_cluster(request, "allray-js-", dashboard=True) as c:
        yield c


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """A labelled training cohort (4 patients x 3 smears) and 'new' slides of 2 patients (x 3)."""
    from pipeline.synth_cohort import write_cohort

    root = tmp_path_factory.mktemp("js-cohorts")
    write_cohort(root / "train", patients=4, images_per_patient=3, seed=3, size=(640, 480))
    write_cohort(root / "new", patients=2, images_per_patient=3, seed=4, size=(640, 480))
    return {"train": root / "train", "new": root / "new"}


def _submit(cluster, entrypoint: list[str], timeout_s: float) -> str:
    """`ray job submit --address URL --working-dir . -- ENTRYPOINT` from the repository root; its output.

    Ray's CLI waits for the job, prints its logs, and exits 1 when the job failed."""
    command = [RAY_BIN, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", "--", *entrypoint]
    started = time.time()
    done = subprocess.run(command, cwd=REPO, env=cluster.env, capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip
    output = done.stdout + done.stderr
    log(f"job `{' '.join(entrypoint[:3])} ...` exited {done.returncode} after {time.time() - started:.1f} s")
    assert done.returncode == 0, f"ray job submit exited {done.returncode}:\n{output[-4000:]}"
    assert "succeeded" in output, output[-4000:]
    return output


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _assert_ran_on_the_cluster(summary: dict) -> None:
    cluster = summary["run"]["ray_cluster"]
    assert cluster["resources"]["CPU"] == CLUSTER["CPU"] and cluster["alive_nodes"] == CLUSTER["nodes"], cluster


def test_job_server_listens_on_loopback_only_and_wants_the_token(cluster):
    from ray.util import get_node_ip_address

    port = int(cluster.dashboard_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((get_node_ip_address(), port), timeout=5).close()
    # Ray's CLI sends the token only when RAY_AUTH_MODE=token is set where it runs.
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    done = subprocess.run([RAY_BIN, "job", "list", "--address", cluster.dashboard_url], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "Authentication required" in done.stdout + done.stderr, done.stderr[-2000:]
    listed = subprocess.run([RAY_BIN, "job", "list", "--address", cluster.dashboard_url], env=cluster.env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]


def test_submitted_job_runs_the_uploaded_repository_with_the_venvs_python(cluster):
    probe = "import sys, jobs; print('PROBE', sys.prefix, jobs.__file__)"
    output = _submit(cluster, ["python", "-c", probe], timeout_s=180)  # Ray's CLI quotes it with shlex.join
    prefix, jobs_file = next(line.split()[1:] for line in output.splitlines() if line.startswith("PROBE "))
    assert prefix == sys.prefix  # `python` on the head's PATH is this venv's
    # ... and the code is the uploaded copy of this repository, not the checkout itself.
    unpacked = cluster.root / "head" / "session_latest" / "runtime_resources" / "working_dir_files"
    package = next(p.resolve() for p in unpacked.iterdir() if Path(jobs_file).resolve().is_relative_to(p.resolve()))
    # Ray leaves out what .gitignore names, and .git, .venv and __pycache__ of its own accord.
    names = {p.relative_to(package).parts[0] for p in package.rglob("*")}
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    log(f"uploaded working dir: {size / 1024:.0f} KiB, top level {sorted(names)}")
    assert {"jobs", "pipeline", "pyproject.toml"} <= names
    assert not names & {".git", ".venv", "demo-out", "runs", "reports", "allray.egg-info", ".pytest_cache"}
    assert size < UPLOAD_LIMIT_BYTES


def test_ingest_train_infer_as_submitted_jobs(cluster, cohorts, tmp_path):
    train, new = cohorts["train"], cohorts["new"]
    cells, run, report = tmp_path / "cells", tmp_path / "run", tmp_path / "report"
    n_images = len(list((train / "slides").rglob("*.png")))

    _submit(cluster, ["python", "-m", "jobs.ingest", str(train / "slides"), "--out", str(cells),
                      "--labels", str(train / "truth" / "cells.csv")], timeout_s=300)  # fmt: skip
    ingested = _summary(cells)
    assert ingested["images_seen"] == n_images
    assert ingested["images_ingested"] == n_images and ingested["images_quarantined"] == 0
    assert 0 < ingested["cells_labelled"] <= ingested["cells_written"]
    _assert_ran_on_the_cluster(ingested)

    _submit(cluster, ["python", "-m", "jobs.train", str(cells), "--arch", "lenet", "--epochs", "1", "--workers", "1",
                      "--out", str(run)], timeout_s=400)  # fmt: skip
    assert (run / "lenet" / "best" / "model.pt").is_file()
    trained = _summary(run)
    assert list(trained["archs"]) == ["lenet"]
    _assert_ran_on_the_cluster(trained)

    _submit(
        cluster,
        ["python", "-m", "jobs.infer", str(new / "slides"), "--model", str(run), "--out", str(report)],
        timeout_s=300,
    )
    with (report / "patients.csv").open() as fh:
        patients = {row["patient_id"]: row for row in csv.DictReader(fh)}
    with (new / "truth" / "patients.csv").open() as fh:
        assert set(patients) == {row["patient_id"] for row in csv.DictReader(fh)}
    assert all(int(row["n_cells"]) > 0 for row in patients.values())
    inferred = _summary(report)
    assert inferred["n_images"] == len(list((new / "slides").rglob("*.png")))
    _assert_ran_on_the_cluster(inferred)


def test_cli_address_joins_the_existing_cluster(cluster, cohorts, tmp_path):
    out = tmp_path / "cells"
    started = time.time()
    done = subprocess.run([ALLRAY_BIN, "ingest", str(cohorts["new"] / "slides"), "--out", str(out),
                           "--address", cluster.address], env=cluster.env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    log(f"allray ingest --address {cluster.address} exited {done.returncode} after {time.time() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(out)
    assert summary["images_seen"] == summary["images_ingested"] + summary["images_quarantined"] > 0
    _assert_ran_on_the_cluster(summary)  # cluster.env has no RAY_ADDRESS: --address alone named it
