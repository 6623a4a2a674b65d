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


def predict_argmax(model, n: int, batch_of, device, batch_size: int, class_dim: int = 1) -> np.ndarray:
    """uint8 class ids (argmax over `class_dim`) of a dense model's outputs for n samples;
    `batch_of(start, stop)` gives the model's input tensor of those samples (on the CPU).
    Runs in eval mode under inference mode and leaves the model's mode as it was."""
    import torch

    chunks = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            logits = model(batch_of(start, min(n, start + batch_size)).to(device))
            chunks.append(logits.argmax(class_dim).to(torch.uint8).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.uint8)


def add_training_arguments(parser, epochs_help: str = "epochs"):
    """The optimisation and run flags of the dense trainers (forecaster, direct U-Net); the
    rules pass every one of them from config.yaml."""
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, required=True, help=epochs_help)
    opt.add_argument("--batch-size", type=int, required=True)
    opt.add_argument("--lr", type=float, required=True, help="one-cycle peak learning rate (AdamW)")
    opt.add_argument("--weight-decay", type=float, default=0.01)
    opt.add_argument("--soft-iou-weight", type=float, default=0.0, help="weight of the soft-IoU loss term")
    opt.add_argument("--background-weight", type=float, default=1.0,
                     help="weight of the background's pixels in the cross-entropy (objects: 1)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps; also at each epoch end")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return opt
