"""A Ray cluster of several nodes on this one machine, for the multi-node tests.

Each node is a `ray start --block` subprocess with its own temp dir and free ports (never Ray's
defaults, never another engineer's Ray), with `RAY_AUTH_MODE=token`. SIGTERM to a node's
`ray start --block` parent stops exactly that node; teardown kills exactly the processes these
nodes started, never `ray stop` (which stops every Ray of the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY_BIN = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # per node: the data here is a few MB
HEAD_CPUS = 2
WORKER_CPUS = 1
# SIGTERM makes `ray start` drain its node (a preemption notice: nothing new is placed there, work
# in flight may finish) for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (Ray's default 30 s) before it stops
# everything. A short notice, as a spot instance gets, makes the loss happen while the job runs.
WORKER_DRAIN_S = 2


def log(msg: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _free_port(start: int | None = None) -> int:
    """A port free right now: the first free one from `start` up, else one the OS picks."""
    for port in range(start, start + 200) if start else ():
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    node_id: str | None = None


class LocalCluster:
    """A head and worker nodes started with `ray start --block` on this machine, killed by pid."""

    def __init__(self, root: Path):
        self.root = root
        # This venv's bin first on PATH: a job's entrypoint (`python -m jobs.ingest ...`) is run by a
        # shell under the head and finds `python` there, as on a cluster whose nodes run from the venv.
        path = os.pathsep.join([str(Path(RAY_BIN).parent), os.environ.get("PATH", "")])
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
            "RAY_AUTH_MODE": "token",
            "PATH": path,
        }
        self.port = _free_port(6390)
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url: str | None = None
        self.head: Node | None = None
        self.workers: list[Node] = []
        self._count = 0

    def _ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
                "--min-worker-port=0", "--max-worker-port=0", f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--disable-usage-stats"]  # fmt: skip

    def _spawn(self, name: str, args: list[str], drain_s: float) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        env = self.env | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(drain_s)}
        with log.open("w") as fh:
            proc = subprocess.Popen([RAY_BIN, "start", "--block", f"--temp-dir={temp_dir}", *args, *self._ports()],
                                    env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # fmt: skip
        node = Node(name, proc, temp_dir, log)
        deadline = time.time() + 90
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                self._stop(node)
                raise RuntimeError(f"ray start for {name} failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        return node

    def start_head(self, dashboard: bool = False) -> None:
        """The head; with `dashboard`, also Ray's dashboard and job server, on 127.0.0.1 only.

        Without it the dashboard's port is set anyway, so that nothing of ours tries Ray's 8265.
        """
        # Token auth refuses to start a node without a token: make ~/.ray/auth_token when this
        # machine has none yet (a local ray.init makes one too, but these tests may run first).
        subprocess.run([RAY_BIN, "get-auth-token", "--generate"], env=self.env, check=True, capture_output=True,
                       timeout=60)  # fmt: skip
        dashboard_port = _free_port()
        # drain_s=0: at teardown the head would otherwise drain 30 s for Ray's detached system actors.
        self.head = self._spawn("head", ["--head", f"--port={self.port}", f"--num-cpus={HEAD_CPUS}",
                                         f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
                                         f"--dashboard-port={dashboard_port}",
                                         f"--ray-client-server-port={_free_port()}"], drain_s=0)  # fmt: skip
        log(f"head node up at {self.address} ({HEAD_CPUS} CPUs), pid {self.head.proc.pid}, temp dir {self.root}")
        if dashboard:
            self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
            self._wait_for_job_server()
            log(f"job server up at {self.dashboard_url}")

    def _wait_for_job_server(self, timeout_s: float = 90) -> None:
        """Until the job server answers (401 without a token counts: it is up, and refuses strangers)."""
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/", timeout=5):
                    return
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    return
                reason = f"HTTP {err.code}"
            except OSError as err:
                reason = str(err)
            if self.head.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"the job server at {self.dashboard_url} never answered ({reason}):\n"
                    f"{self.head.log.read_text()[-3000:]}"
                )
            time.sleep(0.5)

    def add_worker(self) -> Node:
        """Start a worker node and wait until the connected driver sees it alive."""
        import ray

        self._count += 1
        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        node = self._spawn(
            f"worker{self._count}", [f"--address={self.address}", f"--num-cpus={WORKER_CPUS}"], drain_s=WORKER_DRAIN_S
        )
        deadline = time.time() + 60
        while node.node_id is None:
            for n in ray.nodes():
                if n["Alive"] and n["NodeID"] not in before and str(node.temp_dir) in n.get("RayletSocketName", ""):
                    node.node_id = n["NodeID"]
            if time.time() > deadline:
                self._stop(node)
                raise RuntimeError(f"{node.name} never joined:\n{node.log.read_text()[-3000:]}")
            time.sleep(0.3)
        self.workers.append(node)
        log(f"{node.name} joined ({WORKER_CPUS} CPU), node {node.node_id[:8]}, pid {node.proc.pid}; "
             f"cluster CPUs {ray.cluster_resources().get('CPU')}")  # fmt: skip
        return node

    def live_worker(self) -> Node:
        """The worker node that is up, starting one when the last was killed."""
        alive = [w for w in self.workers if w.proc.poll() is None]
        return alive[0] if alive else self.add_worker()

    def kill(self, node: Node, why: str, crash: bool = False) -> float:
        """Stop a node and wait until Ray marks it dead; returns when the kill was sent.

        crash=False: SIGTERM to its `ray start --block` parent (Ray drains the node: running work
        may finish within a grace period, nothing new is placed there, then it stops).
        crash=True: SIGKILL to that parent and every process under it (raylet, workers, agents) at
        once, as when a machine dies: work in flight is cut off mid-write.
        """
        import ray

        at = time.time()
        how = (
            "SIGKILL to it and all its processes (crash)"
            if crash
            else f"SIGTERM to its `ray start` parent (drains for up to {WORKER_DRAIN_S} s, then stops)"
        )
        log(f"KILL {node.name} (node {(node.node_id or '?')[:8]}, pid {node.proc.pid}) by {how}: {why}")
        if crash:
            for pid in [node.proc.pid, *_descendants(node.proc.pid)]:
                _sigkill(pid)
            node.proc.wait(timeout=15)
        else:
            self._stop(node)
        deadline = time.time() + 60
        while time.time() < deadline:
            if not {n["NodeID"]: n["Alive"] for n in ray.nodes()}.get(node.node_id, False):
                break
            time.sleep(0.3)
        log(f"{node.name} gone after {time.time() - at:.1f} s; cluster CPUs now {ray.cluster_resources().get('CPU')}")
        return at

    @staticmethod
    def _stop(node: Node, grace_s: float = 45) -> None:
        """SIGTERM to the node's parent, SIGKILL to it and its processes if it outlives grace_s."""
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                for pid in [node.proc.pid, *_descendants(node.proc.pid)]:
                    _sigkill(pid)
                node.proc.wait(timeout=15)

    def shutdown(self) -> None:
        """Stop every node this cluster started, then SIGKILL whatever of theirs is left."""
        nodes = [*self.workers, *([self.head] if self.head else [])]
        ours = {pid for node in nodes if node.proc.poll() is None
                for pid in [node.proc.pid, *_descendants(node.proc.pid)]}  # fmt: skip
        for node in self.workers:
            self._stop(node, grace_s=20)
        if self.head:
            # the head drains for up to 30 s while Ray's detached system actors live on it: not worth waiting
            self._stop(self.head, grace_s=5)
        deadline = time.time() + 10
        while any(_alive(pid) for pid in ours) and time.time() < deadline:
            time.sleep(0.3)
        for pid in ours:
            if _alive(pid):
                _sigkill(pid)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (Ray's workers sit in their own process groups, so killpg misses them)."""
    children, out, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def connected_cluster(request, prefix: str, dashboard: bool = False):
    """A head (HEAD_CPUS) and one worker node (WORKER_CPUS), this driver connected to it; for a
    module-scoped fixture. Ray is shut down and the nodes killed after.

    conftest's `ray_session` (an in-process local Ray shared by other modules) may already be up when
    the module starts, or start after it: this shuts any Ray connection down first and leaves Ray
    shut down, and the jobs start a local Ray of their own when none is connected.
    """
    ray = pytest.importorskip("ray")
    from ray._raylet import Config

    if not Path(RAY_BIN).exists():
        pytest.skip(f"no `ray` command beside this Python ({RAY_BIN}) to start nodes with")

    from jobs.runtime import start_ray

    ray.shutdown()
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.delenv("RAY_ADDRESS", raising=False)
    # Ray caches its config, the auth mode with it, when first imported: imported earlier without
    # RAY_AUTH_MODE=token, this driver would be refused (InvalidAuthToken). Re-read it, as ray.init
    # itself does when it turns token auth on.
    Config.initialize("")
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: Ray's socket paths are limited
    failed_before = request.session.testsfailed
    c = LocalCluster(root)
    try:
        c.start_head(dashboard=dashboard)
        start_ray(address=c.address)
        c.add_worker()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()
        Config.initialize("")
        if request.session.testsfailed > failed_before:
            log(f"cluster torn down; its logs (a test failed) are kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            log("cluster torn down")
