"""Stage 5: the competition metric on the val split, for the pipeline and two references.

The metric is torchmetrics' multiclass Jaccard index over the 49 classes, macro average
(its default), of the mask of frame 21 of every val video. It is accumulated over the
whole split (one confusion matrix, `update` per batch), so it is not an average of
per-batch or per-video scores: a class counts once, with all its pixels of the split.

Three guesses of frame 21's mask are scored side by side:
  pipeline   the segmenter run on the predicted frame 21 (`--pred`)
  oracle     the segmenter run on the true frame 21 (`--oracle`): the ceiling a perfect
             frame predictor would reach with this segmenter
  copy_last  the true mask of frame 10, the last input frame: the floor a model that
             predicts no motion at all would reach

How torchmetrics (1.9) treats classes: with average="macro" a class absent from both the
prediction and the target of the whole split gets weight 0, so it is left out of the mean
rather than counted as 0 or 1; with average="none" such a class reads 0.0 (its
`zero_division` value), which is why the per-class table marks it 'absent' from the
confusion matrix instead of printing that 0. A class present in only one of the two is a
real 0 and is counted.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from . import data
from .errors import ConfigError, FuturesegError
from .io import atomic_path, read_array, save_npy, write_json

log = logging.getLogger("futureseg")

METHODS = ("pipeline", "oracle", "copy_last")
COPY_LAST_FRAME = data.N_INPUT - 1  # frame 10, the last frame the model sees


def class_name(class_id: int) -> str:
    """The class's name from the synthetic generator's table, else a generic one."""
    try:
        from .synth import class_name as synth_class_name
    except ImportError:
        return f"class_{class_id}"
    return str(synth_class_name(class_id))


def make_metrics():
    """One torchmetrics collection whose members all share one confusion-matrix state
    (torchmetrics' compute groups), so the set costs about one confusion matrix."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassJaccardIndex,
    )

    n = data.NUM_CLASSES
    # validate_args=False: torchmetrics' per-update checks (torch.unique over every pixel)
    # cost 20x the update itself; `score` checks shapes and the 0…48 range once, itself.
    checks = {"validate_args": False}
    return MetricCollection(
        {
            "iou": MulticlassJaccardIndex(n, average="macro", **checks),
            "iou_micro": MulticlassJaccardIndex(n, average="micro", **checks),
            "iou_per_class": MulticlassJaccardIndex(n, average="none", **checks),
            "pixel_acc": MulticlassAccuracy(n, average="micro", **checks),
            "confusion": MulticlassConfusionMatrix(n, **checks),
        }
    )


def summarize(computed: dict) -> dict:
    """Plain-Python results of one method from its computed collection."""
    confusion = computed["confusion"].numpy().astype(np.int64)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    per_class = computed["iou_per_class"].numpy().astype(float)
    return {
        "iou": float(computed["iou"]),
        "iou_micro": float(computed["iou_micro"]),
        "pixel_acc": float(computed["pixel_acc"]),
        "n_classes_counted": int(present.sum()),
        # None where the class is in neither prediction nor target (left out of the macro mean)
        "per_class_iou": [float(v) if p else None for v, p in zip(per_class, present)],
        "confusion": confusion,
    }


