"""The options of a fine-tuning run (:class:`FinetuneConfig`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from mlmfast.train.config import RunConfig

STRATEGIES = ("full", "feature-extraction", "top-k", "lora", "rehearsal")
TASKS = ("classification", "pos")
METRICS = ("accuracy", "macro_f1")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LR = {
    "full": 5e-5,
    "rehearsal": 5e-5,
    "top-k": 1e-4,
    "lora": 5e-4,
    "feature-extraction": 1e-3,
}


@dataclass
class FinetuneConfig(RunConfig):
    data: str
    out: str
    task: str = "classification"
    # data (classification)
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = None
    validation: str | None = None
    test: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    limit: int | None = None
    max_length: int = 128
    group_by_length: bool = False
    # model
    init: str | None = None
    arch: str | None = None
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    # strategy
    strategy: str = "full"
    top_k: int | None = None
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: str | list[str] = "query,value"
    rehearsal_data: str | None = None
    rehearsal_weight: float = 1.0
    rehearsal_batch_size: int | None = None
    layer_decay: float | None = None
    # forgetting and drift
    general_data: str | None = None
    general_batches: int | None = 20
    mlm_head: str | None = None
    mlm_head_steps: int | None = None
    mlm_head_data: str | None = None
    mlm_head_lr: float = 5e-3
    mlm_head_batch_size: int = 16
    mlm_probability: float = 0.15
    probe_batches: int = 8
    probe_tokens: int | None = 8192
    # optimisation
    batch_size: int = 32
    max_steps: int | None = None
    epochs: float = 3.0
    lr: float | None = None
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: str = "linear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 0
    # execution
    device: str = "auto"
    precision: str = "auto"
    # bookkeeping
    log_every: int = 10
    eval_every: int | None = None
    eval_batch_size: int = 64
    metric: str = "accuracy"
    early_stopping_patience: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    resume: bool = False
    resume_from: str | None = None
    stop_at_step: int | None = None
    tensorboard: bool | None = None  # None: when the package is installed
    progress: bool = True

    # fields that may differ between a run and its resumption (they do not change the maths)
    RESUMABLE_CHANGES = (
        "out", "resume", "resume_from", "stop_at_step", "log_every", "save_every", "keep_last", "tensorboard",
        "progress", "device", "eval_batch_size", "general_batches", "probe_batches",
        "probe_tokens",
    )  # fmt: skip

    @property
    def targets(self) -> list[str]:
        t = self.lora_targets
        items = t.split(",") if isinstance(t, str) else list(t)
        return [s.strip() for s in items if s and s.strip()]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.strategy]

    def validate(self) -> None:
        self._check_choices()
        self.check_types()
        self._check_numbers()
        self._check_strategy()
        self._check_forgetting()
        if self.init != "random" and self.arch is not None:
            raise ValueError(
                f"arch={self.arch!r} applies to init='random' only (the architecture of a "
                "randomly initialised model); a pre-trained init brings its own"
            )
        if self.task == "pos" and (self.validation or self.test or self.text_pair_column):
            raise ValueError(
                "task 'pos' splits the rows of its shards itself; validation, test and "
                "text_pair_column apply to classification files"
            )

    def _check_choices(self) -> None:
        for name, allowed in (
            ("task", TASKS),
            ("strategy", STRATEGIES),
            ("metric", METRICS),
            ("precision", PRECISIONS),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def _check_numbers(self) -> None:
        positive = (
            "batch_size", "eval_batch_size", "log_every", "keep_last", "max_length",
            "mlm_head_batch_size", "probe_batches", "lora_r",
        )  # fmt: skip
        for name in positive:
            v = getattr(self, name)
            if v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        optional = (
            "max_steps", "eval_every", "save_every", "stop_at_step", "early_stopping_patience",
            "general_batches", "probe_tokens", "rehearsal_batch_size", "limit", "top_k",
        )  # fmt: skip
        for name in optional:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be an integer >= 1 or unset, got {v!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or unset, got {self.warmup_steps}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mlm_head_steps is not None and self.mlm_head_steps < 0:
            raise ValueError(f"mlm_head_steps must be >= 0 or unset, got {self.mlm_head_steps!r}")

    def _check_strategy(self) -> None:
        """The options of the strategy are given, and no option of another strategy is."""
        if self.strategy == "top-k" and self.top_k is None:
            raise ValueError(
                "strategy 'top-k' needs top_k (--top-k K) >= 1, the number of last encoder "
                "layers to train; got None"
            )
        if self.strategy != "top-k" and self.top_k is not None:
            raise ValueError(
                f"top_k={self.top_k} applies to strategy 'top-k' only, not {self.strategy!r}"
            )
        if self.strategy == "lora":
            if not self.lora_alpha > 0:
                raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if not self.targets:
                raise ValueError(
                    f"lora_targets must name at least one linear module, got {self.lora_targets!r}"
                )
        if self.strategy == "rehearsal":
            if not self.rehearsal_data:
                raise ValueError(
                    "strategy 'rehearsal' needs rehearsal_data (--rehearsal-data SHARDS): general "
                    "shards whose MLM loss is mixed into fine-tuning (make them with "
                    "`mlmfast prepare`)"
                )
            if not self.rehearsal_weight >= 0:
                raise ValueError(f"rehearsal_weight must be >= 0, got {self.rehearsal_weight}")
        elif self.rehearsal_data:
            raise ValueError(
                f"rehearsal_data applies to strategy 'rehearsal' only, not {self.strategy!r} "
                "(for the forgetting measurement use general_data / mlm_head_data)"
            )

    def _check_forgetting(self) -> None:
        if self.mlm_head is not None and self.mlm_head_steps:
            raise ValueError(
                "mlm_head (a head fitted before) and mlm_head_steps (fit one now) exclude each "
                "other; give one"
            )
        if (self.mlm_head or self.mlm_head_data) and not self.general_data:
            raise ValueError(
                "mlm_head / mlm_head_data serve the forgetting measurement, which needs "
                "general_data (--general-data SHARDS)"
            )
