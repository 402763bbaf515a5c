"""What the trainers' configurations share: a JSON config file with command-line overrides,
type checks of every field (a JSON file can hold anything), the check that a resumed run keeps
the settings it was trained with, and command-line options whose help shows the field's
default."""

from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import os
import types
import typing
from collections.abc import Callable
from typing import Any

REQUIRED = "required unless in --config"


class RunConfig:
    """Mixin for the trainers' config dataclasses. ``RESUMABLE_CHANGES`` names the fields that
    may differ between a run and its resumption (they do not change the maths)."""

    RESUMABLE_CHANGES: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # pathlib paths are fine; the JSON config and the checks below want str
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                setattr(self, f.name, os.fspath(value))

    def check_types(self) -> None:
        """Every field holds a value of its declared type (ints are floats too, bools are not
        ints): a JSON config or a caller can pass anything, and a wrong type would otherwise
        surface as a TypeError deep inside the run."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = _allowed_types(hints[f.name])
            if not any(_is_instance(value, t) for t in allowed):
                expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
                raise ValueError(
                    f"{f.name} must be {expected}, got {type(value).__name__} {value!r}"
                )

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
        missing = [n for n in cls.required_fields() if n not in values]
        if missing:
            raise ValueError(
                f"{', '.join('--' + m.replace('_', '-') for m in missing)} required: give "
                f"{'it' if len(missing) == 1 else 'them'} on the command line or as "
                f"{', '.join(repr(m) for m in missing)} in {path}"
            )
        return cls(**values)

    @classmethod
    def required_fields(cls) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]

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
        missing = [n for n in cls.required_fields() if n not in given]
        if missing:
            raise ValueError(
                f"{', '.join('--' + m.replace('_', '-') for m in missing)} required (on the "
                f"command line or in a --config FILE); see mlmfast {command} --help"
            )
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


_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a JSON object",
    list: "a list",
    type(None): "unset (null)",
}


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed_types(arg))
    return (typing.get_origin(hint) or hint,)


def _is_instance(value: Any, t: type) -> bool:
    # numbers' ABCs: numpy scalars from a caller's arithmetic are numbers too
    if t is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, t)


def parse_bool(v: str) -> bool:
    """argparse type for true/false options."""
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def option_adder(group, config: type) -> Callable[..., None]:
    """``add_argument`` for the options of a trainer whose values land in the dataclass
    ``config``. Options default to None on the command line, so that ``--config FILE`` can
    supply them; the help text shows the dataclass default instead, or that the option is
    required unless in --config. A help text that states its default itself is left as it is.
    ``bool=True`` makes a true/false option (``--flag`` alone means true)."""
    fields = {f.name: f for f in dataclasses.fields(config)}

    def add(*flags: str, help: str, bool: bool = False, **kw: Any) -> None:  # noqa: A002
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        field = fields.get(dest)
        if bool:
            kw.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif kw.get("type") in (int, float) and "choices" not in kw:
            kw.setdefault("metavar", "N" if kw["type"] is int else "X")
        if field is not None and "default" not in help:
            if field.default is dataclasses.MISSING:
                help = f"{help} ({REQUIRED})"
            else:
                help = f"{help} (default: {_shown(field.default)})"
        group.add_argument(*flags, help=help.replace("%", "%%"), **kw)

    return add


# Options whose meaning is the same in every trainer, declared once.
def add_optimiser_arguments(a) -> None:
    a("--weight-decay", type=float, help="AdamW weight decay (not on biases and LayerNorm)")
    a("--adam-beta1", type=float, help="AdamW beta1")
    a("--adam-beta2", type=float, help="AdamW beta2")
    a("--adam-eps", type=float, help="AdamW epsilon")
    a(
        "--schedule",
        choices=("linear", "cosine", "constant"),
        help="learning rate after the warmup: linear or cosine decay to 0, or constant",
    )
    a("--warmup-steps", type=int, help="warmup steps (default: --warmup-ratio of the steps)")
    a("--warmup-ratio", type=float, help="warmup as a share of the steps")
    a("--max-grad-norm", type=float, help="gradient clipping norm, 0 = off")
    a("--hidden-dropout", type=float, help="dropout of the hidden states (default: the model's)")
    a("--attention-dropout", type=float, help="dropout of the attention (default: the model's)")


def add_run_arguments(a) -> None:
    a("--save-every", type=int, help="checkpoint every N steps (default: only at the end)")
    a("--keep-last", type=int, help="checkpoints to keep")
    a("--resume", bool=True, help="continue from the newest checkpoint of --out")
    a(
        "--resume-from",
        metavar="STEP|DIR",
        help="continue from this checkpoint instead: a step of this run (e.g. 300) or a "
        "checkpoint directory; later checkpoints of the run are set aside, not deleted "
        "(default: none)",
    )
    a(
        "--stop-at-step",
        type=int,
        help="save and stop at this step; the schedule is unchanged (default: none)",
    )
    a(
        "--tensorboard",
        bool=True,
        help="also write TensorBoard scalars to OUT/tb (default: when the package is installed)",
    )
    a("--progress", bool=True, help="show a progress bar")
