"""Stage 4: train the segmenter from scratch on the segmentation training set: Mask R-CNN
(`train`, described here), or a per-pixel model, U-Net or ENet (`train_pixel`), or one of
them made recurrent (`--temporal convgru | convlstm`, `train_temporal`: clips of train's
true frames from `--root`, not this folder).

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


# ---------------------------------------------------------------- the recurrent segmenter

# segmenter.recurrent: the settings of the recurrent segmenter's training (the flags of the
# same names; no verb defaults: config.yaml's), and its model's (a TemporalSegmenterConfig field)
RECURRENT_TRAINING = ("clip_frames", "change_weight", "smoothing_weight", "warp_weight")
RECURRENT_MODEL = ("filter_size",)


def augment_clip(frames: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`augment` of a clip (T, H, W, 3), (T, H, W): one flip and one brightness for all its
    frames, so the clip still moves as the video did ("train as you infer": the pseudo-labels'
    sequences are real frames, unblurred, so the per-frame set's blur is left out)."""
    frames, masks = dense.flip_together([frames.transpose(0, 3, 1, 2), masks], rng)  # H, W last
    brightness = rng.uniform(*BRIGHTNESS)
    frames = np.clip(frames.astype(np.float32) * brightness, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1)), masks


class ClipSet:
    """Train's videos as clips of `clip_frames` consecutive true frames and their true masks,
    read from the dataset on demand (a few PNGs a step: no cache of the whole split in memory
    at the real data's size). Clip (epoch, video): its start and augmentation are drawn from
    (seed, epoch, video), so a resumed run reads the clips an uninterrupted one would."""

    def __init__(self, root, clip_frames: int, seed: int, size: tuple[int, int] | None = None):
        self.videos = data.list_videos(root, "train")
        self.size = tuple(size or data.frame_size(root, "train"))
        if not 1 <= clip_frames <= data.N_FRAMES:
            raise ConfigError(f"--clip-frames: must lie in 1…{data.N_FRAMES}, got {clip_frames}")
        self.clip_frames, self.seed = clip_frames, seed

    def __len__(self) -> int:
        return len(self.videos)

    def fingerprint(self) -> dict:
        digest = hashlib.sha256()
        picked = np.unique(np.linspace(0, len(self.videos) - 1, min(len(self.videos), _FINGERPRINT_SAMPLES)).astype(int))
        for i in picked:
            video = self.videos[i]
            digest.update(str(video.id).encode())
            digest.update(video.mask_path.read_bytes())
            digest.update(data.read_frames(video, [0], self.size).tobytes())
        return {"videos": len(self.videos), "size": list(self.size), "content_sha256": digest.hexdigest()[:16]}

    def clip(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch, index))
        start = int(rng.integers(0, data.N_FRAMES - self.clip_frames + 1))
        video = self.videos[index]
        indices = range(start, start + self.clip_frames)
        frames = data.read_frames(video, indices, self.size)
        masks = data.read_mask(video, self.size)[start : start + self.clip_frames]
        return augment_clip(frames, masks, rng)


def load_val_sequences(root, size: tuple[int, int], limit: int = 0):
    """Frames 0…10 (V, 11, H, W, 3) and their true masks (V, 11, H, W) of the val videos (the
    first `limit` when > 0): what pseudo_label segments and scores as sequences."""
    videos = data.list_videos(root, "val")[: limit or None]
    frames = np.stack([data.read_frames(v, range(data.N_INPUT)) for v in videos])
    if frames.shape[2:4] != tuple(size):
        raise DataError(f"{videos[0].frame_path(0)}: val frames are {frames.shape[2]}x{frames.shape[3]}, "
                        f"train's are {size[0]}x{size[1]}")
    masks = np.stack([data.read_mask(v, size)[: data.N_INPUT] for v in videos])
    return frames, masks


