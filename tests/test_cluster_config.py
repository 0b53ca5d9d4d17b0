"""cluster.yaml is a valid Ray cluster-launcher config whose resources fit `allray train --gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)


def test_cluster_yaml_keeps_auth_and_dashboard_private_and_installs_like_readme():
    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert any("make install" in c for c in config["setup_commands"])
    gpu = config["available_node_types"]["gpu_worker"]["resources"]
    # one training worker per GPU node: 1 GPU and 1 CPU, with CPU to spare for data loading
    assert gpu["GPU"] >= 1 and gpu["CPU"] >= 2
