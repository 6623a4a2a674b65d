"""Stage 5: the competition metric on the val split, for every route and the references.

The metric is torchmetrics' multiclass Jaccard index over the 49 classes, macro average
(its default), of the mask of frame 21 of every val video. It is accumulated over the
whole split (one confusion matrix, `update` per batch), so it is not an average of
per-batch or per-video scores: a class counts once, with all its pixels of the split.

Guesses of frame 21's mask scored side by side:
  routes        each route's masks (`--route NAME=MASKS`; `pipeline` = the submitted one),
                or one pipeline's (`--pred`)
  oracle        the segmenter run on the true frame 21 (`--oracle`): segmentation alone,
                the ceiling a perfect forecast would reach with this segmenter
  motion_truth  route motion's motion applied to the true masks of frames 0…10
                (`--motion-truth`): motion alone, with a perfect segmenter
  dynamics_truth  route dynamics' learnt model on the true masks of frames 0…10
                (`--dynamics-truth`): learnt motion alone
  placement_oracle  each object of the true mask 10 at its true centroid and size in frame 21
                (`--placement-oracle`): the ceiling of any route that moves what it saw
  segmented_copy_last  the segmenter on the true frame 10 (`--segmented-copy-last`)
  copy_last     the true mask of frame 10, the last input frame: the floor a model that
                predicts no motion at all would reach

Each entry also carries `foreground_iou` (objects vs background, whatever their class) and
`factor_accuracy` {shape, material, colour} over the pixels that both call an object, read
off its confusion matrix: they tell a segmenter that misses objects from one that finds
them and gets their shape wrong.

Each entry carries DAVIS 2017's video metrics too (video_metrics.py, DESIGN.md §3e):
`boundary_f`, the boundary F-measure per (video, class present in its true or predicted
frame 21) averaged over those pairs, and `j_and_f` = (iou + boundary_f) / 2, J being the
macro IoU above. Routes that forecast the whole sequence 11…21 (`--sequence`) get, beside
the truth's, its temporal IoU and DAVIS 2016's temporal stability T (`temporal_stability`:
how much each object's outline changes shape between consecutive frames, 0 = not at all;
video_metrics.temporal_stability), and so do the pseudo-labels of frames 0…10.

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

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.dense import sequence_scores
from futureseg.core.io import atomic_path, read_array, save_npy, write_json
from futureseg.evaluate import video_metrics

log = logging.getLogger("futureseg")

METHODS = ("pipeline", "oracle", "copy_last")
# the references a route is measured against, beside copy-last (DESIGN.md §3b): oracle is
# segmentation alone; motion_truth the rule's motion alone, dynamics_truth the learnt one's,
# placement_oracle the ceiling of moving what was seen (a user reads them in this order)
REFERENCES = ("oracle", "motion_truth", "dynamics_truth", "placement_oracle", "segmented_copy_last", "copy_last")
FACTORS = ("shape", "material", "colour")
COPY_LAST_FRAME = data.N_INPUT - 1  # frame 10, the last frame the model sees


def class_name(class_id: int) -> str:
    """The class's name from the synthetic generator's table, else a generic one."""
    try:
        from futureseg.core.classes import class_name as synth_class_name
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


def factor_diagnostics(confusion: np.ndarray) -> dict:
    """What a 49x49 confusion matrix (rows: true class) says of objects, beside the IoU:
    `foreground_iou`, the class-agnostic IoU of object vs background pixels (did it find the
    objects?), and `factor_accuracy`, over the pixels that truth and prediction both call an
    object, the fraction whose shape, material and colour agree (which factor fails?).
    None where there are no such pixels."""
    from futureseg.core.classes import class_parts

    object_pixels = confusion[1:, 1:]
    both = int(object_pixels.sum())
    union = both + int(confusion[0, 1:].sum()) + int(confusion[1:, 0].sum())
    parts = np.array([class_parts(c) for c in range(1, data.NUM_CLASSES)])  # (48, 3)
    accuracy = {}
    for k, factor in enumerate(FACTORS):
        agree = parts[:, k][:, None] == parts[:, k][None, :]
        accuracy[factor] = float(object_pixels[agree].sum() / both) if both else None
    return {"foreground_iou": both / union if union else None, "factor_accuracy": accuracy}


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
        **factor_diagnostics(confusion),
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


def score(root, files: dict, batch_size: int = 32) -> dict:
    """Scores on val frame 21 of every guess in `files` ({method: masks path}) and of
    copy-last, with confusion matrices.

    Returns {"n_videos", "frame_size", "support", <method>: summary, ...}; summaries hold
    numpy confusion matrices (not JSON); `scores_json` strips them.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    videos = data.list_videos(root, "val")
    ids = [v.id for v in videos]
    size = data.frame_size(root, "val")
    guesses = {method: load_masks(path, ids, size, method) for method, path in files.items()}
    metrics = {method: make_metrics() for method in [*files, "copy_last"]}
    # one boundary F per (video, class) pair, averaged over the split's pairs at the end
    boundary_f = {method: [] for method in metrics}
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
            name = str(files.get(method, "copy_last (true masks of frame 10)"))
            boundary_f[method].append(video_metrics.boundary_f_pairs(values, true_masks[:, data.TARGET_FRAME], name))

    result = {"n_videos": len(videos), "frame_size": list(size), "support": support}
    for method, collection in metrics.items():
        summary = summarize(collection.compute())
        result[method] = {**summary, **video_metrics.j_and_f(summary["iou"], np.concatenate(boundary_f[method]))}
    return result


