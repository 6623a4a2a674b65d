"""Stage 2: the trained predictor's future frames for every video of a split.

Reads a frame cache (frames 0…10 of each video), predicts frames 11…21, and keeps the
requested subset (`--frames 11-21`, `21`, `11,15,21`): uint8 (N, K, H, W, 3), de-normalised,
clipped to 0…255 and rounded, with the sidecar {"ids", "frame_indices", ...}
(`io.load_array` reads it). The output is filled batch by batch in a memory-mapped file,
so a large split never sits in memory whole.

`--shard i/K` predicts only the i-th of K contiguous chunks of the split's rows, so the K
outputs, in order, concatenate into the whole split (ids included).

The report's animations of these frames are drawn by `futureseg report-figures`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import DataError, FuturesegError
from futureseg.core.shards import parse_shard, shard_rows

FUTURE_FRAMES = tuple(range(data.N_INPUT, data.N_FRAMES))  # 11…21


def parse_frames(text: str) -> list[int]:
    """'11-21', '21' or '11,15,21' → sorted distinct frame numbers, each within 11…21."""
    frames = set()
    try:
        for part in text.split(","):
            if "-" in part:
                first, last = (int(v) for v in part.split("-"))
                frames.update(range(first, last + 1))
            elif part:
                frames.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected frame numbers like 11-21, 21 or 11,15,21") from None
    if not frames or not frames <= set(FUTURE_FRAMES):
        raise argparse.ArgumentTypeError(
            f"{text!r}: frames must be within {FUTURE_FRAMES[0]}-{FUTURE_FRAMES[-1]} (the predicted ones)")
    return sorted(frames)


def load_predictor(path: str | Path, device):
    """The model and the dict saved by `train-predictor` (read weights-only)."""
    from futureseg.models import predictors

    model, saved = predictors.load(path)
    return model.to(device).eval(), saved


def predict(model_path, cache_path, out, frames=FUTURE_FRAMES, batch_size: int = 16, shard=None,
            threads: int = 0) -> dict:
    """Write the predicted `frames` of every video (of the shard) of the cache; return a summary."""
    import torch

    from futureseg.core.io import array_writer, load_cache, progress
    from futureseg.core.training import select_device

    if batch_size < 1:
        raise FuturesegError(f"--batch-size {batch_size}: must be at least 1")
    if threads:
        torch.set_num_threads(threads)
    device = select_device(bf16_autocast=False)
    model, saved = load_predictor(model_path, device)
    cache, meta = load_cache(cache_path)
    height, width = saved["in_shape"][2:]
    if cache.shape[2:4] != (height, width):
        raise DataError(f"{cache_path}: frames are {cache.shape[2]}x{cache.shape[3]}, "
                        f"the model {model_path} was trained on {height}x{width}")
    if cache.shape[1] < data.N_INPUT:
        raise DataError(f"{cache_path}: cache holds {cache.shape[1]} frames per video, needs {data.N_INPUT} inputs")
    rows = shard_rows(len(cache), shard)
    ids = list(meta["ids"])[rows.start : rows.stop]
    keep = [f - data.N_INPUT for f in frames]
    mean = torch.as_tensor(saved["mean"], device=device, dtype=torch.float32).view(1, 1, 3, 1, 1)
    std = torch.as_tensor(saved["std"], device=device, dtype=torch.float32).view(1, 1, 3, 1, 1)
    sidecar = {"frame_indices": list(frames), "split": meta.get("split"), "model_fingerprint": saved["fingerprint"]}
    if shard is not None:
        sidecar["shard"] = list(shard)
    with array_writer(out, (len(rows), len(frames), height, width, 3), ids, **sidecar) as predicted_frames:
        starts = range(0, len(rows), batch_size)
        for start in progress(starts, total=len(starts), desc=f"predict {Path(cache_path).name}"):
            stop = min(start + batch_size, len(rows))
            videos = np.array(cache[rows.start + start : rows.start + stop])  # read (and copy) from the memmap
            inputs = torch.from_numpy(videos[:, : data.N_INPUT]).to(device).permute(0, 1, 4, 2, 3).float()
            # full precision even on GPU: bf16 would move outputs by about one grey level
            # before rounding, and inference is cheap next to training
            with torch.inference_mode():
                predicted = model((inputs - mean) / std)
            pixels = (predicted.float() * std + mean).clamp(0, 255).round().to(torch.uint8)
            pixels = pixels.permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, 11, H, W, 3)
            predicted_frames[start:stop] = pixels[:, keep]
    return {"n_videos": len(rows), "frame_indices": list(frames)}


VERB = "predict-frames"
HELP = "predict future frames of a split's videos with the trained predictor (stage 2)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model.pt written by train-predictor")
    parser.add_argument("--cache", required=True, help="frame cache (.npy) of the split")
    parser.add_argument("--out", required=True, help=".npy to write (sidecar .json beside it)")
    parser.add_argument("--frames", type=parse_frames, default=list(FUTURE_FRAMES),
                        help="future frames to keep: 11-21, 21 or 11,15,21 (default all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard", type=parse_shard, default=None,
                        help="i/K: only the i-th of K contiguous chunks of videos")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def main(args) -> None:
    summary = predict(args.model, args.cache, args.out, args.frames, args.batch_size, args.shard, args.threads)
    print(f"{args.out}: frames {summary['frame_indices']} of {summary['n_videos']} videos")
