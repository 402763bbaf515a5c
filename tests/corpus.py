"""Small synthetic corpora and shard-set snapshots shared by the data tests."""

from __future__ import annotations

import json
import os
import random

from mlmfast.data.shards import MANIFEST

WORDS = [
    "the", "film", "was", "great", "awful", "plot", "actor", "scene", "music", "boring",
    "wonderful", "ending",
]  # fmt: skip


def random_docs(n: int, seed: int = 0, min_words: int = 1, max_words: int = 60) -> list[str]:
    """``n`` documents of ``min_words``..``max_words`` words drawn from :data:`WORDS`."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n)
    ]


def snapshot(directory) -> dict:
    """Every file of a directory by name: its bytes, the manifest without its timing fields
    (``created``, ``seconds``), so that two runs compare equal when their shards do."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        if name == MANIFEST:
            m = json.loads(data)
            m.pop("created"), m.pop("seconds")
            data = m
        out[name] = data
    return out
