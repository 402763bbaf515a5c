"""Shards as adversarial input: no byte of a shard file or its manifest makes the loader read
outside the file, crash, or hand out ids outside the vocabulary; content corruption is caught
by default (sha256, once per machine); manifests cannot name files outside their directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlmfast import _C, pos
from mlmfast.data import ShardError, ShardStream, ShardWriter, open_shards
from mlmfast.data.shards import MANIFEST, _stamp, tokenizer_info, write_manifest

VOCAB = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, **{f"w{i}": 4 + i for i in range(60)}}


class _Tok:
    name_or_path = "stub"
    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 1, 2, 3

    def get_vocab(self):
        return dict(VOCAB)

    def __len__(self):
        return len(VOCAB)


MAX_LENGTH = 12


def _rows(n, seed, fixed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = MAX_LENGTH - 2 if fixed else int(rng.integers(1, MAX_LENGTH - 1))
        out.append([1, *rng.integers(4, len(VOCAB), k).tolist(), 2])
    return out


def make_set(directory, fixed: bool, seed: int = 0, n: int = 23, shard_rows: int = 10) -> dict:
    """A shard set with every column the loader reads (word ids, POS classes, token types on
    the variable-length set; POS classes on the fixed-length one)."""
    rows = _rows(n, seed, fixed)
    w = ShardWriter(
        str(directory),
        MAX_LENGTH,
        shard_rows,
        word_ids=not fixed,
        token_type_ids=not fixed,
        pos_ids=True,
    )
    for r in rows:
        words = [-1, *range(len(r) - 2), -1]
        classes = [pos.SPECIAL, *[(t % (pos.NUM_CLASSES - 1)) for t in r[1:-1]], pos.SPECIAL]
        types = [0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2)
        w.add(r, words, token_type_ids=types, pos_ids=classes)
    shards = w.close()
    columns = ["input_ids", "sample_id", "pos_ids"]
    if not fixed:
        columns += ["word_ids", "token_type_ids"]
    manifest = {
        "format_version": 1,
        "tokenizer": tokenizer_info(_Tok()),
        "max_length": MAX_LENGTH,
        "columns": columns,
        "pos_class_frequencies": [1.0 / pos.NUM_CLASSES] * pos.NUM_CLASSES,
        "rows": sum(s["rows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
    }
    write_manifest(str(directory), manifest)
    return manifest


def _rewrite(directory, k: int, data: bytes, fix_manifest: bool = True) -> None:
    """Shard ``k`` replaced by ``data`` (a new file, as an adversary would leave it); with
    ``fix_manifest`` the manifest records its size and sha256, so only the structure checks
    stand between the bytes and the loader."""
    mpath = os.path.join(directory, MANIFEST)
    with open(mpath) as f:
        m = json.load(f)
    path = os.path.join(directory, m["shards"][k]["file"])
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)
    if fix_manifest:
        m["shards"][k]["bytes"] = len(data)
        m["shards"][k]["sha256"] = hashlib.sha256(data).hexdigest()
        with open(mpath, "w") as f:
            json.dump(m, f)


def read_all(directory, **kw) -> list[dict]:
    """Every batch of the set, checked: what the loader hands out is always sane."""
    stream = ShardStream(str(directory), 4, **{"shuffle": True, "seed": 1, **kw})
    out = []
    for b in stream:
        ids, att = b["input_ids"], b["attention_mask"]
        assert ids.dim() == 2 and ids.shape[1] <= MAX_LENGTH
        assert ((ids >= 0) & (ids < len(VOCAB)))[att.bool()].all()
        assert (ids[~att.bool()] == 0).all()
        if "pos_ids" in b:
            assert (b["pos_ids"].to(torch.int64) < pos.NUM_CLASSES).all()
        if "word_ids" in b:
            assert (b["word_ids"] >= -1).all()
        out.append(b)
    return out


@pytest.fixture(params=["list", "fixed"])
def shard_set(request, tmp_path):
    d = tmp_path / request.param
    make_set(d, fixed=request.param == "fixed")
    return d


# -- offsets pointing outside the file (the loader read process memory or crashed) --


def _list_offsets(data: bytes, directory, k: int) -> int:
    """Byte position of shard ``k``'s input_ids offsets in its file."""
    import pyarrow as pa

    path = open_shards(str(directory), verify="never").paths[k]
    with pa.memory_map(path) as src:
        col = pa.ipc.open_file(src).get_batch(0).column("input_ids")
    offsets = col.offsets.to_numpy().astype(np.int32).tobytes()
    i = data.find(offsets)  # the first column in the body (word_ids and others follow)
    assert i > 0
    return i


