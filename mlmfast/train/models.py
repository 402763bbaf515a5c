"""Model configurations by name and initialisation from checkpoints or model directories.

Models are transformers' own ``BertForMaskedLM`` / ``BertForSequenceClassification``; this
module only decides their shape and where their weights come from.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

# (layers, hidden, heads): intermediate size is 4 x hidden, as in BERT. tiny/mini/small/medium
# are the shapes of Turc et al. (2019), "Well-Read Students Learn Better".
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
}


def bert_config(
    spec: str | dict[str, Any],
    *,
    vocab_size: int,
    max_length: int,
    pad_token_id: int = 0,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
):
    """A ``BertConfig`` from a size name (:data:`SIZES`), a JSON file, a JSON string or a dict.

    ``vocab_size`` comes from the tokenizer of the data; ``max_position_embeddings`` is at least
    ``max_length`` (512 for the named sizes, as in BERT, so a model outgrows its data length).
    Values given in a JSON config win, except ``vocab_size``, which must fit the tokenizer.
    """
    from transformers import BertConfig

    if isinstance(spec, str) and spec in SIZES:
        layers, hidden, heads = SIZES[spec]
        fields: dict[str, Any] = {
            "num_hidden_layers": layers,
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "intermediate_size": 4 * hidden,
            "max_position_embeddings": max(512, max_length),
        }
    elif isinstance(spec, dict):
        fields = dict(spec)
    elif isinstance(spec, str) and os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            fields = json.load(f)
    elif isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            fields = json.loads(spec)
        except ValueError as e:
            raise ValueError(f"model_config: not valid JSON ({e}): {spec[:80]!r}") from None
    else:
        raise ValueError(
            f"model_config must be one of {sorted(SIZES)}, a BertConfig JSON file or a JSON "
            f"string, got {spec!r}"
        )
    if "vocab_size" in fields and int(fields["vocab_size"]) != vocab_size:
        raise ValueError(
            f"model_config: vocab_size {fields['vocab_size']} does not fit the tokenizer of the "
            f"data ({vocab_size} ids); drop vocab_size from the config (it is taken from the data)"
        )
    fields["vocab_size"] = vocab_size
    fields["pad_token_id"] = pad_token_id
    fields.setdefault("max_position_embeddings", max(512, max_length))
    if hidden_dropout is not None:
        fields["hidden_dropout_prob"] = hidden_dropout
    if attention_dropout is not None:
        fields["attention_probs_dropout_prob"] = attention_dropout
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    config = BertConfig(**fields)
    check_config(config, max_length=max_length)
    return config


def check_config(config, *, max_length: int) -> None:
    """Errors a user can fix before training starts, instead of a shape error inside it."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"model_config: hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_attention_heads}"
        )
    if config.max_position_embeddings < max_length:
        raise ValueError(
            f"model_config: max_position_embeddings {config.max_position_embeddings} is shorter "
            f"than the data's max_length {max_length}; raise it or prepare shorter rows"
        )
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"model_config: {name} must be in [0, 1), got {value}")


def resolve_model_dir(path: str) -> str:
    """The transformers model directory behind ``path``: the directory itself, a pretrain run
    (``RUN/model``), or a checkpoint directory (``.../step-NNNNNNN/model``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"init: {path!r} does not exist (expected a model directory, a "
            "pretrain run directory or a checkpoint directory)"
        )
    for candidate in (path, os.path.join(path, "model")):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(
        f"init: {path!r} holds no config.json (neither directly nor in {path}/model); expected "
        "a transformers model directory, a pretrain run or one of its checkpoints"
    )


def load_masked_lm(path: str, *, max_length: int | None = None, **config_overrides: Any):
    """``BertForMaskedLM`` from a model directory, pretrain run or checkpoint.

    Returns ``(model, report)``; ``report`` lists the weights that were not in the directory and
    were initialised (e.g. the MLM head's transform for an encoder-only directory such as the
    embedded MiniLM: its decoder is tied to the word embeddings, so only a small transform and
    the output bias are new) and the weights of the directory that were not used.
    ``config_overrides`` (e.g. ``hidden_dropout_prob``) change the loaded config.
    """
    from transformers import BertForMaskedLM

    directory = resolve_model_dir(path)
    model, info = BertForMaskedLM.from_pretrained(
        directory, output_loading_info=True, **config_overrides
    )
    if max_length is not None:
        check_config(model.config, max_length=max_length)
    report = {
        "path": directory,
        "initialised": sorted(info.get("missing_keys", [])),
        "unused": sorted(info.get("unexpected_keys", [])),
    }
    return model, report


def tokenizer_of(path: str):
    """The tokenizer saved in a model directory (or run/checkpoint), or None when there is none."""
    from mlmfast.data.embedded import load_tokenizer

    directory = resolve_model_dir(path)
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in files):
        return None
    return load_tokenizer(directory)


@contextlib.contextmanager
def quiet_transformers():
    """transformers prints a load report and progress bars per from_pretrained; the callers
    report what was initialised themselves."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
