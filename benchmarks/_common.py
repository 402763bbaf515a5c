"""What the data-side benchmark scripts share: the record of what they ran on, and writing their
JSON. Imported as ``_common`` (the scripts run from this folder: ``python benchmarks/bench_x.py``)."""

from __future__ import annotations

import json
import os
import platform


def env_info(torch_version: bool = False) -> dict:
    """mlmfast's version, Python's, the processor and its core count (and torch's)."""
    import mlmfast

    env = {"mlmfast": mlmfast.__version__}
    if torch_version:
        import torch

        env["torch"] = torch.__version__
    env.update(
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
    )
    return env


def write_json(path: str, results: dict) -> None:
    """``results`` to ``path`` (its folder made), and a line saying so."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