def temporal_losses(logits, target, flows, args) -> dict:
    """dense_losses of every frame of the clips (logits (B, T, C, H, W), target (B, T, H, W))
    plus each temporal-consistency loss whose weight is above 0 (models/temporal_segmenter.py)."""
    import torch.nn.functional as F

    from futureseg.core.dense import dense_losses
    from futureseg.models import temporal_segmenter as ts

    losses = dense_losses(logits.flatten(0, 1), target.flatten(0, 1), args.soft_iou_weight, args.background_weight)
    if logits.shape[1] < 2 or not (args.change_weight or args.smoothing_weight or args.warp_weight):
        return losses
    probs = logits.softmax(2)
    total = losses["loss"]
    if args.change_weight:
        onehot = F.one_hot(target, logits.shape[2]).permute(0, 1, 4, 2, 3).to(probs.dtype)
        losses["change"] = ts.change_loss(probs, onehot)
        total = total + args.change_weight * losses["change"]
    if args.smoothing_weight:
        losses["smoothing"] = ts.smoothing_loss(probs)
        total = total + args.smoothing_weight * losses["smoothing"]
    if args.warp_weight:
        flow, valid = flows
        losses["warp"] = ts.warp_loss(probs, flow, valid)
        total = total + args.warp_weight * losses["warp"]
    return {**losses, "loss": total}