def load_masks(path: str | Path, ids: list[int], size: tuple[int, int], role: str) -> np.ndarray:
    """A (N, H, W) mask array whose sidecar ids must equal the val ids, in that order."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    masks, meta = read_array(path, f"{role} masks")
    file_ids = [int(i) for i in meta["ids"]]
    if file_ids != ids:
        missing = sorted(set(ids) - set(file_ids))
        extra = sorted(set(file_ids) - set(ids))
        detail = (
            f"{len(missing)} val videos missing (first {missing[:3]}), {len(extra)} not in val (first {extra[:3]})"
            if missing or extra
            else "same videos in a different order"
        )
        raise FuturesegError(f"{path}: ids in {sidecar.name} do not match the val split's ids ({detail})")
    expected = (len(ids), *size)
    if masks.shape != expected:
        raise FuturesegError(f"{path}: {role} masks have shape {masks.shape}, expected {expected} (N val videos, H, W)")
    if not np.issubdtype(masks.dtype, np.integer):
        raise FuturesegError(f"{path}: {role} masks have dtype {masks.dtype}, expected integer class ids")
    return masks


def _check_range(batch: np.ndarray, path, first_row: int) -> None:
    low, high = int(batch.min()), int(batch.max())
    if low < 0 or high >= data.NUM_CLASSES:
        raise FuturesegError(
            f"{path}: class ids {low}…{high} in rows {first_row}…{first_row + len(batch) - 1}, "
            f"expected 0…{data.NUM_CLASSES - 1}"
        )


def score(root, pred, oracle=None, batch_size: int = 32) -> dict:
    """Scores of every method on val frame 21, plus the pipeline's confusion matrix.

    Returns {"n_videos", <method>: summary, ...}; summaries hold numpy confusion matrices
    (not JSON); `scores_json` strips them.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    videos = data.list_videos(root, "val")
    ids = [v.id for v in videos]
    size = data.frame_size(root, "val")
    files = {"pipeline": pred}
    if oracle is not None:
        files["oracle"] = oracle
    guesses = {method: load_masks(path, ids, size, method) for method, path in files.items()}
    metrics = {method: make_metrics() for method in [*files, "copy_last"]}
    support = np.zeros(data.NUM_CLASSES, dtype=np.int64)

    for start in range(0, len(videos), batch_size):
        chunk = videos[start : start + batch_size]
        true_masks = np.stack([data.read_mask(v, size) for v in chunk])
        target = torch.from_numpy(true_masks[:, data.TARGET_FRAME].astype(np.int64))
        support += np.bincount(true_masks[:, data.TARGET_FRAME].ravel(), minlength=data.NUM_CLASSES)
        batch = {method: np.asarray(array[start : start + len(chunk)]) for method, array in guesses.items()}
        for method, values in batch.items():
            _check_range(values, files[method], start)
        batch["copy_last"] = true_masks[:, COPY_LAST_FRAME]
        for method, values in batch.items():
            metrics[method].update(torch.from_numpy(values.astype(np.int64)), target)

    result = {"n_videos": len(videos), "frame_size": list(size), "support": support}
    for method, collection in metrics.items():
        result[method] = summarize(collection.compute())
    return result


def scores_json(result: dict, files: dict) -> dict:
    """The JSON form of `score`'s result: confusion matrices and per-class lists left out
    (they go to their own files)."""
    out = {
        "n_videos": result["n_videos"],
        "frame": data.TARGET_FRAME,
        "frame_size": result["frame_size"],
        "metric": "torchmetrics MulticlassJaccardIndex(num_classes=49), accumulated over the split; "
        "iou = macro (classes absent from both prediction and target left out), iou_micro = micro, "
        "pixel_acc = MulticlassAccuracy micro",
        "inputs": {k: str(v) for k, v in files.items()},
    }
    for method in METHODS:
        if method in result:
            summary = result[method]
            out[method] = {k: summary[k] for k in ("iou", "iou_micro", "pixel_acc", "n_classes_counted")}
    return out


def write_per_class_csv(path, result: dict) -> None:
    """One row per class: name, IoU of each method ('absent' where the class is in neither
    that method's prediction nor the target), and its pixel support in the target."""
    methods = [m for m in METHODS if m in result]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class_id", "class_name", *(f"iou_{m}" for m in methods), "support_pixels"])
            for class_id in range(data.NUM_CLASSES):
                cells = []
                for method in methods:
                    value = result[method]["per_class_iou"][class_id]
                    cells.append("absent" if value is None else f"{value:.6f}")
                writer.writerow([class_id, class_name(class_id), *cells, int(result["support"][class_id])])


METHOD_LABELS = {
    "pipeline": "pipeline (segmenter on the predicted frame 21)",
    "oracle": "oracle (segmenter on the true frame 21)",
    "copy_last": "copy-last (true mask of frame 10)",
}


