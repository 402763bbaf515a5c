"""prepare as parts: any split, any engine (one process, a pool, --part K/N + merge, a local
Dask cluster) gives the same bytes; parts resume after kill -9; the merge refuses incomplete or
foreign sets; a failing part names itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from corpus import random_docs, snapshot

from mlmfast.data import prepare
from mlmfast.data.parts import PartError, merge
from mlmfast.data.shards import ShardError


def _corpus(path, n=130, seed=5):
    lines = random_docs(n, seed=seed, max_words=40)
    lines[50] = lines[7]  # a duplicate in another part's batch
    path.write_text("\n".join(lines) + "\n")
    return str(path)


MODES = {
    "pack+dedup": {"word_ids": True, "dedup": True, "min_tokens": 3},
    "cross-document": {"cross_document": True, "word_ids": True},
    "sentence-pairs": {"mode": "sentence-pairs"},
}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus") / "docs.txt")


def _kw(mode):
    return {"max_length": 24, "shard_rows": 25, "batch_docs": 20, "progress": False, **MODES[mode]}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_split_gives_the_bytes_of_one_run(tmp_path, src, mode):
    kw = _kw(mode)
    prepare(src, str(tmp_path / "one"), **kw)
    expected = snapshot(tmp_path / "one")
    assert len(expected) > 3  # several shards
    prepare(src, str(tmp_path / "pool"), num_proc=2, **kw)
    assert snapshot(tmp_path / "pool") == expected
    for n in (1, 2, 3):
        out = tmp_path / f"parts{n}"
        for k in reversed(range(n)):  # any order
            record = prepare(src, str(out), part=f"{k}/{n}", **kw)
            assert record["part"] == k and record["batches"] == 7
        merge(str(out), progress=False)
        assert snapshot(out) == expected, n  # and the parts are gone


def test_dask_local_cluster_and_an_existing_one(tmp_path, src):
    from dask.distributed import LocalCluster

    kw = _kw("pack+dedup")
    prepare(src, str(tmp_path / "one"), **kw)
    expected = snapshot(tmp_path / "one")
    prepare(src, str(tmp_path / "local"), engine="dask", num_proc=2, **kw)
    assert snapshot(tmp_path / "local") == expected
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        prepare(src, str(tmp_path / "remote"), engine="dask", scheduler=cluster.scheduler_address,
                num_proc=3, **kw)  # fmt: skip
    assert snapshot(tmp_path / "remote") == expected


def test_a_killed_part_resumes(tmp_path, src):
    kw = _kw("cross-document")
    prepare(src, str(tmp_path / "one"), **kw)
    out = tmp_path / "parts"
    code = f"from mlmfast.data import prepare; prepare({src!r}, {str(out)!r}, part='1/2', **{kw!r})"
    env = {**os.environ, "MLMFAST_KILL_AT": "mid-write chunk-0000003.arrow"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    prepare(src, str(out), part="0/2", **kw)
    with pytest.raises(ShardError, match=r"part 1/2 is missing or unfinished.*--part 1/2"):
        merge(str(out), progress=False)
    prepare(src, str(out), part="1/2", **kw)  # resumes: chunk 1 kept, 3 and 5 made
    merge(str(out), progress=False)
    assert snapshot(out) == snapshot(tmp_path / "one")


def test_merge_refuses_foreign_or_missing_parts(tmp_path, src):
    kw = _kw("pack+dedup")
    out = tmp_path / "parts"
    with pytest.raises(ShardError, match="no parts to merge"):
        merge(str(out), progress=False)
    prepare(src, str(out), part="0/2", **kw)
    with pytest.raises(ShardError, match=r"part 1/2 is missing"):
        merge(str(out), progress=False)
    with pytest.raises(ShardError, match="made with other prepare options"):
        prepare(src, str(out), part="1/2", **{**kw, "min_tokens": 9})
    prepare(src, str(out), part="1/3", **kw)
    with pytest.raises(ShardError, match="parts of different splits"):
        merge(str(out), progress=False)


def test_a_failing_part_names_itself(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 30 + b"caf\xe9\n")
    with pytest.raises(PartError, match=r"part 1/2 of .*bad\.txt.*line 31 is not valid UTF-8"):
        prepare(str(bad), str(tmp_path / "o"), part="1/2", batch_docs=10, progress=False)
    with pytest.raises(ValueError, match="K/N with 0 <= K < N"):
        prepare(str(bad), str(tmp_path / "o"), part="2/2", progress=False)
    from mlmfast.data import load_tokenizer

    with pytest.raises(ValueError, match="tokenizer as a directory"):
        prepare(str(bad), str(tmp_path / "o"), part="0/2", tokenizer=load_tokenizer())


def test_cli_part_and_merge(tmp_path, src, capsys):
    from mlmfast.cli import main

    out = str(tmp_path / "parts")
    for k in range(2):
        assert main(["prepare", src, "-o", out, "--part", f"{k}/2", "--quiet",
                     "--max-length", "24"]) == 0  # fmt: skip
    assert main(["prepare", "--merge", out, "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 2)[-1])["rows"] > 0
    assert main(["prepare", src, "--merge", out]) == 2
    assert "takes no inputs" in capsys.readouterr().err
