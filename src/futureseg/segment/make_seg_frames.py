"""Stage 3: the segmentation training set, from real frames and the predictor's frames.

At test time the segmenter reads the predictor's frame 21, which is blurry; trained on
sharp frames only, it would miss objects there. So its training set holds

- real: frames 0…21 of each labeled video of `splits`, a random share of them blurred
  with a Gaussian of random sigma (the mask is never blurred);
- generated: the predictor's frames 11…21 of the train videos (`frames_train.npy`),
  each paired with the ground-truth mask of the same frame of the same video;

each thinned to every k-th frame (random phase per video and source) because
consecutive frames are near-duplicates.

Output folder, written as a whole (temporary folder beside it, renamed at the end):
`images.npy` uint8 (N, H, W, 3), `masks.npy` uint8 (N, H, W), `index.csv` (source,
video_id, frame_index, blur_sigma; one row per sample, same order) and `counts.json`.
The arrays are filled through memmaps, so the real-scale set (≈ 4 GB) is never held in
memory.

Randomness comes from one generator per (seed, source, video id), so a video's frame
choice and blur do not depend on the other videos or on whether the generated source is
on: the ablation "generated off" has exactly the real samples of "generated on".
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import atomic_path, read_array, write_json

log = logging.getLogger("futureseg")

SOURCES = ("real", "generated")
INDEX_COLUMNS = ("source", "video_id", "frame_index", "blur_sigma")
# Part of each per-video seed, so the two sources of one video draw independent numbers.
_SOURCE_SEED = {"real": 0, "generated": 1}
# Videos between memmap flushes: bounds the dirty pages a job holds (they count against a
# SLURM job's memory limit) to a few hundred MB at the real frame size.
_FLUSH_VIDEOS = 64


@dataclass(frozen=True)
class Sample:
    """One row of the training set. `position` locates the pixels: the frame number for a
    real sample, the index into the frames file's frame axis for a generated one."""

    source: str
    video_id: int
    frame_index: int
    blur_sigma: float
    position: int


@dataclass(frozen=True)
class GeneratedFrames:
    """The predictor's frames of the train videos, validated against the dataset."""

    path: Path
    array: np.ndarray  # uint8 (N, K, H, W, 3), memory-mapped
    ids: list[int]
    frame_indices: list[int]

    def row_of(self) -> dict[int, int]:
        return {video_id: row for row, video_id in enumerate(self.ids)}


# ---------------------------------------------------------------- settings


def parse_sigma_range(text: str) -> tuple[float, float]:
    """`--blur-sigma MIN,MAX` → (min, max); checked by `validate_settings`."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"augment.blur_sigma (--blur-sigma): expected MIN,MAX (two numbers), got {text!r}") from None


def validate_settings(frameskip, blur_prob, blur_sigma, seed, splits) -> None:
    if isinstance(frameskip, bool) or not isinstance(frameskip, (int, np.integer)) or frameskip < 1:
        raise ConfigError(f"augment.frameskip (--frameskip): must be an integer >= 1, got {frameskip!r}")
    if isinstance(blur_prob, bool) or not isinstance(blur_prob, (int, float)) or not 0.0 <= blur_prob <= 1.0:
        raise ConfigError(f"augment.blur_prob (--blur-prob): must be a probability in [0, 1], got {blur_prob!r}")
    try:
        low, high = (float(s) for s in blur_sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"augment.blur_sigma (--blur-sigma): expected [min, max], got {blur_sigma!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high):
        raise ConfigError(
            f"augment.blur_sigma (--blur-sigma): need 0 < min <= max (pixels), got [{low}, {high}]"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"augment.seed (--seed): must be an integer >= 0, got {seed!r}")
    if not splits or any(s not in data.LABELED_SPLITS for s in splits):
        raise ConfigError(
            f"--splits: real frames need masks, so only {', '.join(data.LABELED_SPLITS)} are allowed, got {list(splits)}"
        )


# ---------------------------------------------------------------- sampling


def video_rng(seed: int, source: str, video_id: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SOURCE_SEED[source], int(video_id)])


def frameskip_indices(n_frames: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions 0…n_frames-1 kept when keeping every k-th one from a random phase.

    The phase is drawn below min(k, n_frames), so each video keeps at least one frame even
    when k exceeds its length; otherwise it keeps floor(n/k) or ceil(n/k) frames.
    """
    if k < 1:
        raise ConfigError(f"augment.frameskip (--frameskip): must be an integer >= 1, got {k!r}")
    phase = int(rng.integers(min(k, n_frames))) if n_frames else 0
    return np.arange(phase, n_frames, k)


