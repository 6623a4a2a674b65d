"""Stage 4: train the segmenter from scratch on the segmentation training set: Mask R-CNN
(`train`, described here), or a per-pixel model, U-Net or ENet (`train_pixel`).

Input: stage 3's folder (`images.npy` uint8 (N, H, W, 3), `masks.npy` uint8 (N, H, W),
`index.csv`, `counts.json`). Each sample is augmented — horizontal and vertical flips,
brightness ×U(0.8, 1.2) — with the mask flipped alike, then turned into instances by
`futureseg.core.instances.mask_to_instances` (one per connected piece of each class, pieces
under `--min-fragment` pixels dropped).

Optimiser: SGD with momentum 0.9 and weight decay (`--weight-decay`; none on norm weights and biases),
linear warm-up over `--warmup-steps`, then cosine decay to zero at the last step. That is
the recipe Mask R-CNN's losses and defaults were tuned with (detectron2, torchvision's
references) and the one used to train it from scratch with BN/GN (He et al., "Rethinking
ImageNet Pre-training"); AdamW is the norm for transformer backbones, not for ResNet+BN,
and its second-moment state would double the optimiser memory for no proven gain here.
The warm-up matters more from scratch than fine-tuning: the first RPN/box regressions of
random features are large.

Resuming is exact, as in stage 2: batch order comes from a permutation seeded by
(seed, epoch) and each sample's augmentation from (seed, epoch, sample), independent of
`--workers`; a checkpoint holds the model, the optimiser, torch's RNG (the RPN and ROI
samplers draw from it) and the running loss sums; the learning rate is a function of the
step. A run resumed at step s skips the batches of its epoch it had done and ends with the
same weights as a run never stopped (bit for bit on CPU with the same thread count).

The fingerprint that names the checkpoint folder covers every setting that shapes the
weights (backend and model config, optimisation, seed, min fragment) and the training
set (its counts, index and a sample of its pixels); not the thread/worker counts,
`--checkpoint-every`, or the validation settings. Each config's folder
`<checkpoints>/<fingerprint>/` holds `last.pt` and the live `metrics.csv`; `--metrics` is
a copy made when training ends.

Validation, at each epoch end: the model segments the true frame 21 of every val video
(`--root`), instances painted by score (`instances_to_mask`, `--score-threshold`), and
torchmetrics' JaccardIndex(task="multiclass", num_classes=49) is accumulated over the
whole set: `val_oracle_iou`, the ceiling a perfect frame predictor would reach.

`--out` holds the final weights, the backend name and its model config (plain values), so
`futureseg segment` rebuilds the model from it alone; it loads with weights_only=True.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np

from futureseg.core.flags import given
from futureseg.core import data, dense
from futureseg.core.errors import ConfigError, DataError

TRAINING_FILES = ("images.npy", "masks.npy", "index.csv", "counts.json")
BRIGHTNESS = (0.8, 1.2)
WARMUP_START = 0.001  # warm-up starts at this fraction of --lr
MOMENTUM = 0.9
# Samples whose pixels enter the training-set fingerprint: enough that a retrained
# predictor (every generated frame changes) or a reshuffled set is noticed, cheap to read.
_FINGERPRINT_SAMPLES = 32


# ---------------------------------------------------------------- backends


def model_config(args, size: tuple[int, int], mean01, std01) -> dict:
    """The backend's model config as plain values (what model.pt stores), from the Mask
    R-CNN flags given (a flag left out takes the backend config dataclass's default)."""
    from futureseg.models.segmenters import MASKRCNN_FIELDS, maskrcnn_config

    return maskrcnn_config(args.backend, given(args, MASKRCNN_FIELDS["torchvision"]), size, mean01, std01)


# ---------------------------------------------------------------- training set


class TrainingSet:
    """Stage 3's folder, memory-mapped and checked; samples are read, augmented and turned
    into instances on demand (in DataLoader workers when there are any)."""

    def __init__(self, folder: str | Path, min_fragment: int, seed: int):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: segmentation training set folder does not exist")
        for name in TRAINING_FILES:
            if not (self.folder / name).is_file():
                raise DataError(f"{self.folder / name}: missing from the segmentation training set")
        images, masks = self._open()
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{self.folder / 'images.npy'}: expected uint8 (N, H, W, 3), "
                            f"got {images.dtype} {images.shape}")
        if masks.shape != images.shape[:3] or not np.issubdtype(masks.dtype, np.integer):
            raise DataError(f"{self.folder / 'masks.npy'}: expected integer (N, H, W) = {images.shape[:3]} "
                            f"like images.npy, got {masks.dtype} {masks.shape}")
        if len(images) == 0:
            raise DataError(f"{self.folder / 'images.npy'}: the training set is empty")
        with open(self.folder / "index.csv", newline="") as f:
            n_rows = sum(1 for _ in csv.DictReader(f))
        if n_rows != len(images):
            raise DataError(f"{self.folder / 'index.csv'}: {n_rows} rows but images.npy holds {len(images)} samples")
        self.size = tuple(images.shape[1:3])
        self.n = len(images)
        self.min_fragment = min_fragment
        self.seed = seed
        self._arrays = None

    def _open(self):
        return (np.load(self.folder / "images.npy", mmap_mode="r", allow_pickle=False),
                np.load(self.folder / "masks.npy", mmap_mode="r", allow_pickle=False))

    def __getstate__(self):
        # workers reopen the memory maps rather than receive pickled copies
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> dict:
        """What identifies the set's content, cheaply: counts, index and sampled pixels."""
        images, masks = self._open()
        digest = hashlib.sha256()
        for name in ("counts.json", "index.csv"):
            digest.update((self.folder / name).read_bytes())
        for row in np.linspace(0, self.n - 1, min(self.n, _FINGERPRINT_SAMPLES)).astype(int):
            digest.update(np.ascontiguousarray(images[row]).tobytes())
            digest.update(np.ascontiguousarray(masks[row]).tobytes())
        return {"samples": self.n, "size": list(self.size), "content_sha256": digest.hexdigest()[:16]}

    def __getitem__(self, key):
        """key = (epoch, sample): the augmentation is drawn from (seed, epoch, sample)."""
        import torch

        from futureseg.core.instances import mask_to_instances

        epoch, index = key
        if self._arrays is None:
            self._arrays = self._open()
        images, masks = self._arrays
        rng = np.random.default_rng((self.seed, epoch, index))
        image, mask = augment(np.asarray(images[index]), np.asarray(masks[index]), rng)
        instances = mask_to_instances(mask, self.min_fragment)
        target = {k: torch.from_numpy(v) for k, v in instances.items()}
        return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), target


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips (each with probability 1/2) applied to image and mask alike, and a brightness
    factor on the image; uint8 in, uint8 out."""
    flip_h, flip_v = rng.random(2) < 0.5
    brightness = rng.uniform(*BRIGHTNESS)
    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
    image = np.clip(image.astype(np.float32) * brightness, 0, 255).round().astype(np.uint8)
    return image, np.ascontiguousarray(mask)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch, as (epoch, sample) keys: a permutation seeded by
    (seed, epoch), cut into batches (the last may be short)."""
    from futureseg.core.training import epoch_order

    return [[(epoch, i) for i in batch] for batch in epoch_order(n, batch_size, seed, epoch)]


