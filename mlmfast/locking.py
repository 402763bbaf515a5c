"""One run per output directory: an exclusive lock that dies with its process.

``with DirectoryLock(out, "mlmfast prepare"):`` takes ``out/.mlmfast.lock`` with ``flock``
(non-blocking). A second run on the same directory fails at once with :class:`DirectoryLocked`,
naming the holder's command, pid, host and start time. The kernel releases the lock when its
holder exits in any way, ``kill -9`` included, so a lock file left by a dead process is simply
taken over. On network file systems ``flock`` is only as good as the file system's locking
(NFSv4 and Lustre with ``flock`` mounts honour it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

LOCK_NAME = ".mlmfast.lock"

__all__ = ["LOCK_NAME", "DirectoryLock", "DirectoryLocked"]


class DirectoryLocked(RuntimeError):
    """Another live process holds the directory's lock."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


class DirectoryLock:
    """An exclusive, process-bound lock on ``directory`` (created if missing) for ``command``."""

    def __init__(self, directory: str, command: str):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.command = command
        self._fd: int | None = None
        self.previous: dict = {}  # the record of a dead holder whose lock was taken over

    def __enter__(self) -> DirectoryLock:
        self._created = not os.path.isdir(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                h = _holder(fd)
                os.close(fd)
                who = (
                    f"{h.get('command', 'another run')} (pid {h.get('pid', '?')} on "
                    f"{h.get('host', '?')}, since {h.get('started', '?')})"
                )
                raise DirectoryLocked(
                    f"{self.directory}: in use by {who}; wait for it to finish or stop it, "
                    "or choose another output directory"
                ) from None
            # the holder before us may have removed the file between our open and our flock:
            # then we hold a lock on a name nobody else sees, so start again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous = _holder(fd)
        record = {
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode("utf-8"))
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        # unlink while still holding it: a waiter that opened this file re-checks the name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
        if self._created:  # a run refused before it wrote anything leaves no directory behind
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)