@pytest.mark.parametrize("shift", [1000, 10_000_000])
@pytest.mark.parametrize("verify", ["once", "never"])
def test_shifted_offsets_are_refused_even_with_a_matching_checksum(tmp_path, shift, verify):
    make_set(tmp_path, fixed=False)
    path = open_shards(str(tmp_path)).paths[1]
    data = bytearray(Path(path).read_bytes())
    i = _list_offsets(bytes(data), tmp_path, 1)
    offsets = np.frombuffer(bytes(data[i : i + 44]), np.int32).copy()
    offsets[1:] += shift
    data[i : i + 44] = offsets.tobytes()
    _rewrite(tmp_path, 1, bytes(data))
    with pytest.raises(ShardError, match=r"shard-00001\.arrow: .*offset.*out of bounds"):
        read_all(tmp_path, verify=verify)


def test_gather_rows_checks_every_row_against_the_values():
    values = np.arange(10, dtype=np.int64)
    out = np.full((2, 4), -5, dtype=np.int64)

    def gather(starts, lengths):
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        _C.gather_rows(
            values.ctypes.data,
            len(values),
            starts.ctypes.data,
            lengths.ctypes.data,
            2,
            out.ctypes.data,
            4,
            8,
            0,
            False,
        )

    gather([0, 6], [2, 4])
    assert out.tolist() == [[0, 1, 0, 0], [6, 7, 8, 9]]
    out[:] = -5
    for starts, lengths in ([0, 7], [2, 4]), ([0, -1], [2, 1]), ([0, 2**62], [1, 2]):
        with pytest.raises(ValueError, match="row 1 spans elements .* outside the 10 values"):
            gather(starts, lengths)
        assert (out == -5).all()  # nothing written
    with pytest.raises(ValueError, match="row 0 has 5 elements, expected 0 to 4"):
        gather([0, 0], [5, 1])


# -- content corruption is caught by default --


def test_flipped_bytes_are_caught_by_default_then_stamped(tmp_path, monkeypatch):
    make_set(tmp_path, fixed=False)
    pristine = tmp_path / "pristine"
    make_set(pristine, fixed=False)
    calls = []
    real = hashlib.sha256

    def counting(*a):
        calls.append(1)
        return real(*a)

    read_all(tmp_path)  # verifies each shard once, then stamps it
    monkeypatch.setattr("mlmfast.data.shards.hashlib.sha256", counting)
    read_all(tmp_path)
    assert calls == []  # stamped: not hashed again
    read_all(tmp_path, verify="always")
    assert len(calls) == 6  # each shard when the set is opened and when it is mapped
    path = open_shards(str(tmp_path)).paths[1]
    data = bytearray(Path(path).read_bytes())
    # the lowest bit of 16 ids (they stay inside the vocabulary: only the checksum can tell);
    # the ids follow the 10 rows' 11 offsets, padded to 8 bytes
    i = _list_offsets(bytes(data), tmp_path, 1) + 48
    for j in range(i, i + 64, 4):
        data[j] ^= 1
    with open(path, "r+b") as f:  # same inode, same size: the stamp must not vouch for it
        f.write(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00001\.arrow: sha256 does not match"):
        read_all(tmp_path)

    def rows(directory, **kw):
        batches = read_all(directory, shuffle=False, **kw)
        return [r for b in batches for r in b["input_ids"].tolist()]

    changed = rows(tmp_path, verify="never")  # the structure is intact, the ids are not
    assert sum(a != b for a, b in zip(changed, rows(pristine), strict=True)) >= 2


def test_a_manifest_with_a_wrong_sha256_is_refused(tmp_path):
    make_set(tmp_path, fixed=True)
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["shards"][0]["sha256"] = "0" * 64
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"shard-00000\.arrow: sha256 does not match"):
        read_all(tmp_path)
    assert len(read_all(tmp_path, verify=False)) == 6  # the user's explicit opt-out


def test_stamps_live_in_the_cache_dir_and_name_the_file_version(tmp_path):
    make_set(tmp_path / "s", fixed=True)
    read_all(tmp_path / "s")
    path = open_shards(str(tmp_path / "s")).paths[0]
    sha = json.loads((tmp_path / "s" / MANIFEST).read_text())["shards"][0]["sha256"]
    stamp = _stamp(os.stat(path), sha)
    assert os.path.exists(stamp)
    assert stamp.startswith(os.environ["MLMFAST_CACHE_DIR"])
    shutil.copy(path, path + ".copy")
    os.replace(path + ".copy", path)  # the same bytes in a new file: verified again, once
    assert not os.path.exists(_stamp(os.stat(path), sha))
    read_all(tmp_path / "s")
    assert os.path.exists(_stamp(os.stat(path), sha))


def test_verify_names_its_choices(tmp_path):
    make_set(tmp_path, fixed=True)
    with pytest.raises(ValueError, match="verify must be 'once'.*got 'sometimes'"):
        ShardStream(str(tmp_path), 4, verify="sometimes")


