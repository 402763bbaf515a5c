"""The first phase of a fine-tuning run: everything a user can get wrong is checked before a
model is built (the init, the task data, the shards of the MLM measurements, the packages the
options need, the device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mlmfast.train.finetune import model as task_model
from mlmfast.train.finetune.config import FinetuneConfig
from mlmfast.train.finetune.data import (
    TaskData,
    encode_classification,
    pos_data,
    read_classification,
)
from mlmfast.train.models import quiet_transformers


@dataclass
class Inputs:
    """What the run starts from, checked."""

    model_dir: str  # the init's weights, or for init=random the architecture's config
    tokenizer: Any
    base_config: Any  # the init's BertConfig
    data: TaskData
    device: torch.device
    precision: str

    @property
    def amp(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def check_inputs(cfg: FinetuneConfig) -> Inputs:
    from mlmfast.train import models
    from mlmfast.train.runtime import require, setup

    model_dir = task_model.model_dir(cfg)
    raw = read_classification(cfg) if cfg.task == "classification" else None
    tokenizer = models.tokenizer_of(model_dir)
    if tokenizer is None:
        import warnings

        from mlmfast.data.embedded import load_tokenizer

        # A checkpoint saved without its tokenizer: the embedded bert-base-uncased vocabulary is
        # the right one only if the model was trained with it, so say which one is used.
        warnings.warn(
            f"{model_dir} has no tokenizer files (tokenizer.json, vocab.txt, "
            "tokenizer_config.json): fine-tuning tokenises with the embedded bert-base-uncased "
            "tokenizer; save the model's own tokenizer there if it was trained with another",
            UserWarning,
            stacklevel=2,
        )
        tokenizer = load_tokenizer()
    base_config = _base_config(cfg, model_dir, tokenizer)
    _check_general_shards(cfg, tokenizer)
    models.check_config(base_config, max_length=cfg.max_length)
    if cfg.strategy == "lora":
        require("peft", "strategy 'lora'", fix="or choose another --strategy")
    if cfg.tensorboard:
        require("tensorboard", "--tensorboard true", fix="or pass --tensorboard false")
    data = (
        encode_classification(cfg, raw, tokenizer) if raw is not None else pos_data(cfg, tokenizer)
    )
    if cfg.early_stopping_patience and not len(data.validation):
        raise ValueError(
            "early_stopping_patience needs a validation split (val_fraction > 0 or a validation "
            "file)"
        )
    device = setup(cfg.device).device
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return Inputs(model_dir, tokenizer, base_config, data, device, precision)


def _base_config(cfg: FinetuneConfig, model_dir: str, tokenizer):
    """The init's config, checked against its tokenizer and the strategy."""
    from transformers import BertConfig

    with quiet_transformers():
        config = BertConfig.from_pretrained(model_dir)
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"init: the model in {model_dir} has {config.vocab_size} token embeddings, its "
            f"tokenizer {len(tokenizer)} ids"
        )
    layers = config.num_hidden_layers
    if cfg.strategy == "top-k" and cfg.top_k > layers:
        raise ValueError(
            f"top_k={cfg.top_k} is more than the {layers} encoder layers of {model_dir}; "
            f"expected 1..{layers}"
        )
    return config


def _check_general_shards(cfg: FinetuneConfig, tokenizer) -> None:
    """The shards of the MLM measurements exist and were made with the init's tokenizer."""
    from mlmfast.data.shards import ShardError, open_shards

    for name in ("rehearsal_data", "general_data", "mlm_head_data"):
        path = getattr(cfg, name)
        if path:
            try:
                open_shards(path, tokenizer=tokenizer)
            except (ShardError, OSError, ValueError) as e:
                raise type(e)(f"{name}: {e}") from None
