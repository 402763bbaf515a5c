"""The loss curve of a run (``mlmfast plot RUN``): training loss and held-out (pretrain) or
validation (finetune) loss against the step, from the run's ``metrics.jsonl``, as a PNG beside
it. Pretrain draws it at the end of every run; this command draws it for any run, also one
still training."""

from __future__ import annotations

import argparse
import json
import os

LOSS_PLOT = "loss.png"
# metrics.jsonl splits drawn, and their legend entries
CURVES = {"train": "training loss", "eval": "held-out loss", "val": "validation loss"}


def read_losses(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``(step, loss)`` per split of :data:`CURVES`, by step. A step logged twice (a run resumed
    from an older checkpoint repeats steps) keeps its last value; a line cut short by a killed
    run is skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{run_dir!r} is not a run directory (no metrics.jsonl in it); expected the --out "
            "directory of mlmfast pretrain or mlmfast finetune"
        )
    curves: dict[str, dict[int, float]] = {split: {} for split in CURVES}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            split = record.get("split") if isinstance(record, dict) else None
            loss, step = record.get("loss"), record.get("step")
            if split in curves and isinstance(loss, int | float) and isinstance(step, int):
                curves[split][step] = float(loss)
    return {split: sorted(points.items()) for split, points in curves.items() if points}


def plot_losses(run_dir: str, path: str | None = None) -> str:
    """Draw the loss curve of ``run_dir`` to ``path`` (default ``RUN/loss.png``); returns the
    path. Needs matplotlib (made without pyplot: no global backend is touched)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = read_losses(run_dir)
    if "train" not in curves:
        raise ValueError(
            f"{run_dir!r}: metrics.jsonl holds no training loss yet (the first line comes after "
            "--log-every steps)"
        )
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for split, label in CURVES.items():
        if split not in curves:
            continue
        steps, losses = zip(*curves[split], strict=True)
        held_out = split != "train"
        ax.plot(
            steps,
            losses,
            label=label,
            marker="o" if held_out else None,
            linewidth=1.5 if held_out else 1.0,
            color="C1" if held_out else "C0",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: loss per step")
    ax.grid(alpha=0.3)
    ax.legend()
    path = path or os.path.join(run_dir, LOSS_PLOT)
    tmp = f"{path}.tmp-{os.getpid()}"
    fig.savefig(tmp, dpi=120, format="png")
    os.replace(tmp, path)  # a reader never sees half a PNG
    return path


def plot_losses_or_note(run_dir: str, command: str) -> str | None:
    """:func:`plot_losses` at the end of a run: without matplotlib a one-line note instead of
    an error (the run itself succeeded); returns the path or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{command}: no {LOSS_PLOT}: matplotlib is not installed (pip install matplotlib)")
        return None
    try:
        return plot_losses(run_dir)
    except ValueError as e:  # no training loss logged (a run stopped before its first line)
        print(f"{command}: no {LOSS_PLOT}: {e}")
        return None


# -- CLI -----------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a run's loss curve (training and held-out loss per step) to a PNG",
        description="Draw the loss curve of a pretrain or finetune run from its metrics.jsonl: "
        "training loss and held-out (pretrain) or validation (finetune) loss against the step. "
        "Works on a run that is still training.",
        usage="mlmfast plot RUN [--output PNG]",
    )
    p.add_argument("run", metavar="RUN", help="the --out directory of mlmfast pretrain/finetune")
    p.add_argument("--output", metavar="PNG", help="where to write (default: RUN/loss.png)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print(plot_losses(args.run, args.output))
    return 0
