"""Catastrophic forgetting: the MLM loss on held-out general shards before and after
fine-tuning, read by one MLM head that stays fixed (see the package docstring for why a head is
fitted on the frozen initial encoder when the init has none). Also the head's plumbing that
rehearsal shares: a head bound to an encoder's word embeddings, and general-shard MLM batches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mlmfast.train.finetune import model as task_model
from mlmfast.train.finetune.config import FinetuneConfig
from mlmfast.train.finetune.inputs import Inputs
from mlmfast.train.models import quiet_transformers

HEAD_STEPS = 200  # mlm_head_steps when the init has no trained MLM head
HEAD_FILE = "mlm_head.safetensors"


@dataclass
class MLMHead:
    """The head's own weights (transform and output bias; its decoder is the encoder's word
    embeddings) and how it came about."""

    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class EncoderMLM(torch.nn.Module):
    """A ``BertForMaskedLM``-shaped view (``bert``, ``cls``, ``config``) of an encoder and an MLM
    head, for :class:`~mlmfast.train.mlm.MaskedLMObjective` and ``evaluate_mlm``."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.bert = encoder
        self.cls = head
        self.config = encoder.config
        self.train(encoder.training)


def head_state(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's own weights: transform and output bias (the decoder is the embeddings)."""
    return {
        k: v.detach().clone()
        for k, v in head.state_dict().items()
        if not k.startswith("predictions.decoder.")
    }


def bind_head(state: dict[str, torch.Tensor], encoder: torch.nn.Module, *, trainable: bool):
    """A ``BertOnlyMLMHead`` with the weights ``state`` whose decoder is ``encoder``'s
    word-embedding matrix (tied, as in BERT) and whose output bias is the head's bias."""
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    with torch.random.fork_rng(devices=[]):  # the decoder's throwaway init must not shift RNG
        head = BertOnlyMLMHead(encoder.config)
    missing, unexpected = head.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("predictions.decoder.")]
    if missing or unexpected:
        raise ValueError(
            f"MLM head weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    head.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias
    head.to(encoder.embeddings.word_embeddings.weight.device)
    head.predictions.transform.requires_grad_(trainable)
    head.predictions.bias.requires_grad_(trainable)
    return head


def head_parameters(head: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a head trains (not the decoder: those are the encoder's embeddings)."""
    return [*head.predictions.transform.parameters(), head.predictions.bias]


def mlm_batches(cfg, data: str, batch_size: int, masking, tokenizer, *, names: tuple[str, str]):
    """A seeded, shuffled stream of general shards (full batches only) and the masker for it,
    for the MLM losses of finetune (head fitting, rehearsal); ``names`` are the options that
    gave ``data`` and ``batch_size``, for the error."""
    from mlmfast.data.stream import ShardStream
    from mlmfast.train.mlm import DeviceMasker

    stream = ShardStream(
        data,
        batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        rank=0,
        world_size=1,
        tokenizer=tokenizer,
    )
    if stream.num_batches < 1:
        raise ValueError(
            f"{names[0]}={data!r} has {stream.num_rows} rows, fewer than one batch of "
            f"{names[1]}={batch_size}"
        )
    return stream, DeviceMasker.for_shards(tokenizer, masking, stream.shards.manifest)


def masking(cfg: FinetuneConfig):
    """How the MLM measurements and rehearsal mask: BERT's 80/10/10 at ``mlm_probability``."""
    from mlmfast.train.mlm import MaskingConfig

    return MaskingConfig(mlm_probability=cfg.mlm_probability, seed=cfg.seed)


# -- the head the measurements read --------------------------------------------------------------


def prepare_head(
    cfg: FinetuneConfig, inputs: Inputs, model: torch.nn.Module, resumed: bool, logger
) -> MLMHead | None:
    """The MLM head of the forgetting measurement and of rehearsal (None when neither is asked
    for): the one this run saved when it is resumed, else the ``mlm_head`` of another run, else
    the init's, fitted on the frozen initial ``model``'s encoder when it is untrained. Saved to
    ``OUT/mlm_head.safetensors``, so a resumed run measures with the same head."""
    if not (cfg.general_data or cfg.strategy == "rehearsal"):
        return None
    saved = os.path.join(cfg.out, HEAD_FILE)
    if resumed and os.path.isfile(saved):  # the head this run started with
        return _load_head(saved, inputs.model_dir, cfg.init)
    if cfg.mlm_head:
        head = _load_head(cfg.mlm_head, inputs.model_dir, cfg.init)
        head.info["loaded_from"] = os.path.abspath(cfg.mlm_head)
        _save_head(saved, head)  # a resume must not depend on it
        return head
    state, trained = _init_head(cfg, inputs)
    head = MLMHead(state, {"fitted": False, "trained_in_init": trained})
    steps = cfg.mlm_head_steps
    if steps is None:
        steps = 0 if trained else HEAD_STEPS
    if steps:
        head = fit_head(
            cfg, inputs, task_model.encoder(model), head, steps, logger, fresh=not trained
        )
    elif not trained:
        print(
            "finetune: the init has no trained MLM head and mlm_head_steps=0: the forgetting "
            "numbers use an untrained head"
        )
    head.info["encoder"] = _encoder_id(inputs.model_dir, cfg.init)
    _save_head(saved, head)
    return head


def _init_head(cfg: FinetuneConfig, inputs: Inputs) -> tuple[dict, bool]:
    """The init's MLM head weights and whether they are trained (False: initialised now)."""
    from transformers import BertForMaskedLM

    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(cfg.seed + 2)
        if cfg.init == "random":
            from transformers.models.bert.modeling_bert import BertOnlyMLMHead

            return head_state(BertOnlyMLMHead(inputs.base_config)), False
        mlm, info = BertForMaskedLM.from_pretrained(inputs.model_dir, output_loading_info=True)
    fresh = [k for k in info.get("missing_keys", []) if k.startswith("cls.")]
    fresh = [k for k in fresh if not k.startswith("cls.predictions.decoder.")]
    return head_state(mlm.cls), not fresh


def _unigram_bias(stream, tokenizer, vocab_size: int) -> torch.Tensor:
    """Log frequencies (add-one smoothed) of the tokens of ``stream``, special ids excluded: the
    best context-free output bias, so a fresh head's steps go to reading the context."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for batch in stream.iter_batches():
        ids = batch["input_ids"][batch["attention_mask"].bool()]
        counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
    specials = [i for i in tokenizer.all_special_ids if i < vocab_size]
    counts += 1.0
    counts[specials] = 0.0
    probs = counts / counts.sum()
    return probs.clamp_min(1e-12).log().float()


def fit_head(
    cfg: FinetuneConfig,
    inputs: Inputs,
    encoder: torch.nn.Module,
    head: MLMHead,
    steps: int,
    logger,
    *,
    fresh: bool,
) -> MLMHead:
    """Fit the head's transform and bias on the frozen ``encoder`` for ``steps`` AdamW steps on
    ``mlm_head_data`` (else rehearsal_data, else general_data); a ``fresh`` (untrained) head's
    bias starts at the data's log unigram frequencies. Draws from no global RNG: the encoder
    runs in eval mode, order and masks are seeded."""
    from tqdm.auto import tqdm

    source = cfg.mlm_head_data or cfg.rehearsal_data or cfg.general_data
    fit = _HeadFit.start(cfg, inputs, encoder, head, source, steps, fresh=fresh)
    every = max(1, steps // 10)
    bar = tqdm(total=steps, disable=not cfg.progress, desc="mlm head", unit="step", leave=False)
    was = encoder.training
    encoder.eval()
    try:
        for step in range(steps):
            fit.losses.append(fit.step())
            bar.update(1)
            if (step + 1) % every == 0 or step + 1 == steps:
                window = fit.losses[-every:]
                logger.log(step + 1, {"loss": sum(window) / len(window)}, prefix="mlm_head")
                bar.set_postfix(loss=f"{window[-1]:.3f}")
    finally:
        bar.close()
        encoder.train(was)
    tail = fit.losses[-every:]
    info = {
        "fitted": True,
        "steps": steps,
        "data": os.path.abspath(source),
        "lr": cfg.mlm_head_lr,
        "batch_size": cfg.mlm_head_batch_size,
        "bias_init": "log unigram" if fresh else "init",
        "first_loss": fit.losses[0] if fit.losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
    }
    return MLMHead(head_state(fit.head), {**head.info, **info})


@dataclass
class _HeadFit:
    """The optimisation of a head on a frozen encoder, one batch of general shards per step."""

    head: torch.nn.Module
    encoder: torch.nn.Module
    stream: Any
    masker: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    amp: torch.dtype | None
    epoch: int = 0
    batches: Any = None
    losses: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, cfg, inputs: Inputs, encoder, head: MLMHead, source: str, steps: int, *, fresh):
        from mlmfast.train import optim

        stream, masker = mlm_batches(
            cfg,
            source,
            cfg.mlm_head_batch_size,
            masking(cfg),
            inputs.tokenizer,
            names=("mlm_head_data", "mlm_head_batch_size"),
        )
        module = bind_head(head.state, encoder, trainable=True)
        if fresh:
            with torch.no_grad():
                bias = _unigram_bias(stream, inputs.tokenizer, module.predictions.bias.shape[0])
                module.predictions.bias.copy_(bias.to(module.predictions.bias.device))
        opt = torch.optim.AdamW(head_parameters(module), lr=cfg.mlm_head_lr, weight_decay=0.0)
        sched = optim.make_scheduler(
            opt, kind="cosine", warmup_steps=max(1, steps // 10), total_steps=max(1, steps)
        )
        fit = cls(module, encoder, stream, masker, opt, sched, inputs.device, inputs.amp)
        fit.batches = stream.iter_batches()
        return fit

    def step(self) -> float:
        batch = next(self.batches, None)
        if batch is None:
            self.epoch += 1
            self.stream.set_epoch(self.epoch)
            self.batches = self.stream.iter_batches()
            batch = next(self.batches)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        masked = self.masker(batch, self.epoch)
        amp = self.amp
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None),
        ):
            hidden = self.encoder(
                input_ids=masked.input_ids,
                attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"),
            ).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked.positions)
        target = masked.labels.reshape(-1).index_select(0, masked.positions).long()
        # the decoder is the frozen embedding matrix: detached, so no gradient reaches it
        emb = self.encoder.embeddings.word_embeddings.weight
        predictions = self.head.predictions
        logits = F.linear(
            predictions.transform(selected.float()), emb.detach().float(), predictions.bias
        )
        loss = F.cross_entropy(logits, target)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def _save_head(path: str, head: MLMHead) -> None:
    from safetensors.torch import save_file

    from mlmfast.data.shards import atomic_write_json

    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in head.state.items()}, tmp)
    os.replace(tmp, path)
    atomic_write_json(path[: -len(".safetensors")] + ".json", head.info)


def _load_head(path: str, model_dir: str, init: str | None) -> MLMHead:
    from safetensors.torch import load_file

    if os.path.isdir(path):
        path = os.path.join(path, HEAD_FILE)
    meta_path = path[: -len(".safetensors")] + ".json" if path.endswith(".safetensors") else None
    if not os.path.isfile(path) or meta_path is None or not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"mlm_head={path!r}: expected {HEAD_FILE} with its .json beside it, as a finetune "
            "run writes them (OUT/mlm_head.safetensors), or that run's directory"
        )
    with open(meta_path, encoding="utf-8") as f:
        info = json.load(f)
    # a head reads one particular encoder; fitted on another init it would measure nonsense
    if info.get("encoder") != _encoder_id(model_dir, init):
        raise ValueError(
            f"mlm_head={path!r} was fitted on the encoder {info.get('encoder')!r}, this run starts "
            f"from {_encoder_id(model_dir, init)!r}; fit a head for this init (mlm_head_steps)"
        )
    return MLMHead(load_file(path), info)


def _encoder_id(model_dir: str, init: str | None) -> str:
    return f"random:{model_dir}" if init == "random" else model_dir


# -- the measurements ----------------------------------------------------------------------------


def general_mlm(
    cfg: FinetuneConfig, inputs: Inputs, encoder: torch.nn.Module, state: dict
) -> dict[str, float]:
    """MLM loss, accuracy and perplexity of ``encoder`` read by the head ``state`` on
    ``general_batches`` batches of general_data, with the fixed evaluation mask."""
    from mlmfast.train.mlm import evaluate_mlm

    view = EncoderMLM(encoder, bind_head(state, encoder, trainable=False))
    return evaluate_mlm(
        view,
        cfg.general_data,
        tokenizer=inputs.tokenizer,
        masking=masking(cfg),
        batch_size=cfg.eval_batch_size,
        max_batches=cfg.general_batches,
        device=inputs.device,
        autocast_dtype=inputs.amp,
    )


def measure_before(
    cfg: FinetuneConfig, inputs: Inputs, before: torch.nn.Module, head: MLMHead | None, logger
) -> dict[str, Any] | None:
    """The forgetting report with its "before" numbers: the initial model (kept on the CPU
    between measurements) read by the head. None without general_data."""
    if not cfg.general_data:
        return None
    before.to(inputs.device)
    forgetting = {
        "general_data": os.path.abspath(cfg.general_data),
        "head": {k: v for k, v in head.info.items() if k != "encoder"},
        "before": general_mlm(cfg, inputs, task_model.encoder(before), head.state),
    }
    before.cpu()
    logger.log(0, forgetting["before"], prefix="general_before")
    return forgetting


def measure_after(
    cfg: FinetuneConfig,
    inputs: Inputs,
    forgetting: dict[str, Any],
    final: torch.nn.Module,
    head: MLMHead,
    rehearsal_head: torch.nn.Module | None,
    step: int,
    logger,
) -> None:
    """The "after" numbers with the same head, the change, and for rehearsal also the numbers
    with the head that trained along."""
    encoder = task_model.encoder(final)
    after = general_mlm(cfg, inputs, encoder, head.state)
    forgetting["after"] = after
    forgetting["delta"] = {
        k: after[k] - forgetting["before"][k] for k in ("loss", "accuracy", "perplexity")
    }
    logger.log(step, after, prefix="general_after")
    if rehearsal_head is not None:
        forgetting["after_rehearsal_head"] = general_mlm(
            cfg, inputs, encoder, head_state(rehearsal_head)
        )