def temporal_iou(sequences) -> float:
    """Temporal consistency of mask sequences (N, K, H, W): the macro IoU (the competition
    metric, over the split) between the masks of each two consecutive frames, averaged over
    the K-1 pairs. 1.0 = nothing changes; the true masks' figure is the reference."""
    from futureseg.core.dense import macro_iou

    sequences = np.asarray(sequences)
    if sequences.ndim != 4 or sequences.shape[1] < 2:
        raise FuturesegError(f"temporal IoU needs (N, K >= 2, H, W) mask sequences, got {sequences.shape}")
    return float(np.mean([macro_iou(sequences[:, k + 1], sequences[:, k]) for k in range(sequences.shape[1] - 1)]))


def read_val_sequences(path, what: str, ids: list[int]) -> tuple[np.ndarray, dict]:
    """`read_array` of a file of val's mask sequences (N, K, H, W), its ids checked against val's."""
    masks, meta = read_array(path, what)
    if [int(i) for i in meta["ids"]] != ids:
        raise FuturesegError(f"{path}: ids in its sidecar do not match the val split's ids")
    return masks, meta


def temporal_scores(root, sequences: dict) -> tuple[dict, dict]:
    """({route: temporal IoU of its predicted masks 11…21, "true_masks": that of the truth},
    the same of DAVIS 2016's temporal stability T (video_metrics.split_temporal_stability:
    the mean over (video, object class) sequences; None where no object has a contour in two
    consecutive frames)). The true masks are read once, for both."""
    videos = data.list_videos(root, "val")
    ids = [v.id for v in videos]
    iou, stability = {}, {}
    for route, path in sequences.items():
        masks = read_val_sequences(path, f"{route} mask sequence", ids)[0]
        iou[route] = temporal_iou(masks)
        stability[route] = video_metrics.split_temporal_stability(masks, str(path))
    size = data.frame_size(root, "val")
    truth = np.stack([data.read_mask(v, size)[data.N_INPUT :] for v in videos])
    iou["true_masks"] = temporal_iou(truth)
    stability["true_masks"] = video_metrics.split_temporal_stability(truth, "true masks 11…21")
    return iou, stability


