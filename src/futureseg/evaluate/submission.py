"""Stage 5: the competition submission and its checker.

`futureseg submission` turns the hidden split's predicted masks into one torch tensor
(N_hidden, H, W) of class ids, videos in ascending id order, saved with torch.save; the
ids are listed beside it in `<name>.json` ({"ids": [...], ...}, the same sidecar form as
every per-video array of the pipeline).

dtype: torch.uint8 by default (config eval.submission_dtype). Class ids 0…48 fit in a byte,
the file is 8x smaller than int64 (the real hidden set, 2,000 videos of 160x240, is 76.8 MB
instead of 614 MB), and torchmetrics' JaccardIndex accepts uint8 predictions (it widens them
itself). `--dtype int64` writes torch.long for a grader that insists on it; the checker
accepts any integer dtype.

`--hidden DIR` (rule submission passes the dataset's hidden/ folder) checks the tensor
against the hidden split before anything is written: the video count, the ids and their
order, the frame size, the dtype and the class ids. A mismatch is one error line naming each
difference, and leaves no file.

`futureseg check-submission FILE --hidden DIR` checks a file against a hidden folder and
lists every problem it finds, one a line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import atomic_path, read_array, write_json

DTYPES = ("uint8", "int64")


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def hidden_root(folder: str | Path) -> Path:
    """The dataset root of a hidden split given either the root or the hidden/ folder."""
    folder = Path(folder)
    if (folder / "hidden").is_dir():
        return folder
    if folder.name == "hidden" and folder.is_dir():
        return folder.parent
    raise FuturesegError(f"{folder}: neither a hidden/ split folder nor a dataset root holding one")


def hidden_videos(folder) -> tuple[list[int], tuple[int, int]]:
    """Ids (ascending) and frame size (H, W) of the hidden split."""
    root = hidden_root(folder)
    return [v.id for v in data.list_videos(root, "hidden")], tuple(data.frame_size(root, "hidden"))


def problems_of(tensor, ids, expected_ids: list[int], size: tuple[int, int]) -> list[str]:
    """Every way `tensor` (with sidecar `ids`) fails to be a submission for the hidden
    videos `expected_ids` of frame size `size`; empty when it is fine."""
    import torch

    found = []
    if not isinstance(tensor, torch.Tensor):
        return [f"holds a {type(tensor).__name__}, expected a torch tensor"]
    expected_shape = (len(expected_ids), *size)
    if tensor.ndim != 3:
        found.append(f"tensor is {tensor.ndim}-D with shape {tuple(tensor.shape)}, expected 3-D (N, H, W) = {expected_shape}")
    else:
        if tensor.shape[0] != len(expected_ids):
            found.append(f"tensor holds {tensor.shape[0]} videos, the hidden split has {len(expected_ids)}")
        if tuple(tensor.shape[1:]) != tuple(size):
            found.append(f"tensor frames are {tensor.shape[1]}x{tensor.shape[2]}, the hidden frames are {size[0]}x{size[1]}")
    integer = not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool
    if not integer:
        found.append(f"tensor dtype is {tensor.dtype}, expected an integer type (class ids; uint8 or int64)")
    elif tensor.numel():
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= data.NUM_CLASSES:
            found.append(f"class ids range {low}…{high}, expected 0…{data.NUM_CLASSES - 1}")
    if ids is None:
        found.append("ids sidecar is missing or unreadable")
        return found
    if tensor.ndim >= 1 and len(ids) != tensor.shape[0]:
        found.append(f"sidecar lists {len(ids)} ids for {tensor.shape[0]} tensor rows")
    if ids != expected_ids:
        if sorted(ids) == expected_ids:
            found.append("sidecar ids are the hidden ids but not in ascending order")
        else:
            missing = sorted(set(expected_ids) - set(ids))
            extra = sorted(set(ids) - set(expected_ids))
            duplicated = len(ids) - len(set(ids))
            parts = []
            if missing:
                parts.append(f"{len(missing)} hidden videos missing (first {missing[:3]})")
            if extra:
                parts.append(f"{len(extra)} ids not in the hidden split (first {extra[:3]})")
            if duplicated:
                parts.append(f"{duplicated} duplicated ids")
            if not parts:
                parts.append("not in ascending order")
            found.append("sidecar ids differ from the hidden split's: " + ", ".join(parts))
    return found


def _read_ids(path: Path) -> list[int] | None:
    try:
        return [int(i) for i in json.loads(path.read_text())["ids"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_submission(path, hidden) -> list[str]:
    """Problems of a submission file against a hidden folder, each a full sentence."""
    import torch

    path = Path(path)
    if not path.is_file():
        return [f"{path}: file does not exist"]
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [f"{path}: cannot be loaded with torch.load(weights_only=True) ({first})"]
    expected_ids, size = hidden_videos(hidden)
    ids = _read_ids(sidecar_path(path))
    found = problems_of(tensor, ids, expected_ids, size)
    return [f"{path}: {p}" if "sidecar" not in p else f"{sidecar_path(path)}: {p}" for p in found]


def make_submission(masks_path, out, dtype: str = "uint8", hidden=None) -> dict:
    """Write the submission tensor from a masks file (N, H, W) with ids sidecar."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: {dtype!r}, expected one of {', '.join(DTYPES)}")
    masks_path = Path(masks_path)
    masks, meta = read_array(masks_path, "masks", mmap=False)
    try:
        ids = np.asarray([int(i) for i in meta["ids"]], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise FuturesegError(f"{sidecar_path(masks_path)}: ids must be integers ({exc})") from None
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise FuturesegError(f"{masks_path}: masks are {masks.dtype} {masks.shape}, expected integer (N, H, W)")
    if len(set(ids.tolist())) != len(ids):
        raise FuturesegError(f"{masks_path}: its sidecar lists duplicated ids")
    if masks.size and (masks.min() < 0 or masks.max() >= data.NUM_CLASSES):
        raise FuturesegError(f"{masks_path}: class ids {masks.min()}…{masks.max()}, expected 0…{data.NUM_CLASSES - 1}")
    order = np.argsort(ids, kind="stable")
    ids = ids[order].tolist()
    tensor = torch.from_numpy(np.ascontiguousarray(masks[order]).astype(np.dtype(dtype)))
    if hidden is not None:
        expected_ids, size = hidden_videos(hidden)
        found = problems_of(tensor, ids, expected_ids, size)
        if found:
            raise FuturesegError(f"{masks_path}: does not fit the hidden split {hidden}: " + "; ".join(found))
    meta = {"ids": ids, "shape": list(tensor.shape), "dtype": dtype, "frame": data.TARGET_FRAME, "source": str(masks_path)}
    # The sidecar first, so the tensor appears only once both are complete; a tensor that cannot
    # be written takes its new sidecar with it, so a failure leaves neither.
    sidecar = sidecar_path(out)
    write_json(sidecar, meta)
    try:
        with atomic_path(out) as tmp:
            torch.save(tensor, tmp)
    except BaseException:
        sidecar.unlink(missing_ok=True)
        raise
    return meta


VERB = "submission"
HELP = "write the hidden split's masks as the competition tensor (N, H, W) of class ids (stage 5)"


def submitted_masks(routes: dict, scores_path) -> tuple[str, str]:
    """(route, its hidden masks path): the route that `score` picked, as recorded in
    scores.json's "submitted_route"."""
    scores_path = Path(scores_path)
    try:
        route = json.loads(scores_path.read_text())["submitted_route"]
    except FileNotFoundError:
        raise FuturesegError(f"{scores_path}: scores file does not exist") from None
    except (ValueError, KeyError, TypeError):
        raise FuturesegError(f"{scores_path}: no 'submitted_route' (was it written by futureseg score --route ...?)") from None
    if route not in routes:
        raise FuturesegError(f"{scores_path}: submitted route {route!r} has no hidden masks among --route "
                             f"({', '.join(routes) or 'none'})")
    return route, routes[route]


def add_arguments(parser) -> None:
    from futureseg.core.flags import name_path

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", help="masks_hidden.npy with its ids sidecar")
    source.add_argument("--route", type=name_path, action="append", metavar="NAME=MASKS",
                        help="a route's masks_hidden.npy; repeat; --scores says which one is submitted")
    parser.add_argument("--scores", help="scores.json of score --route: its submitted_route picks the masks")
    parser.add_argument("--out", required=True, help="submission .pt to write (ids go to the same name .json)")
    parser.add_argument("--dtype", choices=DTYPES, default="uint8", help="tensor dtype (default uint8)")
    parser.add_argument("--hidden", help="hidden/ folder or dataset root: check ids and frame size before writing")


def main(args) -> None:
    masks = args.masks
    if args.route:
        if not args.scores:
            raise ConfigError("--route needs --scores (scores.json names the submitted route)")
        route, masks = submitted_masks(dict(args.route), args.scores)
        print(f"submitting route {route} ({masks})")
    meta = make_submission(masks, args.out, args.dtype, args.hidden)
    print(f"{args.out}: {meta['dtype']} tensor {tuple(meta['shape'])}, ids in {sidecar_path(args.out)}")
