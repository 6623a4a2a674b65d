"""Route `dynamics`: each object of frame 10 moved and scaled by the learnt dynamics model; and
the reference `placement_oracle`, each true object of frame 10 put at its true place in 11…21.

Input masks of frames 0…10, as `futureseg extrapolate` reads them: a mask cache (`--masks`,
the segmenter's of `pseudo-label`: val and hidden) or a labeled split's true masks (`--root
DIR --split S`: val's, the reference `dynamics_truth`), and with flow on (the model's motion
settings) the frame cache of the same videos (`--frames`). The model (`--model`, of `futureseg
train-dynamics`) carries the motion settings of the rule it is residual on.

`--placement-oracle` (with `--root --split`, no model): each object (class) of the true mask
10 moved to its true centroid and scaled to its true size (the square root of its area
ratio) in each frame 11…21, and left out where it is absent: the ceiling of any route that
moves what it saw, whatever it learns. Objects that enter after frame 10 are missing from it.
Centroid and area are the visible pixels': an object cut by the border (or by a nearer
object) is placed where its visible part is, at that part's size, a little below the
ceiling where objects leave the frame.

Outputs as route motion's: uint8 (N, H, W) masks of frame 21 (`--out`) and uint8
(N, 11, H, W) of frames 11…21 (`--out-sequence`), filled video by video into a
memory-mapped temporary (nothing partial is left on failure); `--shard i/K` as everywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError

log = logging.getLogger("futureseg")


def placement_oracle(masks) -> np.ndarray:
    """(11, H, W): every object of mask 10 of a 22-frame true mask sequence at its true centroid
    and size in frames 11…21 (see the module docstring)."""
    from futureseg.core import motion

    masks = np.asarray(masks)
    last = data.N_INPUT - 1
    classes, states = motion.object_tracks(masks)
    s = motion.STATE
    objects, centroids, scales = [], [], []
    for c, track in zip(classes, states):
        if not track[last, s["present"]]:
            continue
        rows, cols = np.nonzero(masks[last] == c)
        future = track[data.N_INPUT :]
        seen = future[:, s["present"]] > 0
        objects.append(motion.MovingObject(int(c), rows, cols, track[last, s["row"] : s["col"] + 1].astype(float),
                                           np.zeros((motion.HORIZON, 2)), np.zeros(2)))
        centroids.append(np.where(seen[:, None], future[:, s["row"] : s["col"] + 1], np.nan))
        scales.append(np.where(seen, np.sqrt(future[:, s["area"]] / track[last, s["area"]]), np.nan))
    return motion.paint(objects, masks.shape[1:], centroids, scales)


def run(out=None, out_sequence=None, model_path=None, masks_path=None, root=None, split=None, frames_path=None,
        shard=None, oracle=False, threads=0) -> int:
    """Forecast every video (of a shard); returns how many."""
    import torch

    from futureseg.core.io import array_writer, progress
    from futureseg.core.motion import HORIZON, MotionConfig
    from futureseg.core.shards import shard_rows
    from futureseg.forecast.extrapolate import read_inputs
    from futureseg.models import dynamics

    if not out and not out_sequence:
        raise ConfigError("nothing to write: give --out and/or --out-sequence")
    if oracle:
        if model_path or masks_path or frames_path:
            raise ConfigError("--placement-oracle reads the true masks alone: give --root and --split, "
                              "no --model, --masks or --frames")
        if root is None:
            raise ConfigError("--placement-oracle needs --root and --split (the true masks of frames 0…21)")
        model = motion_config = None
    else:
        if model_path is None:
            raise ConfigError("give --model (a model file of futureseg train-dynamics), or --placement-oracle")
        model, state = dynamics.load(model_path)
        motion_config = MotionConfig(**state["motion"])
        if motion_config.flow != "none" and frames_path is None:
            raise ConfigError(f"{model_path}: its rule uses flow {motion_config.flow!r}: --frames (the frame cache "
                              "of the same videos) is needed")
        if threads:
            torch.set_num_threads(threads)
    masks, frames, ids, source = read_inputs(masks_path, root, split, frames_path)
    size = tuple(int(v) for v in masks.shape[2:4])
    if model is not None and size != model.config.size:
        raise DataError(f"{source}: masks of {size}, the model {model_path} was trained on {model.config.size}")
    if oracle and masks.shape[1] < data.N_FRAMES:
        raise DataError(f"{source}: --placement-oracle needs all {data.N_FRAMES} true frames")
    rows = shard_rows(len(ids), shard)
    sidecar = {"split": split, "source": source, **({"shard": list(shard)} if shard else {}),
               **({"reference": "placement_oracle"} if oracle else
                  # what a forecaster on this prior checks: the model that made it (forecaster.prior: dynamics)
                  {"model": str(model_path), "dynamics": state["fingerprint"]})}
    with contextlib.ExitStack() as stack:
        sequence = target = None
        if out_sequence:
            sequence = stack.enter_context(array_writer(
                out_sequence, (len(rows), HORIZON, *size), ids[rows.start : rows.stop],
                frame_indices=list(range(data.N_INPUT, data.N_FRAMES)), **sidecar))
        if out:
            target = stack.enter_context(array_writer(
                out, (len(rows), *size), ids[rows.start : rows.stop], frame_index=data.TARGET_FRAME, **sidecar))
        for k, row in enumerate(progress(rows, total=len(rows), desc="dynamics")):
            if oracle:
                future = placement_oracle(np.asarray(masks[row]))
            else:
                clip = None if frames is None else np.asarray(frames[row, : data.N_INPUT])
                future = dynamics.forecast(model, np.asarray(masks[row])[: data.N_INPUT], clip, motion_config)
            if sequence is not None:
                sequence[k] = future
            if target is not None:
                target[k] = future[-1]
    return len(rows)


VERB = "dynamics"
HELP = "move and scale each object of frame 10 by the learnt dynamics model (route dynamics), or by the truth"


def add_arguments(parser) -> None:
    from futureseg.core.shards import parse_shard

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--model", help="dynamics model file (futureseg train-dynamics)")
    io.add_argument("--masks", help="mask cache (pseudo-label) whose frames 0…10 are the input")
    io.add_argument("--root", help="Dataset_Student root: or the true masks of --split")
    io.add_argument("--split", help="the labeled split of --root")
    io.add_argument("--frames", help="frame cache of the same videos (cache-frames): the rule's optical flow")
    io.add_argument("--placement-oracle", action="store_true",
                    help="no model: every true object of frame 10 at its true centroid and size (the reference)")
    io.add_argument("--out", help="masks of frame 21 to write (N, H, W)")
    io.add_argument("--out-sequence", help="masks of frames 11…21 to write (N, 11, H, W)")
    io.add_argument("--shard", type=parse_shard, default=None, help="only shard i of K (i/K)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    n = run(args.out, args.out_sequence, args.model, args.masks, args.root, args.split, args.frames, args.shard,
            args.placement_oracle, args.threads)
    print(f"{args.out or args.out_sequence}: {n} videos {'placed' if args.placement_oracle else 'forecast'}")