def pseudo_label_scores(root, path, batch_size: int = 32) -> dict:
    """How well the segmenter's masks of val's input frames 0…10 (pseudo-label's: what routes
    masks, motion and dynamics start from) hold together: their macro IoU against the true
    masks of those frames (every frame of the split accumulated), their temporal IoU (as
    `temporal_iou`, over the 10 pairs of consecutive frames) and temporal stability T (as
    `temporal_scores`'), each beside the truth's. Objects that flicker from frame to frame
    lower the temporal IoU below the truth's, outlines that wobble raise T above it; every
    track the routes read inherits that noise."""
    n_frames = data.N_INPUT
    videos = data.list_videos(root, "val")
    ids = [v.id for v in videos]
    size = data.frame_size(root, "val")
    masks, meta = read_val_sequences(path, "pseudo-labels", ids)
    if masks.shape != (len(ids), n_frames, *size):
        raise FuturesegError(f"{path}: pseudo-labels have shape {masks.shape}, expected "
                             f"{(len(ids), n_frames, *size)} (N val videos, frames 0…{n_frames - 1}, H, W)")
    if meta.get("frame_indices", list(range(n_frames))) != list(range(n_frames)):
        raise FuturesegError(f"{path}: pseudo-labels of frames {meta['frame_indices']}, expected 0…{n_frames - 1}")

    stable = {"": [], "true_": []}  # T of every (video, object class) sequence, averaged at the end

    def batches():
        for start in range(0, len(videos), batch_size):
            chunk = videos[start : start + batch_size]
            truth = np.stack([data.read_mask(v, size)[:n_frames] for v in chunk])
            values = np.asarray(masks[start : start + len(chunk)])
            _check_range(values, path, start)
            for prefix, sequences, what in (("", values, str(path)), ("true_", truth, "true masks 0…10")):
                for k, video in enumerate(sequences):
                    stable[prefix] += video_metrics.stability_per_class(video, f"{what}, row {start + k}").values()
            yield values, truth

    scores = sequence_scores(batches())
    return {"frames": list(range(n_frames)), **scores,
            **{f"{prefix}temporal_stability": float(np.mean(values)) if values else None
               for prefix, values in stable.items()}}


SUMMARY_KEYS = ("iou", "boundary_f", "j_and_f", "iou_micro", "pixel_acc", "n_classes_counted", "foreground_iou",
                "factor_accuracy")


def scores_json(result: dict, files: dict, routes: dict | None = None, submit: str | None = None,
                submitted: str | None = None, temporal: dict | None = None, pseudo_labels: dict | None = None,
                stability: dict | None = None) -> dict:
    """The JSON form of `score`'s result: confusion matrices and per-class lists left out
    (they go to their own files). With routes: `routes` {name: summary}, `submitted_route`
    and `pipeline` = the submitted route's summary (the key older readers know)."""
    out = {
        "n_videos": result["n_videos"],
        "frame": data.TARGET_FRAME,
        "frame_size": result["frame_size"],
        "metric": "torchmetrics MulticlassJaccardIndex(num_classes=49), accumulated over the split; "
        "iou = macro (classes absent from both prediction and target left out), iou_micro = micro, "
        "pixel_acc = MulticlassAccuracy micro; boundary_f = DAVIS 2017 f_measure (seg2bmap boundaries, "
        "tolerance ceil(0.008 x diagonal) px) per (video, class in its truth or prediction), averaged; "
        "j_and_f = (iou + boundary_f) / 2; temporal_stability = DAVIS 2016 T (5 x the mean chi-square cost of "
        "shape contexts of consecutive contours matched by DTW, 0 = stable) per (video, object class), averaged",
        "inputs": {k: str(v) for k, v in files.items()},
    }
    for method in dict.fromkeys((*METHODS, *REFERENCES)):
        if method in result:
            out[method] = {k: result[method][k] for k in SUMMARY_KEYS}
    if routes:
        out["routes"] = {name: {k: result[name][k] for k in SUMMARY_KEYS} for name in routes}
        out["pipeline"] = out["routes"][submitted]
        out["submit"] = submit
        out["submitted_route"] = submitted
    if temporal:
        out["temporal_iou"] = temporal
    if stability:
        out["temporal_stability"] = stability
    if pseudo_labels:
        out["pseudo_labels"] = pseudo_labels
    return out


def pick_route(result: dict, routes, submit: str) -> str:
    """The route whose hidden masks are submitted: `submit`, or for "best" the route with
    the highest val IoU (the first listed on a tie)."""
    if submit != "best":
        if submit not in routes:
            raise ConfigError(f"eval.submit: route {submit!r} was not scored (routes: {', '.join(routes)})")
        return submit
    return max(routes, key=lambda name: (result[name]["iou"], -list(routes).index(name)))


