"""Train the dynamics model of route `dynamics` on object tracks (`futureseg tracks`).

Training windows: every video of the tracks files `--tracks` (train's true masks,
unlabeled's pseudo-labels: all 22 frames) gives a window ending at each frame t =
`core.motion.FIRST_WINDOW_END`…10, whose targets are the 11 frames t+1…t+11, and each
window again left-right mirrored (`--mirror`, on by default): 14 windows a video. Per object
present at t, the targets are its centroid and log-scale (half the log of its area over its
area at t) in those frames, and whether it is in view there; a centroid target is masked
where the object is absent, mostly occluded (its area under half its area at t) or cut by
the image border (its box at a border: the visible centroid is not the object's), and the
log-scale also where the object was already cut at t (by a border, or its area under 0.8 of
its largest in the frames the model sees).

Loss: smooth L1 of the centroid's residual on route motion's rule (in the model's unit,
min(H, W) / 16 pixels) plus `--scale-weight` × smooth L1 of the log-scale, means over the
unmasked targets; with `exits`, the binary cross-entropy of in view (every future frame of
every object); with `spread`, the Gaussian negative log-likelihood of the centroid target
under the predicted spread about the predicted centroid (the spread has its own head on
detached features, so the centroids learn as without it). AdamW under one-cycle, the one training loop
`training.fit` (checkpoints, resume, stop signals). Validation at each epoch end: `val_iou`,
the macro IoU of frame 21 of the val videos' true masks 0…10 moved by the model
(`dynamics.forecast`, `--val-root`, with `--val-frames` for the flow), beside
`val_rule_iou`, route motion's rule on the same videos (the untrained model's). With
`exits` or `spread` the painter's threshold is chosen there too (`PAINT_THRESHOLDS`, the
best `val_iou`; `val_threshold`), and the model file holds the epoch end of the best
`val_iou`, not the last.
"""

from __future__ import annotations

import argparse
import functools
import logging

import numpy as np

from futureseg.core.errors import ConfigError, DataError

log = logging.getLogger("futureseg")
MASKED_AREA = 0.5  # a target frame where the object shows under half its area at t is masked
CUT_AREA = 0.8  # the log-scale is masked where the object shows under this of its largest area at t
# the painter's thresholds tried on val at each epoch end (an object's probability at a pixel)
PAINT_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


def targets(states, t: int, present, base, unit: float, size):
    """(residual (K, 11, 2) in units, log-scale (K, 11), position mask, scale mask, in view
    (K, 11)) of the objects `present` at frame t of tracks `states` (K_all, T, fields) of
    frames of `size` (H, W)."""
    from futureseg.core.motion import HORIZON, STATE

    s = states[present]
    future = s[:, t + 1 : t + 1 + HORIZON]
    area_t = np.maximum(s[:, t, STATE["area"]], 1.0)
    area = future[..., STATE["area"]]
    in_view = future[..., STATE["present"]] > 0
    # a box at a border is an object cut by it: its visible centroid and area are not where
    # the object is, so the model extrapolates there instead of learning to pull it inward
    box = future[..., STATE["top"] : STATE["right"] + 1]
    inside = ((box[..., 0] > 0) & (box[..., 1] > 0) & (box[..., 2] < size[0] - 1) & (box[..., 3] < size[1] - 1))
    seen = in_view & inside & (area >= MASKED_AREA * area_t[:, None])
    residual = np.where(seen[..., None], (future[..., STATE["row"] : STATE["col"] + 1] - base) / unit, 0)
    with np.errstate(divide="ignore"):
        log_scale = np.where(seen, 0.5 * np.log(np.maximum(area, 1.0) / area_t[:, None]), 0)
    largest = s[:, : t + 1, STATE["area"]].max(axis=1)
    box_t = s[:, t, STATE["top"] : STATE["right"] + 1]
    whole = ((area_t >= CUT_AREA * largest) & (box_t[:, 0] > 0) & (box_t[:, 1] > 0) & (box_t[:, 2] < size[0] - 1)
             & (box_t[:, 3] < size[1] - 1))
    return (residual.astype(np.float32), log_scale.astype(np.float32), seen, seen & whole[:, None],
            in_view.astype(np.float32))


