"""What the trainers' configurations share: a JSON config file with command-line overrides,
the check that a resumed run keeps the settings it was trained with, and argparse booleans."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


class RunConfig:
    """Mixin for the trainers' config dataclasses. ``RESUMABLE_CHANGES`` names the fields that
    may differ between a run and its resumption (they do not change the maths)."""

    RESUMABLE_CHANGES: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: str, **overrides: Any):
        """A config from a JSON file (keys = the field names), then ``overrides``."""
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except OSError as e:
            raise FileNotFoundError(f"config: cannot read {path!r} ({e})") from None
        except ValueError as e:
            raise ValueError(f"config: {path!r} is not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"config: {path!r} must hold a JSON object of options")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config {path!r}: unknown keys {unknown}; known: {sorted(known)}")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str, **converted: Any):
        """The config of a subcommand: ``--config FILE`` (if given), then the options given on
        the command line (unset ones are None), then ``converted`` values; 0 for
        ``--max-grad-norm`` means no clipping."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        given.update(converted)
        if given.get("max_grad_norm") == 0:
            given["max_grad_norm"] = None
        if args.config:
            return cls.from_file(args.config, **given)
        missing = [n for n in ("data", "out") if n not in given]
        if missing:
            raise SystemExit(f"mlmfast {command}: {', '.join('--' + m for m in missing)} required")
        return cls(**given)

    def resume_state(self, main: bool = True) -> dict[str, Any] | None:
        """The verified state of the checkpoint this run continues from (``resume``, or
        ``resume_from``: a step of this run or a checkpoint directory), after checking its
        settings; None for a run from step 0. A run without either refuses an ``out`` that holds
        checkpoints. ``main``: this is the process that prints and sets checkpoints aside."""
        from mlmfast.train import checkpoint as ckpt

        if self.resume or self.resume_from is not None:
            path = ckpt.checkpoint_to_resume(self.out, self.resume_from, set_aside=main)
            if path is None:
                if main:
                    print(f"resume: no checkpoint in {self.out}, starting from step 0")
                return None
            state = ckpt.load_checkpoint_state(path)
            self.check_resume(state["config"])
            return state
        if ckpt.list_checkpoints(self.out):
            raise FileExistsError(
                f"{self.out} already holds checkpoints; pass --resume to continue that run (or "
                "--resume-from STEP for an older checkpoint), or choose another --out"
            )
        return None

    def check_resume(self, saved: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint trained with other settings (``saved``: its config)."""
        for key, value in saved.items():
            if key in self.RESUMABLE_CHANGES or not hasattr(self, key):
                continue
            if getattr(self, key) != value:
                raise ValueError(
                    f"resume: {key} is {getattr(self, key)!r} but the checkpoint was trained "
                    f"with {value!r}; resume with the original setting (or start a new run in "
                    "another --out directory)"
                )


def parse_bool(v: str) -> bool:
    """argparse type for true/false options."""
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


# Options whose meaning is the same in every trainer, declared once (argparse `add_argument`).
def add_optimiser_arguments(a) -> None:
    a("--weight-decay", type=float)
    a("--schedule", choices=("linear", "cosine", "constant"))
    a("--warmup-steps", type=int)
    a("--warmup-ratio", type=float)
    a("--max-grad-norm", type=float, help="gradient clipping (0 = off)")
    a("--hidden-dropout", type=float)
    a("--attention-dropout", type=float)


def add_run_arguments(a) -> None:
    a("--save-every", type=int, help="checkpoint every N steps (and always at the end)")
    a("--keep-last", type=int, help="checkpoints to keep (default 2)")
    a(
        "--resume",
        type=parse_bool,
        nargs="?",
        const=True,
        help="continue from the newest checkpoint",
    )
    a(
        "--resume-from",
        help="continue from this checkpoint instead: a step of this run (e.g. 300) or a "
        "checkpoint directory; later checkpoints of the run are set aside, not deleted",
    )
    a("--stop-at-step", type=int, help="save and stop at this step (the schedule is unchanged)")
    a("--tensorboard", type=parse_bool)
    a("--progress", type=parse_bool)