def check_recurrent_settings(args) -> None:
    for name in RECURRENT_TRAINING:
        if getattr(args, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')}: the recurrent segmenter needs it (segmenter.recurrent.{name})")
    for name in ("change_weight", "smoothing_weight", "warp_weight"):
        if not getattr(args, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be 0 or more, got {getattr(args, name)}")
    if args.model not in PIXEL_MODEL_FLAGS:
        raise ConfigError(f"--temporal {args.temporal}: the recurrent segmenter wraps "
                          f"{' or '.join(PIXEL_MODEL_FLAGS)}, not {args.model}")


def train_temporal(args) -> dict:
    """The recurrent segmenter (`--temporal convgru | convlstm`): the per-pixel model of
    `--model` with a recurrent cell at its bottleneck, trained on clips of `--clip-frames`
    consecutive true frames of train's videos with their true masks (cross-entropy per frame,
    as the per-pixel trainer's, plus the weighted temporal-consistency losses), AdamW under
    one-cycle, through `training.fit`. `--batch-size` counts frames, as for the per-frame
    model: batch_size // clip_frames clips a step (at least one), so a step costs about what
    a per-frame step does. Validation runs the route's own input: val's frames 0…10 as one
    sequence each, scored as the pseudo-labels are (`core.dense.sequence_scores`: `val_iou`
    against the true masks 0…10, `val_temporal_iou` beside `val_true_temporal_iou`), and the
    true frame 21 alone (`val_oracle_iou`, zero state: the meaning of the oracle reference).
    Its masks there are the segmenter's argmax, before the object classifier and the track
    vote that the rule pseudo_label applies."""
    from dataclasses import asdict

    import torch

    from futureseg.core.dense import sequence_scores
    from futureseg.models.segmenters import build_temporal, model_class
    from futureseg.models.temporal_segmenter import TemporalSegmenterConfig, clip_flows
    from futureseg.core.training import adamw_one_cycle, autocast, epoch_order, fit, plan_steps, seed_everything, select_device

    check_recurrent_settings(args)
    check_settings(args)
    model, title = args.model, f"recurrent {args.temporal} {PIXEL_MODEL_NAMES[args.model]}"
    for name in ("soft_iou_weight", "background_weight"):
        if getattr(args, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')}: the {title} needs it (segmenter.{model}.{name})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(bf16_autocast=True)
    clips = ClipSet(args.root, args.clip_frames, args.seed)
    mean01, std01 = dense.normalisation(args.mean_std)
    pixel_config = asdict(model_class(model)[1](in_channels=3, num_classes=data.NUM_CLASSES, image_mean=tuple(mean01),
                                                image_std=tuple(std01), **given(args, PIXEL_MODEL_FLAGS[model])))
    config = asdict(TemporalSegmenterConfig(pixel_model=model, pixel_config=pixel_config, cell=args.temporal,
                                            **given(args, RECURRENT_MODEL)))
    val_frames, val_masks = load_val_sequences(args.root, clips.size, args.val_limit)
    oracle_frames, oracle_masks = load_validation(args.root, clips.size, args.val_limit)
    seed_everything(args.seed)
    segmenter = build_temporal(config)
    net = segmenter.to(device).net
    clips_per_step = max(1, args.batch_size // args.clip_frames)
    _, total_steps = plan_steps(len(clips), clips_per_step, args.epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(net, args.lr, args.weight_decay, total_steps)
    settings = {"segmenter": model, "temporal": args.temporal, "model_config": config, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                "soft_iou_weight": args.soft_iou_weight, "background_weight": args.background_weight,
                **{name: getattr(args, name) for name in RECURRENT_TRAINING}, "seed": args.seed,
                "training_set": clips.fingerprint()}

    def step_losses(epoch, indices, step, total):
        pairs = [clips.clip(epoch, i) for i in indices]
        flows = None
        if args.warp_weight and args.clip_frames > 1:  # on the CPU, from the augmented frames the net sees
            computed = [clip_flows(frames) for frames, _ in pairs]
            flows = (torch.from_numpy(np.stack([f for f, _ in computed])).to(device),
                     torch.from_numpy(np.stack([v for _, v in computed])).to(device))
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)).to(device)
        with autocast(device):
            logits = net(x)
        return temporal_losses(logits.float(), y, flows, args)

    def validate():
        predicted = segmenter.sequence_masks(val_frames, device, args.val_batch_size * data.N_INPUT)
        scores = sequence_scores([(predicted, val_masks)])
        return {"val_iou": scores["iou"], "val_temporal_iou": scores["temporal_iou"],
                "val_true_temporal_iou": scores["true_temporal_iou"],
                "val_oracle_iou": oracle_iou(segmenter, oracle_frames, oracle_masks, args.val_batch_size, device)}

    return fit(model=net, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out,
               model_file={"segmenter": model, "temporal": args.temporal, "model_config": config},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(clips), clips_per_step, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate, desc=title)


# ---------------------------------------------------------------- CLI

VERB = "train-segmenter"
HELP = ("train the segmenter (U-Net, ENet or Mask R-CNN; the first two optionally recurrent) from scratch "
        "on the segmentation training set (stage 4)")


def add_arguments(parser) -> None:
    from futureseg.models.segmenters import BACKENDS, SEGMENTERS, TEMPORAL

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--root", required=True, help="Dataset_Student root (validation: val frame 21 and its mask)")
    io.add_argument("--seg-frames", help="stage 3's folder (images.npy, masks.npy, index.csv, counts.json); "
                                         "every segmenter but the recurrent one trains on it")
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
    # The recurrent segmenter (segmenter.temporal, segmenter.recurrent): the rule always passes
    # --temporal; left out, the per-frame model, as before it existed.
    model.add_argument("--temporal", choices=TEMPORAL, default="none",
                       help="U-Net, ENet: none (per frame) or the recurrent cell at the bottleneck (convgru | convlstm), "
                            "trained on clips of train's true frames (--root) instead of --seg-frames")
    model.add_argument("--filter-size", type=int, help="recurrent: the cell's kernel size")
    model.add_argument("--clip-frames", type=int, help="recurrent: consecutive frames per training clip")
    model.add_argument("--change-weight", type=float,
                       help="recurrent: weight of the change loss (predictions change where the truth does; 0: off)")
    model.add_argument("--smoothing-weight", type=float,
                       help="recurrent: weight of the smoothing loss (mean change between consecutive frames; 0: off)")
    model.add_argument("--warp-weight", type=float,
                       help="recurrent: weight of the flow-warped consistency loss (Lai et al. 2018; 0: off)")
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
    if args.temporal != "none":
        scores = train_temporal(args)
    elif not args.seg_frames:
        raise ConfigError("--seg-frames: required (stage 3's folder) unless --temporal is convgru or convlstm")
    else:
        scores = train(args) if args.model == "maskrcnn" else train_pixel(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
