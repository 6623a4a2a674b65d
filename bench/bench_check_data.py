"""Cost of the check_data stage against cache_frames (a full decode) on the same split, and of
rule check_data's file fingerprint (computed each time Snakemake builds the DAG).

    python bench/bench_check_data.py --videos 1000 --height 160 --width 240
    python bench/bench_check_data.py --root /path/to/Dataset_Student --splits train

Goal (issue 13): the check costs a small fraction of one decode of the data, so it can run
first on every change of the dataset. Each step runs once on a warm page cache (a first pass
reads every file), as on a second run; a cold cache adds the disk's read time to both.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from futureseg.data import check_data, cache_frames
from futureseg.core import data
from futureseg.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def fingerprint_seconds(root, splits) -> float:
    """The time of common.smk's _files_fingerprint, run on its own (the function is defined
    in the workflow; exec its module text with a stand-in config)."""
    source = (REPO / "workflow/rules/common.smk").read_text()
    start = source.index("@functools.lru_cache")
    end = source.index("def data_fingerprint")
    namespace = {}
    exec("import functools, hashlib, os\n" + source[start:end], namespace)
    t0 = time.perf_counter()
    namespace["_files_fingerprint"](str(root), tuple(splits))
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an existing dataset (default: generate one)")
    parser.add_argument("--splits", default="train")
    parser.add_argument("--videos", type=int, default=1000, help="videos per split when generating")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    splits = tuple(args.splits.split(","))

    tmp = Path(tempfile.mkdtemp())
    root = args.root
    try:
        if root is None:
            root = tmp / "dataset"
            counts = {s: args.videos if s in splits else 1 for s in data.SPLITS}
            t0 = time.perf_counter()
            generate_dataset(root, counts, args.height, args.width, seed=0, workers=args.workers)
            print(f"generated {sum(counts.values())} videos in {time.perf_counter() - t0:.0f} s")
        n_videos = sum(len(data.list_videos(root, s)) for s in splits)
        n_files = sum(len(os.listdir(v.path)) for s in splits for v in data.list_videos(root, s))
        print(f"{root}: {n_videos} videos, {n_files} files in {','.join(splits)}")
        for path in Path(root).rglob("*.*"):  # warm the page cache
            path.read_bytes()

        print(f"rule check_data's fingerprint (os.scandir + stat): {fingerprint_seconds(root, splits):6.2f} s")
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            check_data.check_dataset(root, splits, workers)
            print(f"check-data, {workers} process(es):  {time.perf_counter() - t0:6.2f} s")
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            for split in splits:
                cache_frames.cache_split(root, split, tmp / f"{split}.npy", workers)
            print(f"cache-frames, {workers} process(es): {time.perf_counter() - t0:6.2f} s")
            for split in splits:
                (tmp / f"{split}.npy").unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
