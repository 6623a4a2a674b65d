"""Per-pixel classification, shared by the dense models (U-Net segmenter, mask forecaster,
direct U-Net) and their verbs: the loss, the IoU, their inputs (normalisation, mask
caches, flips, stacked frames), their batched inference and their trainers' flags.

The loss is cross-entropy (class 0, the background, weighted by `background_weight`:
about 90% of the pixels are background, and at weight 1 a model first learns to paint
everything background, then only slowly the 48 object classes), plus, when
`soft_iou_weight` > 0, a soft-IoU term: 1 minus
the mean over the classes present in the batch's target of sum(p·t) / sum(p + t - p·t)
with p the softmax. The competition metric is a macro IoU over classes, in which a small
object's class weighs as much as the background; cross-entropy is dominated by the
background pixels, the soft-IoU term is not (the "IoU-shaped" fine-tune of the best
published results on the task; Lovász-softmax is the other usual choice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError


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


def sequence_scores(batches) -> dict:
    """{"iou", "temporal_iou", "true_temporal_iou"} of mask sequences against the truth, from
    batches of (predicted, true) integer masks (N, T, H, W): the macro IoU over every frame
    of every batch, the temporal IoU of the predicted sequences and of the true ones (one
    metric per pair of consecutive frames accumulated over all batches, as score's
    `temporal_iou`, then averaged over the pairs). The pseudo-labels' scores
    (`score.pseudo_label_scores`, which adds the temporal stability) and the recurrent
    segmenter's validation, on its own predictions, share it."""
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    def jaccard():
        return MulticlassJaccardIndex(data.NUM_CLASSES, average="macro", validate_args=False)

    iou = jaccard()
    pairs = None
    for predicted, true in batches:
        pseudo = torch.from_numpy(np.asarray(predicted).astype(np.int64))
        truth = torch.from_numpy(np.asarray(true).astype(np.int64))
        if pairs is None:
            pairs = {name: [jaccard() for _ in range(truth.shape[1] - 1)] for name in ("pseudo", "truth")}
        iou.update(pseudo.flatten(0, 1), truth.flatten(0, 1))
        for name, sequences in (("pseudo", pseudo), ("truth", truth)):
            for k, metric in enumerate(pairs[name]):
                metric.update(sequences[:, k + 1], sequences[:, k])
    if pairs is None:
        raise FuturesegError("sequence scores: no mask sequence to score")
    temporal = {name: float(np.mean([float(m.compute()) for m in metrics])) if metrics else float("nan")
                for name, metrics in pairs.items()}
    return {"iou": float(iou.compute()), "temporal_iou": temporal["pseudo"], "true_temporal_iou": temporal["truth"]}


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
    `batch_of(start, stop)` gives the model's input tensor of those samples (on the CPU),
    or a tuple of its input tensors. Runs in eval mode under inference mode and leaves the
    model's mode as it was."""
    import torch

    chunks = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            inputs = batch_of(start, min(n, start + batch_size))
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            logits = model(*(x.to(device) for x in inputs))
            chunks.append(logits.argmax(class_dim).to(torch.uint8).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.uint8)


# ---------------------------------------------------------------- inputs of the dense models


def normalisation(mean_std_path) -> tuple[list[float], list[float]]:
    """Mean and std per channel on the 0…1 scale: the dataset's (stage 1) when given,
    else ImageNet's, the usual default."""
    if mean_std_path is None:
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    from futureseg.core.io import read_mean_std

    path = Path(mean_std_path)
    if not path.is_file():
        raise FuturesegError(f"{path}: mean/std file does not exist")
    mean, std = read_mean_std(path)
    return [float(v) / 255 for v in mean], [float(v) / 255 for v in std]


def load_mask_cache(path, frames_needed: int) -> tuple[np.ndarray, dict]:
    """A mask cache (memory-mapped) and its sidecar, checked: uint8 (N, T, H, W) with at
    least `frames_needed` frames per video."""
    from futureseg.core.errors import DataError
    from futureseg.core.io import read_array

    masks, meta = read_array(path, "mask cache")
    if masks.dtype != np.uint8 or masks.ndim != 4:
        raise DataError(f"{path}: mask cache is {masks.dtype} {masks.shape}, expected uint8 (N, T, H, W)")
    if masks.shape[1] < frames_needed:
        raise DataError(f"{path}: mask cache holds {masks.shape[1]} frames per video, {frames_needed} are needed")
    return masks, meta


def flip_together(arrays, rng: np.random.Generator):
    """Flip every array of one sample (last two axes H, W) alike, each flip with p = 1/2."""
    flip_h, flip_v = rng.random(2) < 0.5
    if flip_h:
        arrays = [a[..., ::-1] for a in arrays]
    if flip_v:
        arrays = [a[..., ::-1, :] for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def stack_frames(clips) -> np.ndarray:
    """uint8 (B, >=11, H, W, 3) clips → float32 (B, 33, H, W) on the 0…1 scale, frame-major."""
    x = np.asarray(clips[:, : data.N_INPUT], dtype=np.float32) / 255.0
    b, t, h, w, c = x.shape
    return x.transpose(0, 1, 4, 2, 3).reshape(b, t * c, h, w)


# ---------------------------------------------------------------- inference and settings


def direct_masks(model, clips, device, batch_size: int) -> np.ndarray:
    """uint8 (N, H, W) masks of frame 21 of uint8 clips (N, >=11, H, W, 3)."""
    import torch

    return predict_argmax(model, len(clips), lambda a, b: torch.from_numpy(stack_frames(clips[a:b])), device, batch_size)


def forecast_masks(model, inputs, device, batch_size: int, priors=None) -> np.ndarray:
    """uint8 (N, 11, H, W) forecast masks of frames 11…21 from masks (N, 11, H, W) of 0…10
    and, for a forecaster on the motion prior, the prior's masks (N, 11, H, W) of 11…21."""
    import torch

    def batch_of(a, b):
        masks = torch.from_numpy(np.asarray(inputs[a:b], dtype=np.int64))
        return masks if priors is None else (masks, torch.from_numpy(np.asarray(priors[a:b], dtype=np.int64)))

    return predict_argmax(model, len(inputs), batch_of, device, batch_size, class_dim=2)


def check_training_settings(args) -> None:
    """The numeric flags of the trainers on `training.fit` (the dense models', the object
    classifier's), those the verb has, each error naming the flag."""
    for name in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    for name in ("iou_finetune_epochs", "max_steps", "threads", "soft_iou_weight", "weight_decay", "background_weight"):
        if hasattr(args, name) and getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be 0 or more, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ConfigError(f"--lr: must be positive, got {args.lr}")


def add_training_arguments(parser, epochs_help: str = "epochs"):
    """The optimisation and run flags of the dense trainers (forecaster, direct U-Net): those of
    every trainer on `training.fit`, and the dense losses' weights; the rules pass every one of
    them from config.yaml."""
    from futureseg.core.flags import add_fit_arguments

    opt = add_fit_arguments(parser, epochs_help)
    opt.add_argument("--soft-iou-weight", type=float, required=True, help="weight of the soft-IoU loss term")
    opt.add_argument("--background-weight", type=float, required=True,
                     help="weight of the background's pixels in the cross-entropy (objects: 1)")
    opt.add_argument("--patience", type=int, required=True,
                     help="stop once val IoU has not beaten its best (the untrained model's first) for this many "
                          "epochs, exporting the best epoch (0: every epoch, the last exported)")
    return opt