class Windows:
    """Every training window of the tracks files, its objects' inputs and targets computed once,
    vectorised over all the objects of a file that are present at one end frame (a split's in
    seconds); a batch is a gather. `objects[w]` are the rows of window w's objects."""

    def __init__(self, tracks_files, mirror: bool, config, velocity_frames: int, bounce: bool):
        from futureseg.core.motion import FIRST_WINDOW_END, HORIZON, STATE
        from futureseg.models import dynamics

        parts, self.objects, start = [], [], 0
        for tracks in tracks_files:
            video = np.repeat(np.arange(len(tracks)), np.diff(tracks.offsets))
            for mirrored in (False, True) if mirror else (False,):
                states = dynamics.mirror(tracks.states, tracks.size[1]) if mirrored else tracks.states
                for t in range(FIRST_WINDOW_END, tracks.n_frames - HORIZON):
                    present = states[:, t, STATE["present"]] > 0
                    x, base, _ = dynamics.inputs(tracks.classes, states, t, tracks.size, config, velocity_frames,
                                                 bounce)
                    parts.append((x, *targets(states, t, present, base, config.unit, tracks.size)))
                    # the present objects are in video order: one window per video with any
                    counts = np.bincount(video[present], minlength=len(tracks))
                    ends = start + np.cumsum(counts)
                    self.objects.extend(np.arange(e - c, e) for e, c in zip(ends, counts) if c)
                    start = int(ends[-1]) if len(ends) else start
        self.arrays = [np.concatenate([p[k] for p in parts]) for k in range(6)] if parts else []

    def __len__(self):
        return len(self.objects)

    def batch(self, indices):
        """(x, residual, log-scale, position mask, scale mask, in view, valid) padded to (B, max objects, …)."""
        rows = [self.objects[i] for i in indices]
        k = max(len(r) for r in rows)
        index = np.zeros((len(rows), k), dtype=np.int64)
        valid = np.zeros((len(rows), k), dtype=bool)
        for b, r in enumerate(rows):
            index[b, : len(r)], valid[b, : len(r)] = r, True
        gathered = [a[index] * valid.reshape(*valid.shape, *([1] * (a.ndim - 1))) for a in self.arrays]
        return (*gathered, valid)


