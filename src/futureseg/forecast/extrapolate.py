"""Route `motion`, and the mask forecaster's motion prior: each object of frame 10 moved by
its own motion (`futureseg.core.motion`), training-free.

Input masks of frames 0…10: a mask cache (`--masks`, the segmenter's of `pseudo-label`:
val and hidden for the route, unlabeled for the forecaster's priors) or a labeled split's
true masks (`--root DIR --split S`: train's, the forecaster's priors; val's, the
`motion_truth` reference). With `motion.flow` set, the frames of the same videos
(`--frames`, a frame cache of `cache-frames`, ids checked) give the optical flow.

Outputs, as route `masks` writes them: uint8 (N, H, W) masks of frame 21 (`--out`) and
uint8 (N, 11, H, W) masks of frames 11…21 (`--out-sequence`), filled video by video into
a memory-mapped temporary, so 13,000 videos at 160×240 never sit in memory. Their
sidecars record the motion settings, which the forecaster checks against its own.
`--shard i/K` extrapolates the i-th of K contiguous row ranges (hidden-set inference).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError
from futureseg.core.shards import parse_shard, shard_rows

log = logging.getLogger("futureseg")


def _true_masks(root, split):
    """A lazy (N, 22, H, W) view of a labeled split's mask.npy files, and the ids."""
    videos = data.list_videos(root, split)
    size = data.frame_size(root, split)

    class Masks:
        shape = (len(videos), data.N_FRAMES, *size)

        def __len__(self):
            return len(videos)

        def __getitem__(self, row):
            return data.read_mask(videos[row], size)

    return Masks(), [v.id for v in videos]


def read_inputs(masks_path=None, root=None, split=None, frames_path=None):
    """(masks (N, >=11, H, W), frames (N, >=11, H, W, 3) or None, ids, what), checked:
    the frame cache holds the same videos, in the same order, at the same size."""
    from futureseg.core.dense import load_mask_cache
    from futureseg.core.io import load_cache

    if (masks_path is None) == (root is None):
        raise ConfigError("give either --masks (a mask cache) or --root and --split (true masks)")
    if masks_path is not None:
        masks, meta = load_mask_cache(masks_path, data.N_INPUT)
        ids, source = [int(i) for i in meta["ids"]], str(masks_path)
    else:
        if not split:
            raise ConfigError("--root needs --split (the labeled split whose true masks are read)")
        masks, ids = _true_masks(root, split)
        source = f"{root}/{split} (true masks)"
    frames = None
    if frames_path is not None:
        frames, frames_meta = load_cache(frames_path)
        frame_ids = [int(i) for i in frames_meta["ids"]]
        if frame_ids != ids:
            raise DataError(f"{frames_path}: its videos are not those of {source} "
                            f"({len(frame_ids)} vs {len(ids)} videos, or another order)")
        if frames.shape[1] < data.N_INPUT or tuple(frames.shape[2:4]) != tuple(masks.shape[2:4]):
            raise DataError(f"{frames_path}: frames {frames.shape[1:4]} do not cover frames 0…10 at the masks' "
                            f"size {tuple(masks.shape[2:4])} of {source}")
    return masks, frames, ids, source


def run(config, out=None, out_sequence=None, masks_path=None, root=None, split=None, frames_path=None,
        shard=None) -> int:
    """Extrapolate every video (of a shard); returns how many."""
    from futureseg.core.io import array_writer, progress
    from futureseg.core.motion import HORIZON, extrapolate

    if not out and not out_sequence:
        raise ConfigError("nothing to write: give --out and/or --out-sequence")
    if config.flow != "none" and frames_path is None:
        raise ConfigError(f"motion.flow is {config.flow!r}: --frames (the frame cache of the same videos) is needed, "
                          "or set motion.flow: none")
    masks, frames, ids, source = read_inputs(masks_path, root, split, frames_path)
    rows = shard_rows(len(ids), shard)
    height, width = masks.shape[2:4]
    sidecar = {"split": split, "source": source, "motion": asdict(config),
               **({"shard": list(shard)} if shard else {})}
    with contextlib.ExitStack() as stack:
        sequence = target = None
        if out_sequence:
            sequence = stack.enter_context(array_writer(
                out_sequence, (len(rows), HORIZON, height, width), ids[rows.start : rows.stop],
                frame_indices=list(range(data.N_INPUT, data.N_FRAMES)), **sidecar))
        if out:
            target = stack.enter_context(array_writer(
                out, (len(rows), height, width), ids[rows.start : rows.stop], frame_index=data.TARGET_FRAME, **sidecar))
        for k, row in enumerate(progress(rows, total=len(rows), desc="extrapolate")):
            clip = None if frames is None else np.asarray(frames[row, : data.N_INPUT])
            future = extrapolate(np.asarray(masks[row])[: data.N_INPUT], clip, config)
            if sequence is not None:
                sequence[k] = future
            if target is not None:
                target[k] = future[-1]
    return len(rows)


def check_prior(path, ids, expected, kind: str = "motion") -> np.ndarray:
    """A prior sequence (N, 11, H, W), memory-mapped, whose videos are `ids` and whose sidecar
    names what made it, `expected` under `kind`: route motion's settings (`extrapolate`) or
    route dynamics' model fingerprint (`dynamics`). The forecaster's prior of those videos."""
    from futureseg.core.dense import load_mask_cache

    prior, meta = load_mask_cache(path, data.N_FRAMES - data.N_INPUT)
    if [int(i) for i in meta["ids"]] != [int(i) for i in ids]:
        raise DataError(f"{path}: its videos are not those it is the {kind} prior of "
                        f"({len(meta['ids'])} vs {len(ids)} videos, or another order)")
    if kind not in meta or meta.get(kind) != expected:
        verb = "extrapolate" if kind == "motion" else kind
        raise DataError(f"{path}: written with {kind} {meta.get(kind)}, expected {expected}; "
                        f"rerun futureseg {verb} for it")
    return prior


VERB = "extrapolate"
HELP = "move each object of frame 10 by its own motion: masks of frames 11…21, training-free (route motion)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import json_object

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--masks", help="mask cache (pseudo-label) whose frames 0…10 are the input")
    io.add_argument("--root", help="Dataset_Student root: or the true masks of --split")
    io.add_argument("--split", help="the labeled split of --root")
    io.add_argument("--frames", help="frame cache of the same videos (cache-frames): optical flow")
    io.add_argument("--out", help="masks of frame 21 to write (N, H, W)")
    io.add_argument("--out-sequence", help="masks of frames 11…21 to write (N, 11, H, W)")
    io.add_argument("--shard", type=parse_shard, default=None, help="only shard i of K (i/K)")
    parser.add_argument("--motion-config", type=json_object, default={},
                        help='the motion settings as JSON, e.g. \'{"flow": "none", "velocity_frames": 3}\' '
                             "(unset ones take futureseg.core.motion.MotionConfig's defaults)")


def main(args) -> None:
    from futureseg.core.motion import config_from

    config = config_from(args.motion_config)
    n = run(config, args.out, args.out_sequence, args.masks, args.root, args.split, args.frames, args.shard)
    print(f"{args.out or args.out_sequence}: {n} videos extrapolated ({json.dumps(asdict(config))})")
