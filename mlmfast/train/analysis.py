"""What fine-tuning did to the encoder: weight drift per block and representation similarity
(linear CKA) per layer, as a JSON-serialisable report and a plot.

Blocks are named the same for every BERT-like model, whatever wraps it: ``embeddings``,
``layer.0`` ... ``layer.{N-1}``, ``pooler``, ``head`` (everything outside the encoder: the
classifier, the MLM head). Parameter names are matched after removing wrappers
(``base_model.model.`` of PEFT, ``module.`` of DDP, ``_orig_mod.`` of ``torch.compile``) and the
model's base prefix (``bert.``), so a ``BertForSequenceClassification`` compares with the
``BertModel`` it was made from. A PEFT model with unmerged LoRA adapters is compared by its
effective weights ``W + scale * B @ A``, so it reads the same before and after merging.

Report (:func:`drift_report`)::

    {"weight_drift": {"embeddings": 0.01, "layer.0": 0.02, ..., "pooler": ..., "head": ...},
     "cka": {"embeddings": 0.99, "layer.0": 0.98, ...},   # only with probe batches
     "num_tokens": 4096}
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "drift_report",
    "layer_cka",
    "layer_weight_drift",
    "linear_cka",
    "plot_drift",
]

_WRAPPERS = ("base_model.model.", "module.", "_orig_mod.")
_ENCODER_ROOTS = ("embeddings", "encoder", "pooler")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


# ----------------------------------------------------------------------------- names


def canonical_name(name: str) -> str | None:
    """A parameter name without wrappers and base prefix; None for adapter-only parameters
    (``lora_A``, ``lora_B``, PEFT's copy of the original head)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    parts = name.split(".")
    if any(p.startswith("lora_") or p == "original_module" for p in parts):
        return None
    out = []
    i = 0
    while i < len(parts):
        if parts[i] == "base_layer":
            i += 1
        elif (
            parts[i] == "modules_to_save"
        ):  # PEFT's trained copy of a head: .modules_to_save.<name>.
            i += 2
        else:
            out.append(parts[i])
            i += 1
    if len(out) > 1 and out[0] not in _ENCODER_ROOTS and out[1] in _ENCODER_ROOTS:
        out = out[1:]  # bert.encoder... -> encoder...
    return ".".join(out)


def block_of(name: str) -> str:
    """The block of a canonical parameter name."""
    m = _LAYER.match(name)
    if m:
        return f"layer.{m.group(1)}"
    root = name.split(".", 1)[0]
    return root if root in ("embeddings", "pooler") else "head"


def _block_order(name: str) -> tuple[int, int, str]:
    if name == "embeddings":
        return (0, 0, name)
    if name.startswith("layer."):
        return (1, int(name.split(".", 1)[1]), name)
    return (2, {"pooler": 0, "head": 1}.get(name, 2), name)


def _effective_parameters(model: Any) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor, for a module (its effective weights) or a state dict."""
    if isinstance(model, Mapping):
        items = list(model.items())
    elif isinstance(model, torch.nn.Module):
        effective = {}
        for mname, module in model.named_modules():
            # duck-typed so plain models never import peft; a LoRA layer that is not merged
            # holds W in base_layer and the update in lora_A/lora_B
            if not (
                hasattr(module, "get_delta_weight")
                and hasattr(module, "get_base_layer")
                and hasattr(module, "active_adapters")
            ):
                continue
            base = module.get_base_layer()
            weight = base.weight.detach()
            if not getattr(module, "disable_adapters", False):
                merged = set(getattr(module, "merged_adapters", ()))
                known = set(getattr(module, "lora_A", {})) | set(
                    getattr(module, "lora_embedding_A", {})
                )
                for adapter in module.active_adapters:
                    if adapter in known and adapter not in merged:
                        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            effective[f"{mname}.base_layer.weight"] = weight
        items = [(n, effective.get(n, p)) for n, p in model.named_parameters()]
    else:
        raise TypeError(f"expected a torch.nn.Module or a state dict, got {type(model).__name__}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in items:
        key = canonical_name(name)
        if key is not None and torch.is_tensor(tensor) and tensor.is_floating_point():
            out[key] = tensor.detach()
    return out


# ----------------------------------------------------------------------------- weight drift


@torch.no_grad()
def layer_weight_drift(before: Any, after: Any, *, granularity: str = "block") -> dict[str, float]:
    """Relative L2 change ``||W_after - W_before|| / ||W_before||`` per block (all of a block's
    parameters as one vector), in float64, in block order (``embeddings``, ``layer.i``,
    ``pooler``, ``head``). ``granularity="parameter"`` gives it per canonical parameter name.

    ``before``/``after``: modules or state dicts. Only parameters present in both count (a
    ``BertModel`` has no ``head``); a parameter whose shape changed is an error."""
    if granularity not in ("block", "parameter"):
        raise ValueError(f"granularity must be 'block' or 'parameter', got {granularity!r}")
    a, b = _effective_parameters(before), _effective_parameters(after)
    common = [n for n in a if n in b]
    if not common:
        raise ValueError(
            "before and after have no parameters in common (after removing prefixes); "
            f"before has e.g. {list(a)[:3]}, after {list(b)[:3]}"
        )
    sums: dict[str, list[float]] = {}
    for name in common:
        w0, w1 = a[name], b[name]
        if w0.shape != w1.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(w0.shape)} before and {tuple(w1.shape)} "
                "after; expected the same architecture"
            )
        w0 = w0.double()
        w1 = w1.to(device=w0.device, dtype=torch.float64)
        key = block_of(name) if granularity == "block" else name
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += float((w1 - w0).pow(2).sum())
        acc[1] += float(w0.pow(2).sum())
    order = sorted(sums, key=_block_order) if granularity == "block" else list(sums)
    out = {}
    for key in order:
        diff, ref = sums[key]
        if ref > 0:
            out[key] = math.sqrt(diff) / math.sqrt(ref)
        else:  # an all-zero start (e.g. a zero-initialised bias): relative change undefined
            out[key] = 0.0 if diff == 0 else math.inf
    return out


# ----------------------------------------------------------------------------- CKA


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.dim() != 2:
        raise ValueError(f"{name} must be [n, features], got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same ``n`` examples,
    ``x`` [n, d1] and ``y`` [n, d2]: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on
    column-centred features, in float64. 1 for identical representations; invariant to
    orthogonal transforms and isotropic scaling; in [0, 1]."""
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows"
        )
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 examples, got {x.shape[0]}")
    y = y.to(x.device)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n, d = x.shape[0], max(x.shape[1], y.shape[1])
    if n < d:  # the n x n Gram matrices are the smaller ones
        kx, ky = x @ x.T, y @ y.T
        xy, xx, yy = (kx * ky).sum(), kx.pow(2).sum(), ky.pow(2).sum()
    else:
        xy = (y.T @ x).pow(2).sum()
        xx = (x.T @ x).pow(2).sum()
        yy = (y.T @ y).pow(2).sum()
    return _cka_ratio(float(xy), float(xx), float(yy))


