"""Task metrics: accuracy and macro-F1 of a classifier or tagger on a split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(
    predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, num_labels: int
) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean F1 over the classes that occur in ``labels`` or in
    ``predictions``, as scikit-learn's ``f1_score(average="macro")``)."""
    p = np.asarray(predictions, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    if not len(y):
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    k = int(num_labels)
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return {"accuracy": float(tp.sum() / len(y)), "macro_f1": float(f1.mean()), "n": len(y)}


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    collate,
    *,
    batch_size: int,
    num_labels: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, float] | None:
    """Loss (per labelled token or example), accuracy and macro-F1 on ``dataset``; None when it
    is empty."""
    if len(dataset) == 0:
        return None
    was = model.training
    model.eval()
    preds, labels = [], []
    loss_sum = 0.0
    try:
        for s in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(**model_inputs(batch)).logits.float()
            y = batch["labels"].reshape(-1)
            flat = logits.reshape(-1, logits.shape[-1])
            keep = y != -100
            loss_sum += float(F.cross_entropy(flat[keep], y[keep], reduction="sum"))
            preds.append(flat[keep].argmax(-1).cpu())
            labels.append(y[keep].cpu())
    finally:
        model.train(was)
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    out = classification_metrics(p, y, num_labels)
    out["loss"] = loss_sum / max(1, len(y))
    return out
