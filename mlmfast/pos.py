"""Part-of-speech weighted masking: Universal POS classes, weight presets, and the per-class
selection probabilities the op takes.

A token's class is the Universal POS tag of the word it belongs to (``mlmfast prepare --pos``
assigns it with spaCy); special tokens and padding have their own class ``SPECIAL``. User
weights ``w_c`` become probabilities ``p_c = min(1, p * w_c / sum_c f_c w_c)`` with ``f_c`` the
class frequencies (from a shard manifest, or measured on the batch), so the expected mask rate
stays ``p`` (up to the clipping at 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

UPOS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
    "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
SPECIAL = len(UPOS)  # class of special tokens and padding
NUM_CLASSES = SPECIAL + 1
CLASS_OF = {tag: i for i, tag in enumerate(UPOS)}

CONTENT = ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM")
PRESETS: dict[str, dict[str, float]] = {
    # every class alike: the same as no POS weighting
    "uniform": {tag: 1.0 for tag in UPOS},
    # content words three times as likely as function words and punctuation
    "content": {tag: (3.0 if tag in CONTENT else 1.0) for tag in UPOS},
    # only content words
    "content-only": {tag: (1.0 if tag in CONTENT else 0.0) for tag in UPOS},
    # nouns and proper nouns (entity-like tokens) twice as likely, punctuation never
    "nouns": {**{tag: 1.0 for tag in UPOS}, "NOUN": 2.0, "PROPN": 2.0, "PUNCT": 0.0},
}


def resolve_weights(weights: str | Mapping[str, float]) -> list[float]:
    """Weights per class index (``SPECIAL`` gets 0) from a preset name or a dict UPOS -> weight
    (tags not named get weight 1)."""
    if isinstance(weights, str):
        if weights not in PRESETS:
            raise ValueError(f"pos_weights: unknown preset {weights!r}; presets: {sorted(PRESETS)}")
        weights = PRESETS[weights]
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"pos_weights must be a preset name or a dict UPOS tag -> weight, got {type(weights).__name__}"
        )
    unknown = sorted(set(weights) - set(UPOS))
    if unknown:
        raise ValueError(
            f"pos_weights: unknown POS tags {unknown}; expected Universal POS tags {UPOS}"
        )
    out = [1.0] * len(UPOS) + [0.0]
    for tag, w in weights.items():
        w = float(w)
        if not w >= 0.0:  # also rejects NaN
            raise ValueError(f"pos_weights[{tag!r}] must be a non-negative number, got {w}")
        out[CLASS_OF[tag]] = w
    return out


def class_frequencies(pos_ids: torch.Tensor, eligible: torch.Tensor | None = None) -> list[float]:
    """Share of each word class among the (eligible) tokens of a batch; ``SPECIAL`` gets 0."""
    ids = pos_ids.reshape(-1).long()
    if eligible is not None:
        ids = ids[eligible.reshape(-1).bool()]
    counts = torch.bincount(ids, minlength=NUM_CLASSES)[:NUM_CLASSES].double()
    counts[SPECIAL] = 0
    total = counts.sum()
    return (counts / total).tolist() if total > 0 else [0.0] * NUM_CLASSES


def class_probabilities(
    mlm_probability: float, weights: Sequence[float], frequencies: Sequence[float]
) -> list[float]:
    """p_c = min(1, p * w_c / sum_c f_c w_c); the special class never masks."""
    if len(weights) != NUM_CLASSES or len(frequencies) != NUM_CLASSES:
        raise ValueError(
            f"expected {NUM_CLASSES} weights and frequencies, got {len(weights)} and {len(frequencies)}"
        )
    norm = sum(f * w for f, w in zip(frequencies[:SPECIAL], weights[:SPECIAL], strict=True))
    if norm <= 0.0:
        return [0.0] * NUM_CLASSES
    probs = [min(1.0, mlm_probability * w / norm) for w in weights[:SPECIAL]]
    return probs + [0.0]
