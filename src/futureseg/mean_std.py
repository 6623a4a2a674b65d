"""Stage 1: exact per-channel mean and std of the dataset's frames.

One streaming pass: each worker turns every frame into a 3×256 histogram of its byte
values (np.bincount, cheaper than squaring the pixels), the histograms are summed as
integers, and the moments are taken from the total histogram in float64. The result is
exact (no average of per-image stds) and does not depend on the number of workers.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import data
from .errors import DataError
from .io import write_json

_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.intp)


def frame_histogram(frame: np.ndarray) -> np.ndarray:
    """Counts of each byte value per channel of a uint8 (H, W, 3) frame: int64 (3, 256)."""
    codes = frame.reshape(-1, 3).astype(np.intp) + _CHANNEL_OFFSET
    return np.bincount(codes.ravel(), minlength=768).reshape(3, 256)


def _histogram_of_videos(args) -> tuple[np.ndarray, int]:
    videos, size = args
    total = np.zeros((3, 256), dtype=np.int64)
    n_frames = 0
    for video in videos:
        for index in range(data.frames_in_split(video.split)):
            total += frame_histogram(data.read_frame(video.frame_path(index), size))
            n_frames += 1
    return total, n_frames


def compute_mean_std(root: str | Path, splits=("train", "unlabeled"), workers: int = 1) -> dict:
    """Mean and std per RGB channel, on the 0…255 scale, of every frame of `splits`."""
    videos = [v for split in splits for v in data.list_videos(root, split)]
    size = data.frame_size(root, splits[0])
    # A few chunks per worker balance the load without paying per-video IPC.
    n_chunks = max(1, min(len(videos), workers * 4))
    chunks = [(videos[i::n_chunks], size) for i in range(n_chunks)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_histogram_of_videos, chunks))
    else:
        results = [_histogram_of_videos(chunk) for chunk in chunks]
    histogram = sum(h for h, _ in results)
    n_frames = sum(n for _, n in results)
    values = np.arange(256, dtype=np.float64)
    n_pixels = int(histogram[0].sum())
    mean = histogram @ values / n_pixels
    var = (histogram * (values[None, :] - mean[:, None]) ** 2).sum(1) / n_pixels
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "scale": "0-255",
        "n_pixels_per_channel": n_pixels,
        "n_frames": n_frames,
        "n_videos": len(videos),
        "frame_size": list(size),
        "splits": list(splits),
    }


def run(root, out, splits=("train", "unlabeled"), workers: int = 1) -> dict:
    stats = compute_mean_std(root, splits, workers)
    write_json(out, stats)
    return stats


def load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 arrays of shape (3,) on the 0…255 scale, checked."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
        mean = np.asarray(stats["mean"], np.float64)
        std = np.asarray(stats["std"], np.float64)
    except FileNotFoundError:
        raise DataError(f"{path}: mean/std file does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a mean_std.json of futureseg mean-std ({type(exc).__name__}: {exc})") from None
    if mean.shape != (3,) or std.shape != (3,) or not np.isfinite(mean).all() or not (std > 0).all():
        raise DataError(f"{path}: expected 3 finite means and 3 positive stds, got mean {mean.tolist()} std {std.tolist()}")
    return mean.astype(np.float32), std.astype(np.float32)


VERB = "mean-std"
HELP = "exact per-channel mean/std of the dataset's frames (stage 1)"


def add_arguments(parser) -> None:
    from .cli import comma_list

    parser.add_argument("--root", required=True, help="Dataset_Student root")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--splits", type=comma_list, default=("train", "unlabeled"), help="comma-separated splits")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")


def main(args) -> None:
    stats = run(args.root, args.out, args.splits, args.workers)
    print(f"mean {stats['mean']} std {stats['std']} over {stats['n_frames']} frames")