def blur_sigmas(n: int, blur_prob: float, sigma_range, rng: np.random.Generator) -> np.ndarray:
    """Sigma per sample, 0 where it is left sharp. Both numbers are drawn for every sample so
    that raising `blur_prob` only adds blurred samples (same sigmas for the others)."""
    draws = rng.random(n)
    sigmas = rng.uniform(sigma_range[0], sigma_range[1], n)
    return np.where(draws < blur_prob, sigmas, 0.0)


def gaussian_blur(frame: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 (H, W, 3) frame blurred with a Gaussian of standard deviation `sigma` pixels
    (Pillow's GaussianBlur radius is the standard deviation)."""
    if sigma <= 0:
        return frame
    return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(float(sigma))))


def plan_samples(
    video_ids,
    generated: GeneratedFrames | None,
    frameskip: int,
    blur_prob: float,
    blur_sigma,
    seed: int,
) -> list[Sample]:
    """Every sample of the set, in writing order: per video (ascending id), its real
    frames then its generated frames. Needs no pixels, so the arrays can be sized first."""
    rows = generated.row_of() if generated is not None else {}
    samples = []
    for video_id in sorted(video_ids):
        rng = video_rng(seed, "real", video_id)
        kept = frameskip_indices(data.N_FRAMES, frameskip, rng)
        sigmas = blur_sigmas(len(kept), blur_prob, blur_sigma, rng)
        samples += [Sample("real", video_id, int(t), float(s), int(t)) for t, s in zip(kept, sigmas)]
        if video_id in rows:
            rng = video_rng(seed, "generated", video_id)
            for position in frameskip_indices(len(generated.frame_indices), frameskip, rng):
                frame_index = generated.frame_indices[position]
                samples.append(Sample("generated", video_id, frame_index, 0.0, int(position)))
    return samples


# ---------------------------------------------------------------- inputs


