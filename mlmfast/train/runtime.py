"""Process setup shared by the trainers: ``torchrun`` environment, device, metrics logging,
and a clean stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialised:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. one rank got SIGTERM)."""
        if not self.initialised:
            return flag
        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.initialised and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(device: str | None = None) -> Dist:
    """One process per device: reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK, picks the device
    (``cuda:LOCAL_RANK`` when CUDA is available unless ``device`` says otherwise) and initialises
    the process group (NCCL on CUDA, gloo on the CPU) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but torch sees no CUDA device; use --device cpu (or auto)"
            )
        dev = torch.device(device if ":" in device else f"cuda:{local}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    d = Dist(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        d.initialised = True
    return d


class MetricsLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars (``tb/``), rank 0 only.
    ``tensorboard``: True needs the package, None writes the scalars when it is installed."""

    def __init__(self, run_dir: str, *, enabled: bool = True, tensorboard: bool | None = None):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        # open for the run's lifetime, closed by close()
        self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard or tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the install
                if tensorboard:
                    raise
                self._tb = None
            else:
                self._tb = SummaryWriter(os.path.join(run_dir, "tb"))

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, "time": round(time.time(), 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step (the trainer
    then saves a checkpoint and exits); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def require(package: str, needed_by: str, *, fix: str = "") -> None:
    """An ImportError naming what needs ``package`` and how to install it, before any work
    that would be lost when the import fails later."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ImportError(
            f"{needed_by} needs the {package} package: pip install {package}"
            + (f", {fix}" if fix else "")
        )
