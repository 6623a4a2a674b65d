"""Gather the shards of a split-wide array (sharded hidden-set inference) into one.

`predict-frames --shard i/K` and `segment` on those frames write contiguous row ranges of
the hidden split; concatenating the shards in order gives exactly the unsharded array.
This verb checks that the shards fit together (same frame layout, ids ascending with no
gap or overlap) before it writes the whole.
"""

from __future__ import annotations

import numpy as np

from futureseg.core.errors import FuturesegError
from futureseg.core.io import read_array, save_array

VERB = "gather-shards"
HELP = "concatenate the shards of a sharded array (+ ids sidecars) into one, in order"


# sidecar entries that must agree between shards (which frames the rows hold)
_LAYOUT_KEYS = ("frame_indices", "frame_index", "split")


def gather(shard_paths, out) -> np.ndarray:
    arrays, ids, sidecars = [], [], []
    for path in shard_paths:
        array, sidecar = read_array(path, "shard", mmap=False)
        if arrays:
            first, layout = shard_paths[0], lambda s: {k: s.get(k) for k in _LAYOUT_KEYS}
            if array.shape[1:] != arrays[0].shape[1:] or array.dtype != arrays[0].dtype:
                raise FuturesegError(f"{path}: shard rows are {array.dtype} {array.shape[1:]}, {first} has {arrays[0].dtype} {arrays[0].shape[1:]}")
            if layout(sidecar) != layout(sidecars[0]):
                raise FuturesegError(f"{path}: shard holds other frames than {first} ({layout(sidecar)} vs {layout(sidecars[0])})")
        arrays.append(array)
        sidecars.append(sidecar)
        ids.extend(sidecar["ids"])
    if not arrays:
        raise FuturesegError("gather-shards: no shard given")
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise FuturesegError(f"{out}: shard ids are not ascending across {', '.join(map(str, shard_paths))}; give the shards in order")
    meta = {k: v for k, v in sidecars[0].items() if k not in ("ids", "shard", "source")}
    meta["shards"] = [str(p) for p in shard_paths]
    whole = np.concatenate(arrays)
    save_array(out, whole, ids, **meta)
    return whole


def add_arguments(parser) -> None:
    parser.add_argument("--shards", nargs="+", required=True, help="shard .npy files in order (sidecars beside them)")
    parser.add_argument("--out", required=True, help=".npy to write (sidecar .json beside it)")


def main(args) -> None:
    whole = gather(args.shards, args.out)
    print(f"{args.out}: {len(whole)} rows from {len(args.shards)} shard(s)")
