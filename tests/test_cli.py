"""The ``mlmfast`` command: a user's mistake is one line on stderr naming the fix, exit 2;
``--debug`` shows the traceback; the help lists every command."""

from __future__ import annotations

import pytest

from mlmfast.cli import build_parser, main


def _shard_dir(tmp_path):
    from mlmfast.data import prepare

    (tmp_path / "docs.txt").write_text("a film about nothing\nanother film\n" * 10)
    out = tmp_path / "shards"
    prepare(str(tmp_path / "docs.txt"), str(out), max_length=16, progress=False)
    return str(out)


MISTAKES = [
    (
        ["pretrain", "--data", "{tmp}", "--out", "{tmp}/run"],
        "not a shard directory",
        "mlmfast prepare",
    ),
    (
        ["pretrain", "--data", "{tmp}/nope", "--out", "{tmp}/run"],
        "no such shard directory",
        "mlmfast prepare",
    ),
    (
        ["pretrain", "--data", "{shards}", "--out", "{tmp}/run", "--lr", "-1"],
        "lr must be > 0",
        None,
    ),
    (
        ["finetune", "--data", "nosuchdataset", "--out", "{tmp}/ft"],
        "got 'nosuchdataset'",
        "rotten-tomatoes",
    ),
    (["prepare", "{tmp}/nofile.txt", "-o", "{tmp}/o"], "not a file, directory, glob", None),
    (
        ["prepare", "{tmp}/docs.txt", "-o", "{tmp}/o", "--max-length", "2"],
        "max_length must be >= 3",
        None,
    ),
]


@pytest.mark.parametrize(
    "argv, message, fix",
    MISTAKES,
    ids=[" ".join(m[0][:2]) + f"-{i}" for i, m in enumerate(MISTAKES)],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, message, fix):
    shards = _shard_dir(tmp_path) if "{shards}" in argv else ""
    argv = [a.format(tmp=tmp_path, shards=shards) for a in argv]
    (tmp_path / "docs.txt").write_text("a film\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlmfast {argv[0]}: ") and "\n" not in err, err
    assert message in err
    if fix:
        assert fix in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file, directory, glob"):
        main(["--debug", "prepare", str(tmp_path / "nofile.txt"), "-o", str(tmp_path / "o")])


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    import sys

    prep = sys.modules["mlmfast.data.prepare"]  # mlmfast.data.prepare is also the function

    def broken(*a, **k):
        raise TypeError("an internal bug")

    monkeypatch.setattr(prep, "prepare", broken)
    with pytest.raises(TypeError, match="an internal bug"):
        main(["prepare", str(tmp_path / "x.txt"), "-o", str(tmp_path / "o")])


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("prepare", "pretrain", "finetune", "generate", "mask", "info", "plot"):
        assert f"  {command} " in out, command
