"""Stage 4 inference: class-id masks of frame 21 from the trained segmenter (U-Net or Mask R-CNN).

Four outputs, each uint8 (N, H, W) with the ids sidecar of `io.save_array`
({"ids", "frame_index", "source", "model", "score_threshold"}):

  --out-val          the model on the predicted frame 21 of val (`--val-frames`): the pipeline
  --out-hidden       the model on the predicted frame 21 of hidden (`--hidden-frames`): the submission
  --out-val-oracle   the model on the true frame 21 of val (`--root`): what a perfect
                     frame predictor would give
  --out-val-frame10  the model on the true frame 10 of val (`--root`), the last input frame:
                     "segment what you last saw", scored as `segmented_copy_last`: what a
                     user can submit without forecasting (score.py's copy_last uses the
                     true mask of frame 10 instead)

Each output needs only its own input, so any subset may be asked for. In the predicted
frames files (N, K, H, W, 3) the position of frame 21 comes from the sidecar's
`frame_indices`. How a segmenter paints a mask: `futureseg.models.segmenters`
(`--score-threshold` applies to Mask R-CNN only). One class per object, as in this
dataset: `--object-vote` repaints each object (a connected component of one colour) of
every mask in its majority class (`core.instances.object_vote`); `--object-classifier`
repaints it in the shape and material the object classifier sees in the frame, its colour
kept (`models.object_classifier.repaint`). The sidecar records which.

A recurrent segmenter (`segmenter.temporal: convgru | convlstm`) segments each frame here
alone: zero initial state, one step (`Segmenter.masks`). Every output of this verb is one
frame a video. The oracle means "the segmenter on the true frame 21", the ceiling of route
`frames`, which segments the predicted frame 21 alone: only the same single-frame path keeps
oracle and route comparable (a state warmed on frames 0…20 would give the oracle context
the route's input never has). The model trains on clips whose first frame starts from the
zero state, so it knows that case; and the pipeline has one model file, no per-frame weights
beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from futureseg.core import data, instances
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import read_array, save_array

log = logging.getLogger("futureseg")


def target_frames(path: str | Path, frame: int = data.TARGET_FRAME):
    """(frames (N, H, W, 3) of `frame`, memory-mapped; ids) of a predicted-frames file."""
    path = Path(path)
    frames, meta = read_array(path, "predicted frames")
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FuturesegError(f"{path}: expected uint8 frames (N, K, H, W, 3), got {frames.dtype} {frames.shape}")
    indices = [int(i) for i in meta.get("frame_indices", [])]
    if len(indices) != frames.shape[1]:
        raise FuturesegError(f"{path}: sidecar frame_indices lists {len(indices)} frames, the array holds {frames.shape[1]}")
    if frame not in indices:
        raise FuturesegError(f"{path}: frame {frame} is not among its frames (frame_indices {indices})")
    return frames[:, indices.index(frame)], [int(i) for i in meta["ids"]]


def true_frames(root, frame: int) -> tuple[np.ndarray, list[int]]:
    videos = data.list_videos(root, "val")
    size = data.frame_size(root, "val")
    return np.stack([data.read_frames(v, [frame], size)[0] for v in videos]), [v.id for v in videos]


def check_object_flags(object_vote: bool, object_classifier) -> None:
    if object_vote and object_classifier:
        raise ConfigError("--object-vote and --object-classifier: give one (both decide each object's class)")


def add_object_arguments(parser) -> None:
    """segment's and pseudo-label's flags of one class per object."""
    parser.add_argument("--object-vote", action="store_true",
                        help="repaint each object (connected component of one colour) in its majority class")
    parser.add_argument("--object-classifier",
                        help="model file of train-object-classifier: repaint each object in the shape and material it "
                             "gives (instead of --object-vote)")


def load_object_classifier(path, device):
    """The object classifier of `path` on `device`, or None when no path is given."""
    if not path:
        return None
    from futureseg.models import object_classifier

    classifier, _ = object_classifier.load(path)
    return classifier.to(device)


def one_class_per_object(masks, frames, object_vote: bool, classifier, device, batch_size: int) -> np.ndarray:
    """The segmenter's masks with each object given one class: by the vote, by the object
    classifier (`classifier`, loaded), or left as they are."""
    if object_vote:
        return instances.object_vote(masks)
    if classifier is not None:
        from futureseg.models.object_classifier import repaint

        return repaint(classifier, frames, masks, device, batch_size)
    return masks


def run(model, score_threshold: float = 0.5, batch_size: int = 16, root=None, val_frames=None,
        hidden_frames=None, out_val=None, out_hidden=None, out_val_oracle=None, out_val_frame10=None,
        object_vote: bool = False, object_classifier=None) -> dict:
    """Write the requested outputs; return {output path: number of masks}."""
    from futureseg.models import segmenters
    from futureseg.core.training import select_device

    jobs = []  # (output, input description, loader of (frames, ids), frame index)
    for out, needed, option in (
        (out_val, val_frames, "--val-frames"),
        (out_hidden, hidden_frames, "--hidden-frames"),
        (out_val_oracle, root, "--root"),
        (out_val_frame10, root, "--root"),
    ):
        if out is not None and needed is None:
            raise ConfigError(f"{out}: writing it needs {option}")
    if out_val is not None:
        jobs.append((out_val, f"predicted {val_frames}", lambda: target_frames(val_frames), data.TARGET_FRAME))
    if out_hidden is not None:
        jobs.append((out_hidden, f"predicted {hidden_frames}", lambda: target_frames(hidden_frames), data.TARGET_FRAME))
    if out_val_oracle is not None:
        jobs.append((out_val_oracle, f"true frame of {root}/val", lambda: true_frames(root, data.TARGET_FRAME),
                     data.TARGET_FRAME))
    if out_val_frame10 is not None:
        last_input = data.N_INPUT - 1
        jobs.append((out_val_frame10, f"true frame of {root}/val", lambda: true_frames(root, last_input), last_input))
    if not jobs:
        raise ConfigError("segment: no output asked for (--out-val, --out-hidden, --out-val-oracle, --out-val-frame10)")
    if not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold: must lie in 0…1, got {score_threshold}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    check_object_flags(object_vote, object_classifier)

    device = select_device(bf16_autocast=False)
    segmenter, _ = segmenters.load(model, score_threshold)  # a recurrent one: each frame alone, zero state (above)
    segmenter.to(device)
    classifier = load_object_classifier(object_classifier, device)
    written = {}
    for out, source, read, frame in jobs:
        frames, ids = read()
        log.info("segmenting frame %d of %d videos (%s)", frame, len(ids), source)
        masks = segmenter.masks(frames, device, batch_size)
        masks = one_class_per_object(masks, frames, object_vote, classifier, device, batch_size)
        save_array(out, masks, ids, frame_index=frame, source=source, model=str(model), score_threshold=score_threshold,
                   object_vote=bool(object_vote), object_classifier=str(object_classifier) if object_classifier else None)
        written[str(out)] = len(masks)
    return written


VERB = "segment"
HELP = "class-id masks of frame 21 (predicted and true) with the trained segmenter (stage 4)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model.pt of train-segmenter")
    parser.add_argument("--root", help="Dataset_Student root (true val frames 21 and 10)")
    parser.add_argument("--val-frames", help="frames_val.npy of predict-frames (sidecar beside it)")
    parser.add_argument("--hidden-frames", help="frames_hidden.npy of predict-frames (sidecar beside it)")
    parser.add_argument("--out-val", help="masks of the predicted val frame 21 (.npy)")
    parser.add_argument("--out-hidden", help="masks of the predicted hidden frame 21 (.npy)")
    parser.add_argument("--out-val-oracle", help="masks of the true val frame 21 (.npy)")
    parser.add_argument("--out-val-frame10", help="masks of the true val frame 10 (.npy)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="instances below this score are not painted")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per forward pass")
    add_object_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    written = run(args.model, args.score_threshold, args.batch_size, args.root, args.val_frames, args.hidden_frames,
                  args.out_val, args.out_hidden, args.out_val_oracle, args.out_val_frame10, args.object_vote,
                  args.object_classifier)
    for path, n in written.items():
        print(f"{path}: {n} masks")
