"""Route dynamics' design at the real data's count of tracks (issue 30), run by hand.

The real data has 14,000 videos of tracks (1,000 train with true masks, 13,000 unlabeled with
pseudo-labels); which dynamics design wins depends on that count, so designs are compared
here, not on the demo's 100 videos. Generated videos at 160×240 with their true masks stand in
for the real data's pseudo-labels (about 0.97 right; `--noise` flips that share of the pixels
on object borders to a neighbour's class, to see what such noise costs).

    # once: render 14,000 train videos and write their tracks (DIS flow at the window ends),
    # render 1,000 val videos as a Dataset_Student and cache their frames (~25 min on 2 cores)
    python bench/bench_dynamics_design.py make --data /tmp/dyn --train 14000 --val 1000
    # a design at three training sizes; every figure lands in /tmp/dyn/results.json
    python bench/bench_dynamics_design.py train --data /tmp/dyn --name attention2 --sizes 1000 4000 14000 \\
        -- --layers 2 --epochs 10
    python bench/bench_dynamics_design.py table --data /tmp/dyn

`train` runs the rules' own commands: `futureseg train-dynamics` on the first N videos' tracks
(its flags after `--`, the rest config.yaml's `dynamics:` section and `motion:` settings), then
`futureseg dynamics` on the val videos' true masks 0…10 (the reference `dynamics_truth`),
scored as `futureseg score` does (macro IoU of frame 21, 49 classes). `table` prints the rule
(route motion on the same masks), each design and size, the placement oracle, and the share
of the gap from the rule to the placement oracle each closes.
"""

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from bench_dynamics import flags as as_flags

REPO = Path(__file__).resolve().parents[1]
SEED = 23  # train videos; val is SEED + 1, so no val video is a train video


