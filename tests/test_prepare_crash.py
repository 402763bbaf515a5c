"""prepare under kill -9 at every stage, concurrent runs, leftovers, and bad inputs: a rerun
of the same command always finishes with the bytes of an uninterrupted run, a second run on the
same directory is refused at once, and every error names the file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from corpus import random_docs, snapshot

from mlmfast.data import open_shards, prepare
from mlmfast.data.shards import MANIFEST
from mlmfast.locking import LOCK_NAME, DirectoryLock, DirectoryLocked


def _corpus(path, n=90):
    path.write_text("\n".join(random_docs(n, seed=3, min_words=3, max_words=50)) + "\n")
    return str(path)


OPTIONS = {"max_length": 24, "shard_rows": 40, "word_ids": True, "batch_docs": 16}


def _run(src, out, **extra):
    return prepare(src, out, progress=False, **OPTIONS, **extra)


def _prepare_in_subprocess(src, out, env_extra: dict, **extra) -> subprocess.CompletedProcess:
    code = (
        "import sys; from mlmfast.data.prepare import prepare; "
        f"prepare({src!r}, {out!r}, progress=False, **{ {**OPTIONS, **extra}!r})"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    src = _corpus(d / "docs.txt")
    m = _run(src, str(d / "out"))
    assert len(m["shards"]) >= 3
    return src, snapshot(d / "out")


KILL_POINTS = [
    "prepare locked",
    "written progress.json",  # the empty progress of a fresh run
    "mid-write shard-00000.arrow",
    "written shard-00000.arrow",  # the first shard on disk, its progress not yet
    "mid-write progress.json#2",
    "written progress.json#2",
    "mid-write shard-00002.arrow",
    "written shard-00002.arrow",
    "mid-write manifest.json",
    "written manifest.json",  # complete, progress.json not yet removed
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_each_stage_then_rerun_gives_the_same_bytes(tmp_path, reference, point):
    src, expected = reference
    out = tmp_path / "out"
    r = _prepare_in_subprocess(src, str(out), {"MLMFAST_KILL_AT": point})
    assert r.returncode == -9, (point, r.returncode, r.stderr[-2000:])
    _run(src, str(out))  # the same command again
    assert snapshot(out) == expected  # no temporary file, lock or progress left either
    open_shards(str(out), verify="always")


def test_two_kills_in_a_row_then_rerun(tmp_path, reference):
    src, expected = reference
    out = tmp_path / "out"
    for point in ("written shard-00000.arrow", "mid-write shard-00002.arrow"):
        r = _prepare_in_subprocess(src, str(out), {"MLMFAST_KILL_AT": point})
        assert r.returncode == -9, r.stderr[-2000:]
    _run(src, str(out))
    assert snapshot(out) == expected


def test_overwrite_removes_leftovers_of_a_killed_run(tmp_path, reference):
    src, _ = reference
    out = tmp_path / "out"
    r = _prepare_in_subprocess(src, str(out), {"MLMFAST_KILL_AT": "mid-write progress.json#2"})
    assert r.returncode == -9
    assert any(n.startswith(".progress.json.") for n in os.listdir(out))
    _run(src, str(out), min_tokens=4, overwrite=True)
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".")], names
    assert json.loads((out / MANIFEST).read_text())["options"]["min_tokens"] == 4


# -- one run per directory --


_HOLDER = (
    "import sys, time; from mlmfast.locking import DirectoryLock; "
    "l = DirectoryLock(sys.argv[1], 'mlmfast prepare').__enter__(); print('held', flush=True); "
    "time.sleep(120)"
)


def test_a_second_run_is_refused_at_once_naming_the_first(tmp_path, reference):
    src, expected = reference
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(
            DirectoryLocked, match=rf"in use by mlmfast prepare \(pid {holder.pid} on "
        ):
            _run(src, str(out))
        assert time.perf_counter() - t0 < 5
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything: its lock is taken over
    _run(src, str(out))
    assert snapshot(out) == expected


def test_a_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    record = {"command": "mlmfast prepare", "pid": int(dead.stdout), "host": "h", "started": "t"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    with DirectoryLock(str(out), "test") as lock:
        assert lock.previous == record
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_two_concurrent_runs_with_other_options_leave_one_complete_set(tmp_path, reference):
    src, expected = reference
    out = tmp_path / "out"
    env = {}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from mlmfast.data.prepare import prepare; "
                f"prepare({src!r}, {str(out)!r}, progress=False, **{ {**OPTIONS, **extra}!r})",
            ],
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in ({}, {"min_tokens": 5})
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for rc, err in results if rc != 0)
    assert "DirectoryLocked" in loser or "holds shards from other prepare options" in loser
    winner_min_tokens = json.loads((out / MANIFEST).read_text())["options"]["min_tokens"]
    open_shards(str(out), verify="always")
    if winner_min_tokens == 0:
        assert snapshot(out) == expected
    assert not [n for n in os.listdir(out) if n.startswith(".")]


# -- messages that name the file and line --


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes(b"a fine line\nanother one\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"latin1\.txt: line 3 is not valid UTF-8 .*iconv"):
        _run(str(src), str(tmp_path / "out"))


def test_invalid_json_names_the_file_and_line(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n')
    with pytest.raises(ValueError, match=r"docs\.jsonl: line 3 is not valid JSON"):
        _run(str(src), str(tmp_path / "out"))
    src.write_text('{"text": "one"}\n[1, 2]\n')
    with pytest.raises(
        ValueError, match=r"docs\.jsonl: line 2 holds a JSON list, expected an object"
    ):
        _run(str(src), str(tmp_path / "out2"))


def test_an_empty_corpus_is_an_error_not_an_empty_set(tmp_path):
    src = tmp_path / "blank.txt"
    src.write_text("\n   \n\n")
    with pytest.raises(ValueError, match=r"no rows from .*blank\.txt.*0 documents read"):
        _run(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out" / MANIFEST).exists()
    src.write_text("a b\nc d\n")
    with pytest.raises(
        ValueError, match=r"2 documents read, 0 duplicates, 2 shorter than 5 tokens"
    ):
        _run(str(src), str(tmp_path / "out"), min_tokens=5)


def test_cli_prepare_reports_a_locked_directory_in_one_line(tmp_path, reference, capsys):
    from mlmfast.cli import main

    src, _ = reference
    out = tmp_path / "out"
    with DirectoryLock(str(out), "mlmfast prepare"):
        assert main(["prepare", src, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlmfast prepare: ") and "in use by mlmfast prepare" in err
    assert "\n" not in err
