"""One writer per output folder: a lock file in the folder, taken before any work starts.

Local folders (and file:// URIs) are locked with `fcntl.flock` on `DIR/.allray-lock`: the kernel
holds the lock for as long as the writing process lives and drops it when the process ends, even
when it is killed, so a lock left behind by a dead process never blocks anyone (it is taken over;
the file's contents, which name the holder, are only for the message). The lock is advisory, so it
guards allray against allray, on one machine or over an NFS mount whose server supports locks.

Object stores (s3://, gs://) have no locks that pyarrow can reach, so a URI output gets a lease
object instead: written when absent, read back after a pause to see that no other writer replaced
it, deleted when the run ends. It refuses a second writer that starts after the first has written
its lease; two writers starting within the same second may both pass. A lease left by a killed run
stays until it is deleted (the message says how).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from datetime import UTC, datetime

import pyarrow.fs as pafs

from pipeline.locations import join, resolve

LOCK_FILE = ".allray-lock"
_HOLDER_WAIT_S = 1.0  # how long a refused writer waits for the holder's record to be written
_LEASE_SETTLE_S = 1.0  # pause before a URI lease is read back, so a racing writer's lease shows


class OutputLockedError(ValueError):
    """Another allray run is writing the output folder; the message names it and what to do."""


def _holder_record(purpose: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose, "token": uuid.uuid4().hex,
            "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(sys.argv[:1])}  # fmt: skip


def _describe(holder: dict) -> str:
    return (f"allray {holder.get('purpose', '?')} on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"started {holder.get('started_utc', '?')}")  # fmt: skip


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _read_holder(fd: int) -> dict:
    """The holder record in a locked lock file. The holder writes it just after taking the lock,
    so a reader that comes in between finds the file empty (or cut short): it reads again for up to
    `_HOLDER_WAIT_S` before giving up on naming the holder."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


class OutputLock:
    """The lock of one output folder, held until `release` (or the process ends)."""

    def __init__(self, out: str, purpose: str) -> None:
        self.out = str(out)
        self.purpose = purpose
        self.holder = _holder_record(purpose)
        self._fd: int | None = None
        self._lease: tuple[pafs.FileSystem, str] | None = None
        fs, base = resolve(self.out)
        fs.create_dir(base, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            self._lock_local(join(base, LOCK_FILE))
        else:
            self._lock_lease(fs, join(base, LOCK_FILE))

    def _lock_local(self, path: str) -> None:
        import fcntl

        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"{self.out} is being written by {_describe(holder)}: wait for it to end, or use another "
                    f"--out (a lock whose process has died is taken over by itself; if its host is gone, delete "
                    f"{path})") from None  # fmt: skip
            try:  # the file we locked may have been deleted by a holder releasing it just now: retry
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd
        self._path = path

    def _lock_lease(self, fs: pafs.FileSystem, path: str) -> None:
        def refuse(holder: dict) -> OutputLockedError:
            return OutputLockedError(
                f"{self.out} is being written by {_describe(holder)}: wait for it to end, or use another --out "
                f"(on object storage a lease of a killed run stays: if that run is gone, delete {LOCK_FILE} "
                "in the output folder)")  # fmt: skip

        if fs.get_file_info(path).type == pafs.FileType.File:
            raise refuse(self._read_lease(fs, path))
        with fs.open_output_stream(path) as fh:
            fh.write(json.dumps(self.holder).encode())
        time.sleep(_LEASE_SETTLE_S)
        holder = self._read_lease(fs, path)
        if holder.get("token") != self.holder["token"]:
            raise refuse(holder)
        self._lease = (fs, path)

    @staticmethod
    def _read_lease(fs: pafs.FileSystem, path: str) -> dict:
        try:
            with fs.open_input_stream(path) as fh:
                return _parse(fh.readall().decode("utf-8", "replace"))
        except OSError:
            return {}

    def release(self) -> None:
        """Give the folder back (deletes the lock file; the kernel lock goes with the descriptor)."""
        if self._fd is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            fs, path = self._lease
            try:
                if self._read_lease(fs, path).get("token") == self.holder["token"]:
                    fs.delete_file(path)
            except OSError:
                pass
            self._lease = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit os may be gone; the kernel drops the lock anyway
            pass


def lock_output(out: str, purpose: str) -> OutputLock:
    """Take the one-writer lock of `out` (created if missing); OutputLockedError naming the holder."""
    return OutputLock(out, purpose)


def claim_empty_output(out: str, purpose: str) -> OutputLock:
    """Lock a new output folder that must hold nothing else (a report folder); ValueError when it does.

    The emptiness check runs under the lock, so two runs given one --out cannot both pass it."""
    lock = lock_output(out, purpose)
    fs, base = resolve(out)
    others = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
              if i.base_name != LOCK_FILE]  # fmt: skip
    if others:
        lock.release()
        raise ValueError(f"report folder {out} is not empty: choose a new --out")
    return lock


def locked_by_other(out: str) -> dict | None:
    """The holder of `out`'s lock when another process holds it, else None (free, or held by us).

    On object storage: the lease's holder unless it is this process."""
    fs, base = resolve(out)
    path = join(base, LOCK_FILE)
    if not isinstance(fs, pafs.LocalFileSystem):
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        holder = OutputLock._read_lease(fs, path)
        mine = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
        return None if mine else holder
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder or _read_holder(fd) or {"host": "?", "pid": "?"}
        return None
    finally:
        os.close(fd)
