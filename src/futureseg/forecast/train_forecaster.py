"""Route `masks`: train the mask forecaster on mask sequences.

Training sequences: the true masks of the labeled training splits (`--root`,
`--label-splits`, mask.npy) plus the pseudo-labels of `unlabeled` (`--pseudo`, mask
caches of all 22 frames written by `pseudo-label`, read memory-mapped batch by batch:
13,000 videos at 160×240 are 11 GB). Input masks 0…10, target masks 11…21; the loss
(`dense.dense_losses`) is taken over all 11 future masks, which gives the model ten
more supervised frames per video than frame 21 alone. Each sequence is flipped
horizontally and vertically at random, all frames alike (motion stays physical), its
prior with it, drawn from (seed, epoch, sample) so resuming is exact.

`--prior motion` (or `dynamics`): the residual base of the forecast is each video's prior,
the masks 11…21 of `futureseg extrapolate` (of `futureseg dynamics`), computed once by
its rule (`--priors`, one per label split then per pseudo cache, in that order;
`--val-prior` for val: the route's own sequence). Their sidecars must hold the same
videos and the same motion settings (the same dynamics model); the model file records
them, and `forecast` checks its prior against them.

Schedule: AdamW under one-cycle for `--epochs` of cross-entropy, then
`--iou-finetune-epochs` more with the soft-IoU term added at `--soft-iou-weight`: the
IoU-shaped fine-tune that lifted the published mask-space SimVP from 0.37 to 0.455 val
IoU on the real data.

Validation, at each epoch end: forecast frame 21 of val from the segmenter's masks of
val frames 0…10 (`--val-pseudo`: exactly what the forecaster sees at inference time)
and score it against val's true mask 21 (`val_iou`, the competition metric), next to
`val_pseudo_copy_last_iou`, the segmenter's mask of frame 10 copied forward.
"""

from __future__ import annotations

import functools

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError


def train(args) -> dict:
    import torch

    from futureseg.core.dense import check_training_settings, dense_losses, flip_together, forecast_masks, load_mask_cache, macro_iou
    from futureseg.models import forecasters
    from futureseg.core.training import (adamw_one_cycle, autocast, data_fingerprint, epoch_order, fit, plan_steps,
                                         seed_everything, select_device)

    check_training_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(bf16_autocast=True)
    sources, source_ids = [], []
    for split in args.label_splits:
        masks, ids = data.read_split_masks(args.root, split)
        sources.append(masks)
        source_ids.append(ids)
    for path in args.pseudo:
        masks, meta = load_mask_cache(path, data.N_FRAMES)
        sources.append(masks)
        source_ids.append(meta["ids"])
    sizes = {tuple(s.shape[2:]) for s in sources}
    if len(sizes) != 1:
        raise DataError(f"training masks have different sizes {sorted(sizes)} "
                        f"(--label-splits {args.label_splits}, --pseudo {args.pseudo})")
    size = sizes.pop()
    priors, made_by = read_priors(args, source_ids)
    # (source, row) of every training sequence: the mask caches stay memory-mapped
    samples = [(s, row) for s, source in enumerate(sources) for row in range(len(source))]
    val_inputs, val_meta = load_mask_cache(args.val_pseudo, data.N_INPUT)
    val_truth, val_ids = data.read_split_masks(args.root, "val")
    if [int(i) for i in val_meta["ids"]] != val_ids or val_inputs.shape[2:] != size:
        raise DataError(f"{args.val_pseudo}: its videos or size ({val_inputs.shape[2:]}) are not those of "
                        f"{args.root}/val ({len(val_ids)} videos, {size})")
    val_inputs = np.asarray(val_inputs[:, : data.N_INPUT])
    val_truth = val_truth[:, data.TARGET_FRAME]
    val_prior = None
    if made_by is not None:
        from futureseg.forecast.extrapolate import check_prior

        val_prior = np.asarray(check_prior(args.val_prior, val_ids, made_by, args.prior))

    seed_everything(args.seed)
    model = forecasters.build(args.model, size, {**args.model_config, "prior": args.prior}).to(device)
    config = forecasters.model_config(model)
    epochs = args.epochs + args.iou_finetune_epochs
    _, total_steps = plan_steps(len(samples), args.batch_size, epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(model, args.lr, args.weight_decay, total_steps)
    settings = {"kind": "mask_forecaster", "model": args.model, "model_config": config, "epochs": args.epochs,
                "iou_finetune_epochs": args.iou_finetune_epochs, "soft_iou_weight": args.soft_iou_weight,
                "background_weight": args.background_weight, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
                "training_videos": len(samples), "label_splits": list(args.label_splits),
                "pseudo": [str(p) for p in args.pseudo], "prior": args.prior, args.prior: made_by,
                "training_data": data_fingerprint(*sources, *(priors or [])),
                **({"patience": args.patience} if args.patience else {})}

    def sample(epoch, i):
        s, row = samples[i]
        arrays = [np.asarray(sources[s][row, : data.N_FRAMES])]
        if priors is not None:
            arrays.append(np.asarray(priors[s][row]))
        return flip_together(arrays, np.random.default_rng((args.seed, epoch, i)))

    def step_losses(epoch, indices, step, total):
        drawn = [sample(epoch, i) for i in indices]
        batch = torch.from_numpy(np.stack([d[0] for d in drawn]).astype(np.int64)).to(device)
        prior = None
        if priors is not None:
            prior = torch.from_numpy(np.stack([d[1] for d in drawn]).astype(np.int64)).to(device)
        with autocast(device):
            logits = model(batch[:, : data.N_INPUT], prior)  # (B, 11, C, H, W)
        target = batch[:, data.N_INPUT :]
        weight = args.soft_iou_weight if epoch >= args.epochs else 0.0
        return dense_losses(logits.float().flatten(0, 1), target.flatten(0, 1), weight, args.background_weight)

    def validate():
        predicted = forecast_masks(model, val_inputs, device, args.batch_size, val_prior)[:, -1]
        scores = {"val_iou": macro_iou(predicted, val_truth),
                  "val_pseudo_copy_last_iou": macro_iou(val_inputs[:, -1], val_truth)}
        if val_prior is not None:  # what the untrained forecaster scores: route motion
            scores["val_prior_iou"] = macro_iou(val_prior[:, -1], val_truth)
        return scores

    return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out,
               model_file={"kind": "mask_forecaster", "model_config": config, args.prior: made_by},
               epochs=epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(samples), args.batch_size, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate, desc="mask forecaster",
               keep_best="val_iou" if args.patience else None, patience=args.patience)


