"""Shared fixtures: paths to the real BCCD images, one Ray instance per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    if not (BCCD / "val.txt").exists():
        pytest.skip(f"real BCCD images not found at {BCCD} (they sit beside the checkout in shared/data/bccd)")
    return BCCD


@pytest.fixture(scope="session")
def ray_session():
    """One local 2-CPU Ray for every Ray test of the session (start-up costs seconds)."""
    ray = pytest.importorskip("ray")
    from jobs.runtime import start_ray

    start_ray(num_cpus=2)
    yield ray
    ray.shutdown()