# -- structure: each check names the file and what is wrong --


def _batch_bytes(columns: dict) -> bytes:
    import pyarrow as pa

    batch = pa.RecordBatch.from_pydict(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _structure_cases():
    import pyarrow as pa

    ids = pa.array([[1, 5, 2], [1, 6, 7, 2]], pa.list_(pa.int32()))
    sid = pa.array([0, 1], pa.int64())
    return {
        "id outside the vocabulary": (
            {
                "input_ids": pa.array([[1, 5, 2], [1, 64, 2]], pa.list_(pa.int32())),
                "sample_id": sid,
            },
            r"input_ids holds 64, outside \[0, 64\)",
        ),
        "negative id": (
            {
                "input_ids": pa.array([[1, -3, 2], [1, 4, 2]], pa.list_(pa.int32())),
                "sample_id": sid,
            },
            r"input_ids holds -3",
        ),
        "row longer than max_length": (
            {
                "input_ids": pa.array([[1] + [4] * 12 + [2], [1, 2]], pa.list_(pa.int32())),
                "sample_id": sid,
            },
            r"input_ids row 0 has 14 tokens, max_length is 12",
        ),
        "ids as strings": (
            {"input_ids": pa.array([["a"], ["b"]]), "sample_id": sid},
            r"input_ids must hold int32 values, found string",
        ),
        "ids not a list": (
            {"input_ids": pa.array([1, 2], pa.int32()), "sample_id": sid},
            "input_ids must be a list",
        ),
        "null row": (
            {"input_ids": pa.array([[1, 2], None], pa.list_(pa.int32())), "sample_id": sid},
            "input_ids has 1 null rows",
        ),
        "null id": (
            {"input_ids": pa.array([[1, None, 2], [1, 2]], pa.list_(pa.int32())), "sample_id": sid},
            "input_ids has null values",
        ),
        "no sample_id": ({"input_ids": ids}, "has no sample_id column"),
        "sample_id as int32": (
            {"input_ids": ids, "sample_id": pa.array([0, 1], pa.int32())},
            "sample_id must be int64",
        ),
        "word_ids shorter than the row": (
            {
                "input_ids": ids,
                "sample_id": sid,
                "word_ids": pa.array([[-1, 0, -1], [-1, 0, -1]], pa.list_(pa.int32())),
            },
            "row 1 has 3 word_ids for 4 input_ids",
        ),
        "POS class outside the table": (
            {
                "input_ids": ids,
                "sample_id": sid,
                "pos_ids": pa.array([[17, 3, 17], [17, 3, 40, 17]], pa.list_(pa.uint8())),
            },
            rf"pos_ids holds 40, outside \[0, {pos.NUM_CLASSES}\)",
        ),
        "token type 2": (
            {
                "input_ids": ids,
                "sample_id": sid,
                "token_type_ids": pa.array([[0, 0, 1], [0, 2, 1, 1]], pa.list_(pa.int32())),
            },
            r"token_type_ids holds 2, outside \[0, 2\)",
        ),
        "fixed rows wider than max_length": (
            {
                "input_ids": pa.FixedSizeListArray.from_arrays(pa.array([4] * 26, pa.int32()), 13),
                "sample_id": sid,
            },
            "input_ids rows of 13 tokens, max_length is 12",
        ),
    }


@pytest.mark.parametrize("case", list(_structure_cases()))
def test_structure_checks_name_the_file_and_the_problem(tmp_path, case):
    columns, message = _structure_cases()[case]
    make_set(tmp_path, fixed=False)
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["columns"] = ["input_ids"]
    m["shards"][0]["rows"], m["rows"] = 2, m["rows"] - m["shards"][0]["rows"] + 2
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    _rewrite(tmp_path, 0, _batch_bytes(columns))
    with pytest.raises(ShardError, match=r"shard-00000\.arrow: " + message):
        read_all(tmp_path, shuffle=False)


# -- manifests --


@pytest.mark.parametrize(
    "name",
    [
        "../outside.arrow",
        "../../../../etc/passwd",
        "/etc/passwd",
        "sub/shard.arrow",
        "..",
        "manifest.json",
    ],
)
def test_manifest_cannot_name_files_outside_its_directory(tmp_path, name):
    d = tmp_path / "set"
    make_set(d, fixed=True)
    shutil.copy(d / "shard-00000.arrow", tmp_path / "outside.arrow")
    m = json.loads((d / MANIFEST).read_text())
    m["shards"][0]["file"] = name
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match="shard files must be plain names in its directory"):
        open_shards(str(d))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(max_length="12"), "max_length '12' is not >= 1"),
        (lambda m: m.update(shards={}), "has no list of shards"),
        (lambda m: m["shards"][0].pop("sha256"), "shard-00000.arrow: sha256 missing or invalid"),
        (lambda m: m["shards"][1].update(rows=-1), "rows missing or invalid"),
        (lambda m: m["shards"].append(dict(m["shards"][0])), "lists shard-00000.arrow twice"),
        (
            lambda m: m["tokenizer"].update(vocab_size="64"),
            "tokenizer.vocab_size '64' is not an id",
        ),
        (lambda m: m.update(rows=5), "rows 5 is not the sum of its shards' rows"),
        (lambda m: m.update(tokenizer=None), "has no tokenizer record"),
        (lambda m: m["pos_class_frequencies"].__setitem__(0, "x"), "pos_class_frequencies"),
    ],
)
def test_damaged_manifest_fields_are_named(tmp_path, edit, message):
    make_set(tmp_path, fixed=True)
    m = json.loads((tmp_path / MANIFEST).read_text())
    edit(m)
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"manifest\.json: .*" + message):
        open_shards(str(tmp_path))


