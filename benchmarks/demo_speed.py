"""How long `allray demo` takes per step, in wall seconds and in CPU seconds, on a shared machine too.

    .venv/bin/python benchmarks/demo_speed.py demo-out [allray demo options, e.g. --epochs 6]

Wall time on a shared machine says little, so the CPU seconds of every step are summed over the
whole process tree (the driver, Ray's workers and actors), sampled twice a second and kept per
process id, so workers that exit (Ray Train's) still count. The single-thread sgemm speed of the
machine is measured before and after (a 1024^3 matrix product with one torch thread), per wall
second and per CPU second of its thread (what the machine does when not shared), so a step's CPU
seconds can be scaled to another machine: seconds x (this sgemm per CPU second / that sgemm). Every
step of the demo runs on two cores: synth on two processes (one cohort each), ingest and infer on
two, train on one worker (one CPU reserved) running two torch threads (jobs.train_worker.choose_threads).
Printed at the end for a machine at 50 GFLOP/s, as if all work scaled with sgemm (most does not:
small convolutions, Python and Ray's start-up scale less): this run's wall seconds x the ratio (a
bound from above when this machine was idle) and its CPU seconds / 2 x the ratio (from below).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sgemm_gflops(n: int = 1024, repeat: int = 10) -> tuple[float, float]:
    """Single-thread torch sgemm GFLOP/s (best of three rounds): per wall second, and per CPU second
    of the thread (the machine's speed when it is not shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    wall = cpu = 0.0
    for _ in range(3):
        t, c = time.perf_counter(), time.thread_time()
        for _ in range(repeat):
            a @ b
        flop = 2 * n**3 * repeat / 1e9
        wall = max(wall, flop / (time.perf_counter() - t))
        cpu = max(cpu, flop / max(time.thread_time() - c, 1e-9))
    torch.set_num_threads(threads)
    return wall, cpu


class TreeCpu:
    """CPU seconds of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.5):
        self.root = psutil.Process()
        self.seen: dict[int, float] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[p.pid] = max(self.seen.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def total(self) -> float:
        self._sample()
        return sum(self.seen.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    import click

    from jobs.cli import demo
    from jobs.demo import DemoConfig, run_demo

    before = sgemm_gflops()
    print(
        f"sgemm, 1 thread: {before[0]:.1f} GFLOP/s per wall second, {before[1]:.1f} per CPU second; load "
        f"average {psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores"
    )
    marks = []
    with TreeCpu() as cpu:
        start_cpu, start = cpu.total(), time.perf_counter()

        def echo(line: str = "") -> None:
            click.echo(line)
            if line.startswith("demo: ") and " took " in line:
                marks.append((line[6 : line.index(" took ")], time.perf_counter(), cpu.total()))

        params = demo.make_context("demo", sys.argv[1:]).params
        address, verbose = params.pop("address"), params.pop("verbose")
        run_demo(DemoConfig(**params), echo=echo, address=address, verbose=verbose)
    after = sgemm_gflops()
    print(
        f"\nsgemm, 1 thread, after: {after[0]:.1f} GFLOP/s per wall second, {after[1]:.1f} per CPU second; "
        f"load average {psutil.getloadavg()[0]:.1f}"
    )
    print(f"{'step':<30} {'wall s':>8} {'CPU s':>8}")
    last_t, last_c = start, start_cpu
    for name, t, c in marks:
        print(f"{name:<30} {t - last_t:8.1f} {c - last_c:8.1f}")
        last_t, last_c = t, c
    print(f"{'total':<30} {last_t - start:8.1f} {last_c - start_cpu:8.1f}")
    per_cpu = (before[1] + after[1]) / 2  # this machine's speed per CPU second
    ratio = per_cpu / 50
    wall, cpu_s = last_t - start, last_c - start_cpu
    print(
        f"at 50 GFLOP/s (this machine {per_cpu:.0f} per CPU second, x{ratio:.2f}), if every second scaled with "
        f"sgemm: at most {wall * ratio / 60:.1f} min (this wall time scaled), at least {cpu_s / 2 * ratio / 60:.1f} "
        "min (CPU seconds / 2 scaled); Ray start-up included"
    )


if __name__ == "__main__":
    main()
