"""How many torch threads a training worker runs when no --cpus-per-worker is given (jobs.train_worker)."""

from __future__ import annotations

from jobs.train import DATA_CPUS
from jobs.train_worker import choose_threads


def test_one_worker_on_two_cores_trains_on_both():
    assert choose_threads(2.0, 1, DATA_CPUS) == 2


def test_workers_on_one_node_share_its_cores():
    assert choose_threads(2.0, 2, DATA_CPUS) == 1  # 0.75 CPU each: one thread each
    assert choose_threads(16.0, 4, DATA_CPUS) == 4
    assert choose_threads(8.0, 3, DATA_CPUS) == 2


def test_never_fewer_than_one_thread():
    assert choose_threads(1.0, 4, DATA_CPUS) == 1
    assert choose_threads(0.0, 1, DATA_CPUS) == 1
