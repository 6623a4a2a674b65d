"""The stages that read the largest caches stream them: each runs under a memory limit far
below the cache it reads.

On the real data the unlabeled split's frame cache is 33 GB and its pseudo-labels 11 GB; a
stage that loaded either whole would die on any node. Here the caches are a few hundred MB
(the tiny dataset's videos repeated) and each verb runs in a child process whose data
segment (RLIMIT_DATA: what the process allocates, heap and anonymous memory) may grow
LIMIT_MB over what it held after importing futureseg, torch and OpenCV. The address-space
limit (RLIMIT_AS) would not do: it counts memory-mapped files, so a stage that reads its
cache through a memory map, as it should, would fail as surely as one that loads it.
The control case shows the limit bites: loading the cache whole fails under it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from futureseg.core.io import array_writer, read_array

# What a verb may allocate beyond its imports: its model, batches, the outputs' rows.
LIMIT_MB = 128
# The big caches are this many times the limit: a stage that loaded one whole would need twice
# what it may allocate.
CACHE_OVER_LIMIT = 2

# The child: imports what the verbs import (torchmetrics pulls in matplotlib: ~200 MB of heap
# that a verb importing it lazily would otherwise count), measures its data segment, sets the
# limit, runs the verb (or, for the control, loads a cache whole).
CHILD = r"""
import contextlib, resource, sys
import cv2, numpy, scipy.ndimage, torch, torchmetrics
with contextlib.suppress(ImportError):
    import torch.utils.tensorboard
import futureseg.cli
def data_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
limit = data_bytes() + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
if sys.argv[2] == "--load-whole":
    numpy.load(sys.argv[3])
    sys.exit(0)
sys.exit(futureseg.cli.main(sys.argv[2:]))
"""


def run_limited(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(LIMIT_MB), *map(str, argv)],
                          capture_output=True, text=True, timeout=600)


def ok(*argv) -> None:
    result = run_limited(*argv)
    assert result.returncode == 0, f"{argv[0]} under a {LIMIT_MB} MB data limit:\n{result.stderr[-3000:]}"


def repeated(source: Path, out: Path, min_bytes: int) -> Path:
    """A cache of `source`'s videos repeated until it holds `min_bytes`, written row by row."""
    array, meta = read_array(source, "cache")
    copies = -(-min_bytes // array.nbytes)
    n = copies * len(array)
    with array_writer(out, (n, *array.shape[1:]), list(range(n)), **{k: v for k, v in meta.items() if k != "ids"}) as big:
        for i in range(copies):
            big[i * len(array):(i + 1) * len(array)] = array
    return out


@pytest.fixture(scope="module")
def big(tiny_dataset, tmp_path_factory):
    """Small caches and models from the tiny dataset; a frame cache of its unlabeled videos and
    their pseudo-labels, each repeated to CACHE_OVER_LIMIT × LIMIT_MB."""
    from futureseg import cli

    ds, f = tiny_dataset, tmp_path_factory.mktemp("memory")
    run = lambda *argv: cli.main([str(a) for a in argv])  # noqa: E731 (the verbs in this process, unlimited)
    assert run("mean-std", "--root", ds, "--out", f / "ms.json", "--splits", "train") == 0
    for split in ("train", "val", "unlabeled"):
        assert run("cache-frames", "--root", ds, "--split", split, "--out", f / "cache" / f"{split}.npy") == 0
    assert run("make-seg-frames", "--root", ds, "--out", f / "segf", "--no-generated", "--frameskip", "2",
               "--blur-prob", "0", "--blur-sigma", "0.5,2", "--seed", "0") == 0
    assert run("train-segmenter", "--model", "unet", "--root", ds, "--seg-frames", f / "segf", "--mean-std",
               f / "ms.json", "--out", f / "seg.pt", "--metrics", f / "m.csv", "--checkpoints", f / "ck",
               "--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--lr", "0.003", "--weight-decay", "0",
               "--soft-iou-weight", "0", "--background-weight", "1", "--base-channels", "4", "--depth", "2",
               "--threads", "1") == 0
    for split, frames in (("unlabeled", 22), ("val", 11)):
        assert run("pseudo-label", "--model", f / "seg.pt", "--cache", f / "cache" / f"{split}.npy",
                   "--out", f / "pseudo" / f"{split}.npy", "--frames", frames, "--threads", "1") == 0
    size = CACHE_OVER_LIMIT * LIMIT_MB * 2**20
    repeated(f / "cache" / "unlabeled.npy", f / "big" / "frames.npy", size)
    repeated(f / "pseudo" / "unlabeled.npy", f / "big" / "masks.npy", size)
    return f


def test_the_limit_stops_a_stage_that_loads_a_cache_whole(big):
    result = run_limited("--load-whole", big / "big" / "masks.npy")
    assert result.returncode != 0 and "MemoryError" in result.stderr, result.stderr[-2000:]


def test_train_predictor_streams_its_frame_cache(big, tmp_path):
    ok("train-predictor", "--cache", big / "big" / "frames.npy", "--val-cache", big / "cache" / "val.npy",
       "--mean-std", big / "ms.json", "--out", tmp_path / "p.pt", "--metrics", tmp_path / "p.csv",
       "--checkpoints", tmp_path / "ck", "--model", "simvp",
       "--model-config", json.dumps({"hid_S": 4, "hid_T": 8, "N_S": 2, "N_T": 2}),
       "--epochs", "1", "--max-steps", "2", "--batch-size", "2", "--lr", "0.01", "--weight-decay", "0",
       "--threads", "1")


def test_pseudo_label_streams_its_frame_cache_and_its_output(big, tmp_path):
    out = tmp_path / "pseudo.npy"
    ok("pseudo-label", "--model", big / "seg.pt", "--cache", big / "big" / "frames.npy", "--out", out,
       "--frames", "22", "--batch-size", "64", "--threads", "1")
    masks, _ = read_array(out, "masks")
    assert masks.shape[:2] == np.load(big / "big" / "frames.npy", mmap_mode="r").shape[:2]


def test_train_forecaster_streams_its_pseudo_labels(big, tiny_dataset, tmp_path):
    ok("train-forecaster", "--root", tiny_dataset, "--label-splits", "train", "--pseudo", big / "big" / "masks.npy",
       "--val-pseudo", big / "pseudo" / "val.npy", "--out", tmp_path / "f.pt", "--metrics", tmp_path / "f.csv",
       "--checkpoints", tmp_path / "ck", "--model", "simvp", "--prior", "copy_last",
       "--model-config", json.dumps({"embed_dim": 4, "hid_S": 4, "hid_T": 8, "N_S": 2, "N_T": 2}),
       "--epochs", "1", "--iou-finetune-epochs", "0", "--max-steps", "2", "--batch-size", "2", "--lr", "0.003",
       "--weight-decay", "0", "--soft-iou-weight", "1", "--background-weight", "1", "--patience", "0", "--threads", "1")


def test_tracks_and_the_motion_prior_stream_the_pseudo_labels(big, tmp_path):
    # without optical flow: the flow needs a frame cache of the same videos, three times the
    # masks' size here, and the frame cache's streaming is what the tests above check
    ok("tracks", "--masks", big / "big" / "masks.npy", "--flow", "none", "--out", tmp_path / "tracks.npz")
    ok("extrapolate", "--masks", big / "big" / "masks.npy", "--motion-config", json.dumps({"flow": "none"}),
       "--out-sequence", tmp_path / "sequence.npy")
    sequence, _ = read_array(tmp_path / "sequence.npy", "sequence")
    assert sequence.shape[:2] == (len(np.load(big / "big" / "masks.npy", mmap_mode="r")), 11)
