"""Ingest speed and memory, as ratios against a plain baseline measured in the same run.

    .venv/bin/python benchmarks/ingest_speed.py [--images 48] [--workdir /tmp/allray-bench]

Prints:
1. detect + crop of one 1712x1368 synthetic smear on one core (target <= 0.5 s);
2. `allray ingest` throughput on the local cluster (all cores) against a plain single-process,
   single-thread loop calling the same stage (`IngestStage`) on the same images (target >= 1.6x
   on 2 cores), measured after Ray's start-up, which is reported on its own;
3. peak memory (driver + every Ray worker process, summed RSS) for N and 8N images (target: the
   8N peak <= 1.3x the N peak, i.e. memory stays flat as the collection grows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the baseline is single-thread; so is each Ray task

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from pipeline.config import CropSettings, IngestConfig  # noqa: E402
from pipeline.ingest import TASK_COLUMN, IngestStage, ingest_image  # noqa: E402
from pipeline.io import encode_png, sha256_hex  # noqa: E402
from pipeline.sources import ImageTask, discover_images  # noqa: E402
from pipeline.store import open_output  # noqa: E402
from pipeline.synth import choose_style, make_smear  # noqa: E402
from pipeline.synth_cohort import write_cohort  # noqa: E402


class PeakRSS:
    """Samples the summed RSS of this process and all Ray worker processes ('ray::...') at 20 Hz."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            # The local Ray this driver started runs under it: its worker processes ("ray::...")
            # are our descendants, and Ray processes of anyone else on the machine are not.
            total = me.memory_info().rss
            for p in me.children(recursive=True):
                try:
                    if p.name().startswith("ray::") or " ".join(p.cmdline()[:1]).startswith("ray::"):
                        total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.05)


def time_one_big_smear() -> float:
    rng = np.random.default_rng(1)
    image, _ = make_smear(rng, (1712, 1368), 0.5, choose_style(rng))
    data = encode_png(image)
    task = ImageTask(path="-", image="big.png", patient_id="P", sample_id="S")
    settings = CropSettings()
    ingest_image(task, data, settings, sha256_hex(data), settings.to_json())  # warm-up (imports, caches)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        ingest_image(task, data, settings, sha256_hex(data), settings.to_json())
        runs.append(time.perf_counter() - t)
    return min(runs)


def plain_loop(src: Path, out: Path, per_shard: int) -> float:
    """Images/s of the same stage in one process, one thread, no Ray."""
    tasks = discover_images(src).tasks
    open_output(out)
    stage = IngestStage(CropSettings().to_json(), str(out), "baseline")
    t = time.perf_counter()
    for i in range(0, len(tasks), per_shard):
        stage({TASK_COLUMN: np.array([x.to_json() for x in tasks[i : i + per_shard]], dtype=object)})
    return len(tasks) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48, help="N: images in the small collection (8N for memory)")
    ap.add_argument("--workdir", default="/tmp/allray-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)

    big_s = time_one_big_smear()
    print(f"1. detect + crop, one 1712x1368 smear, one core: {big_s:.3f} s (target <= 0.5 s)")

    n = args.images
    write_cohort(work / "small", patients=max(1, n // 6), images_per_patient=6, seed=3)
    write_cohort(work / "large", patients=max(1, 8 * n // 6), images_per_patient=6, seed=4)
    n_small = len(discover_images(work / "small" / "slides").tasks)
    n_large = len(discover_images(work / "large" / "slides").tasks)

    base_small = plain_loop(work / "small" / "slides", work / "out-plain-small", per_shard=4)
    base_large = plain_loop(work / "large" / "slides", work / "out-plain-large", per_shard=4)

    from jobs.ingest import run_ingest
    from jobs.runtime import start_ray

    startup = start_ray()
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    # warm-up run (worker processes import skimage once), then the measured runs
    run_ingest(IngestConfig(src=str(work / "small" / "slides"), out=str(work / "out-warm")), quiet=True)
    s_small = run_ingest(IngestConfig(src=str(work / "small" / "slides"), out=str(work / "out-small")), quiet=True)
    s_large = run_ingest(IngestConfig(src=str(work / "large" / "slides"), out=str(work / "out-large")), quiet=True)
    # Memory in runs of their own: the sampler walks the process tree 20 times a second, which
    # takes CPU from the run it measures.
    with PeakRSS() as mem_small:
        run_ingest(IngestConfig(src=str(work / "small" / "slides"), out=str(work / "mem-small")), quiet=True)
    with PeakRSS() as mem_large:
        run_ingest(IngestConfig(src=str(work / "large" / "slides"), out=str(work / "mem-large")), quiet=True)

    ray_small, ray_large = s_small["images_per_s"], s_large["images_per_s"]
    print(f"2. Ray start-up: {startup:.1f} s (not counted below; the actors' start-up is counted)")
    print(
        f"   plain loop, 1 process, 1 thread: {base_small:.2f} images/s on {n_small} images, "
        f"{base_large:.2f} images/s on {n_large}"
    )
    print(
        f"   allray ingest, {cpus} CPUs:        {ray_small:.2f} images/s on {n_small} images, "
        f"{ray_large:.2f} images/s on {n_large}"
    )
    print(
        f"   ratio on the same images: {ray_small / base_small:.2f}x ({n_small}), "
        f"{ray_large / base_large:.2f}x ({n_large}) (target >= 1.6x on 2 cores)"
    )
    print(
        f"3. peak RSS driver + Ray workers: {mem_small.peak / 2**20:.0f} MiB for {n_small} images, "
        f"{mem_large.peak / 2**20:.0f} MiB for {n_large} images: ratio {mem_large.peak / mem_small.peak:.2f} "
        f"(target <= 1.3)"
    )


if __name__ == "__main__":
    main()