def load_generated_frames(path: str | Path, size: tuple[int, int], dataset_ids) -> GeneratedFrames:
    """Open `frames_train.npy` (memory-mapped) and check it against the dataset."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    array, meta = read_array(path, "predicted frames")
    if "frame_indices" not in meta:
        raise FuturesegError(f"{sidecar}: expected the key 'frame_indices'")
    ids = [int(i) for i in meta["ids"]]
    frame_indices = [int(i) for i in meta["frame_indices"]]

    if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3:
        raise FuturesegError(f"{path}: expected uint8 (N, K, H, W, 3), got {array.dtype} {array.shape}")
    if tuple(array.shape[2:4]) != tuple(size):
        raise FuturesegError(
            f"{path}: frames are {array.shape[2]}x{array.shape[3]}, "
            f"but the dataset's are {size[0]}x{size[1]}"
        )
    if len(set(ids)) != len(ids):
        raise FuturesegError(f"{sidecar}: video ids are repeated")
    if len(frame_indices) != array.shape[1]:
        raise FuturesegError(
            f"{path}: {array.shape[1]} frames per video but {sidecar.name} lists {len(frame_indices)} frame_indices"
        )
    # Frames 0…10 are the predictor's input, never its output.
    if len(set(frame_indices)) != len(frame_indices) or any(
        not data.N_INPUT <= t < data.N_FRAMES for t in frame_indices
    ):
        raise FuturesegError(
            f"{sidecar}: frame_indices must be distinct predicted frames "
            f"{data.N_INPUT}…{data.N_FRAMES - 1}, got {frame_indices}"
        )
    unknown = sorted(set(ids) - set(dataset_ids))
    if unknown:
        shown = ", ".join(map(str, unknown[:5])) + (", …" if len(unknown) > 5 else "")
        raise FuturesegError(
            f"{path}: {len(unknown)} video ids are not labeled videos of the dataset ({shown}); "
            "the frames were predicted for another dataset or split"
        )
    if len(ids) < len(dataset_ids):
        log.warning("%s: predicted frames cover %d of %d videos", path, len(ids), len(dataset_ids))
    return GeneratedFrames(path, array, ids, frame_indices)


# ---------------------------------------------------------------- the set


def build_training_set(
    root: str | Path,
    out: str | Path,
    frames_path: str | Path | None = None,
    *,
    generated: bool = True,
    frameskip: int = 1,
    blur_prob: float = 0.3,
    blur_sigma=(0.5, 2.0),
    seed: int = 0,
    splits=("train",),
) -> dict:
    """Write the training set folder `out` and return its counts (also in counts.json).

    Every input is checked before anything is written; a failure midway leaves `out` as
    it was (absent, or the previous set).
    """
    splits = tuple(splits)
    validate_settings(frameskip, blur_prob, blur_sigma, seed, splits)
    blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
    if generated and frames_path is None:
        raise ConfigError("--frames: the predicted frames are required unless --no-generated (augment.generated: false)")

    videos = {v.id: v for split in splits for v in data.list_videos(root, split)}
    size = data.frame_size(root, splits[0])
    gen = load_generated_frames(frames_path, size, videos) if generated else None
    samples = plan_samples(videos, gen, frameskip, blur_prob, blur_sigma, seed)
    height, width = size

    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (len(samples), height, width, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (len(samples), height, width))
        try:
            _fill(images, masks, samples, videos, gen, size)
            images.flush()
            masks.flush()
        finally:
            del images, masks
        with open(tmp / "index.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            for s in samples:
                writer.writerow((s.source, s.video_id, s.frame_index, repr(s.blur_sigma)))
        counts = {
            "real": sum(s.source == "real" for s in samples),
            "generated": sum(s.source == "generated" for s in samples),
            "total": len(samples),
            "blurred_real": sum(s.blur_sigma > 0 for s in samples),
            "videos": len(videos),
            "generated_videos": len(gen.ids) if gen is not None else 0,
            "frameskip": frameskip,
            "blur_prob": blur_prob,
            "blur_sigma": list(blur_sigma),
            "generated_on": bool(generated),
            "seed": seed,
            "splits": list(splits),
            "frame_size": [height, width],
        }
        write_json(tmp / "counts.json", counts)
    return counts


def _fill(images, masks, samples: list[Sample], videos: dict, gen: GeneratedFrames | None, size) -> None:
    """Write each sample's pixels and mask into its row; one mask read per video."""
    rows = gen.row_of() if gen is not None else {}
    n_videos = len(videos)
    every = max(1, n_videos // 10)
    done = 0
    current_id, mask = None, None
    for row, sample in enumerate(samples):
        if sample.video_id != current_id:
            if current_id is not None:
                done += 1
                if done % every == 0:
                    log.info("segframes: %d/%d videos", done, n_videos)
                if done % _FLUSH_VIDEOS == 0:
                    images.flush()
                    masks.flush()
            current_id = sample.video_id
            video = videos[current_id]
            mask = data.read_mask(video, size)
        if sample.source == "real":
            frame = data.read_frame(video.frame_path(sample.position), size)
            images[row] = gaussian_blur(frame, sample.blur_sigma)
        else:
            images[row] = gen.array[rows[sample.video_id], sample.position]
        masks[row] = mask[sample.frame_index]
    log.info("segframes: %d/%d videos, %d samples", n_videos, n_videos, len(samples))


def read_index(folder: str | Path) -> list[dict]:
    """The rows of `index.csv`, typed: source, video_id, frame_index, blur_sigma."""
    with open(Path(folder) / "index.csv", newline="") as f:
        return [
            {
                "source": r["source"],
                "video_id": int(r["video_id"]),
                "frame_index": int(r["frame_index"]),
                "blur_sigma": float(r["blur_sigma"]),
            }
            for r in csv.DictReader(f)
        ]


# ---------------------------------------------------------------- the verb

VERB = "make-seg-frames"
HELP = "segmentation training set from real + predicted frames, with blur and frameskip (stage 3)"


def add_arguments(parser) -> None:
    import argparse

    from futureseg.core.flags import comma_list

    parser.add_argument("--root", required=True, help="Dataset_Student root")
    parser.add_argument("--frames", default=None, help="predicted frames of the train videos (frames_train.npy + .json); required unless --no-generated")
    parser.add_argument("--out", required=True, help="output folder (images.npy, masks.npy, index.csv, counts.json)")
    parser.add_argument("--generated", action=argparse.BooleanOptionalAction, default=True, help="include the predicted frames (augment.generated)")
    parser.add_argument("--frameskip", type=int, default=1, help="keep every k-th frame, random phase per video and source (augment.frameskip)")
    parser.add_argument("--blur-prob", type=float, default=0.3, help="probability that a real frame is Gaussian-blurred (augment.blur_prob)")
    parser.add_argument("--blur-sigma", default="0.5,2.0", help="MIN,MAX of the blur's sigma in pixels (augment.blur_sigma)")
    parser.add_argument("--seed", type=int, default=0, help="seed of frameskip phases and blur draws (augment.seed)")
    parser.add_argument("--splits", type=comma_list, default=("train",), help="labeled splits whose real frames are used")


def main(args) -> None:
    counts = build_training_set(
        args.root,
        args.out,
        args.frames,
        generated=args.generated,
        frameskip=args.frameskip,
        blur_prob=args.blur_prob,
        blur_sigma=parse_sigma_range(args.blur_sigma),
        seed=args.seed,
        splits=args.splits,
    )
    print(
        f"{counts['total']} samples: {counts['real']} real ({counts['blurred_real']} blurred), "
        f"{counts['generated']} generated, frameskip {counts['frameskip']}"
    )
