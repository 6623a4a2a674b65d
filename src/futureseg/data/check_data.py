"""Stage 0: check the dataset before anything trains (DESIGN §3a).

Every later stage reads the data again and checks what it reads, but the first of them to
reach a bad file may do so after hours of training. This stage looks at every file of the
splits the config uses, cheaply: each frame's presence and PNG header (size, 8-bit RGB, the
closing IEND chunk a truncated file lacks) without decoding pixels, and each mask's .npy
header (dtype, shape) plus its class range, memory-mapped. It stops at the first bad file
with the same one-line error the readers of futureseg.core.data raise, naming the file.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from futureseg.core import data
from futureseg.core.io import write_json

log = logging.getLogger("futureseg.data.check_data")

# Videos per task: a few tasks per worker balance the load without paying per-video IPC.
_CHUNK_VIDEOS = 64


def _check_videos(args) -> None:
    """Check a chunk of videos (a worker's task); the first bad file raises DataError."""
    videos, size = args
    for video in videos:
        for index in range(data.frames_in_split(video.split)):
            data.frame_header(video.frame_path(index), size)
        if video.split in data.LABELED_SPLITS:
            data.load_mask(video.mask_path, size, mmap=True)
        data.warn_long_hidden(video)


def check_dataset(root: str | Path, splits=data.SPLITS, workers: int = 1) -> dict:
    """Check every video of `splits` under `root`; return the report (videos and frame size
    per split). All splits must share one frame size: every stage assumes it."""
    splits = tuple(splits)
    # List every split first: a missing or empty split is found before any file is opened.
    videos = {split: data.list_videos(root, split) for split in splits}
    size = data.frame_header(videos[splits[0]][0].frame_path(0))
    tasks = [
        (chunk, size)
        for split in splits
        for chunk in (videos[split][i : i + _CHUNK_VIDEOS] for i in range(0, len(videos[split]), _CHUNK_VIDEOS))
    ]
    if workers > 1 and len(tasks) > 1:
        pool = ProcessPoolExecutor(workers)
        try:
            for future in [pool.submit(_check_videos, task) for task in tasks]:
                future.result()  # re-raises a worker's DataError here, in listing order
        finally:
            # on an error, do not check the rest of a large dataset before reporting it
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for task in tasks:
            _check_videos(task)
    return {
        "root": str(root),
        "frame_size": list(size),
        "splits": {split: {"videos": len(videos[split]), "frame_size": list(size)} for split in splits},
    }


VERB = "check-data"
HELP = "check every file of the dataset's splits cheaply (PNG headers, mask headers) before training"


def add_arguments(parser) -> None:
    from futureseg.core.flags import comma_list

    parser.add_argument("--root", required=True, help="Dataset_Student root")
    parser.add_argument("--splits", type=comma_list, default=data.SPLITS,
                        help="comma-separated splits to check [all four]")
    parser.add_argument("--out", required=True, help="report JSON to write (videos and frame size per split)")
    parser.add_argument("--workers", type=int, default=1, help="checking processes")


def main(args) -> None:
    started = time.perf_counter()
    report = check_dataset(args.root, args.splits, args.workers)
    write_json(args.out, report)
    counts = ", ".join(f"{split} {entry['videos']}" for split, entry in report["splits"].items())
    log.info("%s: videos %s, frames %dx%d, checked in %.1f s → %s",
             args.root, counts, *report["frame_size"], time.perf_counter() - started, args.out)
