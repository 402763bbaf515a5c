"""Atomic, verifiable checkpoints that continue a run bit for bit.

A checkpoint is a directory ``RUN/checkpoints/step-NNNNNNN/``:

* ``model/``: a transformers model directory (``from_pretrained`` loads it) with the tokenizer;
* ``state.pt``: optimiser, scheduler, loader position, RNG states, step, epoch, run config;
* ``meta.json``: step and the sha256 of every file, written last.

It is written under a temporary name and renamed into place, so a crash leaves either the
complete checkpoint or none; a checkpoint whose files do not match ``meta.json`` is refused.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from mlmfast.data.shards import atomic_write_json, file_sha256

_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or from another run configuration."""


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (dropout, shuffles in user code)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    # user code may draw from numpy's global RNG; it is part of what a step depends on
    np_state = np.random.get_state()  # noqa: NPY002
    state["numpy"] = {
        "keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "pos": int(np_state[2]),
        "has_gauss": int(np_state[3]),
        "gauss": float(np_state[4]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step-{step:07d}")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run (they have meta.json), oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, "meta.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def save_checkpoint(
    run_dir: str,
    step: int,
    *,
    model,
    tokenizer,
    state: dict[str, Any],
    keep_last: int | None = None,
) -> str:
    """Write checkpoint ``step`` atomically; keep only the newest ``keep_last`` (None: all)."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = step_dir(run_dir, step)
    tmp = os.path.join(root, f".tmp-step-{step:07d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per save would break the trainer's own bar
    model.save_pretrained(os.path.join(tmp, "model"))
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(tmp, "model"))
    torch.save(state, os.path.join(tmp, "state.pt"))
    files = {}
    for base, _, names in os.walk(tmp):
        for name in names:
            path = os.path.join(base, name)
            files[os.path.relpath(path, tmp)] = file_sha256(path)
    atomic_write_json(os.path.join(tmp, "meta.json"), {"step": step, "files": files})
    if os.path.exists(final):  # the same step written again (e.g. resumed run ending there)
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    if keep_last is not None:
        for _, path in list_checkpoints(run_dir)[:-keep_last]:
            if path != final:
                shutil.rmtree(path, ignore_errors=True)
    return final


def remove_partial_checkpoints(run_dir: str) -> list[str]:
    """Delete the temporary directories of checkpoints whose writer was killed mid-write
    (``checkpoints/.tmp-step-*``); only under the run directory's lock. Returns their names."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    gone = sorted(n for n in os.listdir(root) if n.startswith(".tmp-step-"))
    for name in gone:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return gone


def checkpoint_to_resume(
    run_dir: str, resume_from: str | int | None = None, set_aside: bool = True
) -> str | None:
    """The checkpoint a resumed run continues from: with ``resume_from`` a step of this run
    (``300``) or a checkpoint or run directory, else the run's newest; None when it has none.
    With ``set_aside`` (the main process), checkpoints of this run newer than the chosen one
    are set aside (``checkpoints/superseded-step-N``, kept, never listed), so that the continued
    run and a later ``--resume`` cannot mix the two histories."""
    if resume_from is None or str(resume_from) == "":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    text = str(resume_from)
    if text.isdigit():
        path = step_dir(run_dir, int(text))
        if not os.path.isfile(os.path.join(path, "meta.json")):
            steps = [step for step, _ in list_checkpoints(run_dir)]
            raise CheckpointError(
                f"resume_from {text}: {run_dir} has no checkpoint of step {int(text)} (it has "
                f"steps {steps}); pass one of them, or a checkpoint directory"
            )
    else:
        path = resolve_checkpoint(text)
    chosen = os.path.realpath(path)
    mine = list_checkpoints(run_dir)
    step = next((step for step, p in mine if os.path.realpath(p) == chosen), None)
    if set_aside and step is not None:
        for later, p in mine:
            if later > step:
                aside = os.path.join(os.path.dirname(p), f"superseded-step-{later:07d}")
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(p, aside)
                print(f"resume: set aside the later checkpoint {p} as {aside}")
    return path


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from itself or a run directory (its newest checkpoint)."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{path}: no checkpoint found (expected a checkpoint directory with meta.json, or a "
            "run directory with checkpoints/step-*/); was the run saved at least once?"
        )
    return found[-1][1]


def verify_checkpoint(path: str) -> dict[str, Any]:
    """meta.json of a checkpoint after checking every file against its sha256."""
    meta_path = os.path.join(path, "meta.json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{meta_path}: unreadable ({e}); the checkpoint is incomplete"
        ) from None
    for rel, digest in meta.get("files", {}).items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing from the checkpoint (listed in meta.json)")
        if file_sha256(file) != digest:
            older = [
                step
                for step, p in list_checkpoints(os.path.dirname(os.path.dirname(path)))
                if os.path.realpath(p) != os.path.realpath(path)
            ]
            raise CheckpointError(
                f"{file}: sha256 does not match meta.json (corrupt); resume from an older "
                f"checkpoint with --resume-from STEP (this run has {older or 'no other'})"
            )
    if "state.pt" not in meta.get("files", {}):
        raise CheckpointError(f"{path}: meta.json lists no state.pt; not a training checkpoint")
    return meta


def load_checkpoint_state(path: str) -> dict[str, Any]:
    """The verified ``state.pt`` of a checkpoint (or of a run's newest one)."""
    path = resolve_checkpoint(path)
    verify_checkpoint(path)
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
    state["path"] = path
    return state


def load_model_weights(model, checkpoint: str) -> None:
    """Load the weights of a checkpoint's ``model/`` into ``model`` exactly (no dtype change)."""
    from safetensors.torch import load_file

    directory = os.path.join(checkpoint, "model")
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(os.path.join(directory, f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    missing = [k for k in missing if k not in tied and not k.endswith("decoder.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it written by a run with another model config?"
        )
