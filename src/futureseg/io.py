"""Atomic output helpers: every file a verb writes appears only when complete.

A verb writes to a temporary name in the destination folder and renames it at the end,
so a verb that is killed midway never leaves a file Snakemake would take as complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    On any exception (or KeyboardInterrupt) the temporary file or folder is removed and
    `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