def train(args) -> dict:
    from dataclasses import asdict

    import torch
    import torch.nn.functional as F

    from futureseg.core.flags import given
    from futureseg.core import data, motion
    from futureseg.core.dense import check_training_settings, macro_iou
    from futureseg.core.io import load_cache
    from futureseg.core.training import (adamw_one_cycle, data_fingerprint, epoch_order, fit, plan_steps,
                                         seed_everything, select_device)
    from futureseg.forecast.tracks import Tracks
    from futureseg.models import dynamics

    check_training_settings(args)
    if args.scale_weight < 0:
        raise ConfigError(f"--scale-weight: must be 0 or more, got {args.scale_weight}")
    if args.val_videos < 1:
        raise ConfigError(f"--val-videos: must be at least 1, got {args.val_videos}")
    if args.threads:
        torch.set_num_threads(args.threads)
    motion_config = motion.config_from(args.motion_config)
    if motion_config.flow != "none" and not args.val_frames:
        raise ConfigError(f"motion.flow is {motion_config.flow!r}: --val-frames (val's frame cache) is needed")
    device = select_device(bf16_autocast=False)  # fp32: its steps are small, its targets pixels
    files = [Tracks(path) for path in args.tracks]
    sizes = {f.size for f in files}
    if len(sizes) != 1:
        raise DataError(f"tracks of different frame sizes: {', '.join(f'{f.path} {f.size}' for f in files)}")
    for f in files:
        if f.n_frames < motion.FIRST_WINDOW_END + 1 + motion.HORIZON:
            raise DataError(f"{f.path}: tracks of {f.n_frames} frames; training needs the future frames too "
                            f"(at least {motion.FIRST_WINDOW_END + 1 + motion.HORIZON}: train's or unlabeled's)")
        if f.meta["flow"] != motion_config.flow:
            raise DataError(f"{f.path}: tracks with flow {f.meta['flow']!r}, the motion settings say "
                            f"{motion_config.flow!r}; rerun futureseg tracks with --flow {motion_config.flow}")
        # a file of before flow_pairs was recorded measured one pair
        pairs = f.meta.get("flow_pairs", 1)
        if motion_config.flow != "none" and pairs != motion_config.flow_pairs:
            raise DataError(f"{f.path}: tracks with flow averaged over {pairs} frame pair(s), the motion settings "
                            f"say flow_pairs {motion_config.flow_pairs}; rerun futureseg tracks with "
                            f"--flow-pairs {motion_config.flow_pairs}")
    size = sizes.pop()
    val_masks, val_ids = data.read_split_masks(args.val_root, "val")
    val_masks = val_masks[: args.val_videos]
    if tuple(val_masks.shape[2:]) != size:
        raise DataError(f"{args.val_root}/val: masks of {tuple(val_masks.shape[2:])}, the tracks are {size}")
    val_frames = None
    if args.val_frames:
        val_frames, meta = load_cache(args.val_frames)
        if [int(i) for i in meta["ids"]] != val_ids:
            raise DataError(f"{args.val_frames}: its videos are not those of {args.val_root}/val")
    truth = val_masks[:, data.TARGET_FRAME]

    def val_clip(row):
        return None if val_frames is None else np.asarray(val_frames[row, : data.N_INPUT])

    rule_iou = macro_iou(np.stack([motion.extrapolate(m[: data.N_INPUT], val_clip(row), motion_config)[-1]
                                   for row, m in enumerate(val_masks)]), truth)

    config = asdict(dynamics.DynamicsConfig(size=size, **given(args, ("history", "width", "layers", "interaction",
                                                                        "heads", "exits", "spread"))))
    seed_everything(args.seed)
    model = dynamics.Dynamics(dynamics.DynamicsConfig(**config)).to(device)
    samples = Windows(files, args.mirror, model.config, motion_config.velocity_frames, motion_config.bounce)
    if not len(samples):
        raise DataError(f"no object in any training window of {', '.join(map(str, args.tracks))}")
    _, total_steps = plan_steps(len(samples), args.batch_size, args.epochs, args.max_steps)
    optimizer, scheduler = adamw_one_cycle(model, args.lr, args.weight_decay, total_steps)
    settings = {"kind": "dynamics", "model_config": config, "motion": asdict(motion_config), "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                "scale_weight": args.scale_weight, "mirror": args.mirror, "seed": args.seed,
                "val_videos": len(val_masks),
                # the tracks' content, not their paths: new pseudo-labels train afresh
                "training_data": data_fingerprint(*(a for f in files for a in (f.states, f.classes)))}

    def step_losses(epoch, indices, step, total):
        x, residual, log_scale, seen, whole, in_view, valid = (torch.from_numpy(a).to(device)
                                                               for a in samples.batch(indices))
        out = model(x, valid)
        mean = out[..., dynamics.RESIDUAL]
        position = F.smooth_l1_loss(mean, residual, reduction="none").sum(-1)
        position = (position * seen).sum() / seen.sum().clamp_min(1)
        scale = F.smooth_l1_loss(out[..., dynamics.LOG_SCALE], log_scale, reduction="none", beta=0.1)
        scale = (scale * whole).sum() / whole.sum().clamp_min(1)
        losses = {"position": position, "log_scale": scale}
        loss = position + args.scale_weight * scale
        if model.config.exits:
            bce = F.binary_cross_entropy_with_logits(out[..., dynamics.PRESENCE], in_view, reduction="none")
            losses["in_view"] = (bce * valid[..., None]).sum() / (valid.sum() * dynamics.HORIZON).clamp_min(1)
            loss = loss + losses["in_view"]
        if model.config.spread:
            # 2-D isotropic Gaussian NLL of the target about the (detached) predicted centroid
            spread = torch.where(seen, out[..., dynamics.SPREAD], 1.0)  # padding's is 0: no log(0)
            squared = ((mean.detach() - residual) ** 2).sum(-1)
            nll = 0.5 * squared / spread**2 + 2 * torch.log(spread)
            losses["spread_nll"] = (nll * seen).sum() / seen.sum().clamp_min(1)
            loss = loss + losses["spread_nll"]
        return {"loss": loss, **losses}

    probabilistic = model.config.exits or model.config.spread

    def validate():
        painted = [dynamics.forecast_probabilities(model, m[: data.N_INPUT], val_clip(row), motion_config, device)
                   for row, m in enumerate(val_masks)]
        probability = np.stack([p[-1] for p, _ in painted])
        classes = np.stack([c[-1] for _, c in painted])
        thresholds = PAINT_THRESHOLDS if probabilistic else (float(model.paint_threshold),)
        scores = [macro_iou(np.where(probability > th, classes, 0), truth) for th in thresholds]
        best = int(np.argmax(scores))
        model.paint_threshold.fill_(thresholds[best])
        return {"val_iou": scores[best], "val_rule_iou": rule_iou, "val_threshold": thresholds[best]}

    log.info("dynamics: %d training windows from %s; val: %d videos, route motion's rule %.4f",
             len(samples), ", ".join(map(str, args.tracks)), len(val_masks), rule_iou)
    return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=settings, checkpoints=args.checkpoints,
               metrics_out=args.metrics, out=args.out,
               model_file={"kind": "dynamics", "format": dynamics.FORMAT, "model_config": config,
                           "motion": asdict(motion_config)},
               epochs=args.epochs, total_steps=total_steps,
               epoch_batches=functools.partial(epoch_order, len(samples), args.batch_size, args.seed),
               checkpoint_every=args.checkpoint_every, step_losses=step_losses, validate=validate,
               desc="dynamics", keep_best="val_iou")


