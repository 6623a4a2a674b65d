"""Reading and writing the pipeline's files; every file a verb writes appears only when complete.

Arrays with an ids sidecar (save_array / read_array), frame caches and other uint8 arrays
filled row by row (array_writer / load_cache), the mean/std statistics (read_mean_std), and
`progress`, the log lines of a loop over a file's rows (no torch here: the verbs that import
only this module start in a fraction of a second).

A verb writes to a temporary name in the destination folder and renames it at the end,
so a verb that is killed midway never leaves a file Snakemake would take as complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from futureseg.core.errors import DataError

log = logging.getLogger("futureseg")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    On any exception (or KeyboardInterrupt) the temporary file or folder is removed and
    `path` is left as it was. A writer killed outright (SIGKILL, a node lost) cannot remove
    its temp; the next writer of the same output removes it first (remove_stale_temps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private (0600/0700) entries; give outputs the usual umask
    # permissions so other members of a cluster group can read the results.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _temp_name(name: str) -> re.Pattern:
    """The names tempfile gives atomic_path's temps of output `name`: `.<name>.<8 random
    characters>.tmp`. Exact, so that the temps of another output whose name starts with
    this one's (`a.npy` and `a.npy.json`) never match."""
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp$")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of `path` left: its temps (files or folders) beside it.

    Safe because an output has one writer at a time (Snakemake runs one job per output and
    locks the working folder); a temp of `path` that exists when its writer starts is
    therefore a dead writer's. Returns what was removed.
    """
    path = Path(path)
    pattern = _temp_name(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(Path(entry.path))
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_array(path: str | os.PathLike, array: np.ndarray, ids, **meta) -> None:
    """An array whose rows are videos, with a JSON sidecar (same name, .json) naming them:
    {"ids": [...], **meta}. Both files are written atomically."""
    path = Path(path)
    if len(ids) != len(array):
        raise ValueError(f"{path}: {len(array)} rows but {len(ids)} ids")
    save_npy(path, array)
    write_json(path.with_suffix(".json"), {"ids": [int(i) for i in ids], **meta})


def load_array(path: str | os.PathLike, mmap: bool = False) -> tuple[np.ndarray, dict]:
    """The array and its sidecar written by `save_array`."""
    path = Path(path)
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    meta = json.loads(path.with_suffix(".json").read_text())
    return array, meta


def read_array(path: str | os.PathLike, what: str, mmap: bool = True) -> tuple[np.ndarray, dict]:
    """`load_array` for a verb's input, with the checks every reader needs, each error naming
    the file: the array and its sidecar exist and load, and the sidecar's "ids" name every
    row. `what` says what the file is ("frame cache", "predicted frames") in the messages."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise DataError(f"{path}: {what} file does not exist")
    if not sidecar.is_file():
        raise DataError(f"{sidecar}: the ids sidecar of the {what} {path.name} is missing")
    try:
        array, meta = load_array(path, mmap)
    except (OSError, ValueError, EOFError) as exc:  # truncated .npy, bad header, bad JSON
        raise DataError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    ids = meta.get("ids") if isinstance(meta, dict) else None
    if array.ndim == 0 or not isinstance(ids, list) or len(ids) != len(array):
        found = f"{len(ids)} ids" if isinstance(ids, list) else "no ids list"
        raise DataError(f"{sidecar}: expected the ids of the {len(array) if array.ndim else 0} rows of {path.name}, found {found}")
    return array, meta


@contextlib.contextmanager
def array_writer(path: str | Path, shape: tuple[int, ...], ids, **meta) -> Iterator[np.memmap]:
    """Yield a uint8 memmap of `shape` to fill row by row; on success it becomes `path`
    with the sidecar `{"ids": ids, **meta}`, exactly as `io.save_array` writes them.

    The array lives in a temporary file beside `path` until the block ends, so a killed
    writer leaves no partial output. The memmap is also reachable by other processes via
    `writer.filename` (they open it with `np.load(..., mmap_mode="r+")`).
    """
    path = Path(path)
    if len(ids) != shape[0]:
        raise ValueError(f"{path}: {shape[0]} rows but {len(ids)} ids")
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            yield array
            array.flush()
        finally:
            del array
    write_json(path.with_suffix(".json"), {"ids": [int(i) for i in ids], **meta})


def load_cache(path: str | Path) -> tuple[np.ndarray, dict]:
    """A frame cache written by `futureseg cache-frames`, memory-mapped read-only, and its sidecar.

    Checks what the training and prediction stages rely on, naming the file when it fails.
    """
    frames, meta = read_array(path, "frame cache")
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise DataError(f"{path}: frame cache is {frames.dtype} {frames.shape}, expected uint8 (N, T, H, W, 3)")
    return frames, meta


def read_mean_std(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The mean_std.json of `futureseg mean-std`: (mean, std) float32 arrays of shape (3,) on the 0…255 scale, checked."""
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


def progress(iterable, total: int, desc: str, initial: int = 0):
    """A tqdm bar on a terminal; in a log file, a plain line every ~10%."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, initial=initial)
        return
    every = max(1, total // 10)
    for i, item in enumerate(iterable, start=initial + 1):
        yield item
        if i % every == 0 or i == total:
            log.info("%s: %d/%d", desc, i, total)