def border_noise(masks: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each pixel on a border between two labels takes a random 4-neighbour's label with
    probability `rate`: the jitter of a segmenter's silhouettes."""
    out = masks.copy()
    shifts = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    for t, mask in enumerate(masks):
        padded = np.pad(mask, 1, mode="edge")
        h, w = mask.shape
        neighbours = np.stack([padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in shifts])
        border = (neighbours != mask).any(0)
        pick = neighbours[rng.integers(0, 4, size=(h, w)), np.arange(h)[:, None], np.arange(w)[None]]
        flip = border & (rng.random((h, w)) < rate)
        out[t][flip] = pick[flip]
    return out


def _video_tracks(job):
    from futureseg.core import motion
    from futureseg.data.synth import render_video
    from futureseg.core.motion import FIRST_WINDOW_END

    video_id, seed, height, width, noise, flow, flow_pairs = job
    frames, masks, _ = render_video(video_id, seed, height, width)
    if noise > 0:
        masks = border_noise(masks, noise, np.random.default_rng([seed, video_id, 1]))
    return motion.object_tracks(masks, frames, range(FIRST_WINDOW_END, 11), flow, flow_pairs)


def make(args):
    from futureseg.core import motion
    from futureseg.data import cache_frames
    from futureseg.data.synth import generate_dataset
    from futureseg.forecast import tracks
    from futureseg.core.motion import FIRST_WINDOW_END

    out = Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    motion_settings = yaml.safe_load((REPO / "config.yaml").read_text())["motion"]
    flow, flow_pairs = motion_settings["flow"], motion_settings["flow_pairs"]
    t0 = time.perf_counter()
    if not (out / "dataset").exists():
        generate_dataset(out / "dataset", {"val": args.val}, args.height, args.width, SEED + 1, args.workers)
        cache_frames.cache_split(out / "dataset", "val", out / "val.npy", args.workers)
        print(f"val: {args.val} videos rendered and cached in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    jobs = [(i, SEED, args.height, args.width, args.noise, flow, flow_pairs) for i in range(args.train)]
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        results = pool.map(_video_tracks, jobs, chunksize=32)
    meta = {"source": f"bench_dynamics_design seed {SEED}, noise {args.noise}", "split": "train",
            "size": [args.height, args.width], "n_frames": 22, "fields": list(motion.STATE_FIELDS), "flow": flow,
            "flow_pairs": flow_pairs, "flow_frames": list(range(FIRST_WINDOW_END, 11))}
    tracks.write(out / "tracks.npz", range(args.train), [c for c, _ in results], [s for _, s in results], meta)
    print(f"train: {args.train} videos rendered, their tracks written in {time.perf_counter() - t0:.0f} s")


def _subset(data: Path, n: int) -> Path:
    """The tracks of the first n videos, as a tracks file (written once)."""
    from futureseg.forecast import tracks

    path = data / f"tracks_{n}.npz"
    if not path.exists():
        full = tracks.Tracks(data / "tracks.npz")
        if n > len(full):
            raise SystemExit(f"{data}/tracks.npz has {len(full)} videos, fewer than {n}")
        videos = [full.video(i) for i in range(n)]
        tracks.write(path, full.ids[:n], [c for c, _ in videos], [s for _, s in videos], full.meta)
    return path


def _cli(*argv):
    from futureseg import cli

    code = cli.main([str(a) for a in argv])
    if code:
        raise SystemExit(f"futureseg {argv[0]} exited {code}")


def _score(data: Path, masks_path: Path) -> float:
    from futureseg.core import data as dataset
    from futureseg.core.dense import macro_iou

    truth, _ = dataset.read_split_masks(data / "dataset", "val")
    return macro_iou(np.load(masks_path, mmap_mode="r"), truth[:, dataset.TARGET_FRAME])


def _results(data: Path) -> dict:
    path = data / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record(data: Path, key: str, value) -> None:
    """Add one figure to results.json (a lock: designs may train side by side)."""
    import fcntl

    with open(data / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _results(data)
        results[key] = value
        (data / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def references(data: Path, motion_settings: dict) -> None:
    results = _results(data)
    root = data / "dataset"
    if "rule" not in results:
        _cli("extrapolate", "--root", root, "--split", "val", "--frames", data / "val.npy",
             "--motion-config", json.dumps(motion_settings), "--out", data / "rule.npy")
        _record(data, "rule", _score(data, data / "rule.npy"))
    if "placement_oracle" not in results:
        _cli("dynamics", "--placement-oracle", "--root", root, "--split", "val", "--out", data / "oracle.npy")
        _record(data, "placement_oracle", _score(data, data / "oracle.npy"))


def train(args):
    data = Path(args.data)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    motion_settings = config["motion"]
    references(data, motion_settings)
    settings = {k: v for k, v in config["dynamics"].items() if k not in ("pseudo_splits", "checkpoint_every")}
    for n in args.sizes:
        key = f"{args.name}@{n}"
        if key in _results(data) and not args.again:
            print(f"{key}: measured already ({_results(data)[key]['iou']:.4f}); --again to rerun")
            continue
        run = data / "runs" / key
        run.mkdir(parents=True, exist_ok=True)
        # config.yaml's settings but those the design's flags set (either way for a boolean)
        given = {f.removeprefix("--").removeprefix("no-").replace("-", "_") for f in args.flags if f.startswith("--")}
        flags = as_flags({k: v for k, v in settings.items() if k not in given})
        t0 = time.perf_counter()
        _cli("train-dynamics", "--tracks", _subset(data, n), "--val-root", data / "dataset",
             "--val-frames", data / "val.npy", "--motion-config", json.dumps(motion_settings), *flags, *args.flags,
             "--threads", args.threads, "--out", run / "model.pt", "--metrics", run / "metrics.csv",
             "--checkpoints", run / "checkpoints", "--checkpoint-every", 100000)
        seconds = time.perf_counter() - t0
        _cli("dynamics", "--model", run / "model.pt", "--root", data / "dataset", "--split", "val",
             "--frames", data / "val.npy", "--threads", args.threads, "--out", run / "masks.npy")
        iou = _score(data, run / "masks.npy")
        _record(data, key, {"iou": iou, "train_seconds": round(seconds), "flags": [str(f) for f in args.flags]})
        print(f"{key}: dynamics_truth {iou:.4f} (training {seconds:.0f} s)", flush=True)


def table(args):
    results = _results(Path(args.data))
    rule, ceiling = results["rule"], results["placement_oracle"]
    print("| model | training videos | dynamics_truth | gap closed | training |")
    print("|---|---:|---:|---:|---:|")
    print(f"| route motion's rule | – | {rule:.3f} | 0% | – |")
    runs = sorted((k for k in results if "@" in k), key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    for key in runs:
        name, n = key.split("@")
        r = results[key]
        print(f"| {name} (`{' '.join(r['flags'])}`) | {int(n):,} | {r['iou']:.3f} | "
              f"{(r['iou'] - rule) / (ceiling - rule):.0%} | {r['train_seconds']} s |")
    print(f"| placement oracle | – | {ceiling:.3f} | 100% | – |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("make", help="render the videos and write the train tracks and the val split")
    p.add_argument("--data", required=True)
    p.add_argument("--train", type=int, default=14000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--noise", type=float, default=0.0, help="share of border pixels flipped to a neighbour's class")
    p.add_argument("--workers", type=int, default=2)
    p = verbs.add_parser("train", help="train and score one design at several training sizes")
    p.add_argument("--data", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 14000])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--again", action="store_true")
    p.add_argument("flags", nargs="*", help="train-dynamics flags (after --), over config.yaml's")
    p = verbs.add_parser("table", help="the results as a markdown table")
    p.add_argument("--data", required=True)
    args = parser.parse_args()
    {"make": make, "train": train, "table": table}[args.verb](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