def collate(samples):
    return [s[0] for s in samples], [s[1] for s in samples]


def loader(dataset: TrainingSet, batches, workers: int, seed: int):
    import torch

    from futureseg.core.training import ignore_stop_signals

    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        # a private generator: worker seeding must not draw from torch's global RNG, whose
        # state the checkpoint restores for the model's samplers
        generator=torch.Generator().manual_seed(seed), worker_init_fn=ignore_stop_signals,
    )


# ---------------------------------------------------------------- validation


def load_validation(root, size: tuple[int, int], limit: int = 0):
    """True frame 21 and its mask of the val videos (the first `limit` when > 0)."""
    videos = data.list_videos(root, "val")[: limit or None]
    frames = np.stack([data.read_frames(v, [data.TARGET_FRAME])[0] for v in videos])
    if frames.shape[1:3] != tuple(size):
        raise DataError(f"{videos[0].frame_path(data.TARGET_FRAME)}: val frames are {frames.shape[1]}x{frames.shape[2]}, "
                        f"the training set's are {size[0]}x{size[1]}")
    masks = np.stack([data.read_mask(v, size)[data.TARGET_FRAME] for v in videos])
    return frames, masks


def oracle_iou(segmenter, frames, masks, batch_size: int, device) -> float:
    """The competition IoU (`dense.macro_iou`) of the masks the segmenter paints on the
    true frames."""
    from futureseg.core.dense import macro_iou

    return macro_iou(segmenter.masks(frames, device, batch_size), masks)