def test_a_json_list_manifest_is_named(tmp_path):
    make_set(tmp_path, fixed=True)
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ShardError, match="must hold a JSON object, found list"):
        open_shards(str(tmp_path))


# -- fuzz: random damage to shard bytes and to the manifest --


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # a few random bytes
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # an aligned 32-bit word set to an extreme (offsets, lengths, counts)
        i = int(rng.integers(len(b) // 4)) * 4
        v = [0, 1, -1, 2**31 - 1, -(2**31), 2**16, int(rng.integers(-(2**31), 2**31))][
            int(rng.integers(7))
        ]
        b[i : i + 4] = np.array([v], np.int32).tobytes()
    elif kind == 2:  # an aligned 64-bit word (buffer offsets and lengths in the metadata)
        i = int(rng.integers(len(b) // 8)) * 8
        v = [0, -1, 2**62, 2**31, int(rng.integers(-(2**40), 2**40))][int(rng.integers(5))]
        b[i : i + 8] = np.array([v], np.int64).tobytes()
    else:  # a run of bytes overwritten
        i = int(rng.integers(len(b)))
        n = int(rng.integers(1, 64))
        b[i : i + n] = rng.integers(0, 256, min(n, len(b) - i), dtype=np.uint8).tobytes()
    return bytes(b)


@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed"])
def test_fuzz_shard_bytes_never_crash_or_leak(tmp_path, fixed):
    """Thousands of seeded mutations of a shard whose manifest is rewritten to match them (so
    the checksum cannot help): each read gives a ShardError or sane batches, never a crash (a
    segfault kills the test run), another exception, or an id outside the vocabulary."""
    pristine = tmp_path / "pristine"
    make_set(pristine, fixed=fixed)
    work = tmp_path / "work"
    originals = [Path(p).read_bytes() for p in open_shards(str(pristine)).paths]
    rng = np.random.default_rng(20261203 + fixed)
    outcomes = {"error": 0, "ok": 0}
    for _ in range(1500):
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(pristine, work)
        k = int(rng.integers(len(originals)))
        _rewrite(work, k, _mutate(originals[k], rng))
        try:
            read_all(work, verify="never")
            outcomes["ok"] += 1
        except ShardError as e:
            assert "shard-0000" in str(e) or MANIFEST in str(e)
            outcomes["error"] += 1
    # both outcomes occur: the mutations reach the data and the metadata
    assert outcomes["error"] > 300 and outcomes["ok"] > 100, outcomes


def test_fuzz_with_the_default_verification_every_change_is_caught(tmp_path):
    pristine = tmp_path / "pristine"
    make_set(pristine, fixed=False)
    originals = [Path(p).read_bytes() for p in open_shards(str(pristine)).paths]
    rng = np.random.default_rng(7)
    work = tmp_path / "work"
    for _ in range(300):
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(pristine, work)
        k = int(rng.integers(len(originals)))
        data = _mutate(originals[k], rng)
        _rewrite(work, k, data, fix_manifest=False)
        if data == originals[k]:
            read_all(work)
            continue
        with pytest.raises(ShardError):
            read_all(work)


def test_fuzz_manifest_bytes(tmp_path):
    pristine = tmp_path / "pristine"
    make_set(pristine, fixed=False)
    text = (pristine / MANIFEST).read_bytes()
    rng = np.random.default_rng(11)
    work = tmp_path / "work"
    outcomes = {"error": 0, "ok": 0}
    for _ in range(600):
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(pristine, work)
        (work / MANIFEST).write_bytes(_mutate(text, rng))
        try:
            read_all(work)
            outcomes["ok"] += 1
        except ShardError as e:
            assert str(work) in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 100, outcomes
