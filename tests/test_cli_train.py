"""``mlmfast pretrain``, ``finetune``, ``generate`` and ``plot`` on the command line: every
mistake a user can make is one line ``mlmfast <command>: ...`` on stderr naming the fix, exit
status 2, no traceback; every option's help shows its default (or that it is required) in plain
text; what the demo prints (held-out evaluations as they happen, "done already" on a re-run,
a loss curve beside metrics.jsonl, what to expect from generate)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch

from mlmfast.cli import build_parser, main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared machine: a second intra-op thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from mlmfast.data import prepare

    root = tmp_path_factory.mktemp("cli-train")
    train, held = str(root / "train"), str(root / "heldout")
    prepare(["movie-reviews"], train, limit=40, max_length=32, progress=False)
    prepare(["movie-reviews"], held, skip=40, limit=10, max_length=32, progress=False)
    return {"root": root, "train": train, "heldout": held}


@pytest.fixture(scope="module")
def run(shards):
    """A finished tiny pretrain run with held-out evaluations, and what it printed."""
    out = str(shards["root"] / "run")
    argv = ["pretrain", "--data", shards["train"], "--eval-data", shards["heldout"], "--out", out,
            "--max-steps", "4", "--batch-size", "4", "--log-every", "1", "--eval-every", "2",
            "--eval-batches", "2", "--progress", "false", "--tensorboard", "false"]  # fmt: skip
    return out, argv


def one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``argv``; it must fail with exit status 2 and one line naming every fragment."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlmfast {argv[0]}: ") and "\n" not in err, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def missing_package(monkeypatch):
    """Make ``find_spec`` report the named packages as not installed."""
    find_spec = importlib.util.find_spec

    def hide(*names: str) -> None:
        def fake(name, *a, **k):
            return None if name.split(".")[0] in names else find_spec(name, *a, **k)

        monkeypatch.setattr(importlib.util, "find_spec", fake)

    return hide


# ----------------------------------------------------------------------------- pretrain


def test_pretrain_mistakes(shards, tmp_path, capsys):
    train, out = shards["train"], str(tmp_path / "r")
    base = ["pretrain", "--data", train, "--out", out]
    one_line_error(capsys, ["pretrain", "--max-steps", "2"], "--data, --out required", "--config")
    one_line_error(
        capsys,
        [*base, "--eval-data", str(tmp_path / "nope")],
        "nope",
        "no such shard directory",
        "mlmfast prepare",
    )
    one_line_error(capsys, [*base, "--init", str(tmp_path / "nope")], "init:", "does not exist")
    one_line_error(
        capsys, [*base, "--tokenizer", str(tmp_path)], "tokenizer:", "tokenizer.save_pretrained"
    )
    one_line_error(capsys, [*base, "--model-config", "huge"], "model_config must be one of")
    one_line_error(
        capsys, [*base, "--pos-weights", "{NOUN: 2"], "pos_weights:", "not a valid JSON object"
    )
    one_line_error(capsys, [*base, "--batch-size", "0"], "batch_size must be >= 1")
    one_line_error(capsys, [*base, "--batch-size", "100000"], "fewer than one step")
    if not torch.cuda.is_available():
        one_line_error(capsys, [*base, "--device", "cuda"], "no CUDA device", "--device cpu")
    assert not os.path.exists(out)  # nothing of a run was written


def test_pretrain_config_file_mistakes(shards, tmp_path, capsys):
    out = str(tmp_path / "r")
    missing = str(tmp_path / "none.json")
    one_line_error(capsys, ["pretrain", "--config", missing, "--out", out], "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{batch_size: 4")
    one_line_error(capsys, ["pretrain", "--config", str(bad)], "not valid JSON")
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"out": out, "batch_size": "4"}))
    one_line_error(capsys, ["pretrain", "--config", str(conf)], "--data required", "c.json")
    conf.write_text(json.dumps({"data": shards["train"], "out": out, "batch_size": "4"}))
    one_line_error(capsys, ["pretrain", "--config", str(conf)], "batch_size must be an integer")
    conf.write_text(json.dumps({"data": shards["train"], "out": out, "learning_rate": 1}))
    one_line_error(capsys, ["pretrain", "--config", str(conf)], "unknown keys ['learning_rate']")


def test_pretrain_tensorboard_asked_for_but_missing(shards, tmp_path, capsys, missing_package):
    missing_package("tensorboard")
    argv = ["pretrain", "--data", shards["train"], "--out", str(tmp_path / "r")]
    one_line_error(
        capsys, [*argv, "--tensorboard", "true"], "pip install tensorboard", "--tensorboard false"
    )


def test_pretrain_prints_evaluations_plots_the_loss_and_a_rerun_is_done_already(run, capsys):
    out, argv = run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    evals = [line for line in printed.splitlines() if "held-out loss" in line]
    assert [line.split(",")[0] for line in evals[:2]] == [
        "pretrain: step 2/4",
        "pretrain: step 4/4",
    ], printed
    assert all("accuracy" in line and "perplexity" in line for line in evals[:2])
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["loss_plot"] == os.path.join(out, "loss.png")

    assert main([*argv, "--resume"]) == 0
    again = capsys.readouterr().out
    assert "done already, 4 steps" in again and os.path.join(out, "model") in again
    assert "parameters" not in again  # no model was built
    assert main([*argv, "--resume", "--max-steps", "5"]) == 0  # a longer schedule trains on
    assert "resumed at step 4" in capsys.readouterr().out


def test_plot_command_draws_any_run(run, tmp_path, capsys):
    out, argv = run
    if not os.path.exists(os.path.join(out, "metrics.jsonl")):
        assert main(argv) == 0
    target = str(tmp_path / "curve.png")
    assert main(["plot", out, "--output", target]) == 0
    assert capsys.readouterr().out.strip() == target
    with open(target, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    one_line_error(capsys, ["plot", str(tmp_path)], "not a run directory", "mlmfast pretrain")


def test_plot_without_matplotlib_is_one_line(run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    one_line_error(capsys, ["plot", run[0]], "matplotlib")


# ----------------------------------------------------------------------------- finetune


@pytest.fixture(scope="module")
def csv_data(shards) -> str:
    path = shards["root"] / "reviews.csv"
    rows = ["text,label"] + [f"{w} film number {i},{w}" for i in range(20) for w in ("good", "bad")]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_finetune_mistakes(shards, csv_data, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "ft")
    base = ["finetune", "--data", csv_data, "--out", out]
    one_line_error(capsys, ["finetune", "--data", csv_data], "--out required")
    one_line_error(
        capsys,
        [*base, "--validation", str(tmp_path / "val.csv")],
        "validation:",
        "val.csv",
        "not a file",
    )
    one_line_error(
        capsys, [*base, "--text-column", "review"], "text_column='review'", "available columns"
    )
    one_line_error(capsys, [*base, "--init", str(tmp_path / "nope")], "init:", "does not exist")
    one_line_error(
        capsys,
        [*base, "--init", "random", "--arch", str(tmp_path / "nope")],
        "arch:",
        "does not exist",
    )
    one_line_error(
        capsys,
        [*base, "--general-data", str(tmp_path / "g")],
        "general_data:",
        "no such shard directory",
    )
    one_line_error(capsys, [*base, "--task", "pos"], "mlmfast prepare")
    one_line_error(capsys, [*base, "--top-k", "2"], "applies to strategy 'top-k' only")
    one_line_error(capsys, [*base, "--strategy", "top-k"], "needs top_k (--top-k K)")
    if not torch.cuda.is_available():
        one_line_error(capsys, [*base, "--device", "cuda"], "no CUDA device")
    monkeypatch.setenv("WORLD_SIZE", "2")
    one_line_error(capsys, base, "finetune runs in one process")


def test_finetune_lora_without_peft(csv_data, tmp_path, capsys, missing_package):
    missing_package("peft")
    argv = ["finetune", "--data", csv_data, "--out", str(tmp_path / "ft"), "--strategy", "lora"]
    one_line_error(capsys, argv, "strategy 'lora' needs the peft package: pip install peft")


# ----------------------------------------------------------------------------- generate


def test_generate_mistakes(run, tmp_path, capsys):
    out, argv = run
    if not os.path.isdir(os.path.join(out, "model")):
        assert main(argv) == 0
    model = os.path.join(out, "model")
    base = ["generate", "--model", model, "--prompt", "a [MASK] film", "--quiet"]
    one_line_error(
        capsys,
        ["generate", "--model", str(tmp_path), "--prompt", "a [MASK]"],
        "model:",
        "config.json",
    )
    one_line_error(
        capsys, [*base, "--prompts-file", str(tmp_path / "p.txt")], "prompts_file:", "p.txt"
    )
    one_line_error(
        capsys, [*base, "--json", str(tmp_path / "no" / "o.json")], "json:", "does not exist"
    )
    one_line_error(capsys, [*base, "--num-samples", "0"], "num_samples must be")
    if not torch.cuda.is_available():
        one_line_error(capsys, [*base, "--device", "cuda"], "no CUDA device")


def test_generate_says_what_to_expect(run, capsys):
    out, argv = run
    if not os.path.isdir(os.path.join(out, "model")):
        assert main(argv) == 0
        capsys.readouterr()
    model = os.path.join(out, "model")
    assert main(["generate", "--model", model, "--prompt", "a film", "--num-masks", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1  # the outputs alone on stdout
    note = [line for line in captured.err.splitlines() if line.startswith("generate: ")]
    assert len(note) == 1, captured.err
    assert "tokens" in note[0] and "PLL (pseudo-log-likelihood)" in note[0]


# ----------------------------------------------------------------------------- help


def _subparser(name: str):
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices[name]


@pytest.mark.parametrize("command", ["pretrain", "finetune", "generate", "plot"])
def test_help_shows_every_default_in_plain_text(command):
    parser = _subparser(command)
    for action in parser._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        text = action.help or ""
        shown = "default" in text or "required" in text or action.required
        if action.nargs == 0:  # a flag: off unless given
            shown = True
        assert shown, f"{command} {action.option_strings[0]}: {text!r} shows no default"
    help_text = parser.format_help()
    for rest in ("``", ":class:", ":func:", ":data:", "%("):
        assert rest not in help_text, (command, rest)


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_required_options_are_marked(command):
    parser = _subparser(command)
    assert parser.format_usage().startswith(f"usage: mlmfast {command} --data ")
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    for option in ("--data", "--out"):
        assert helps[option].endswith("(required unless in --config)"), helps[option]
    assert sum("required" in h for h in helps.values() if h) == 2
