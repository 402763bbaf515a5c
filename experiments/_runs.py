"""Run directories of the experiment scripts: skip what finished, resume what was interrupted."""

from __future__ import annotations

import json
import os
import shutil

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
