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

    .venv/bin/python benchmarks/demo_speed.py --emulate-gflops 50 demo-out

measures instead of estimating: the demo runs in a CPU cgroup (root; cgroup v1 `cpu` or v2
`cpu.max`) whose quota the whole process tree shares: cores x 50 / (this machine's single-thread
sgemm) CPUs, so every CPU second here counts as (this sgemm / 50) there. As many single-thread
sgemms as cores, run at once inside it, are printed as a check: they read a little under 50 (a
quota costs some speed of its own), so the emulated machine is if anything slower than the one
named. Work on both cores (every step here) runs as on two cores of that speed; a stretch where
one thread runs alone gets up to the whole quota, so up to twice as fast as it would there.
"""

from __future__ import annotations

import os
import subprocess
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


def parallel_sgemm_gflops(
    processes: int, group: Path | None = None, n: int = 1024, seconds: float = 3.0
) -> list[float]:
    """Single-thread sgemm GFLOP/s per wall second of `processes` processes running at once, in the
    cgroup `group` if given (each averaged over `seconds`, many cgroup periods, so a quota shows as
    the mean speed it allows)."""
    code = (
        "import time, torch; torch.set_num_threads(1); "
        f"a = torch.randn({n}, {n}); b = torch.randn({n}, {n}); a @ b; k = 0; t = time.perf_counter()\n"
        f"while time.perf_counter() - t < {seconds}: a @ b; k += 1\n"
        f"print(2 * {n}**3 * k / 1e9 / (time.perf_counter() - t))"
    )
    enter = None if group is None else (lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, preexec_fn=enter)
        for _ in range(processes)
    ]
    return [float(p.communicate()[0]) for p in procs]


class CpuCgroup:
    """A new CPU cgroup whose processes share a quota of CPUs (cgroup v2 `cpu.max`, or v1's CFS
    quota); removed on exit, killing what is left in it."""

    period = 100_000

    def __init__(self, name: str):
        controllers = Path("/sys/fs/cgroup/cgroup.controllers")
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            self.path, self.v2 = Path("/sys/fs/cgroup") / name, True
        elif Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").is_file():
            self.path, self.v2 = Path("/sys/fs/cgroup/cpu") / name, False
        else:
            raise SystemExit(
                "--emulate-gflops needs a CPU cgroup controller (cgroup v2 with cpu, or v1's cpu): none here"
            )

    def set_cpus(self, cpus: float) -> None:
        quota = max(1000, int(cpus * self.period))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota} {self.period}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def __enter__(self) -> CpuCgroup:
        try:
            self.path.mkdir()
        except PermissionError as e:
            raise SystemExit(f"--emulate-gflops needs root to make a CPU cgroup: {e}") from e
        return self

    def __exit__(self, *exc) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():  # Ray's daemons, if any outlived the demo
            try:
                psutil.Process(int(pid)).kill()
            except psutil.Error:
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_emulated(gflops: float, argv: list[str]) -> int:
    """Run this script (without --emulate-gflops) in a cgroup whose quota gives its processes,
    together, the CPU time that this machine's cores would do at `gflops` of sgemm; its exit code."""
    cores = psutil.cpu_count()
    alone = sgemm_gflops()[1]
    with CpuCgroup(f"allray-demo-{os.getpid()}") as group:
        # Every CPU second here is worth alone / gflops CPU seconds there. Cores held by a quota run
        # sgemm a little slower still (checked below), so the emulated machine is if anything slower.
        cpus = cores * min(1.0, gflops / alone)
        group.set_cpus(cpus)
        each = parallel_sgemm_gflops(cores, group.path)
        print(
            f"emulating {cores} cores at {gflops:g} GFLOP/s each (this machine: {alone:.1f} alone): a quota of "
            f"{cpus:.2f} CPUs, in which {cores} single-thread sgemms at once read {', '.join(f'{g:.1f}' for g in each)}\n"
        )
        child = subprocess.Popen(
            [sys.executable, __file__, *argv],
            env={**os.environ, "ALLRAY_EMULATED_GFLOPS": str(gflops)},
            preexec_fn=lambda: (group.path / "cgroup.procs").write_text(str(os.getpid())),
        )
        return child.wait()


def main() -> None:
    import click

    argv = sys.argv[1:]
    if "--emulate-gflops" in argv:
        i = argv.index("--emulate-gflops")
        gflops = float(argv[i + 1])
        sys.exit(run_emulated(gflops, argv[:i] + argv[i + 2 :]))
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

        params = demo.make_context("demo", argv).params
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
    emulated = os.environ.get("ALLRAY_EMULATED_GFLOPS")
    if emulated:
        print(
            f"measured with every core held to {emulated} GFLOP/s (--emulate-gflops): {(last_t - start) / 60:.1f} min"
        )
        return
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