def write_per_class_csv(path, result: dict, methods) -> None:
    """One row per class: name, IoU of each method ('absent' where the class is in neither
    that method's prediction nor the target), and its pixel support in the target."""
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
    "motion_truth": "motion truth (route motion's motion on the true masks 0…10)",
    "dynamics_truth": "dynamics truth (route dynamics' learnt motion on the true masks 0…10)",
    "placement_oracle": "placement oracle (each true object of frame 10 at its true frame-21 centroid and size)",
    "segmented_copy_last": "segmented copy-last (segmenter on the true frame 10)",
    "copy_last": "copy-last (true mask of frame 10)",
}
ROUTE_LABELS = {
    "frames": "route frames (segmenter on the predicted frame 21)",
    "masks": "route masks (forecast from the segmented frames 0…10)",
    "direct": "route direct (U-Net on the 11 stacked frames)",
    "motion": "route motion (each segmented object of frame 10 moved by its own motion)",
    "dynamics": "route dynamics (each segmented object of frame 10 moved and scaled by the learnt dynamics)",
}


def table_rows(scores: dict) -> list[tuple[str, str, dict]]:
    """(key, label, summary) rows of the comparison: every route (or the pipeline), then
    the references."""
    rows = []
    if "routes" in scores:
        for name, summary in scores["routes"].items():
            mark = " — submitted" if name == scores["submitted_route"] else ""
            rows.append((name, ROUTE_LABELS.get(name, f"route {name}") + mark, summary))
    elif "pipeline" in scores:
        rows.append(("pipeline", METHOD_LABELS["pipeline"], scores["pipeline"]))
    for method in REFERENCES:
        if method in scores:
            rows.append((method, METHOD_LABELS[method], scores[method]))
    return rows


