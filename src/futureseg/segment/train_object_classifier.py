"""Stage 4: train the object classifier (`models/object_classifier.py`) on the true objects
of the segmentation training set.

Input: stage 3's folder, as train-segmenter (`images.npy` uint8 (N, H, W, 3), `masks.npy`,
`index.csv`, `counts.json`), so the classifier sees the frames the segmenter sees (blurred and
generated ones included when configured). A step takes `--batch-size` frames, flipped and
brightened alike with their masks (train-segmenter's `augment`, drawn from (seed, epoch,
frame)), and classifies every object in them: each 8-connected component of one colour of
the true mask (the objects `repaint` will see in a segmenter's mask), its target the class of
most of its pixels; pieces under MIN_PIXELS pixels (what an occluder leaves) are skipped.
The silhouette is the true one; a segmenter's is rougher, so a quarter of the silhouettes
are dilated and a quarter eroded by one pixel (drawn from (seed, step)).

Loss: cross-entropy of the shape plus that of the material. AdamW under one-cycle, the one
loop `training.fit` (checkpoints, resume, stop signals, metrics). Validation at each epoch
end, on the objects of the true frame 21 of val (`--root`): `val_shape_acc`,
`val_material_acc`, and `val_repaint_iou`, the macro IoU of val's true masks with every
object repainted by the classifier (what it costs or buys on perfect silhouettes).
"""

from __future__ import annotations

import functools

import numpy as np

from futureseg.core.flags import given
from futureseg.core import data, dense

MIN_PIXELS = 4  # training objects smaller than this are slivers an occluder left, not shapes


def class_factors(classes) -> dict:
    """{"shape", "material"} int64 index arrays of object class ids 1…48."""
    k = np.asarray(classes, dtype=np.int64) - 1
    return {"shape": k // 16, "material": (k // 8) % 2}


def objects_of(masks: np.ndarray, min_pixels: int = 0):
    """(labels (N, H, W), n per frame, target classes of all objects) of true masks, objects
    under `min_pixels` pixels dropped (relabelled as background for the crops)."""
    from futureseg.core.instances import colour_components, majority_class

    labels, counts, targets = [], [], []
    for mask in masks:
        lab, n, _ = colour_components(mask)
        if min_pixels and n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            keep = np.flatnonzero(sizes[1:] >= min_pixels) + 1
            renumber = np.zeros(n + 1, np.int64)
            renumber[keep] = np.arange(1, len(keep) + 1)
            lab, n = renumber[lab], len(keep)
        labels.append(lab)
        counts.append(n)
        targets.append(majority_class(mask, lab, n)[1:])
    return np.stack(labels), np.asarray(counts), np.concatenate(targets) if targets else np.zeros(0, np.int64)


def train(args) -> dict:
    from dataclasses import asdict

    import torch
    import torch.nn.functional as F

    from futureseg.core.training import adamw_one_cycle, epoch_order, fit, plan_steps, seed_everything, select_device
    from futureseg.core.classes import COLORS
    from futureseg.models.object_classifier import (FACTORS, ObjectClassifier, ObjectClassifierConfig, object_crops,
                                                    paint, predict_parts)
    from futureseg.segment.train_segmenter import TrainingSet, augment, load_validation

    dense.check_training_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(bf16_autocast=False)
    dataset = TrainingSet(args.seg_frames, 0, args.seed)
    images, masks = dataset._open()
    mean01, std01 = dense.normalisation(args.mean_std)
    config = asdict(ObjectClassifierConfig(image_mean=tuple(mean01), image_std=tuple(std01),
                                           **given(args, ("crop_size", "width"))))
    val_frames, val_masks = load_validation(args.root, dataset.size)
    val_labels, val_counts, val_targets = objects_of(val_masks)
    val_factors = class_factors(val_targets)
    seed_everything(args.seed)
    model = ObjectClassifier(ObjectClassifierConfig(**config)).to(device)
    _, total_steps = plan_steps(len(dataset), args.batch_size, args.epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(model, args.lr, args.weight_decay, total_steps)
    settings = {"kind": "object_classifier", "model_config": config, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
                "min_pixels": MIN_PIXELS, "training_set": dataset.fingerprint()}

    def step_losses(epoch, indices, step, total):
        pairs = [augment(np.asarray(images[i]), np.asarray(masks[i]), np.random.default_rng((args.seed, epoch, i)))
                 for i in indices]
        labels, counts, targets = objects_of([p[1] for p in pairs], MIN_PIXELS)
        crops, _ = object_crops(model, np.stack([p[0] for p in pairs]), labels, counts)
        if not len(crops):  # frames without objects: a zero loss that still steps the schedule
            return {"loss": sum(p.sum() for p in model.parameters()) * 0.0}
        rng = np.random.default_rng((args.seed, step))
        roughen = torch.from_numpy(rng.integers(-1, 3, len(crops))).to(device)  # -1 erode, 1 dilate, else as is
        silhouette = crops[:, 3:]
        dilated = F.max_pool2d(silhouette, 3, 1, 1)
        eroded = -F.max_pool2d(-silhouette, 3, 1, 1)
        pick = roughen[:, None, None, None]
        crops = torch.cat([crops[:, :3], torch.where(pick == 1, dilated, torch.where(pick == -1, eroded, silhouette))], 1)
        logits = model(crops)
        factors = class_factors(targets)
        losses = {name: F.cross_entropy(logits[name], torch.from_numpy(factors[name]).to(device)) for name in FACTORS}
        return {"loss": sum(losses.values()), **losses}

    def validate():
        model.eval()
        with torch.inference_mode():
            crops, _ = object_crops(model, val_frames, val_labels, val_counts)
            predicted = predict_parts(model, crops)
        metrics = {f"val_{name}_acc": float((predicted[name] == val_factors[name]).mean()) if len(val_targets) else 0.0
                   for name in FACTORS}
        # the val objects repainted from these predictions (what `repaint` gives on the true
        # masks: its objects are these, each of one colour, its majority class's)
        repainted = paint(val_labels, val_counts, (val_targets - 1) % len(COLORS), predicted["shape"],
                          predicted["material"])
        metrics["val_repaint_iou"] = dense.macro_iou(repainted, val_masks)
        return metrics

    return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out, model_file={"kind": "object_classifier", "model_config": config},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(dataset), args.batch_size, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate,
               desc="object classifier")


VERB = "train-object-classifier"
HELP = "train the object classifier (each object's shape and material) on the segmentation training set (stage 4)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import add_fit_arguments

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--root", required=True, help="Dataset_Student root (validation: val frame 21 and its mask)")
    io.add_argument("--seg-frames", required=True, help="stage 3's folder (images.npy, masks.npy, index.csv, counts.json)")
    io.add_argument("--mean-std", help="mean_std.json of stage 1 for input normalisation (default: ImageNet's)")
    io.add_argument("--out", required=True, help="model file to write")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True, help="folder of per-config checkpoint folders")
    model = parser.add_argument_group("model")
    # left out: ObjectClassifierConfig's default
    model.add_argument("--crop-size", type=int, help="side of the square crop every object is scaled to")
    model.add_argument("--width", type=int, help="channels of the first stage (doubling per stage)")
    add_fit_arguments(parser, batch_help="frames per step (all their objects)")


def main(args) -> None:
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
