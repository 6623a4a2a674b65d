"""Route `masks`, first stage: the segmenter's masks of every frame of a split's videos.

The mask forecaster learns from mask sequences and forecasts from them: it trains on
train's true masks plus these pseudo-labels of `unlabeled` (all 22 frames), and at
inference time it sees only what a user has, the segmenter's masks of frames 0…10 of
`val` and `hidden`. The output is a mask cache like the frame caches: uint8
(N, T, H, W) class ids, with the `io.save_array` sidecar {"ids", "frame_indices",
"split", "model", "object_vote", "object_classifier", "track_vote"}.

Two steps clean a segmenter's masks with what this dataset guarantees (each object has its
own class and keeps it through the video): each object of every frame gets one class, by
`--object-vote` (its majority class, `core.instances.object_vote`) or by
`--object-classifier` (the shape and material the object classifier sees, as in `segment`),
then `--track-vote` repaints each object of a video in the majority class of its track
through the video's frames (`core.motion.track_vote`). The input frames 0…10 are voted over
themselves alone, as the routes' inputs of val and hidden are (they have no more frames):
a model trained on them then sees inputs as noisy as the route's, not cleaned by the future
(frames 11…21 are voted over all 22, the cleanest targets).

A recurrent segmenter (`segmenter.temporal: convgru | convlstm`) segments each video's frames
0…n_frames-1 as one sequence, its state carried from frame to frame
(`Segmenter.sequence_masks`); a per-frame one segments each frame alone, as before.
`--temporal` names the kind the rule expects, and a model file of another kind is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError

log = logging.getLogger("futureseg")


def pseudo_label(model, cache_path, out, n_frames: int, batch_size: int = 64, object_vote: bool = False,
                 track_vote: bool = False, object_classifier=None, temporal: str | None = None) -> dict:
    """Segment frames 0…n_frames-1 of every video of a frame cache, the votes applied; return a summary."""
    from futureseg.segment.segment import check_object_flags, load_object_classifier, one_class_per_object
    from futureseg.core.io import array_writer, load_cache, progress
    from futureseg.models import segmenters
    from futureseg.core.training import select_device

    if not 1 <= n_frames <= data.N_FRAMES:
        raise ConfigError(f"--frames {n_frames}: must lie in 1…{data.N_FRAMES}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    check_object_flags(object_vote, object_classifier)
    cache, meta = load_cache(cache_path)
    if cache.shape[1] < n_frames:
        raise DataError(f"{cache_path}: cache holds {cache.shape[1]} frames per video, pseudo-labels of "
                        f"{n_frames} frames were asked for")
    device = select_device(bf16_autocast=False)
    segmenter, _ = segmenters.load(model, temporal=temporal)
    segmenter.to(device)
    classifier = load_object_classifier(object_classifier, device)
    n, height, width = len(cache), *cache.shape[2:4]
    videos_per_batch = max(1, batch_size // n_frames)
    sidecar = {"frame_indices": list(range(n_frames)), "split": meta.get("split"), "model": str(model),
               "object_vote": bool(object_vote),
               "object_classifier": str(object_classifier) if object_classifier else None, "track_vote": bool(track_vote)}
    with array_writer(out, (n, n_frames, height, width), meta["ids"], **sidecar) as masks:
        starts = range(0, n, videos_per_batch)
        for start in progress(starts, total=len(starts), desc=f"pseudo-label {Path(cache_path).name}"):
            clips = np.asarray(cache[start : start + videos_per_batch, :n_frames])
            frames = clips.reshape(-1, height, width, 3)
            painted = segmenter.sequence_masks(clips, device, batch_size).reshape(-1, height, width)
            labels = one_class_per_object(painted, frames, object_vote, classifier, device, batch_size)
            labels = labels.reshape(len(clips), n_frames, height, width)
            if track_vote:
                labels = np.stack([vote(video) for video in labels])
            masks[start : start + len(clips)] = labels
    return {"n_videos": n, "n_frames": n_frames}


def vote(masks) -> np.ndarray:
    """`core.motion.track_vote` of a video's masks (T, H, W), frames 0…10 voted over themselves
    alone (the routes' inputs), later frames over the whole video (see the module docstring)."""
    from futureseg.core import motion

    voted = motion.track_vote(masks)
    if len(masks) > data.N_INPUT:
        voted[: data.N_INPUT] = motion.track_vote(masks[: data.N_INPUT])
    return voted


VERB = "pseudo-label"
HELP = "the segmenter's masks of every frame of a split, as a uint8 mask cache (route masks)"


def add_arguments(parser) -> None:
    from futureseg.models.segmenters import TEMPORAL

    parser.add_argument("--model", required=True, help="model.pt of train-segmenter")
    parser.add_argument("--cache", required=True, help="frame cache of the split (cache-frames)")
    parser.add_argument("--out", required=True, help="mask cache to write (.npy, ids sidecar beside it)")
    parser.add_argument("--frames", type=int, required=True,
                        help="segment frames 0…FRAMES-1 (22 for training splits, 11 for val and hidden)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per forward pass")
    from futureseg.segment.segment import add_object_arguments

    add_object_arguments(parser)
    parser.add_argument("--track-vote", action="store_true",
                        help="then repaint each object in the majority class of its track through the video")
    parser.add_argument("--temporal", choices=TEMPORAL,
                        help="the kind --model must be: none (per frame) or convgru | convlstm (recurrent; "
                             "segmenter.temporal); left out, any")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = pseudo_label(args.model, args.cache, args.out, args.frames, args.batch_size, args.object_vote,
                           args.track_vote, args.object_classifier, args.temporal)
    print(f"{args.out}: masks of {summary['n_frames']} frames of {summary['n_videos']} videos")
