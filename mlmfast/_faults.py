"""Fault injection for the crash tests. ``MLMFAST_KILL_AT=<point>[#<n>]`` makes the process
kill itself with SIGKILL (no cleanup, as a power cut or the OOM killer would) the ``n``-th time
(default: first) it reaches ``kill_point(<point>)``. Unset, a point costs one dict lookup."""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "MLMFAST_KILL_AT"
_reached: Counter = Counter()


def kill_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, n = spec.partition("#")
    if name != point:
        return
    _reached[point] += 1
    if _reached[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
