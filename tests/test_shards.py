"""The shard format: writer, column types, atomic writes, and open_shards validation errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mlmfast.data.shards import (
    MANIFEST,
    ShardError,
    ShardWriter,
    open_shards,
    tokenizer_info,
    vocab_hash,
    write_manifest,
)


class _Tok:
    """The parts of a tokenizer the manifest reads."""

    def __init__(self, vocab):
        self._vocab = vocab
        self.name_or_path = "stub"
        self.pad_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = 0, 1, 2, 3

    def get_vocab(self):
        return dict(self._vocab)

    def __len__(self):
        return len(self._vocab)


TOK = _Tok({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "a": 4, "b": 5})


def make_set(directory, rows, max_length=8, shard_rows=4, word_ids=False) -> dict:
    w = ShardWriter(str(directory), max_length, shard_rows, word_ids=word_ids)
    for r in rows:
        w.add(r, [-1] + list(range(len(r) - 2)) + [-1] if word_ids else None)
    shards = w.close()
    manifest = {
        "format_version": 1,
        "tokenizer": tokenizer_info(TOK),
        "max_length": max_length,
        "rows": sum(s["rows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
    }
    write_manifest(str(directory), manifest)
    return manifest


def read(path):
    import pyarrow as pa

    with pa.memory_map(path) as src:
        return pa.ipc.open_file(src).read_all()


def test_writer_rolls_shards_and_picks_column_types(tmp_path):
    import pyarrow as pa

    full = [[1, 4, 5, 4, 5, 4, 5, 2]] * 4
    short = [[1, 4, 2], [1, 5, 5, 2]]
    m = make_set(tmp_path, full + short, word_ids=True)
    assert [s["rows"] for s in m["shards"]] == [4, 2]
    assert [s["fixed_length"] for s in m["shards"]] == [True, False]
    t0, t1 = (read(os.path.join(tmp_path, s["file"])) for s in m["shards"])
    assert t0.schema.field("input_ids").type == pa.list_(pa.int32(), 8)
    assert t1.schema.field("input_ids").type == pa.list_(pa.int32())
    assert t0.schema.field("sample_id").type == pa.int64()
    assert t0.column("sample_id").to_pylist() == [0, 1, 2, 3]
    assert t1.column("sample_id").to_pylist() == [4, 5]
    assert t1.column("input_ids").to_pylist() == short
    assert t1.column("word_ids").to_pylist() == [[-1, 0, -1], [-1, 0, 1, -1]]
    # atomic writes leave no temporary files behind
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "shard-00000.arrow", "shard-00001.arrow"]
    ss = open_shards(tmp_path, verify=True, tokenizer=TOK)
    assert ss.num_rows == 6 and ss.rows_per_shard == [4, 2] and ss.pad_token_id == 0


def test_writer_rejects_long_rows(tmp_path):
    w = ShardWriter(str(tmp_path), 4, 10)
    with pytest.raises(ValueError, match="max_length=4"):
        w.add(np.arange(5))


def test_vocab_hash_depends_on_the_mapping():
    other = _Tok({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "a": 5, "b": 4})
    assert vocab_hash(TOK) != vocab_hash(other)
    assert vocab_hash(TOK) == vocab_hash(_Tok(dict(reversed(list(TOK.get_vocab().items())))))


@pytest.fixture
def shard_dir(tmp_path):
    rows = [[1] + [4] * (i % 6) + [2] for i in range(10)]
    make_set(tmp_path, rows)
    return tmp_path


def _fix_hint(e) -> None:
    assert "mlmfast prepare" in str(e.value)


def test_missing_manifest(shard_dir):
    os.unlink(shard_dir / MANIFEST)
    with pytest.raises(ShardError, match="manifest.json: missing") as e:
        open_shards(shard_dir)
    _fix_hint(e)


def test_missing_directory(tmp_path):
    with pytest.raises(ShardError, match="no such shard directory"):
        open_shards(tmp_path / "nope")


def test_truncated_shard(shard_dir):
    path = shard_dir / "shard-00001.arrow"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="shard-00001.arrow.*truncated") as e:
        open_shards(shard_dir)
    _fix_hint(e)


def test_flipped_bytes_need_verify(shard_dir):
    path = shard_dir / "shard-00002.arrow"
    data = bytearray(path.read_bytes())
    # flip bytes inside the data buffers (not the footer): the file still parses
    t = read(str(path))
    assert t.num_rows == 2
    i = data.find(np.array([4, 4], np.int32).tobytes())
    assert i > 0
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    open_shards(shard_dir)  # size and row count still match
    with pytest.raises(ShardError, match="shard-00002.arrow: sha256") as e:
        open_shards(shard_dir, verify=True)
    _fix_hint(e)


def test_removed_shard(shard_dir):
    os.unlink(shard_dir / "shard-00000.arrow")
    with pytest.raises(ShardError, match="shard-00000.arrow: listed in manifest.json but missing"):
        open_shards(shard_dir)


def test_wrong_row_count(shard_dir):
    m = json.loads((shard_dir / MANIFEST).read_text())
    m["shards"][0]["rows"] += 1
    m["rows"] += 1  # consistent with itself: the file's own row count must catch it
    (shard_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match="shard-00000.arrow: 4 rows, the manifest records 5"):
        open_shards(shard_dir)


def test_wrong_format_version(shard_dir):
    m = json.loads((shard_dir / MANIFEST).read_text())
    m["format_version"] = 99
    (shard_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match="manifest.json: format_version 99") as e:
        open_shards(shard_dir)
    _fix_hint(e)


def test_unreadable_manifest(shard_dir):
    (shard_dir / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="unreadable manifest"):
        open_shards(shard_dir)


def test_other_tokenizer(shard_dir):
    other = _Tok({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "c": 4})
    with pytest.raises(ShardError, match="manifest.json: shards were made with tokenizer") as e:
        open_shards(shard_dir, tokenizer=other)
    assert "--tokenizer" in str(e.value)
    open_shards(shard_dir, tokenizer=TOK)