# ---------------------------------------------------------------- optimisation


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of update `step` (0-based): linear warm-up from WARMUP_START·lr,
    then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (WARMUP_START + (1 - WARMUP_START) * step / warmup_steps)
    span = max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


def warmup_cosine(optimizer, base_lr: float, warmup_steps: int, total_steps: int):
    """`lr_at` as the torch scheduler `training.fit` steps: it sets every group's rate to
    lr_at(step) itself (not a factor of it), the rates of the loop this replaced."""
    import torch

    class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
        def get_lr(self):
            return [lr_at(self.last_epoch, base_lr, warmup_steps, total_steps) for _ in self.optimizer.param_groups]

    return WarmupCosine(optimizer)


def make_optimizer(model, lr: float, weight_decay: float):
    """SGD with momentum; no weight decay on 1-D parameters (norm weights, biases).
    The fused implementation (CPU and CUDA) updates each parameter in one pass instead of
    three to four, ~3× quicker than the per-tensor loop, with the same arithmetic."""
    import torch

    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=MOMENTUM, fused=True,
    )


def check_settings(args) -> None:
    for name in ("epochs", "batch_size", "checkpoint_every", "val_batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.model == "maskrcnn" and args.warmup_steps is None:
        raise ConfigError("--warmup-steps: Mask R-CNN needs it (segmenter.maskrcnn.warmup_steps)")
    for name in ("min_fragment", "max_steps", "val_limit", "workers", "threads"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be 0 or more, got {getattr(args, name)}")
    if (args.warmup_steps or 0) < 0:
        raise ConfigError(f"--warmup-steps: must be 0 or more, got {args.warmup_steps}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        raise ConfigError(f"--lr: must be a positive number, got {args.lr}")
    if args.score_threshold is not None and not 0 <= args.score_threshold <= 1:
        raise ConfigError(f"--score-threshold: must lie in 0…1, got {args.score_threshold}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("train-segmenter runs as one process (one GPU or the CPU); "
                          "start it without torchrun / WORLD_SIZE > 1")


# ---------------------------------------------------------------- training


def train(args) -> dict:
    """Train (or resume, or re-export a finished run); return the last validation metrics."""
    import torch

    from futureseg.models.segmenters import Segmenter, build_backend
    from futureseg.core.training import autocast, fit, plan_steps, seed_everything, select_device

    check_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # No cudnn.benchmark (Mask R-CNN's trainer): its mask head sees a new ROI count every
    # step, and benchmark would time every algorithm again for each count it meets.
    device = select_device(bf16_autocast=True)
    dataset = TrainingSet(args.seg_frames, args.min_fragment, args.seed)
    mean01, std01 = dense.normalisation(args.mean_std)
    config = model_config(args, dataset.size, mean01, std01)
    val_frames, val_masks = load_validation(args.root, dataset.size, args.val_limit)
    _, total_steps = plan_steps(len(dataset), args.batch_size, args.epochs, args.max_steps)
    settings = {
        "backend": args.backend, "model_config": config, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
        "seed": args.seed, "min_fragment": args.min_fragment, "training_set": dataset.fingerprint(),
    }
    seed_everything(args.seed)
    backend = build_backend(args.backend, config)
    model = backend.model.to(device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = warmup_cosine(optimizer, args.lr, args.warmup_steps, total_steps)
    def step_losses(epoch, batch, step, total):
        images, targets = batch
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with autocast(device):
            losses = backend.losses(images, targets)
        return {"loss": sum(losses.values()), **losses}

    def validate() -> dict:
        started = time.perf_counter()
        threshold = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
        iou = oracle_iou(Segmenter("maskrcnn", backend, **threshold), val_frames, val_masks,
                         args.val_batch_size, device)
        return {"val_oracle_iou": iou, "val_seconds": round(time.perf_counter() - started, 3)}

    return fit(model=model, weights=backend, optimizer=optimizer, scheduler=scheduler, settings=settings,
               checkpoints=args.checkpoints, metrics_out=args.metrics, out=args.out,
               model_file={"segmenter": "maskrcnn", "backend": args.backend, "model_config": config},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_batches, len(dataset), args.batch_size, args.seed),
               read_batches=lambda batches: loader(dataset, batches, args.workers, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate,
               loss_prefix="", desc=f"{args.backend} Mask R-CNN")


# The settings of each per-pixel model's section that shape it (its config fields); a flag
# left out takes the config dataclass's default.
PIXEL_MODEL_FLAGS = {"unet": ("base_channels", "depth"), "enet": ("width",)}
PIXEL_MODEL_NAMES = {"unet": "U-Net", "enet": "ENet"}


def train_pixel(args) -> dict:
    """The semantic segmenter: a per-pixel model (`--model unet | enet`, logits (N, 49, H, W))
    trained per pixel (cross-entropy, optionally plus soft IoU) with AdamW under one-cycle,
    on the same training set, augmentation and validation as Mask R-CNN, through the one
    training loop `training.fit`."""
    from dataclasses import asdict

    import torch

    from futureseg.core.dense import dense_losses
    from futureseg.models.segmenters import build, model_class
    from futureseg.core.training import adamw_one_cycle, autocast, epoch_order, fit, plan_steps, seed_everything, select_device

    check_settings(args)
    model, title = args.model, PIXEL_MODEL_NAMES[args.model]
    other = sorted(n for m, names in PIXEL_MODEL_FLAGS.items() if m != model for n in names
                   if n not in PIXEL_MODEL_FLAGS[model] and getattr(args, n) is not None)
    if other:  # another model's setting: a section pasted under the wrong model, say
        raise ConfigError(f"--{other[0].replace('_', '-')}: not a setting of the {title} (segmenter.{model})")
    for name in ("soft_iou_weight", "background_weight"):
        if getattr(args, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')}: the {title} needs it (segmenter.{model}.{name})")
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be 0 or more, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(bf16_autocast=True)
    dataset = TrainingSet(args.seg_frames, args.min_fragment, args.seed)
    images, masks = dataset._open()
    mean01, std01 = dense.normalisation(args.mean_std)
    config = asdict(model_class(model)[1](in_channels=3, num_classes=data.NUM_CLASSES, image_mean=tuple(mean01),
                                          image_std=tuple(std01), **given(args, PIXEL_MODEL_FLAGS[model])))
    val_frames, val_masks = load_validation(args.root, dataset.size, args.val_limit)
    seed_everything(args.seed)
    segmenter = build(model, config)
    net = segmenter.to(device).net
    _, total_steps = plan_steps(len(dataset), args.batch_size, args.epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(net, args.lr, args.weight_decay, total_steps)
    settings = {"segmenter": model, "model_config": config, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "weight_decay": args.weight_decay, "soft_iou_weight": args.soft_iou_weight,
                "background_weight": args.background_weight, "seed": args.seed, "training_set": dataset.fingerprint()}

    def step_losses(epoch, indices, step, total):
        pairs = [augment(np.asarray(images[i]), np.asarray(masks[i]), np.random.default_rng((args.seed, epoch, i)))
                 for i in indices]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)).to(device)
        with autocast(device):
            logits = net(x)
        return dense_losses(logits.float(), y, args.soft_iou_weight, args.background_weight)

    def validate():
        return {"val_oracle_iou": oracle_iou(segmenter, val_frames, val_masks, args.val_batch_size, device)}

    return fit(model=net, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out, model_file={"segmenter": model, "model_config": config},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(dataset), args.batch_size, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate, desc=f"{title} segmenter")


# ---------------------------------------------------------------- CLI

VERB = "train-segmenter"
HELP = "train the segmenter (U-Net, ENet or Mask R-CNN) from scratch on the segmentation training set (stage 4)"


def add_arguments(parser) -> None:
    from futureseg.models.segmenters import BACKENDS, SEGMENTERS

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--root", required=True, help="Dataset_Student root (validation: val frame 21 and its mask)")
    io.add_argument("--seg-frames", required=True, help="stage 3's folder (images.npy, masks.npy, index.csv, counts.json)")
    io.add_argument("--mean-std", help="mean_std.json of stage 1 for input normalisation (default: ImageNet's)")
    io.add_argument("--out", required=True, help="model file to write (model.pt)")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True, help="folder of per-config checkpoint folders (last.pt, live metrics.csv)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=SEGMENTERS, default="maskrcnn",
                       help="unet or enet (semantic, per-pixel loss) or maskrcnn (instances)")
    # No defaults here for what shapes the model: the rule passes config.yaml's section, and a
    # flag left out takes the model config dataclass's default (UNetConfig, ENetConfig, MaskRCNNConfig).
    model.add_argument("--base-channels", type=int, help="U-Net: channels of the first level")
    model.add_argument("--depth", type=int, help="U-Net: levels (poolings + 1)")
    model.add_argument("--width", type=int, help="ENet: the initial block's channels (stage 1: 4x, stages 2-3: 8x)")
    model.add_argument("--soft-iou-weight", type=float,
                       help="U-Net, ENet: weight of the soft-IoU loss term beside cross-entropy (0: cross-entropy only)")
    model.add_argument("--background-weight", type=float,
                       help="U-Net, ENet: weight of the background's pixels in the cross-entropy (objects: 1)")
    model.add_argument("--backend", choices=BACKENDS, default="torchvision")
    model.add_argument("--backbone", help="resnet18|resnet34|resnet50|resnet101|mobilenet_v3 (detectron2: the resnets)")
    model.add_argument("--norm", choices=("bn", "gn"), help="trainable normalisation in the backbone")
    model.add_argument("--fpn-channels", type=int)
    model.add_argument("--box-head-dim", type=int, help="width of the box head's two FC layers")
    model.add_argument("--mask-head-channels", type=int, help="width of the mask head's convolutions")
    model.add_argument("--rpn-post-nms-train", type=int, help="proposals per image kept in training")
    model.add_argument("--box-batch-per-image", type=int, help="ROIs sampled per image for the box head")
    model.add_argument("--detections-per-image", type=int)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, required=True)
    opt.add_argument("--batch-size", type=int, required=True)
    opt.add_argument("--lr", type=float, required=True, help="peak learning rate (Mask R-CNN: SGD; U-Net, ENet: AdamW)")
    opt.add_argument("--weight-decay", type=float, required=True)
    opt.add_argument("--warmup-steps", type=int, help="Mask R-CNN: linear warm-up steps before the cosine decay")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--min-fragment", type=int, default=4, help="object pieces smaller than this many pixels are dropped")
    opt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps; also at each epoch end")
    run.add_argument("--score-threshold", type=float,
                     help="validation: instances below it are not painted (default: the Segmenter's)")
    run.add_argument("--val-limit", type=int, default=0, help="validate on the first N val videos (0: all)")
    run.add_argument("--val-batch-size", type=int, default=8)
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    run.add_argument("--workers", type=int, default=0, help="DataLoader processes preparing batches (0: in-process)")


def main(args) -> None:
    scores = train(args) if args.model == "maskrcnn" else train_pixel(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