def write_scores_html(path, scores: dict) -> None:
    """The side-by-side comparison as a small self-contained HTML table (the report shows it)."""
    def cell(value):
        return "–" if value is None else f"{value:.4f}"

    rows = [
        f"<tr><th scope=\"row\">{label}</th><td>{s['iou']:.4f}</td><td>{s['boundary_f']:.4f}</td>"
        f"<td>{s['j_and_f']:.4f}</td><td>{s['iou_micro']:.4f}</td><td>{s['pixel_acc']:.4f}</td>"
        f"<td>{s['n_classes_counted']}</td></tr>"
        for _, label, s in table_rows(scores)
    ]
    factor_rows = "".join(
        f"<tr><th scope=\"row\">{label}</th><td>{cell(s['foreground_iou'])}</td>"
        + "".join(f"<td>{cell(s['factor_accuracy'][f])}</td>" for f in FACTORS) + "</tr>"
        for _, label, s in table_rows(scores)
    )
    factors = ("<p>Which factor fails: foreground IoU (objects vs background, whatever their class) and, on "
               "the pixels that truth and prediction both call an object, how often shape, material and colour "
               "agree.</p>\n<table><thead><tr><th>method</th><th>foreground IoU</th><th>shape</th><th>material</th>"
               f"<th>colour</th></tr></thead><tbody>{factor_rows}</tbody></table>\n")
    temporal = ""
    if scores.get("temporal_iou"):
        stability = scores.get("temporal_stability", {})
        cells = "".join(f"<tr><th scope=\"row\">{name}</th><td>{value:.4f}</td><td>{cell(stability.get(name))}</td></tr>"
                        for name, value in scores["temporal_iou"].items())
        temporal = ("<p>Temporal IoU: the macro IoU between consecutive masks of frames 11…21, averaged "
                    "over the 10 pairs (temporal consistency; the true masks' figure is the reference). "
                    "Temporal stability T: DAVIS 2016's, how much each object's outline changes shape from one "
                    "frame to the next (shape contexts of the two contours matched point to point, 5 × the mean "
                    "matching cost; 0 = unchanged, lower is more stable), per video and object class, averaged.</p>\n"
                    "<table><thead><tr><th>masks</th><th>temporal IoU</th><th>temporal stability T</th></tr></thead>"
                    f"<tbody>{cells}</tbody></table>\n")
    pseudo = scores.get("pseudo_labels")
    if pseudo:
        temporal += (f"<p>The segmenter's masks of val's input frames 0…10 (the pseudo-labels routes masks, motion "
                     f"and dynamics start from): IoU {pseudo['iou']:.4f} against the true masks of those frames, "
                     f"temporal IoU {pseudo['temporal_iou']:.4f} (the true masks': {pseudo['true_temporal_iou']:.4f}), "
                     f"temporal stability T {cell(pseudo.get('temporal_stability'))} (the true masks': "
                     f"{cell(pseudo.get('true_temporal_stability'))}).</p>\n")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>scores</title>'
        "<style>body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
        "th,td{border:1px solid #bbb;padding:.3em .7em} td{text-align:right;font-variant-numeric:tabular-nums} "
        "thead th{background:#eee}</style></head><body>\n"
        f"<p>Frame {scores['frame']} of {scores['n_videos']} val videos "
        f"({scores['frame_size'][0]}×{scores['frame_size'][1]}). IoU is the competition metric: "
        "torchmetrics' macro Jaccard index over the 49 classes, accumulated over the split, and DAVIS's J. "
        "Boundary F is DAVIS 2017's boundary F-measure (boundaries matched within ceil(0.008 × the frame's "
        "diagonal) pixels) of each class in a video's true or predicted frame 21, averaged over those "
        "(video, class) pairs; J&amp;F = (IoU + F) / 2.</p>\n"
        "<table><thead><tr><th>method</th><th>IoU (macro) = J</th><th>boundary F</th><th>J&amp;F</th><th>IoU (micro)</th>"
        "<th>pixel accuracy</th><th>classes counted</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n" + factors + temporal + "</body></html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def run(root, pred, out, oracle=None, per_class=None, confusion=None, plot_per_class=None, plot_confusion=None,
        table=None, batch_size=32, routes=None, segmented_copy_last=None, submit="best", sequences=None,
        motion_truth=None, dynamics_truth=None, placement_oracle=None, pseudo_labels=None) -> dict:
    """Score and write the outputs. Either `pred` (one pipeline's masks) or `routes`
    ({route: masks path}, scored side by side, `submit` picking the pipeline)."""
    routes = dict(routes or {})
    if bool(pred) == bool(routes):
        raise ConfigError("score: give either --pred or one --route NAME=MASKS or more")
    taken = sorted(set(routes) & {"pipeline", *REFERENCES})
    if taken:
        raise ConfigError(f"--route {taken[0]}=...: {taken[0]!r} names a reference, not a route")
    files = {**({"pipeline": pred} if pred else routes), **({"oracle": oracle} if oracle else {}),
             **({"motion_truth": motion_truth} if motion_truth else {}),
             **({"dynamics_truth": dynamics_truth} if dynamics_truth else {}),
             **({"placement_oracle": placement_oracle} if placement_oracle else {}),
             **({"segmented_copy_last": segmented_copy_last} if segmented_copy_last else {})}
    result = score(root, files, batch_size)
    submitted = None
    if routes:
        submitted = pick_route(result, routes, submit)
        result["pipeline"] = result[submitted]
    temporal, stability = temporal_scores(root, sequences) if sequences else (None, None)
    pseudo = pseudo_label_scores(root, pseudo_labels, batch_size) if pseudo_labels else None
    inputs = {"root": root, **files, **({"pseudo_labels": pseudo_labels} if pseudo_labels else {})}
    scores = scores_json(result, inputs, routes, submit, submitted, temporal, pseudo, stability)
    methods = [m for m in [*(routes or ["pipeline"]), *REFERENCES] if m in result]
    if per_class:
        write_per_class_csv(per_class, result, methods)
    if confusion:
        save_npy(confusion, result["pipeline"]["confusion"])
    if table:
        write_scores_html(table, scores)
    if plot_per_class or plot_confusion:
        from futureseg.evaluate import report_figures

        names = [class_name(i) for i in range(data.NUM_CLASSES)]
        if plot_per_class:
            report_figures.per_class_iou({m: result[m]["per_class_iou"] for m in methods}, names, result["support"],
                                plot_per_class)
        if plot_confusion:
            report_figures.confusion_heatmap(result["pipeline"]["confusion"], names, plot_confusion)
    # scores.json last: it is the rule's main output, so it appears only when the rest is done
    write_json(out, scores)
    return scores