def read_priors(args, source_ids):
    """The priors of the training sources (memory-mapped) and what made them all (the motion
    settings, or the dynamics model's fingerprint); (None, None) with --prior copy_last."""
    if args.prior == "copy_last":
        if args.priors or args.val_prior:
            raise ConfigError("--priors/--val-prior are given but --prior is copy_last")
        return None, None
    from futureseg.forecast.extrapolate import check_prior
    from futureseg.core.io import read_array

    if len(args.priors) != len(source_ids) or not args.val_prior:
        raise ConfigError(f"--prior {args.prior}: --priors needs one prior sequence per training source "
                          f"(--label-splits {list(args.label_splits)} then --pseudo: {len(source_ids)}), "
                          f"got {len(args.priors)}; and --val-prior")
    made_by = read_array(args.priors[0], f"{args.prior} prior")[1].get(args.prior)
    return [check_prior(path, ids, made_by, args.prior) for path, ids in zip(args.priors, source_ids)], made_by


VERB = "train-forecaster"
HELP = "train the mask forecaster (a frame predictor over class embeddings) on mask sequences (route masks)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import comma_list, json_object
    from futureseg.core.dense import add_training_arguments
    from futureseg.models import forecasters

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--root", required=True, help="Dataset_Student root: true masks of --label-splits and of val")
    io.add_argument("--label-splits", type=comma_list, default=("train",), help="splits whose true masks train")
    io.add_argument("--pseudo", nargs="*", default=[], help="mask caches of 22 frames (pseudo-label) that train too")
    io.add_argument("--val-pseudo", required=True, help="mask cache of val frames 0…10 (pseudo-label): validation inputs")
    io.add_argument("--priors", nargs="*", default=[],
                    help="with --prior motion or dynamics: the priors (extrapolate or dynamics --out-sequence) of the "
                         "label splits, then of the --pseudo caches, in that order")
    io.add_argument("--val-prior", help="with --prior motion or dynamics: the prior of val (that route's sequence)")
    io.add_argument("--out", required=True, help="model file to write")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True, help="folder of per-config checkpoint folders")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=forecasters.names(), required=True, help="the predictor run over the embeddings")
    model.add_argument("--prior", choices=("motion", "dynamics", "copy_last"), required=True,
                       help="the residual base of the forecast: route motion's or route dynamics' masks, or mask 10 copied")
    model.add_argument("--model-config", type=json_object, default={},
                       help='its settings as JSON, e.g. \'{"embed_dim": 16, "hid_S": 32, "N_T": 4}\' '
                            "(unset ones take the model's defaults)")
    opt = add_training_arguments(parser, "epochs of cross-entropy")
    opt.add_argument("--iou-finetune-epochs", type=int, default=0,
                     help="then epochs with the soft-IoU term added at --soft-iou-weight")


def main(args) -> None:
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
