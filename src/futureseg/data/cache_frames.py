"""The fast input path of the training stages: each split's PNGs decoded once into one
uint8 array on disk, (N, T, H, W, 3), with T = 22 (or 11 for hidden), rows in video-id
order, and the usual JSON sidecar naming the rows ({"ids": [...], "split", "frame_indices"}).

Training then reads frames with `np.load(mmap_mode="r")` instead of decoding PNGs each
epoch. The real unlabeled split is 13,000 videos × 22 × 160×240×3 ≈ 33 GB, so the array
is never held in memory: it is created with `np.lib.format.open_memmap` under a temporary
name, each worker process decodes a contiguous run of videos and writes its rows straight
into that file, and the file is renamed onto the output only once every row is in.
Every frame goes through `futureseg.core.data`, so a missing, unreadable or odd-sized frame
raises the usual `DataError` naming the file.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.io import array_writer

log = logging.getLogger("futureseg")

# Videos per task handed to a worker: big enough that IPC is negligible, small enough that
# progress lines come often and the last worker does not finish long after the others.
_CHUNK_VIDEOS = 64


def _decode_into(args) -> int:
    """Worker: decode `videos` and write them as rows `start…` of the array at `array_path`."""
    array_path, start, videos, size = args
    array = np.load(array_path, mmap_mode="r+")
    for offset, video in enumerate(videos):
        array[start + offset] = data.read_frames(video, size=size)
    array.flush()
    del array
    return len(videos)


def cache_split(root: str | Path, split: str, out: str | Path, workers: int = 1) -> dict:
    """Decode every frame of `split` into `out` (.npy) + sidecar; return the sidecar's summary."""
    from futureseg.core.io import progress

    videos = data.list_videos(root, split)
    size = data.frame_size(root, split)
    n_frames = data.frames_in_split(split)
    shape = (len(videos), n_frames, *size, 3)
    ids = [v.id for v in videos]
    meta = {"split": split, "frame_indices": list(range(n_frames))}
    log.info("caching %s: %d videos of %d frames %dx%d → %s (%.2f GB)",
             split, len(videos), n_frames, *size, out, np.prod(shape) / 1e9)
    with array_writer(out, shape, ids, **meta) as array:
        chunk = max(1, min(_CHUNK_VIDEOS, -(-len(videos) // (4 * max(1, workers)))))
        tasks = [(array.filename, i, videos[i : i + chunk], size) for i in range(0, len(videos), chunk)]
        if workers > 1:
            pool = ProcessPoolExecutor(workers)
            try:
                futures = [pool.submit(_decode_into, task) for task in tasks]
                for future in progress(as_completed(futures), total=len(tasks), desc=f"cache {split}"):
                    future.result()  # re-raises a worker's DataError here
            finally:
                # on an error, do not decode the rest of a large split before reporting it
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            for task in progress(tasks, total=len(tasks), desc=f"cache {split}"):
                _decode_into(task)
    return {"n_videos": len(videos), "shape": list(shape), **meta}


VERB = "cache-frames"
HELP = "decode a split's PNG frames once into a uint8 .npy (N, T, H, W, 3) for training"


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, help="Dataset_Student root")
    parser.add_argument("--split", required=True, choices=data.SPLITS, help="split to cache")
    parser.add_argument("--out", required=True, help=".npy file to write (sidecar .json beside it)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")


def main(args) -> None:
    summary = cache_split(args.root, args.split, args.out, args.workers)
    print(f"{args.out}: {summary['n_videos']} videos, array {tuple(summary['shape'])} uint8")
