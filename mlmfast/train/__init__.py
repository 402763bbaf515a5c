"""Training with transformers' own BERT models and plain PyTorch loops: ``pretrain`` (MLM from
shards, masking on the device), ``finetune`` (classification, forgetting, drift), and the shared
pieces (model configs, optimiser/schedules, checkpoints, evaluation, logging)."""