def _cka_ratio(xy: float, xx: float, yy: float) -> float:
    if xx <= 0 or yy <= 0:
        which = "x" if xx <= 0 else "y"
        raise ValueError(f"linear_cka: {which} has no variance (all rows equal after centring)")
    return xy / math.sqrt(xx * yy)


class _Moments:
    """Streaming sums for linear CKA over token batches: CKA needs only the centred
    covariances, which follow from sum(x x^T), sum(x) and n, so no token list is kept."""

    def __init__(self):
        self.n = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.to(device=x.device, dtype=torch.float64)
        if self.sx is None:
            self.sx, self.sy = x.sum(0), y.sum(0)
            self.sxx, self.syy, self.sxy = x.T @ x, y.T @ y, y.T @ x
        else:
            self.sx += x.sum(0)
            self.sy += y.sum(0)
            self.sxx += x.T @ x
            self.syy += y.T @ y
            self.sxy += y.T @ x
        self.n += x.shape[0]

    def cka(self) -> float:
        if self.n < 2:
            raise ValueError(f"layer_cka needs at least 2 tokens, got {self.n}")
        n = self.n
        cxx = self.sxx - torch.outer(self.sx, self.sx) / n
        cyy = self.syy - torch.outer(self.sy, self.sy) / n
        cxy = self.sxy - torch.outer(self.sy, self.sx) / n
        return _cka_ratio(float(cxy.pow(2).sum()), float(cxx.pow(2).sum()), float(cyy.pow(2).sum()))


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder inside a task model or a PEFT wrapper (``BertModel`` for BERT)."""
    if hasattr(model, "get_base_model"):  # PEFT: the transformers model, adapters injected
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _layer_cka(
    before: torch.nn.Module,
    after: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    max_tokens: int | None,
) -> tuple[dict[str, float], int]:
    enc = (_encoder(before), _encoder(after))
    modes = [m.training for m in enc]
    moments: list[_Moments] = []
    total = 0
    try:
        for m in enc:
            m.eval()
        for batch in batches:
            if "input_ids" not in batch:
                raise ValueError(f"probe batches need input_ids, got keys {sorted(batch)}")
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(batch["input_ids"])
            states = []
            for m in enc:
                dev = _device(m)
                inputs = {
                    k: batch[k].to(dev)
                    for k in ("input_ids", "attention_mask", "token_type_ids")
                    if k in batch
                }
                out = m(**inputs, output_hidden_states=True, return_dict=True)
                states.append(out.hidden_states)
            if len(states[0]) != len(states[1]):
                raise ValueError(
                    f"before has {len(states[0]) - 1} layers and after {len(states[1]) - 1}; "
                    "layer_cka compares layer by layer"
                )
            keep = mask.bool().reshape(-1)
            if max_tokens is not None:
                room = max_tokens - total
                idx = keep.nonzero().squeeze(1)[:room]
                keep = torch.zeros_like(keep)
                keep[idx] = True
            if not moments:
                moments = [_Moments() for _ in states[0]]
            for acc, h0, h1 in zip(moments, states[0], states[1], strict=True):
                k0, k1 = keep.to(h0.device), keep.to(h1.device)
                acc.add(h0.reshape(-1, h0.shape[-1])[k0], h1.reshape(-1, h1.shape[-1])[k1])
            total += int(keep.sum())
            if max_tokens is not None and total >= max_tokens:
                break
    finally:
        for m, mode in zip(enc, modes, strict=True):
            m.train(mode)
    if not moments:
        raise ValueError("layer_cka got no probe batches")
    names = ["embeddings"] + [f"layer.{i}" for i in range(len(moments) - 1)]
    return {name: acc.cka() for name, acc in zip(names, moments, strict=True)}, total


def layer_cka(
    model_before: torch.nn.Module,
    model_after: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Linear CKA between the two encoders' representations of the same probe tokens, per
    layer: ``embeddings`` (the embedding output) and ``layer.i`` (the output of layer ``i``).

    Both models run in eval mode (restored afterwards) with ``output_hidden_states`` on each
    batch (dicts with ``input_ids`` and optionally ``attention_mask``/``token_type_ids``, other
    keys ignored, e.g. a :class:`~mlmfast.train.tasks.ClassificationCollator` batch); tokens
    with ``attention_mask == 0`` are left out. Task heads and PEFT wrappers are looked through
    to the encoder. ``max_tokens`` stops after that many tokens."""
    return _layer_cka(model_before, model_after, batches, max_tokens)[0]


