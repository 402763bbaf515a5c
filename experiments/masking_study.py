#!/usr/bin/env python
"""Masking study: what the mask rate, the 80/10/10 split, POS weighting and whole words change.

Every run pre-trains the same BERT (``--model``, default ``tiny``) from the same random init on
the same shards of embedded movie reviews, with the same budget (steps, batch, learning rate,
seed); only the masking differs. Then every model is measured the same way:

1. **Probes on held-out reviews** (the same 15% of tokens in every run, chosen by the fixed
   evaluation seed), each a question the 80/10/10 split is about:

   * ``mask``: the tokens are replaced by [MASK]; accuracy of predicting them (the MLM task);
   * ``keep``: the tokens are left as they are; accuracy of the prediction at their positions,
     i.e. does the output at an *unmasked* position still carry its token (fine-tuning never
     shows [MASK], so every position a fine-tuned model sees is of this kind);
   * ``random``: the tokens are replaced by random ones; accuracy of recovering the original
     (does the model distrust a token that does not fit).

2. **Downstream**: a full fine-tune on Rotten Tomatoes (same budget for every model), test
   accuracy.

Runs (BERT's ablation of the split, Wettig et al.'s question of the rate, and mlmfast's POS and
whole-word options): 80/10/10 at 15% (BERT), 100/0/0 (always [MASK]), 80/0/20 (no random),
80/20/0 (no keep), 15% -> 30% and 40% at 80/10/10, POS-weighted (the ``content`` preset:
content words three times as likely, same expected rate), whole-word masking and SpanBERT's span
masking (spans of whole words, Geometric(0.2) lengths up to 10 words, one 80/10/10 decision per
span).

Run from the repository root::

    python experiments/masking_study.py            # ~15 min on 2 busy CPU cores

It prepares the shards it needs (with ``--pos``: spaCy tags the reviews) under ``--work``
(default ``$TMPDIR/mlmfast-masking-study``), skips finished runs and resumes interrupted ones,
and writes ``results/masking_study.json``, ``.md`` and ``.png``. On a GPU, a larger budget is
one flag away: ``--model mini --steps 5000 --docs 20000`` (the CPU default is a small budget
whose differences within a few points are noise: one seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from _runs import machine, previous_run, write_results  # noqa: E402  (experiments/, the script's folder)

from mlmfast.train.finetune import FinetuneConfig, finetune  # noqa: E402
from mlmfast.train.mlm import MaskingConfig, evaluate_mlm  # noqa: E402
from mlmfast.train.pretrain import PretrainConfig, pretrain  # noqa: E402

# Sized so the whole study fits ~15 minutes on this 2-core machine.
SETTINGS = {
    "docs": 2000,  # movie reviews pre-trained on
    "held_docs": 300,  # reviews after the first 30,000: never trained on
    "max_length": 128,
    "model": "tiny",
    "steps": 300,
    "batch_size": 16,
    "lr": 1e-3,
    "seed": 0,
    "probe_batches": 8,
    "probe_batch_size": 32,
    "probe_rate": 0.15,
}
FINETUNE = {
    "data": "rotten-tomatoes",
    "limit": 1500,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "split_seed": 0,
    "max_length": 64,
    "group_by_length": True,
    "batch_size": 32,
    "epochs": 1.0,
    "lr": 5e-4,
    "seed": 0,
    "keep_last": 1,
}

# name, masking options of the run
RUNS = [
    ("bert-80-10-10", {}),
    ("mask-100-0-0", {"mask_replace_prob": 1.0, "random_replace_prob": 0.0}),
    ("no-random-80-0-20", {"mask_replace_prob": 0.8, "random_replace_prob": 0.0}),
    ("no-keep-80-20-0", {"mask_replace_prob": 0.8, "random_replace_prob": 0.2}),
    ("rate-30", {"mlm_probability": 0.30}),
    ("rate-40", {"mlm_probability": 0.40}),
    ("pos-content", {"pos_weights": "content"}),
    ("whole-word", {"whole_word": True}),
    ("span-words", {"mode": "span", "whole_word": True}),  # SpanBERT: Geometric(0.2) <= 10 words
]
PROBES = {  # name: (mask_replace_prob, random_replace_prob) of the evaluation mask
    "mask": (1.0, 0.0),
    "keep": (0.0, 0.0),
    "random": (0.0, 1.0),
}


def prepare_shards(work: str) -> tuple[str, str]:
    from mlmfast.data import prepare

    train, held = os.path.join(work, "train"), os.path.join(work, "held")
    common = {"max_length": SETTINGS["max_length"], "pos": True, "progress": False}
    if not os.path.isfile(os.path.join(train, "manifest.json")):
        prepare("movie-reviews", train, limit=SETTINGS["docs"], **common)
    if not os.path.isfile(os.path.join(held, "manifest.json")):
        prepare("movie-reviews", held, skip=30000, limit=SETTINGS["held_docs"], **common)
    return train, held


def pretrain_one(work: str, name: str, masking: dict, shards: tuple[str, str]) -> dict:
    out = os.path.join(work, name)
    summary, resume = previous_run(out)
    if summary is not None:
        print(f"  {name}: pre-trained before, skipped")
        return summary
    train, held = shards
    cfg = PretrainConfig(
        data=train,
        out=out,
        eval_data=held,
        model_config=SETTINGS["model"],
        max_steps=SETTINGS["steps"],
        batch_size=SETTINGS["batch_size"],
        lr=SETTINGS["lr"],
        seed=SETTINGS["seed"],
        eval_batches=SETTINGS["probe_batches"],
        save_every=max(50, SETTINGS["steps"] // 4),
        keep_last=1,
        log_every=50,
        tensorboard=False,
        progress=True,
        resume=resume,
        **{("mask_mode" if k == "mode" else k): v for k, v in masking.items()},
    )
    return pretrain(cfg)


def probe(model_dir: str, held: str) -> dict:
    """The three probes of the module docstring on the held-out shards, one fixed mask."""
    from transformers import AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertForMaskedLM.from_pretrained(model_dir)
    out = {}
    for name, (mask_p, random_p) in PROBES.items():
        masking = MaskingConfig(
            mlm_probability=SETTINGS["probe_rate"],
            mask_replace_prob=mask_p,
            random_replace_prob=random_p,
        )
        out[name] = evaluate_mlm(
            model,
            held,
            tokenizer=tok,
            masking=masking,
            batch_size=SETTINGS["probe_batch_size"],
            max_batches=SETTINGS["probe_batches"],
        )
    return out


def finetune_one(work: str, name: str, model_dir: str) -> dict:
    out = os.path.join(work, name + "-rt")
    summary, resume = previous_run(out)
    if summary is not None:
        return summary
    return finetune(
        FinetuneConfig(**FINETUNE, out=out, init=model_dir, strategy="full", resume=resume)
    )


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Masking study",
        "",
        f"Command: `{result['command']}`  ",
        f"Pre-training: BERT `{s['model']}` from one random init, {s['docs']} movie reviews "
        f"packed into rows of {s['max_length']} tokens, {s['steps']} steps of {s['batch_size']} "
        f"rows, lr {s['lr']:g}, seed {s['seed']}; only the masking differs. Probes: "
        f"{s['probe_batches']} x {s['probe_batch_size']} held-out rows, the same "
        f"{100 * s['probe_rate']:.0f}% of tokens in every run, replaced by [MASK] (`mask`), "
        "left as they are (`keep`) or replaced by random tokens (`random`); accuracy of "
        f"predicting the original token. Downstream: full fine-tune on {FINETUNE['data']} "
        f"({result['data_sizes']} train/validation/test, {FINETUNE['epochs']:g} epoch, lr "
        f"{FINETUNE['lr']:g}), test accuracy. One seed: differences of a few points are noise. "
        f"{result['machine']['torch_threads']} torch thread(s) on {result['machine']['cpus']} "
        f"shared CPU cores; {result['wall_time_s']:.0f} s in all.",
        "",
        "| run | rate | [MASK]/random/keep | POS | whole word | spans | mask acc | keep acc "
        "| random acc | mask loss | downstream test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        m = r["masking"]
        keep = max(0.0, 1 - m["mask_replace_prob"] - m["random_replace_prob"])
        split = f"{m['mask_replace_prob']:.0%}/{m['random_replace_prob']:.0%}/{keep:.0%}"
        p = r["probes"]
        lines.append(
            f"| {r['run']} | {m['mlm_probability']:.0%} | {split} | {m['pos_weights'] or '—'} "
            f"| {'yes' if m['whole_word'] else 'no'} "
            f"| {'yes' if m.get('mode') == 'span' else 'no'} | {p['mask']['accuracy']:.3f} "
            f"| {p['keep']['accuracy']:.3f} | {p['random']['accuracy']:.3f} "
            f"| {p['mask']['loss']:.3f} | {r['downstream']['accuracy']:.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    from matplotlib.figure import Figure

    runs = result["runs"]
    names = [r["run"] for r in runs]
    x = range(len(runs))
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    for k, probe_name in enumerate(PROBES):
        ax1.bar(
            [i + (k - 1) * 0.27 for i in x],
            [r["probes"][probe_name]["accuracy"] for r in runs],
            0.27,
            label=f"{probe_name} probe",
        )
    ax1.set_xticks(list(x), names, rotation=30, ha="right")
    ax1.set_ylabel("accuracy of the original token")
    ax1.set_title("Held-out probes (same 15% of tokens for every run)")
    ax1.legend(fontsize="small")
    ax2.bar(list(x), [r["downstream"]["accuracy"] for r in runs], color="C4")
    ax2.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax2.set_xticks(list(x), names, rotation=30, ha="right")
    ax2.set_ylim(0.4, max(0.75, max(r["downstream"]["accuracy"] for r in runs) + 0.05))
    ax2.set_ylabel("test accuracy")
    ax2.set_title(f"Downstream: {FINETUNE['data']}, same budget")
    fig.savefig(path, dpi=120, format="png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "mlmfast-masking-study"))
    p.add_argument("--results", default=os.path.join(REPO, "results"))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model", default=None, help=f"model size (default {SETTINGS['model']})")
    p.add_argument("--steps", type=int, default=None, help="pre-training steps per run")
    p.add_argument("--docs", type=int, default=None, help="reviews to pre-train on")
    p.add_argument("--only", nargs="*", help="run only these runs (names as in RUNS)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a minute-long check of the script: tiny budget, results under --work only",
    )
    args = p.parse_args(argv)
    for key in ("model", "steps", "docs"):
        if getattr(args, key) is not None:
            SETTINGS[key] = getattr(args, key)
    if args.smoke:
        SETTINGS.update(docs=40, held_docs=20, steps=3, batch_size=4, probe_batches=1)
        FINETUNE.update(limit=120, max_steps=2)
        args.work = os.path.join(args.work, "smoke")
        args.results = args.work
    unknown = sorted(set(args.only or []) - {name for name, _ in RUNS})
    if unknown:
        p.error(f"--only: unknown runs {unknown}; runs: {[name for name, _ in RUNS]}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    t0 = time.perf_counter()
    print("study: preparing shards (spaCy POS tags for the POS-weighted run)")
    shards = prepare_shards(args.work)
    runs, data_sizes = [], None
    todo = [r for r in RUNS if not args.only or r[0] in args.only]
    for i, (name, masking) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        pre = pretrain_one(args.work, name, masking, shards)
        model_dir = os.path.join(args.work, name, "model")
        probes = probe(model_dir, shards[1])
        down = finetune_one(args.work, name, model_dir)
        data_sizes = "/".join(str(v) for v in down["data"]["sizes"].values())
        cfg = MaskingConfig(**masking)  # the run's masking, defaults filled in
        runs.append(
            {
                "run": name,
                "masking": {
                    "mlm_probability": cfg.mlm_probability,
                    "mask_replace_prob": cfg.mask_replace_prob,
                    "random_replace_prob": cfg.random_replace_prob,
                    "pos_weights": cfg.pos_weights,
                    "whole_word": cfg.whole_word,
                    "mode": cfg.mode,
                },
                "pretrain": {
                    "steps": pre["step"],
                    "own_eval": pre["eval"],  # each run's own masking: not comparable across
                    "tokens_per_s": pre.get("tokens_per_s"),
                },
                "probes": probes,
                "downstream": down["test"],
            }
        )
    result = {
        "command": "python experiments/masking_study.py"
        + "".join(
            f" --{k} {getattr(args, k)}"
            for k in ("model", "steps", "docs", "threads")
            if getattr(args, k) not in (None, 1)
        ),
        "settings": dict(SETTINGS),
        "finetune": dict(FINETUNE),
        "data_sizes": data_sizes,
        "machine": machine(args.threads),
        "runs": runs,
        "wall_time_s": time.perf_counter() - t0,
    }
    base = os.path.join(args.results, "masking_study" if not args.only else "masking_study_only")
    write_results(base, result, markdown, {".png": plot}, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
