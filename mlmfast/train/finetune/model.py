"""The task model of a fine-tuning run: built from the init (or drawn at random in its
architecture), frozen or wrapped with LoRA adapters as the strategy says, and its weights saved
at the end (the merged model, and for LoRA the adapter)."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import torch

from mlmfast.train.finetune.config import FinetuneConfig
from mlmfast.train.finetune.data import TaskData
from mlmfast.train.models import quiet_transformers

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def model_dir(cfg: FinetuneConfig) -> str:
    """The directory whose weights (or, for init=random, whose config) the model starts from."""
    from mlmfast.data.embedded import default_tokenizer_path
    from mlmfast.train import models

    if cfg.init == "random":
        try:
            return models.resolve_model_dir(str(cfg.arch or default_tokenizer_path()))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"arch: {str(e).removeprefix('init: ')}") from None
    return models.resolve_model_dir(str(cfg.init or default_tokenizer_path()))


def _config_overrides(cfg: FinetuneConfig, data: TaskData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "num_labels": data.num_labels,
        "id2label": {i: str(n) for i, n in enumerate(data.label_names)},
        "label2id": {str(n): i for i, n in enumerate(data.label_names)},
    }
    if cfg.hidden_dropout is not None:
        out["hidden_dropout_prob"] = cfg.hidden_dropout
    if cfg.attention_dropout is not None:
        out["attention_probs_dropout_prob"] = cfg.attention_dropout
    return out


def build_task_model(cfg: FinetuneConfig, directory: str, data: TaskData):
    """The task model as it starts, deterministically from ``seed`` (so a resumed run rebuilds
    the same initial model for the drift and forgetting baselines), and a report of its
    initialisation."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    cls = BertForTokenClassification if data.token_level else BertForSequenceClassification
    overrides = _config_overrides(cfg, data)
    torch.manual_seed(cfg.seed)
    with quiet_transformers():
        if cfg.init == "random":
            config = BertConfig.from_pretrained(directory, **overrides)
            return cls(config), {"init": "random", "arch": directory, "initialised": ["*"]}
        model, info = cls.from_pretrained(directory, output_loading_info=True, **overrides)
    return model, {
        "init": directory,
        "initialised": sorted(info.get("missing_keys", [])),
        "unused": sorted(info.get("unexpected_keys", [])),
    }


def encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ``BertModel`` inside a task model or its PEFT wrapper."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


# -- strategies ----------------------------------------------------------------------------------


def _layer_linears(model: torch.nn.Module) -> list[str]:
    """Paths of the linear modules inside the encoder layers."""
    return [
        name
        for name, module in encoder(model).named_modules()
        if isinstance(module, torch.nn.Linear) and _LAYER.match(name)
    ]


def _lora_regex(targets: list[str]) -> str:
    # a regex, not a list of names: PEFT would match a plain "dense" in the pooler too, which
    # already trains fully as part of the head
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"(?:.*\.)?encoder\.layer\.\d+\.(?:.*\.)?(?:{alternatives})"


def check_lora_targets(model: torch.nn.Module, targets: list[str]) -> None:
    paths = _layer_linears(model)
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        available = sorted({p.rsplit(".", 1)[-1] for p in paths})
        raise ValueError(
            f"lora_targets: {missing} name no linear module inside the encoder layers; "
            f"available: {available} (or dotted suffixes such as 'attention.self.query', "
            "'intermediate.dense')"
        )


def apply_strategy(cfg: FinetuneConfig, model: torch.nn.Module, token_level: bool):
    """Freeze what the strategy keeps fixed; wrap with PEFT for lora. Returns the model to
    train (the PEFT model for lora). The pooler always trains: it is head (see the package
    docstring)."""
    bert = encoder(model)
    if cfg.strategy == "lora":
        from peft import LoraConfig, get_peft_model

        head = ["classifier"] if token_level else ["classifier", "pooler"]
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=_lora_regex(cfg.targets),
            modules_to_save=head,
            task_type="TOKEN_CLS" if token_level else "SEQ_CLS",
        )
        torch.manual_seed(cfg.seed + 3)  # the adapters' initialisation
        return get_peft_model(model, lora)
    if cfg.strategy in ("feature-extraction", "top-k"):
        keep = 0 if cfg.strategy == "feature-extraction" else cfg.top_k
        first = bert.config.num_hidden_layers - keep
        for name, p in bert.named_parameters():
            if name.startswith("pooler."):
                continue
            m = _LAYER.match(name)
            p.requires_grad_(bool(m) and int(m.group(1)) >= first)
    return model


# -- weights -------------------------------------------------------------------------------------


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


def load_checkpoint_weights(cfg: FinetuneConfig, model, checkpoint: str) -> None:
    """The weights of a checkpoint into the model being trained (for LoRA: its adapter)."""
    from mlmfast.train import checkpoint as ckpt

    if cfg.strategy != "lora":
        ckpt.load_model_weights(model, checkpoint)
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(checkpoint, "model", "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"{path}: missing; the checkpoint holds no LoRA adapter")
    result = set_peft_model_state_dict(model, load_file(path))
    if result.unexpected_keys:
        raise ckpt.CheckpointError(
            f"{path}: adapter weights do not fit the model (unexpected "
            f"{result.unexpected_keys[:5]}); was it written with other lora settings?"
        )


def save_final_model(cfg: FinetuneConfig, model, before, tokenizer) -> tuple[Any, dict[str, str]]:
    """The fine-tuned model to ``OUT/model`` (for LoRA merged, and the adapter to
    ``OUT/adapter``); returns the model saved and the paths written."""
    paths = {"model": os.path.join(cfg.out, "model")}
    with quiet_transformers():
        if cfg.strategy == "lora":
            paths["adapter"] = os.path.join(cfg.out, "adapter")
            if cfg.init == "random":  # the adapter's base exists nowhere else: save it
                base_out = os.path.join(cfg.out, "base_model")
                before.save_pretrained(base_out)
                tokenizer.save_pretrained(base_out)
                for c in model.peft_config.values():
                    c.base_model_name_or_path = base_out
            model.save_pretrained(paths["adapter"])
            tokenizer.save_pretrained(paths["adapter"])
            final = copy.deepcopy(model).merge_and_unload()
        else:
            final = model
        final.save_pretrained(paths["model"])
        tokenizer.save_pretrained(paths["model"])
    return final, paths
