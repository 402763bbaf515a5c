"""The options of a pre-training run (:class:`PretrainConfig`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from mlmfast.train.config import RunConfig
from mlmfast.train.mlm import MaskingConfig

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class PretrainConfig(RunConfig):
    data: str
    out: str
    eval_data: str | None = None
    tokenizer: str | None = None
    model_config: str = "tiny"
    init: str = "random"
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    schedule: str = "linear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = 1.0
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # masking
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    whole_word: bool = False
    pos_weights: str | dict[str, float] | None = None
    mask_mode: str = "bernoulli"
    static_masking: bool = False
    seed: int = 0
    # execution
    sparse_head: bool = True
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    num_workers: int = 0
    # bookkeeping
    log_every: int = 10
    eval_every: int | None = None
    eval_batches: int | None = 50
    eval_batch_size: int = 64
    save_every: int | None = None
    keep_last: int = 2
    resume: bool = False
    resume_from: str | None = None
    stop_at_step: int | None = None
    tensorboard: bool | None = None  # None: when the package is installed
    progress: bool = True

    # fields that may differ between a run and its resumption (they do not change the maths)
    RESUMABLE_CHANGES = (
        "out", "resume", "resume_from", "stop_at_step", "log_every", "eval_every", "eval_batches",
        "eval_batch_size", "save_every", "keep_last", "tensorboard", "progress", "num_workers",
        "data", "eval_data", "tokenizer", "max_steps", "epochs", "compile",
    )  # fmt: skip

    def masking(self) -> MaskingConfig:
        return MaskingConfig(
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            whole_word=self.whole_word,
            pos_weights=self.pos_weights,
            mode=self.mask_mode,
            static=self.static_masking,
            seed=self.seed,
        )

    def validate(self) -> None:
        self.check_types()
        positive = ("batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_last")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_every", "eval_every", "eval_batches", "stop_at_step"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1 or unset, got {v}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or unset, got {self.warmup_steps}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        self.masking()  # validates the masking fields
