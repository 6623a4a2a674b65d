"""Sharded inference over a split: `--shard i/K` names the K-th contiguous slice of its rows
(`futureseg gather-shards` puts the slices back together)."""

from __future__ import annotations

import argparse


def parse_shard(text: str) -> tuple[int, int]:
    """'i/K' → (i, K) with 0 <= i < K."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected i/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= i < K")
    return index, count


def shard_rows(n_rows: int, shard: tuple[int, int] | None) -> range:
    """Rows of shard i of K: contiguous, sizes differing by at most one, in order."""
    if shard is None:
        return range(n_rows)
    index, count = shard
    return range(index * n_rows // count, (index + 1) * n_rows // count)