VERB = "score"
HELP = "competition IoU of val frame 21: every route beside the references, with factor diagnostics (stage 5)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import name_path

    parser.add_argument("--root", required=True, help="Dataset_Student root (ground truth: val mask.npy[21])")
    parser.add_argument("--pred", help="masks_val.npy: one pipeline's frame-21 masks (ids sidecar beside it)")
    parser.add_argument("--route", type=name_path, action="append", default=[], metavar="NAME=MASKS",
                        help="a route's frame-21 masks of val; repeat to score routes side by side")
    parser.add_argument("--submit", default="best", help="the route submitted, or best (highest val IoU)")
    parser.add_argument("--sequence", type=name_path, action="append", default=[], metavar="NAME=MASKS",
                        help="a route's masks of frames 11…21 (N, 11, H, W): its temporal IoU and temporal "
                             "stability are reported")
    parser.add_argument("--pseudo-labels", help="pseudo/val.npy: the segmenter's masks of val's frames 0…10 (N, 11, H, W): "
                                                "their IoU, temporal IoU and temporal stability beside the truth's "
                                                "are reported")
    parser.add_argument("--oracle", help="masks_val_oracle.npy: the segmenter on the true frame 21")
    parser.add_argument("--segmented-copy-last", help="masks_val_frame10.npy: the segmenter on the true frame 10")
    parser.add_argument("--motion-truth", help="masks_val_truth.npy: route motion's motion on the true masks 0…10")
    parser.add_argument("--dynamics-truth", help="dynamics/masks_val_truth.npy: route dynamics' model on the true masks 0…10")
    parser.add_argument("--placement-oracle", help="masks_val_placement_oracle.npy: each true object of frame 10 at its "
                                                   "true frame-21 centroid and size")
    parser.add_argument("--out", required=True, help="scores.json to write")
    parser.add_argument("--per-class", help="per-class IoU CSV to write")
    parser.add_argument("--confusion", help="the pipeline's 49x49 confusion matrix (.npy, rows = true class)")
    parser.add_argument("--plot-per-class", help="bar chart PNG of per-class IoU")
    parser.add_argument("--plot-confusion", help="heat map PNG of the most-confused classes")
    parser.add_argument("--table", metavar="HTML", help="the comparison as an HTML page to write")
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
        routes=dict(args.route),
        segmented_copy_last=args.segmented_copy_last,
        motion_truth=args.motion_truth,
        dynamics_truth=args.dynamics_truth,
        placement_oracle=args.placement_oracle,
        submit=args.submit,
        sequences=dict(args.sequence),
        pseudo_labels=args.pseudo_labels,
    )
    for key, _, s in table_rows(scores):
        mark = " (submitted)" if key == scores.get("submitted_route") else ""
        print(f"{key:9s} IoU {s['iou']:.4f}  boundary F {s['boundary_f']:.4f}  J&F {s['j_and_f']:.4f}  "
              f"micro IoU {s['iou_micro']:.4f}  pixel acc {s['pixel_acc']:.4f}{mark}")
    def figure(value):
        return "–" if value is None else f"{value:.4f}"

    for name, value in scores.get("temporal_iou", {}).items():
        print(f"temporal IoU {value:.4f}  temporal stability T {figure(scores['temporal_stability'][name])}  {name}")
    if "pseudo_labels" in scores:
        p = scores["pseudo_labels"]
        print(f"pseudo-labels of val frames 0…10: IoU {p['iou']:.4f}  temporal IoU {p['temporal_iou']:.4f} "
              f"(true masks {p['true_temporal_iou']:.4f})  temporal stability T {figure(p['temporal_stability'])} "
              f"(true masks {figure(p['true_temporal_stability'])})")
    print(f"over {scores['n_videos']} val videos -> {args.out}")
