"""Throughput of the synthetic dataset generator (render + PNG/npy writing).

    python bench/bench_synth.py --videos 1000 --height 160 --width 240 --workers 1

Goal: 1000 videos (22 frames each) at 160×240 in under 2 minutes on one core. The videos
all go to train/ (22 frames and a mask each, the most work per video); the dataset is
written into a temporary folder that is removed afterwards.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from futureseg.data.synth import N_FRAMES, generate_dataset


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder for the temporary dataset (default: system temp)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_synth.", dir=args.tmp))
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        generate_dataset(scratch / "dataset", {"train": args.videos}, args.height, args.width, args.seed, args.workers)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        size = folder_bytes(scratch / "dataset")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    frames = args.videos * N_FRAMES
    print(
        f"{args.videos} videos, {frames} frames at {args.height}x{args.width}, workers={args.workers} "
        f"(cpus available: {len(os.sched_getaffinity(0))})"
    )
    print(f"total {seconds:.1f} s  ({cpu:.1f} s CPU in the main process)")
    print(f"{args.videos / seconds:.1f} videos/s  {frames / seconds:.0f} frames/s")
    print(f"{size / 2**20:.1f} MiB written ({size / frames / 1024:.1f} KiB per frame incl. masks)")


if __name__ == "__main__":
    main()
