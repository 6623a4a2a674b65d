"""Speed of route dynamics' three stages at the real data's size (160×240):

    python bench/bench_dynamics.py --videos 1000 --copies 14
    python bench/bench_dynamics.py --videos 1000 --tracks-only --keep /tmp/dyn  # stage 1 alone

1. `futureseg tracks` of 1,000 videos × 22 frames (true masks, DIS flow at the window ends);
   goal (issue 22): at most 60 s on 2 cores.
2. one epoch of `futureseg train-dynamics` on 14,000 videos' tracks (the 1,000 videos' tracks
   repeated `--copies` times: the real train + unlabeled splits' count) with config.yaml's
   model and batch size, validation on `--val` videos included; goal: at most 5 min on 2 cores.
3. `futureseg dynamics` (the route) on the 1,000 videos' frames 0…10 with DIS flow; goal: at
   most 30 s.

Each is timed once, whole (reading and writing files included), on a warm page cache.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from futureseg import cli
from futureseg.data import cache_frames
from futureseg.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[1]


def timed(label, *argv):
    t0 = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    seconds = time.perf_counter() - t0
    if code:
        raise SystemExit(f"{label}: futureseg {argv[0]} exited {code}")
    print(f"{label}: {seconds:6.1f} s", flush=True)
    return seconds


def flags(settings: dict) -> list:
    """Settings as a verb's flags, as the rules pass them (workflow/rules/common.smk, flags):
    key_name: v -> --key-name v, a boolean as --key-name or --no-key-name."""
    out = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        out += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, value]
    return out


def model_flags(settings):
    """config.yaml's model settings of the dynamics as train-dynamics flags."""
    from dataclasses import fields

    from futureseg.models.dynamics import DynamicsConfig

    return flags({f.name: settings[f.name] for f in fields(DynamicsConfig) if f.name != "size"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000, help="train videos generated (22 frames each)")
    parser.add_argument("--val", type=int, default=50, help="val videos (train-dynamics' validation)")
    parser.add_argument("--copies", type=int, default=14, help="the tracks repeated this many times for training")
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="folder to keep the generated data in (reused when it exists)")
    parser.add_argument("--tracks-only", action="store_true",
                        help="time stage 1 alone (a change to the tracks without the 5 min of training)")
    args = parser.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp())
    try:
        root = tmp / "dataset"
        if not root.exists():
            t0 = time.perf_counter()
            generate_dataset(root, {"train": args.videos, "val": args.val, "unlabeled": 0, "hidden": 0},
                             args.height, args.width, seed=0, workers=args.workers)
            print(f"generated {args.videos} + {args.val} videos in {time.perf_counter() - t0:.0f} s")
        for split in ("train", "val"):
            if not (tmp / f"{split}.npy").exists():
                cache_frames.cache_split(root, split, tmp / f"{split}.npy", args.workers)
        timed(f"tracks of {args.videos} videos x 22 frames (flow dis)", "tracks", "--root", root, "--split", "train",
              "--frames", tmp / "train.npy", "--out", tmp / "tracks.npz")
        if args.tracks_only:
            return 0

        with np.load(tmp / "tracks.npz") as f:
            arrays = dict(f)
        n, per_video = len(arrays["ids"]), np.diff(arrays["offsets"])
        repeated = {
            "ids": np.arange(n * args.copies), "classes": np.tile(arrays["classes"], args.copies),
            "states": np.tile(arrays["states"], (args.copies, 1, 1)),
            "offsets": np.concatenate([[0], np.cumsum(np.tile(per_video, args.copies))]), "meta": arrays["meta"]}
        np.savez(tmp / "tracks_many.npz", **repeated)
        settings = yaml.safe_load((REPO / "config.yaml").read_text())["dynamics"]
        timed(f"train-dynamics, 1 epoch on {n * args.copies} videos' tracks", "train-dynamics",
              "--tracks", tmp / "tracks_many.npz", "--val-root", root, "--val-frames", tmp / "val.npy",
              "--val-videos", args.val, *model_flags(settings), "--epochs", 1,
              "--batch-size", settings["batch_size"], "--lr", settings["lr"], "--weight-decay", settings["weight_decay"],
              "--motion-config", json.dumps({"flow": "dis"}), "--threads", 1,
              "--out", tmp / "model.pt", "--metrics", tmp / "metrics.csv", "--checkpoints", tmp / "checkpoints")
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)

        # the route on frames 0…10 of the same videos, as a mask cache of the segmenter's would give them
        from futureseg.core import data
        from futureseg.core.io import save_array

        masks, ids = data.read_split_masks(root, "train")
        save_array(tmp / "masks.npy", masks[:, : data.N_INPUT], ids)
        timed(f"route dynamics on {args.videos} videos (flow dis)", "dynamics", "--model", tmp / "model.pt",
              "--masks", tmp / "masks.npy", "--frames", tmp / "train.npy", "--threads", 1,
              "--out", tmp / "dynamics.npy", "--out-sequence", tmp / "dynamics_sequence.npy")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
