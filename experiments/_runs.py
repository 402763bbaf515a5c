"""Shared pieces of the experiment scripts: run directories (skip what finished, resume what was
interrupted), the machine record and the result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable

import torch

from mlmfast.train import checkpoint as ckpt


def previous_run(out: str) -> tuple[dict | None, bool]:
    """``(summary, resume)`` for the run directory ``out``: the saved summary when the run
    finished (skip it), else None and whether a checkpoint is there to resume from. A directory
    that holds no checkpoint is removed, so the run begins clean (metrics.jsonl appends)."""
    summary_path = os.path.join(out, "summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("finished"):
            return summary, False
    resume = bool(ckpt.list_checkpoints(out))
    if not resume and os.path.isdir(out):
        shutil.rmtree(out)
    return None, resume


def machine(threads: int) -> dict:
    """What the results were measured on."""
    return {
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_results(
    base: str,
    result: dict,
    markdown: Callable[[dict], str],
    plots: dict[str, Callable[[dict, str], None]],
    t0: float,
) -> None:
    """``base``.json and ``base``.md, each plot drawn to ``base`` + its suffix; the table and
    the study's wall time printed."""
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(table)
    for suffix, plot in plots.items():
        plot(result, base + suffix)
    print(table)
    print(f"study: {time.perf_counter() - t0:.0f} s; results in {base}.json/.md/.png")
