"""Throughput of the mean/std stage against a bare PNG-decode loop over the same files.

    python bench/bench_mean_std.py --videos 200 --height 160 --width 240
    python bench/bench_mean_std.py --root /path/to/Dataset_Student --splits train

Goal (issue 2): mean/std throughput >= 0.8x the bare decode loop, measured in the same run.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from futureseg.core import data
from futureseg.data import mean_std
from futureseg.data.synth import generate_dataset


def bare_decode(root, splits) -> int:
    n = 0
    for split in splits:
        for video in data.list_videos(root, split):
            for index in range(data.frames_in_split(split)):
                with Image.open(video.frame_path(index)) as image:
                    np.asarray(image)
                n += 1
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing dataset (default: generate one)")
    parser.add_argument("--splits", default="train,unlabeled")
    parser.add_argument("--videos", type=int, default=200, help="videos per split when generating")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    splits = tuple(args.splits.split(","))

    tmp = None
    root = args.root
    if root is None:
        tmp = Path(tempfile.mkdtemp())
        root = tmp / "dataset"
        counts = {s: args.videos if s in splits else 1 for s in data.SPLITS}
        generate_dataset(root, counts, args.height, args.width, seed=0, workers=args.workers)
    try:
        bare_decode(root, splits)  # warm the page cache so both loops read from memory
        t0 = time.perf_counter()
        n_frames = bare_decode(root, splits)
        bare = n_frames / (time.perf_counter() - t0)
        print(f"bare PNG decode loop (1 process): {bare:8.1f} frames/s over {n_frames} frames")
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            mean_std.compute_mean_std(root, splits, workers=workers)
            rate = n_frames / (time.perf_counter() - t0)
            print(f"mean-std, {workers} worker(s):         {rate:8.1f} frames/s = {rate / bare:.2f}x the bare loop")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