def write_scores_html(path, scores: dict) -> None:
    """The three-way comparison as a small self-contained HTML table (the report shows it)."""
    rows = []
    for method in METHODS:
        if method in scores:
            s = scores[method]
            rows.append(
                f"<tr><th scope=\"row\">{METHOD_LABELS[method]}</th><td>{s['iou']:.4f}</td>"
                f"<td>{s['iou_micro']:.4f}</td><td>{s['pixel_acc']:.4f}</td><td>{s['n_classes_counted']}</td></tr>"
            )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>scores</title>'
        "<style>body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
        "th,td{border:1px solid #bbb;padding:.3em .7em} td{text-align:right;font-variant-numeric:tabular-nums} "
        "thead th{background:#eee}</style></head><body>\n"
        f"<p>Frame {scores['frame']} of {scores['n_videos']} val videos "
        f"({scores['frame_size'][0]}×{scores['frame_size'][1]}). IoU is the competition metric: "
        "torchmetrics' macro Jaccard index over the 49 classes, accumulated over the split.</p>\n"
        "<table><thead><tr><th>method</th><th>IoU (macro)</th><th>IoU (micro)</th>"
        "<th>pixel accuracy</th><th>classes counted</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n</body></html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def run(root, pred, out, oracle=None, per_class=None, confusion=None, plot_per_class=None, plot_confusion=None,
        table=None, batch_size=32) -> dict:
    result = score(root, pred, oracle, batch_size)
    files = {"root": root, "pred": pred, **({"oracle": oracle} if oracle else {})}
    scores = scores_json(result, files)
    if per_class:
        write_per_class_csv(per_class, result)
    if confusion:
        save_npy(confusion, result["pipeline"]["confusion"])
    if table:
        write_scores_html(table, scores)
    if plot_per_class or plot_confusion:
        from . import plots

        names = [class_name(i) for i in range(data.NUM_CLASSES)]
        if plot_per_class:
            per_method = {m: result[m]["per_class_iou"] for m in METHODS if m in result}
            plots.per_class_iou(per_method, names, result["support"], plot_per_class)
        if plot_confusion:
            plots.confusion_heatmap(result["pipeline"]["confusion"], names, plot_confusion)
    # scores.json last: it is the rule's main output, so it appears only when the rest is done
    write_json(out, scores)
    return scores


VERB = "score"
HELP = "competition IoU of val frame 21: pipeline vs oracle vs copy-last (stage 5)"


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, help="Dataset_Student root (ground truth: val mask.npy[21])")
    parser.add_argument("--pred", required=True, help="masks_val.npy: the pipeline's frame-21 masks (ids sidecar beside it)")
    parser.add_argument("--oracle", help="masks_val_oracle.npy: the segmenter on the true frame 21")
    parser.add_argument("--out", required=True, help="scores.json to write")
    parser.add_argument("--per-class", help="per-class IoU CSV to write")
    parser.add_argument("--confusion", help="the pipeline's 49x49 confusion matrix (.npy, rows = true class)")
    parser.add_argument("--plot-per-class", help="bar chart PNG of per-class IoU")
    parser.add_argument("--plot-confusion", help="heat map PNG of the most-confused classes")
    parser.add_argument("--table", metavar="HTML", help="the three-way table as an HTML page to write")
    parser.add_argument("--batch-size", type=int, default=32, help="videos per metric update")


def main(args) -> None:
    scores = run(
        args.root,
        args.pred,
        args.out,
        oracle=args.oracle,
        per_class=args.per_class,
        confusion=args.confusion,
        plot_per_class=args.plot_per_class,
        plot_confusion=args.plot_confusion,
        table=args.table,
        batch_size=args.batch_size,
    )
    for method in METHODS:
        if method in scores:
            s = scores[method]
            print(f"{method:9s} IoU {s['iou']:.4f}  micro IoU {s['iou_micro']:.4f}  pixel acc {s['pixel_acc']:.4f}")
    print(f"over {scores['n_videos']} val videos -> {args.out}")
