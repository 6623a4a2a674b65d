"""Object tracks as data: every object's state in every frame of a split, written once.

Input, as `futureseg extrapolate` reads it: a mask cache (`--masks`, the segmenter's
pseudo-labels: unlabeled's 22 frames) or a labeled split's true masks (`--root DIR --split
S`: train's 22 frames), and with `--flow` the frame cache of the same videos (`--frames`,
ids checked) for the flow velocity at the frames where a training window can end
(`core.motion.FIRST_WINDOW_END`…10), averaged over `--flow-pairs` frame pairs as route
motion's `flow_pairs`. Each video's tracks are
`core.motion.object_tracks`: per object (a class id), per frame, its presence, centroid,
area, box and flow velocity.

Output: one .npz (`--out`), small enough to read whole (a few MB per 1,000 videos):
`ids` (N,), `offsets` (N + 1,) (video i's objects are rows offsets[i]:offsets[i+1]),
`classes` (K,), `states` (K, T, fields) float32, and `meta` (JSON: the source, the
frame size, the fields, the flow method). Written atomically.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from futureseg.core.errors import ConfigError, DataError

log = logging.getLogger("futureseg")
FLOWS = ("none", "dis", "farneback")


def run(out, masks_path=None, root=None, split=None, frames_path=None, flow="dis", flow_pairs=1) -> int:
    """Write the tracks of every video; returns how many."""
    from futureseg.core import motion
    from futureseg.core.io import progress
    from futureseg.forecast.extrapolate import read_inputs

    if flow not in FLOWS:
        raise ConfigError(f"--flow must be one of {', '.join(FLOWS)}, got {flow!r}")
    if isinstance(flow_pairs, bool) or not isinstance(flow_pairs, int) or flow_pairs < 1:
        raise ConfigError(f"--flow-pairs must be a positive integer, got {flow_pairs!r}")
    if flow != "none" and frames_path is None:
        raise ConfigError(f"--flow {flow}: --frames (the frame cache of the same videos) is needed, or --flow none")
    masks, frames, ids, source = read_inputs(masks_path, root, split, frames_path)
    n_frames, size = masks.shape[1], tuple(int(v) for v in masks.shape[2:4])
    flow_frames = tuple(range(motion.FIRST_WINDOW_END, min(n_frames, 11)))
    if frames is not None and flow != "none" and frames.shape[1] < n_frames:
        raise DataError(f"{frames_path}: {frames.shape[1]} frames per video, the masks of {source} have {n_frames}")
    classes, states = [], []
    for row in progress(range(len(ids)), total=len(ids), desc="tracks"):
        # the memory-mapped row itself: object_tracks reads only the frames of its flow
        clip = frames[row, :n_frames] if frames is not None and flow != "none" else None
        c, s = motion.object_tracks(np.asarray(masks[row]), clip, flow_frames, flow, flow_pairs)
        classes.append(c)
        states.append(s)
    meta = {"source": source, "split": split, "size": list(size), "n_frames": int(n_frames),
            "fields": list(motion.STATE_FIELDS), "flow": flow, "flow_pairs": flow_pairs,
            "flow_frames": list(flow_frames)}
    write(out, ids, classes, states, meta)
    return len(ids)


def write(out, ids, classes, states, meta) -> None:
    """Write a tracks file atomically: per video i, its objects' `classes[i]` (K_i,) and
    `states[i]` (K_i, T, fields); `meta` as `run` writes it (size, n_frames, fields, flow…)."""
    from futureseg.core.io import atomic_path

    offsets = np.concatenate([[0], np.cumsum([len(c) for c in classes], dtype=np.int64)])
    n_fields = len(meta["fields"])
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.asarray(ids, dtype=np.int64), offsets=offsets.astype(np.int64),
                     classes=np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64),
                     states=np.concatenate(states).astype(np.float32) if states else
                     np.zeros((0, int(meta["n_frames"]), n_fields), np.float32),
                     meta=np.array(json.dumps(meta)))


class Tracks:
    """A tracks file, read whole and checked: `video(i)` -> (classes, states) of video i."""

    def __init__(self, path):
        from futureseg.core import motion

        self.path = path
        try:
            with np.load(path, allow_pickle=False) as f:
                self.ids, self.offsets = f["ids"], f["offsets"]
                self.classes, self.states = f["classes"], f["states"]
                self.meta = json.loads(str(f["meta"]))
        except FileNotFoundError:
            raise DataError(f"{path}: tracks file does not exist") from None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise DataError(f"{path}: not a tracks file of futureseg tracks ({type(exc).__name__}: {exc})") from None
        if (self.meta.get("fields") != list(motion.STATE_FIELDS) or len(self.offsets) != len(self.ids) + 1
                or self.offsets[-1] != len(self.states) or len(self.classes) != len(self.states)):
            raise DataError(f"{path}: inconsistent tracks file (fields {self.meta.get('fields')}, "
                            f"{len(self.ids)} videos, {len(self.states)} objects); rerun futureseg tracks")
        self.size = tuple(self.meta["size"])
        self.n_frames = int(self.meta["n_frames"])

    def __len__(self):
        return len(self.ids)

    def video(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.classes[a:b], self.states[a:b]


VERB = "tracks"
HELP = "every object's state (centroid, area, box, flow velocity) in every frame of a split: the dynamics' data"


def add_arguments(parser) -> None:
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--masks", help="mask cache (pseudo-label) of the videos")
    io.add_argument("--root", help="Dataset_Student root: or the true masks of --split")
    io.add_argument("--split", help="the labeled split of --root")
    io.add_argument("--frames", help="frame cache of the same videos (cache-frames): the flow velocity")
    io.add_argument("--flow", default="dis", help="optical flow of the velocity: none | dis | farneback "
                                                  "(route motion's motion.flow)")
    io.add_argument("--flow-pairs", type=int, default=1,
                    help="frame pairs whose flow is averaged (route motion's motion.flow_pairs)")
    io.add_argument("--out", required=True, help="tracks .npz to write")


def main(args) -> None:
    n = run(args.out, args.masks, args.root, args.split, args.frames, args.flow, args.flow_pairs)
    print(f"{args.out}: tracks of {n} videos")
