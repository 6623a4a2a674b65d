"""Route `direct`: one U-Net from the 11 input frames, stacked as 33 channels, to the mask of frame 21.

Training pairs: every video of the frame caches `--cache` of the labeled splits, with
its true mask 21 (`--root`), plus, when given, the `unlabeled` videos (`--pseudo-cache`)
with the segmenter's mask of their frame 21 (`--pseudo`, from `pseudo-label`) as the
target: more videos, imperfect targets. Frames and mask are flipped alike at random and
the frames' brightness scaled by U(0.8, 1.2), drawn from (seed, epoch, sample).
Loss `dense.dense_losses`, AdamW under one-cycle, the dense loop `training.fit`.
Validation at each epoch end: `val_iou` of frame 21 over the val videos (`--val-cache`).
"""

from __future__ import annotations

import functools

import numpy as np

from futureseg.core.flags import given
from futureseg.core import data
from futureseg.core.errors import DataError

BRIGHTNESS = (0.8, 1.2)


def train(args) -> dict:
    from dataclasses import asdict

    import torch

    from futureseg.core.dense import (check_training_settings, dense_losses, direct_masks, flip_together, load_mask_cache,
                        macro_iou, normalisation)
    from futureseg.core.io import load_cache
    from futureseg.models.unet import UNet, UNetConfig
    from futureseg.core.training import (adamw_one_cycle, autocast, data_fingerprint, epoch_order, fit, plan_steps,
                                         seed_everything, select_device)

    args.iou_finetune_epochs = 0
    check_training_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(bf16_autocast=True)
    # (frames memmap, targets of frame 21) per source
    sources = []
    for path, split in zip(args.cache, args.label_splits):
        frames, meta = load_cache(path)
        masks, ids = data.read_split_masks(args.root, split)
        if [int(i) for i in meta["ids"]] != ids:
            raise DataError(f"{path}: its videos are not those of {args.root}/{split}")
        sources.append((frames, masks[:, data.TARGET_FRAME]))
    if args.pseudo_cache:
        frames, meta = load_cache(args.pseudo_cache)
        pseudo, pseudo_meta = load_mask_cache(args.pseudo, data.N_FRAMES)
        if pseudo_meta["ids"] != meta["ids"]:
            raise DataError(f"{args.pseudo}: its videos are not those of {args.pseudo_cache}")
        sources.append((frames, np.asarray(pseudo[:, data.TARGET_FRAME])))
    sizes = {tuple(f.shape[2:4]) for f, _ in sources}
    if len(sizes) != 1:
        raise DataError(f"training frames have different sizes {sorted(sizes)}")
    samples = [(s, row) for s, (frames, _) in enumerate(sources) for row in range(len(frames))]
    val_frames, val_meta = load_cache(args.val_cache)
    val_truth, val_ids = data.read_split_masks(args.root, "val")
    if [int(i) for i in val_meta["ids"]] != val_ids:
        raise DataError(f"{args.val_cache}: its videos are not those of {args.root}/val")
    val_truth = val_truth[:, data.TARGET_FRAME]

    mean01, std01 = normalisation(args.mean_std)
    config = asdict(UNetConfig(in_channels=3 * data.N_INPUT, num_classes=data.NUM_CLASSES, image_mean=tuple(mean01),
                               image_std=tuple(std01), key="direct", **given(args, ("base_channels", "depth"))))
    seed_everything(args.seed)
    model = UNet(UNetConfig(**config)).to(device)
    _, total_steps = plan_steps(len(samples), args.batch_size, args.epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(model, args.lr, args.weight_decay, total_steps)
    settings = {"kind": "direct", "model_config": config, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "weight_decay": args.weight_decay, "soft_iou_weight": args.soft_iou_weight,
                "background_weight": args.background_weight, "seed": args.seed, "training_videos": [len(f) for f, _ in sources],
                "pseudo": str(args.pseudo) if args.pseudo_cache else None,
                "training_data": data_fingerprint(*(a for pair in sources for a in pair)),
                **({"patience": args.patience} if args.patience else {})}

    def step_losses(epoch, indices, step, total):
        xs, ys = [], []
        for i in indices:
            source, row = samples[i]
            frames, targets = sources[source]
            rng = np.random.default_rng((args.seed, epoch, i))
            clip, mask = np.asarray(frames[row, : data.N_INPUT]), np.asarray(targets[row])
            clip, mask = flip_together([clip.transpose(0, 3, 1, 2), mask], rng)  # (11, 3, H, W): H, W last
            brightness = rng.uniform(*BRIGHTNESS)
            xs.append(np.clip(clip.astype(np.float32) * (brightness / 255.0), 0, 1).reshape(-1, *mask.shape))
            ys.append(mask.astype(np.int64))
        x, y = torch.from_numpy(np.stack(xs)).to(device), torch.from_numpy(np.stack(ys)).to(device)
        with autocast(device):
            logits = model(x)
        return dense_losses(logits.float(), y, args.soft_iou_weight, args.background_weight)

    def validate():
        return {"val_iou": macro_iou(direct_masks(model, val_frames, device, args.batch_size), val_truth)}

    return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out, model_file={"kind": "direct", "model_config": config},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(samples), args.batch_size, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate, desc="direct U-Net",
               keep_best="val_iou" if args.patience else None, patience=args.patience)


VERB = "train-direct"
HELP = "train the direct U-Net: 11 stacked frames → mask of frame 21 (route direct)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import comma_list
    from futureseg.core.dense import add_training_arguments

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--root", required=True, help="Dataset_Student root: true masks of --label-splits and of val")
    io.add_argument("--cache", nargs="+", required=True, help="frame caches of the labeled training splits")
    io.add_argument("--label-splits", type=comma_list, default=("train",), help="the splits of --cache, in order")
    io.add_argument("--pseudo-cache", help="frame cache of unlabeled, trained on with --pseudo's frame-21 masks")
    io.add_argument("--pseudo", help="mask cache of unlabeled's 22 frames (pseudo-label)")
    io.add_argument("--val-cache", required=True, help="frame cache of val (validation)")
    io.add_argument("--mean-std", help="mean_std.json of stage 1 for input normalisation (default: ImageNet's)")
    io.add_argument("--out", required=True, help="model file to write")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True, help="folder of per-config checkpoint folders")
    model = parser.add_argument_group("model")
    # a size left out takes UNetConfig's default
    model.add_argument("--base-channels", type=int, help="U-Net: channels of the first level")
    model.add_argument("--depth", type=int, help="U-Net: levels (poolings + 1)")
    add_training_arguments(parser)


def main(args) -> None:
    if bool(args.pseudo) != bool(args.pseudo_cache):
        from futureseg.core.errors import ConfigError

        raise ConfigError("--pseudo and --pseudo-cache go together (unlabeled's masks and its frames)")
    if len(args.label_splits) != len(args.cache):
        from futureseg.core.errors import ConfigError

        raise ConfigError(f"--label-splits names {len(args.label_splits)} splits for {len(args.cache)} --cache files")
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
