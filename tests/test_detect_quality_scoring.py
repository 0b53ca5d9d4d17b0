"""The ALL-like scoring of benchmarks/detect_quality.py: the README's figures come from it, so its
counts (one-to-one recall, smudge, clusters counted exactly) and its failure listing are tested."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from pipeline.synth import TruthCell

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "detect_quality.py"


@pytest.fixture
def detect_quality(monkeypatch):
    # The script pins OMP_NUM_THREADS for its timing; keep that out of the rest of the suite.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repo and benchmarks/ on the path
    spec = importlib.util.spec_from_file_location("detect_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "detect_quality", module)
    spec.loader.exec_module(module)
    return module


def test_all_field_scoring_counts_merges_splits_extras_and_smudge(detect_quality):
    truth = [
        TruthCell(100, 100, 20, 1, "lymphoblast", cluster=1),
        TruthCell(135, 100, 20, 1, "lymphoblast", cluster=1),  # packed against the first
        TruthCell(400, 100, 20, 1, "lymphoblast", cluster=2),
        TruthCell(435, 100, 20, 1, "lymphoblast", cluster=2),
        TruthCell(700, 300, 20, 0, "neutrophil"),
        TruthCell(700, 500, 20, 0, "basophil"),
        TruthCell(900, 300, 25, None, "smudge", smudge=True),
    ]
    cells = [
        (122, 100, False),  # one box over cluster 1's two blasts, within the second's radius only
        (398, 100, False),
        (437, 100, False),  # cluster 2 counted exactly
        (1200, 600, False),  # on nothing
        (905, 302, True),  # the smudge cell, called smudge
        (703, 497, True),  # the basophil, called smudge
    ]
    t = dict(truth=0, det=0, hit=0, s_truth=0, s_det=0, s_hit=0, intact_smudged=0, clusters=0, clusters_ok=0)
    failures = detect_quality._score_all_field(truth, cells, t)
    assert t == dict(truth=6, det=4, hit=3, s_truth=1, s_det=2, s_hit=1, intact_smudged=1, clusters=2, clusters_ok=1)
    assert sorted(failures) == sorted([
        "missed lymphoblast at (100, 100)",
        "missed neutrophil at (700, 300)",
        "missed basophil at (700, 500) (called smudge)",
        "extra wbc at (1200, 600)",
        "cluster of 2 at (118, 100): detections per member [0, 1]",
    ])  # fmt: skip
