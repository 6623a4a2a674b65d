"""Speed of route motion (futureseg extrapolate) on one split: the whole verb, reading masks
and frames and writing the masks of frame 21 and of frames 11…21.

    python bench/bench_motion.py --videos 1000 --height 160 --width 240
    python bench/bench_motion.py --root /path/to/Dataset_Student --split val

Goal (issue 17): 1,000 videos at 160×240 in at most 60 s on 2 cores, with optical flow on.
The input is the split's true masks (the reference motion_truth's path; the route reads a
mask cache instead, which is cheaper than mask.npy files). Timed once per setting on a warm
page cache, after a first pass that reads every file.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from futureseg.core import data
from futureseg.core.motion import MotionConfig
from futureseg.data import cache_frames
from futureseg.data.synth import generate_dataset
from futureseg.forecast import extrapolate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing dataset (default: generate one)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--videos", type=int, default=1000, help="videos of the split when generating")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2, help="processes generating and caching the data")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    root = args.root
    try:
        if root is None:
            root = tmp / "dataset"
            counts = {s: args.videos if s == args.split else 0 for s in data.SPLITS}
            t0 = time.perf_counter()
            generate_dataset(root, counts, args.height, args.width, seed=0, workers=args.workers)
            print(f"generated {args.videos} videos in {time.perf_counter() - t0:.0f} s")
        frames = tmp / "frames.npy"
        cache_frames.cache_split(root, args.split, frames, args.workers)
        n = len(data.list_videos(root, args.split))
        height, width = data.frame_size(root, args.split)
        print(f"{root}/{args.split}: {n} videos at {height}x{width}")
        for flow in ("dis", "none"):
            config = MotionConfig(flow=flow)
            t0 = time.perf_counter()
            extrapolate.run(config, out=tmp / "masks.npy", out_sequence=tmp / "sequence.npy", root=root,
                            split=args.split, frames_path=frames if flow != "none" else None)
            seconds = time.perf_counter() - t0
            print(f"extrapolate, flow {flow:4s}: {seconds:6.1f} s  ({1000 * seconds / n:5.1f} ms a video)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