def drift_report(
    before: torch.nn.Module,
    after: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    *,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """``{"weight_drift": ..., "cka": ..., "num_tokens": ...}`` (plain floats, for JSON);
    ``cka`` and ``num_tokens`` only when probe ``batches`` are given."""
    report: dict[str, Any] = {"weight_drift": layer_weight_drift(before, after)}
    if batches is not None:
        report["cka"], report["num_tokens"] = _layer_cka(before, after, batches, max_tokens)
    return report


# ----------------------------------------------------------------------------- plot


def plot_drift(
    reports: Mapping[str, Any],
    path: str,
    *,
    title: str | None = None,
):
    """A PNG at ``path``: bars of weight drift per block (one colour per run) and, on a second
    axis, a line of ``1 - CKA`` per layer for runs whose report has ``cka``. ``reports`` is one
    report or ``{run name: report}`` (e.g. ``{"full": ..., "lora": ...}``). Returns the
    matplotlib Figure (made without pyplot, so no global backend is touched)."""
    from matplotlib.figure import Figure

    runs = _drift_runs(reports)
    names = sorted(
        {n for rep in runs.values() for n in (*rep["weight_drift"], *rep.get("cka", {}))},
        key=_block_order,
    )
    x = {n: i for i, n in enumerate(names)}
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    handles = []
    cka_ax = None
    for k, (run, rep) in enumerate(runs.items()):
        colour = f"C{k % 10}"
        label = run or "weight drift"
        drift = rep["weight_drift"]
        xs = [x[n] - 0.4 + width * (k + 0.5) for n in drift]
        handles.append(
            ax.bar(xs, list(drift.values()), width, color=colour, label=f"{label} ||ΔW||/||W||")
        )
        if rep.get("cka"):
            if cka_ax is None:
                cka_ax = ax.twinx()
                cka_ax.set_ylabel("1 − linear CKA (line)")
            handles.append(_cka_line(cka_ax, x, run, rep["cka"], colour))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("relative weight change (bars)")
    ax.set_title(title or "What fine-tuning changed, per layer")
    ax.set_ylim(bottom=0)
    if cka_ax is not None:
        cka_ax.set_ylim(bottom=0)
    # outside the axes: a legend inside would hide the bars of the first blocks
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small"
    )
    fig.savefig(path, dpi=120, format="png")
    return fig


def _drift_runs(reports: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{run name: report}`` of :func:`plot_drift`'s argument ("" for a single report)."""
    runs = {"": reports} if "weight_drift" in reports else dict(reports)
    if not runs:
        raise ValueError("plot_drift: no reports to plot")
    for run, rep in runs.items():
        if not isinstance(rep, Mapping) or "weight_drift" not in rep:
            raise ValueError(
                f"plot_drift: run {run!r} is not a drift report (a dict with 'weight_drift'), "
                f"got {type(rep).__name__}"
            )
    return runs


def _cka_line(ax, x: dict[str, int], run: str, cka: Mapping[str, float], colour: str):
    (line,) = ax.plot(
        [x[n] for n in cka],
        [1.0 - v for v in cka.values()],
        color=colour,
        marker="o",
        linestyle="--",
        label=f"{run + ' ' if run else ''}1 − CKA",
    )
    return line
