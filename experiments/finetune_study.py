#!/usr/bin/env python
"""Fine-tuning study: what pre-training buys, what each strategy costs, where the encoder moves.

Every run fine-tunes on the same Rotten Tomatoes subset with the same budget (examples, epochs,
batch size, sequence length, seed); only the initialisation, the strategy and its learning rate
differ (a frozen encoder with a fresh head wants a larger step than a full fine-tune, so each
strategy gets the learning rate recorded in the JSON):

1. the embedded MiniLM-L6-H384 encoder vs a random init of the same architecture, ``full``
   (the random init also at a 5x learning rate);
2. ``full``, ``feature-extraction``, ``top-k`` (k=2), ``lora`` and ``rehearsal`` (MLM weight 1
   and 0.1, on BBC News articles) from MiniLM:
   test accuracy and macro-F1, and the change of the MLM loss on held-out BBC News text
   (forgetting). MiniLM has no MLM head, so the first run fits one on the frozen encoder
   (``mlm_head_steps`` steps on BBC articles disjoint from the held-out ones) and every other
   run measures with that same head (``--mlm-head``): one "before" for all;
3. per-layer weight drift and 1 - linear CKA of the full fine-tune (do later layers move most?).

BBC News articles are shuffled with a fixed seed and dealt alternately into a fitting/rehearsal
set and a held-out set, so neither the head nor rehearsal ever sees the held-out text.

Run from the repository root::

    python experiments/finetune_study.py            # ~10-15 min on 2 busy CPU cores

It prepares what it needs under ``--work`` (default ``$TMPDIR/mlmfast-finetune-study``: outside
the repository, as the runs hold a few GB of checkpoints), skips runs already finished
and resumes interrupted ones, and writes ``results/finetune_study.json``, ``.md``, ``.png`` and
``results/finetune_study_drift.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _runs import machine, previous_run, write_results  # noqa: E402  (experiments/, the script's folder)

from mlmfast.train.finetune import FinetuneConfig, finetune  # noqa: E402

# The shared budget. Sized so the whole study fits ~10-15 minutes on this 2-core machine.
SETTINGS = {
    "data": "rotten-tomatoes",
    "limit": 2500,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "split_seed": 0,
    "max_length": 64,
    "group_by_length": True,
    "batch_size": 32,
    "epochs": 1.0,
    "warmup_ratio": 0.1,
    "schedule": "linear",
    "seed": 0,
    "eval_batch_size": 64,
    "general_batches": 3,
    "probe_batches": 2,
    "probe_tokens": 4096,
    "keep_last": 1,
}
GENERAL = {"fit_articles": 800, "held_articles": 200, "max_length": 64, "shuffle_seed": 0}
HEAD = {"mlm_head_steps": 300, "mlm_head_batch_size": 16, "mlm_head_lr": 5e-3}
REHEARSAL = {"rehearsal_batch_size": 16}

# name, init, strategy, learning rate, extra options
RUNS = [
    ("minilm-full", None, "full", 1e-4, {}),
    ("minilm-feature-extraction", None, "feature-extraction", 2e-3, {}),
    ("minilm-top-2", None, "top-k", 2e-4, {"top_k": 2}),
    ("minilm-lora", None, "lora", 1e-3, {"lora_r": 8, "lora_alpha": 16}),
    ("minilm-rehearsal-w1", None, "rehearsal", 1e-4, {**REHEARSAL, "rehearsal_weight": 1.0}),
    ("minilm-rehearsal-w0.1", None, "rehearsal", 1e-4, {**REHEARSAL, "rehearsal_weight": 0.1}),
    ("random-full", "random", "full", 1e-4, {}),
    # a random init may want a larger step: not to lose the comparison by the learning rate
    ("random-full-lr5e-4", "random", "full", 5e-4, {}),
]
HEAD_RUN = "minilm-full"  # fits the MLM head every other MiniLM run measures with


def prepare_general(work: str) -> tuple[str, str]:
    """BBC News articles, shuffled and dealt into a fitting/rehearsal set and a held-out set."""
    from mlmfast.data import prepare
    from mlmfast.data.embedded import bbc_news_examples

    fit, held = os.path.join(work, "bbc-fit"), os.path.join(work, "bbc-held")
    if all(os.path.isfile(os.path.join(d, "manifest.json")) for d in (fit, held)):
        return fit, held
    articles = [text for text, _ in bbc_news_examples()]
    random.Random(GENERAL["shuffle_seed"]).shuffle(articles)
    parts = {
        fit: articles[0::2][: GENERAL["fit_articles"]],
        held: articles[1::2][: GENERAL["held_articles"]],
    }
    for directory, texts in parts.items():
        source = directory + ".jsonl"
        with open(source, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        prepare([source], directory, max_length=GENERAL["max_length"], progress=False)
    return fit, held


def run_one(work: str, name: str, init, strategy: str, lr: float, extra: dict, general: tuple):
    out = os.path.join(work, name)
    summary, resume = previous_run(out)
    if summary is not None:
        print(f"  {name}: done before, skipped")
        return summary
    fit, held = general
    options = {**SETTINGS, **extra, "out": out, "strategy": strategy, "lr": lr, "resume": resume}
    if init is not None:
        options["init"] = init
    if init != "random":  # forgetting is measured from the pre-trained encoder only
        options["general_data"] = held
        if name == HEAD_RUN:
            options.update(HEAD, mlm_head_data=fit)
        else:
            options["mlm_head"] = os.path.join(work, HEAD_RUN)
    if strategy == "rehearsal":
        options["rehearsal_data"] = fit
    return finetune(FinetuneConfig(**options))


def spearman(values: list[float]) -> float:
    """Rank correlation of ``values`` with their position (no ties expected)."""
    n = len(values)
    ranks = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: values[i]))}
    d2 = sum((ranks[i] - i) ** 2 for i in range(n))
    return 1 - 6 * d2 / (n * (n * n - 1))


def drift_trend(drift: dict) -> dict:
    layers = [k for k in drift["weight_drift"] if k.startswith("layer.")]
    w = [drift["weight_drift"][k] for k in layers]
    c = [1 - drift["cka"][k] for k in layers]
    return {
        "layers": layers,
        "weight_drift": w,
        "one_minus_cka": c,
        "weight_drift_spearman_vs_depth": spearman(w),
        "one_minus_cka_spearman_vs_depth": spearman(c),
        "max_weight_drift_layer": layers[max(range(len(w)), key=w.__getitem__)],
        "max_one_minus_cka_layer": layers[max(range(len(c)), key=c.__getitem__)],
    }


def row(name: str, s: dict) -> dict:
    f = s.get("forgetting") or {}
    return {
        "run": name,
        "init": "random" if s["init"]["init"] == "random" else "MiniLM-L6-H384",
        "strategy": s["strategy"],
        "lr": s["lr"],
        "steps": s["step"],
        "trainable": s["parameters"]["trainable"],
        "trainable_share": s["parameters"]["trainable_share"],
        "validation": s["validation"],
        "test": s["test"],
        "general_mlm": None
        if not f
        else {
            "before": f["before"],
            "after": f["after"],
            "delta": f["delta"],
            **(
                {"after_rehearsal_head": f["after_rehearsal_head"]}
                if "after_rehearsal_head" in f
                else {}
            ),
        },
        "drift": s["drift"],
        "wall_time_s": s["wall_time_s"],
    }


def markdown(result: dict) -> str:
    lines = [
        "# Fine-tuning study",
        "",
        f"Command: `{result['command']}`  ",
        f"Data: {SETTINGS['data']}, {result['data_sizes']} examples (train/validation/test), "
        f"max_length {SETTINGS['max_length']}, batch {SETTINGS['batch_size']}, "
        f"{SETTINGS['epochs']:g} epoch, seed {SETTINGS['seed']}; "
        f"{result['machine']['torch_threads']} torch thread(s) on {result['machine']['cpus']} "
        "shared CPU cores.  ",
        "General corpus: BBC News, held-out articles "
        f"({GENERAL['held_articles']} prepared, {SETTINGS['general_batches']} x "
        f"{SETTINGS['eval_batch_size']} rows of {GENERAL['max_length']} tokens evaluated with a "
        "fixed mask); MLM head fitted once on the frozen MiniLM "
        f"({HEAD['mlm_head_steps']} steps on {GENERAL['fit_articles']} other articles; rehearsal "
        "runs train their MLM loss on those same other articles). A macro-F1 of 0.333 means one "
        "class predicted for every example. Runs took "
        f"{result['runs_wall_time_s']:.0f} s in all.",
        "",
        "| run | init | strategy | lr | trainable | val acc | test acc | test macro-F1 "
        "| general MLM loss before → after (Δ) | masked acc before → after | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        g = r["general_mlm"]
        loss = acc = "—"
        if g:
            loss = (
                f"{g['before']['loss']:.3f} → {g['after']['loss']:.3f} ({g['delta']['loss']:+.3f})"
            )
            acc = f"{g['before']['accuracy']:.3f} → {g['after']['accuracy']:.3f}"
        lines.append(
            f"| {r['run']} | {r['init']} | {r['strategy']} | {r['lr']:g} "
            f"| {100 * r['trainable_share']:.2f}% "
            f"| {r['validation']['accuracy']:.3f} | {r['test']['accuracy']:.3f} "
            f"| {r['test']['macro_f1']:.3f} | {loss} | {acc} | {r['wall_time_s']:.0f} s |"
        )
    t = result["drift_full"]
    lines += [
        "",
        "Per-layer change of the full fine-tune from MiniLM (validation probe tokens):",
        "",
        "| block | relative weight drift ‖ΔW‖/‖W‖ | 1 − linear CKA |",
        "|---|---|---|",
    ]
    full = next(r for r in result["runs"] if r["run"] == "minilm-full")["drift"]
    for block, w in full["weight_drift"].items():
        c = full["cka"].get(block)
        lines.append(f"| {block} | {w:.4f} | {'—' if c is None else f'{1 - c:.4f}'} |")
    lines += [
        "",
        f"Spearman correlation with depth over the encoder layers: weight drift "
        f"{t['weight_drift_spearman_vs_depth']:+.2f} (largest in {t['max_weight_drift_layer']}), "
        f"1 − CKA {t['one_minus_cka_spearman_vs_depth']:+.2f} (largest in "
        f"{t['max_one_minus_cka_layer']}).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    runs = result["runs"]
    names = [r["run"].replace("minilm-", "") for r in runs]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    x = range(len(runs))
    ax1.bar([i - 0.2 for i in x], [r["test"]["accuracy"] for r in runs], 0.4, label="accuracy")
    ax1.bar([i + 0.2 for i in x], [r["test"]["macro_f1"] for r in runs], 0.4, label="macro-F1")
    ax1.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax1.set_xticks(list(x), names, rotation=30, ha="right")
    ax1.set_ylim(0.4, 1.0)
    ax1.set_ylabel("test score")
    ax1.set_title("Rotten Tomatoes, same budget")
    ax1.legend(fontsize="small")
    measured = [r for r in runs if r["general_mlm"]]
    ax2.bar(
        range(len(measured)),
        [r["general_mlm"]["delta"]["loss"] for r in measured],
        color=["C3" if r["general_mlm"]["delta"]["loss"] > 0 else "C2" for r in measured],
    )
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_xticks(
        range(len(measured)), [r["run"].replace("minilm-", "") for r in measured], rotation=30,
        ha="right",
    )  # fmt: skip
    ax2.set_ylabel("Δ MLM loss on held-out BBC News (nats)")
    ax2.set_title("Forgetting: general MLM loss after − before")
    fig.savefig(path, dpi=120, format="png")


def plot_layers(result: dict, path: str) -> None:
    """Per-layer weight drift and 1 - CKA of the encoder, one line per MiniLM run (the pooler
    and the classifier move far more and would flatten the layers; they are in the JSON)."""
    from matplotlib.figure import Figure

    runs = [r for r in result["runs"] if r["init"] != "random"]
    blocks = [b for b in runs[0]["drift"]["weight_drift"] if b == "embeddings" or "layer." in b]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for k, r in enumerate(runs):
        label = r["run"].replace("minilm-", "")
        style = {"marker": "o", "color": f"C{k}", "label": label}
        ax1.plot(blocks, [r["drift"]["weight_drift"][b] for b in blocks], **style)
        ax2.plot(blocks, [1 - r["drift"]["cka"][b] for b in blocks], **style)
    ax1.set_ylabel("relative weight drift ||ΔW|| / ||W||")
    ax2.set_ylabel("1 − linear CKA (validation tokens)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylim(bottom=0)
    ax1.set_title("Weight change per block")
    ax2.set_title("Representation change per layer output")
    ax2.legend(fontsize="small")
    fig.savefig(path, dpi=120, format="png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "mlmfast-finetune-study"))
    p.add_argument("--results", default=os.path.join(REPO, "results"))
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine a second thread mostly waits, "
        "measured 2-3x slower per step)",
    )
    p.add_argument("--only", nargs="*", help="run only these runs (names as in RUNS)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a minute-long check of the script: tiny budget, results under --work only",
    )
    args = p.parse_args(argv)
    if args.smoke:
        SETTINGS.update(limit=200, max_steps=3, general_batches=1, probe_batches=1)
        GENERAL.update(fit_articles=20, held_articles=10)
        HEAD.update(mlm_head_steps=3)
        args.work = os.path.join(args.work, "smoke")
        args.results = args.work
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    t0 = time.perf_counter()
    print("study: preparing BBC News shards")
    general = prepare_general(args.work)
    summaries = {}
    todo = [r for r in RUNS if not args.only or r[0] in args.only]
    for i, (name, init, strategy, lr, extra) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        summaries[name] = run_one(args.work, name, init, strategy, lr, extra, general)
    if args.only:
        return 0
    runs = [row(name, summaries[name]) for name, *_ in RUNS]
    full = summaries["minilm-full"]
    result = {
        "command": "python experiments/finetune_study.py"
        + (f" --threads {args.threads}" if args.threads != 1 else ""),
        "settings": {**SETTINGS, "general": GENERAL, "mlm_head": HEAD, "rehearsal": REHEARSAL},
        "data_sizes": "/".join(str(v) for v in full["data"]["sizes"].values()),
        "machine": machine(args.threads),
        "mlm_head": full["forgetting"]["head"],
        "runs": runs,
        "drift_full": drift_trend(full["drift"]),
        "runs_wall_time_s": sum(r["wall_time_s"] for r in runs),
        "session_wall_time_s": time.perf_counter() - t0,
    }
    base = os.path.join(args.results, "finetune_study")
    write_results(base, result, markdown, {".png": plot, "_drift.png": plot_layers}, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
