"""The run record: command line, config, package versions, Ray cluster and identities, as installed."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys

import pytest

from jobs.runtime import RECORDED_PACKAGES, package_versions, run_record


def test_package_versions_are_the_installed_ones():
    versions = package_versions()
    assert set(versions) == {"python", *RECORDED_PACKAGES}
    assert {"allray", "ray", "torch", "torchvision", "pyarrow", "numpy", "scikit-image"} <= set(RECORDED_PACKAGES)
    for name in RECORDED_PACKAGES:
        assert versions[name] == importlib.metadata.version(name), name
    assert versions["python"] == platform.python_version()


@pytest.mark.slow
@pytest.mark.ray
def test_run_record_names_command_config_versions_cluster_and_identities(ray_session, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["allray", "train", "s3://bucket/cells dir", "--out", "runs/r1"])
    record = run_record({"epochs": 3}, {"data_id": "abc"})
    assert record["command"] == "allray train 's3://bucket/cells dir' --out runs/r1"
    assert record["config"] == {"epochs": 3} and record["identities"] == {"data_id": "abc"}
    assert record["versions"] == package_versions()
    assert record["ray_cluster"]["resources"] == ray_session.cluster_resources()
    assert record["ray_cluster"]["alive_nodes"] == sum(n["Alive"] for n in ray_session.nodes()) >= 1
    assert json.loads(json.dumps(record)) == record  # plain JSON, as written to summary.json


def test_default_classifier_count_follows_the_input_and_the_cluster():
    from jobs.infer import default_classifiers

    assert default_classifiers(2, 0, False, from_cells=True, reserve=0.2) == 2  # 2 x 0.9 CPU on 2 cores
    assert default_classifiers(16, 0, False, from_cells=True, reserve=0.2) == 16
    assert default_classifiers(2, 0, False, from_cells=False, reserve=1.2) == 1  # detection is the costly stage
    assert default_classifiers(32, 0, False, from_cells=False, reserve=1.2) == 4
    assert default_classifiers(16, 4, True, from_cells=False, reserve=1.2) == 4  # one per GPU
