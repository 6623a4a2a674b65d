"""Per-pixel classification, shared by the dense models (U-Net segmenter, mask forecaster,
direct U-Net): the training loss and the validation IoU.

The loss is cross-entropy (class 0, the background, weighted by `background_weight`:
about 90% of the pixels are background, and at weight 1 a model first learns to paint
everything background, then only slowly the 48 object classes), plus, when `soft_iou_weight` > 0, a soft-IoU term: 1 minus
the mean over the classes present in the batch's target of sum(p·t) / sum(p + t - p·t)
with p the softmax. The competition metric is a macro IoU over classes, in which a small
object's class weighs as much as the background; cross-entropy is dominated by the
background pixels, the soft-IoU term is not (the "IoU-shaped" fine-tune of the best
published results on the task; Lovász-softmax is the other usual choice).
"""

from __future__ import annotations

import numpy as np

from . import data


def dense_losses(logits, target, soft_iou_weight: float = 0.0, background_weight: float = 1.0) -> dict:
    """{"loss", "ce"[, "soft_iou"]} of logits (B, C, H, W) against class ids (B, H, W);
    `background_weight` weighs class 0's pixels in the cross-entropy (the others weigh 1)."""
    import torch
    import torch.nn.functional as F

    weight = None
    if background_weight != 1.0:
        weight = torch.ones(logits.shape[1], device=logits.device, dtype=logits.dtype)
        weight[0] = background_weight
    ce = F.cross_entropy(logits, target, weight=weight)
    if not soft_iou_weight:
        return {"loss": ce, "ce": ce}
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    union = (probs + onehot).sum(dims) - intersection
    present = onehot.sum(dims) > 0
    soft_iou = 1 - (intersection[present] / union[present].clamp_min(1e-6)).mean()
    return {"loss": ce + soft_iou_weight * soft_iou, "ce": ce, "soft_iou": soft_iou}


def macro_iou(predicted, target) -> float:
    """The competition metric: torchmetrics' multiclass Jaccard index over the 49 classes,
    macro, accumulated over the whole set, of integer masks (N, H, W)."""
    import torch
    from torchmetrics.functional.classification import multiclass_jaccard_index

    return float(multiclass_jaccard_index(
        torch.from_numpy(np.asarray(predicted, dtype=np.int64)), torch.from_numpy(np.asarray(target, dtype=np.int64)),
        num_classes=data.NUM_CLASSES, validate_args=False))