VERB = "train-dynamics"
HELP = "train the dynamics model on object tracks: each object's centroid and scale in frames 11…21 (route dynamics)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import json_object
    from futureseg.core.flags import add_fit_arguments
    from futureseg.models import dynamics

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--tracks", nargs="+", required=True,
                    help="tracks files (futureseg tracks) of 22-frame videos: train's true masks, unlabeled's pseudo-labels")
    io.add_argument("--val-root", required=True, help="Dataset_Student root: val's true masks (validation)")
    io.add_argument("--val-frames", help="frame cache of val: the flow of route motion's rule")
    io.add_argument("--val-videos", type=int, default=200, help="val videos painted at each epoch end")
    io.add_argument("--out", required=True, help="model file to write")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True, help="folder of per-config checkpoint folders")
    parser.add_argument("--motion-config", type=json_object, default={},
                        help="route motion's settings as JSON (the rule the model is residual on)")
    model = parser.add_argument_group("model (a size left out takes DynamicsConfig's default)")
    model.add_argument("--history", type=int, help="input frames seen per object")
    model.add_argument("--width", type=int, help="features per object")
    model.add_argument("--layers", type=int, help="interaction layers over the objects (0: none)")
    model.add_argument("--interaction", choices=dynamics.INTERACTIONS,
                       help="attention over the objects, or pairwise messages from their relative pose")
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--exits", action=argparse.BooleanOptionalAction, default=None,
                       help="predict whether each object is still in view (one that left is not painted)")
    model.add_argument("--spread", action=argparse.BooleanOptionalAction, default=None,
                       help="predict each centroid's spread and paint the silhouettes smeared by it")
    opt = add_fit_arguments(parser, batch_help="windows (a video's objects at one end frame) per step")
    opt.add_argument("--scale-weight", type=float, default=1.0, help="weight of the log-scale loss")
    opt.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                     help="also train on every window mirrored left-right")


def main(args) -> None:
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
