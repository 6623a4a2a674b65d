"""The report's figures: per-class IoU, confusions, training curves, a contact sheet and
animations of val examples (every route's masks beside the truth, the submitted route
marked); and the `futureseg report-figures` verb.

Figures are built as `matplotlib.figure.Figure` objects and rendered by Agg (the PNG
writer), without pyplot: no global figure state, no display needed, safe on a headless
node. Every PNG is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError
from futureseg.core.io import atomic_path, read_array

METHOD_COLOURS = {"pipeline": "#1f77b4", "oracle": "#2ca02c", "copy_last": "#ff7f0e"}


# ---------------------------------------------------------------- colours


def _default_palette() -> np.ndarray:
    """49 distinct colours: near-black background, then 48 from tab20/tab20b/tab20c
    (distinct hues, so two objects of the same colour but different shape still differ)."""
    from matplotlib import colormaps

    colours = [colormaps[name](i)[:3] for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    table = np.array([(0.08, 0.08, 0.08), *colours[: data.NUM_CLASSES - 1]])
    return (table * 255).round().astype(np.uint8)


def palette() -> np.ndarray:
    """(49, 3) uint8 colours of the class ids: the generator's palette when it has one."""
    try:
        from futureseg.core.classes import PALETTE
    except ImportError:
        return _default_palette()
    table = np.asarray(PALETTE)
    if table.shape != (data.NUM_CLASSES, 3):
        return _default_palette()
    if np.issubdtype(table.dtype, np.floating) and table.max() <= 1.0:
        table = table * 255
    return np.clip(np.round(table), 0, 255).astype(np.uint8)


def colourise(mask: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """A (H, W) class-id mask as an RGB uint8 image."""
    table = palette() if table is None else table
    return table[np.clip(mask, 0, data.NUM_CLASSES - 1)]


# ---------------------------------------------------------------- figure plumbing


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig, path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


# ---------------------------------------------------------------- score figures


def per_class_iou(per_method: dict, names: list[str], support, out_png) -> Path:
    """Grouped bars of per-class IoU, one colour per method; classes that no method
    predicts and no target holds are left out (they do not count in the macro mean)."""
    support = np.asarray(support)
    shown = [c for c in range(len(names)) if support[c] > 0 or any(v[c] is not None for v in per_method.values())]
    if not shown:
        shown = list(range(len(names)))
    fig = _figure(min(16.0, max(6.0, 2.0 + 0.28 * len(shown))), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(per_method))
    x = np.arange(len(shown))
    for k, (method, values) in enumerate(per_method.items()):
        positions = x + (k - (len(per_method) - 1) / 2) * width
        heights = np.array([np.nan if values[c] is None else values[c] for c in shown])
        present = [v for v in values if v is not None]
        macro = float(np.mean(present)) if present else float("nan")
        colour = METHOD_COLOURS.get(method)
        ax.bar(positions, heights, width, color=colour, label=f"{method} (macro IoU {macro:.3f})")
        # a counted 0 gets a tick so it reads differently from an absent class (no mark)
        zero = heights == 0
        ax.plot(positions[zero], np.full(zero.sum(), 0.012), linestyle="none", marker="^", markersize=3, color=colour)
        ax.axhline(macro, color=colour, linestyle="--", linewidth=0.8)
    ax.set_xticks(x, [f"{c} {names[c]}" if names[c] != f"class_{c}" else str(c) for c in shown], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("class")
    ax.set_ylabel("IoU (val, frame 21)")
    ax.set_title(
        f"Per-class IoU over the val split: {len(shown)} classes present; dashed: macro mean; "
        "triangle: IoU 0 (counted); no mark: class absent for that method (not counted)",
        fontsize=9,
    )
    fig.legend(loc="outside upper center", ncols=len(per_method), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, out_png)


def most_confused(confusion: np.ndarray, top: int = 12) -> list[int]:
    """The `top` classes with the most off-diagonal pixels (as true or as predicted class),
    in class-id order; topped up with the most frequent classes when few are confused."""
    confusion = np.asarray(confusion, dtype=np.int64)
    off = confusion - np.diag(np.diag(confusion))
    mass = off.sum(0) + off.sum(1)
    order = [int(c) for c in np.argsort(-mass, kind="stable") if mass[c] > 0][:top]
    if len(order) < min(top, 2):
        total = confusion.sum(0) + confusion.sum(1)
        order += [int(c) for c in np.argsort(-total, kind="stable") if total[c] > 0 and c not in order]
        order = order[: max(2, len(order[:top]))]
    return sorted(order)


def confusion_heatmap(confusion: np.ndarray, names: list[str], out_png, top: int = 12) -> Path:
    """Row-normalised confusion among the most-confused classes: cell (t, p) is the share
    of class t's true pixels predicted as p, annotated in percent."""
    confusion = np.asarray(confusion, dtype=np.int64)
    classes = most_confused(confusion, top)
    sub = confusion[np.ix_(classes, classes)].astype(float)
    rows = confusion[classes].sum(1, keepdims=True).astype(float)
    share = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    labels = [f"{c} {names[c]}" if names[c] != f"class_{c}" else f"class {c}" for c in classes]
    row_labels = [label + (" (never true)" if rows[k, 0] == 0 else "") for k, label in enumerate(labels)]
    size = 2.5 + 0.55 * len(classes)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if sub[i, j] > 0:
                text = "<1" if share[i, j] < 0.005 else f"{100 * share[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), row_labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Pipeline confusion, {len(classes)} most-confused classes\n(% of the true class's pixels; other classes' columns omitted)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true-class pixels")
    return save_png(fig, out_png)


# ---------------------------------------------------------------- training curves


@dataclass(frozen=True)
class Trainer:
    """What the training curves draw of one trainer's metrics.csv: the columns that trainer
    writes (core.training.fit: its losses `train_*`, its validate()'s entries at each epoch end)."""

    title: str
    losses: tuple[str, ...]  # its training-loss column: the first of these the CSV holds
    metric: str  # the val metric it is judged by
    metric_label: str  # legend text of `metric`
    axis_label: str  # y-axis text of the metric's panel
    digits: int  # of the last value in the legend
    # (column, legend text) of the metric's baseline: the first of these the CSV holds is drawn
    baselines: tuple[tuple[str, str], ...] = ()
    val_loss: str | None = None  # a val loss in the training loss's units, drawn beside it


TRAINERS = {
    "predictor": Trainer("Frame predictor", ("train_loss",), "val_psnr_f21", "val PSNR of frame 21", "PSNR (dB)", 2,
                         (("copy_last_psnr_f21", "val PSNR of copy-last"),), val_loss="val_loss"),
    # Mask R-CNN's loop logs its summed loss as `loss` (no prefix), the U-Net's as `train_loss`
    "segmenter": Trainer("Segmenter", ("train_loss", "loss"), "val_oracle_iou", "val IoU on true frames", "IoU", 3),
    "object_classifier": Trainer("Object classifier", ("train_loss",), "val_repaint_iou", "val IoU of repainted masks",
                                 "IoU", 3),
    # a forecaster on a sequence prior (motion, dynamics) logs that prior's IoU; on copy_last its
    # prior is the segmenter's mask of frame 10 copied, which it logs under that name
    "forecaster": Trainer("Mask forecaster", ("train_loss",), "val_iou", "val IoU", "IoU", 3,
                          (("val_prior_iou", "val IoU of the prior"),
                           ("val_pseudo_copy_last_iou", "val IoU of the prior (mask 10 copied)"))),
    "direct": Trainer("Direct U-Net", ("train_loss",), "val_iou", "val IoU", "IoU", 3),
    "dynamics": Trainer("Dynamics", ("train_loss",), "val_iou", "val IoU", "IoU", 3,
                        (("val_rule_iou", "val IoU of the rule (route motion)"),)),
}
# how config.yaml's model keys read in a title; another key is shown as given
MODEL_NAMES = {"simvp": "SimVP", "convlstm": "ConvLSTM", "convgru": "ConvGRU", "unet": "U-Net", "enet": "ENet", "maskrcnn": "Mask R-CNN"}
# a metric's y-axis spans at least this much, so that a flat curve's last-digit jitter does
# not look like learning
_MIN_SPAN = {"IoU": 0.02, "PSNR (dB)": 0.5}


def read_metrics_csv(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{column: (steps, values)} of a MetricsLog CSV; non-numeric or empty cells skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metrics CSV does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise DataError(f"{path}: not a metrics CSV (no 'step' column)")
        rows = list(reader)
    series = {}
    for column in reader.fieldnames:
        if column in ("step", "epoch"):
            continue
        steps, values = [], []
        for row in rows:
            try:
                step, value = float(row["step"]), float(row[column])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                steps.append(step)
                values.append(value)
        if values:
            series[column] = (np.array(steps), np.array(values))
    return series


@dataclass
class Curves:
    """One trainer's curves, read and checked: {legend text: (steps, values)} of each panel."""

    stage: str
    title: str
    metric: dict
    baseline: dict
    loss: dict


def _metric_label(trainer: Trainer, label: str, values) -> str:
    return f"{label}: {values[-1]:.{trainer.digits}f}"


def read_curves(stage: str, path, model: str | None = None) -> Curves:
    """The curves of `stage`'s metrics.csv at `path`, each error naming the file."""
    trainer = TRAINERS[stage]
    series = read_metrics_csv(path)
    found = ", ".join(series) or "none"
    loss = next((c for c in trainer.losses if c in series), None)
    for column in (loss or " or ".join(trainer.losses), trainer.metric):
        if column not in series:
            raise DataError(f"{path}: no {column} values, which the {trainer.title.lower()}'s metrics hold "
                            f"(--metrics {stage}=...); its columns with values: {found}")
    title = f"{trainer.title} ({MODEL_NAMES.get(model, model)})" if model else trainer.title
    metric = {_metric_label(trainer, trainer.metric_label, series[trainer.metric][1]): series[trainer.metric]}
    baseline = next(({_metric_label(trainer, label, series[c][1]): series[c]}
                     for c, label in trainer.baselines if c in series), {})
    losses = {"train loss": series[loss]}
    if trainer.val_loss in series:
        losses["val loss"] = series[trainer.val_loss]
    return Curves(stage, title, metric, baseline, {f"{k}: {v[1][-1]:.3g}": v for k, v in losses.items()})


def _check_stages(metrics: dict, models: dict) -> None:
    for stage, path in metrics.items():
        if stage not in TRAINERS:
            raise ConfigError(f"--metrics {stage}={path}: no trainer {stage!r}; one of {', '.join(TRAINERS)}")
    for stage, model in models.items():
        if stage not in metrics:
            raise ConfigError(f"--model {stage}={model}: no --metrics {stage}=CSV to title")


def _plot(ax, steps, values, label, **style) -> None:
    # unclipped: a point on the panel's edge (an IoU of 0) shows whole
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2, label=label,
            clip_on=False, **style)


def _draw(subfig, curves: Curves) -> None:
    from matplotlib.ticker import MultipleLocator

    trainer = TRAINERS[curves.stage]
    top, bottom = subfig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for label, (steps, values) in curves.metric.items():
        _plot(top, steps, values, label, color="#1f77b4", zorder=3)  # over its baseline where it stays on it
    for label, (steps, values) in curves.baseline.items():
        # a baseline is scored once per run: a constant, drawn across the panel (a run of
        # one epoch has one point, which a line through it would not show)
        if np.ptp(values) == 0:
            top.axhline(values[0], color="#ff7f0e", linestyle="--", linewidth=1.2, label=label)
        else:
            _plot(top, steps, values, label, color="#ff7f0e", linestyle="--")
    low, high = top.get_ylim()
    span = _MIN_SPAN.get(trainer.axis_label, 0)
    if high - low < span:
        low = (low + high - span) / 2
        high = low + span
    if trainer.axis_label == "IoU":  # no room for IoUs below 0 or above 1
        low, high = max(0.0, low - max(0.0, high - 1)), min(1.0, high - min(0.0, low))
    top.set_ylim(low, high)
    top.set_title(curves.title, fontsize=10)
    top.set_ylabel(f"val {trainer.axis_label}", fontsize=8)
    for (label, (steps, values)), colour in zip(curves.loss.items(), ("#444444", "#2ca02c")):
        _plot(bottom, steps, values, label, color=colour)
    every = np.concatenate([values for _, values in curves.loss.values()])
    size = np.abs(every)
    if (every > 0).all() and every.max() / every.min() > 20:
        bottom.set_yscale("log")
    elif size.max() > 20 * np.median(size) > 0:
        # a loss that goes negative (dynamics' Gaussian NLL) after a first epoch far above
        # the rest: linear near zero, logarithmic beyond, so the later epochs stay visible
        bottom.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(np.median(size))))
    bottom.set_ylabel("loss", fontsize=8)
    bottom.set_xlabel("step", fontsize=8)
    steps = np.concatenate([s for series in (curves.metric, curves.loss) for s, _ in series.values()])
    if steps.max() - steps.min() < 2:  # a run of one epoch: whole-step ticks around its point
        bottom.set_xlim(steps.min() - 1, steps.max() + 1)
        bottom.xaxis.set_major_locator(MultipleLocator(1))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)


def training_curves(metrics: dict, out_png, models: dict | None = None) -> Path:
    """`training_curves_figure`, written as a PNG."""
    return save_png(training_curves_figure(metrics, models), out_png)


def training_curves_figure(metrics: dict, models: dict | None = None):
    """One panel per trainer that ran, {stage: its metrics.csv} (stages: `TRAINERS`), in the
    pipeline's order: its val metric beside that metric's baseline where the trainer logs one
    (dashed), and below, its training loss; titled by stage and, from `models` ({stage:
    config key}), the model it trained."""
    metrics, models = dict(metrics), dict(models or {})
    if not metrics:
        raise ConfigError("training curves: no --metrics STAGE=CSV given")
    _check_stages(metrics, models)
    panels = [read_curves(stage, metrics[stage], models.get(stage)) for stage in TRAINERS if stage in metrics]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = _figure(4.2 * columns, 3.6 * rows + 0.4)
    cells = fig.subfigures(rows, columns, squeeze=False).ravel()
    for cell, curves in zip(cells, panels):
        _draw(cell, curves)
    fig.suptitle("Training: each trainer's val metric at epoch ends (top; dashed: its baseline) and its training "
                 "loss (bottom); legends give the last values", fontsize=9)
    return fig


# ---------------------------------------------------------------- val examples

FUTURE_FRAMES = list(range(data.N_INPUT, data.N_FRAMES))  # 11…21: the frames a sequence route forecasts
SUBMITTED_COLOUR = "#d62728"


@dataclass
class RouteExample:
    """One route's guesses for one val video: its mask of frame 21 and, for a route that
    forecasts frames 11…21, its masks of them."""

    name: str
    submitted: bool
    mask: np.ndarray  # (H, W) class ids
    sequence: np.ndarray | None  # (11, H, W) class ids of frames 11…21

    @property
    def title(self) -> str:
        return f"{self.name} (submitted)" if self.submitted else self.name


@dataclass
class Example:
    """What the sheet and the animations show of one val video."""

    video_id: int
    frames: np.ndarray  # (22, H, W, 3) the true video
    masks: np.ndarray  # (22, H, W) its true masks
    routes: list[RouteExample]
    predicted: dict | None  # route frames' predicted frames {frame number: (H, W, 3)}, when given


@dataclass
class Examples:
    """The val videos of the sheet and the animations, and what was given about the routes."""

    examples: list[Example]
    routes: list[str]  # in the order given
    sequences: list[str]  # the routes whose masks of frames 11…21 were given
    submitted: str | None  # scores.json's submitted_route, when given
    kept: list[int] | None  # the frame numbers of route frames' predicted frames, when given


def _submitted_route(scores, routes) -> str:
    """scores.json's submitted_route, one of `routes`."""
    path = Path(scores)
    if not path.is_file():
        raise DataError(f"{path}: scores file does not exist")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable scores ({type(exc).__name__}: {exc})") from None
    submitted = content.get("submitted_route") if isinstance(content, dict) else None
    if not isinstance(submitted, str):
        raise DataError(f"{path}: no submitted_route in it (scores.json of `futureseg score --route NAME=MASKS ...`)")
    if submitted not in routes:
        raise DataError(f"{path}: submitted_route {submitted!r} is not among the routes given ({', '.join(routes)})")
    return submitted


def load_examples(root, routes: dict, n: int = 4, sequences: dict | None = None, frames=None, scores=None) -> Examples:
    """Every input of the sheet and the animations, read and checked before anything is drawn,
    each error naming its file: the routes' masks of frame 21 ({route: (N, H, W)}), the masks of
    frames 11…21 of the routes that forecast them ({route: (N, 11, H, W)}), route frames'
    predicted frames ((N, K, H, W, 3), frame 21 among them), all of the same val videos in the
    same order and of the val frames' size; scores.json's submitted_route among the routes.
    Of `n` val videos spread over the split, the true frames and masks are read too."""
    routes, sequences = dict(routes), dict(sequences or {})
    if n < 1:
        raise ConfigError(f"--n: must be at least 1, got {n}")
    if not routes:
        raise ConfigError("give at least one --route NAME=MASKS (a route's masks of val frame 21)")
    for name in sequences:
        if name not in routes:
            raise ConfigError(f"--sequence {name}=...: no --route {name}=MASKS given")
    if frames and "frames" not in routes:
        raise ConfigError("--frames: route frames' predicted frames go with --route frames=MASKS")
    submitted = _submitted_route(scores, routes) if scores else None

    reference = {}  # the first file read: its path, ids and (H, W)

    def read(path, what, layout, ndim, dtype=np.integer):
        array, meta = read_array(path, what)
        if array.ndim != ndim or (ndim == 5 and array.shape[-1] != 3):
            raise DataError(f"{path}: expected {what} of shape {layout}, got {tuple(array.shape)}")
        if not np.issubdtype(array.dtype, dtype):
            expected = "uint8" if dtype is np.uint8 else "an integer dtype"
            raise DataError(f"{path}: expected {what} of {expected}, got {array.dtype}")
        try:
            ids = [int(i) for i in meta["ids"]]
        except (TypeError, ValueError):
            raise DataError(f"{Path(path).with_suffix('.json')}: its ids are not all integers") from None
        size = tuple(array.shape[-3:-1]) if ndim == 5 else tuple(array.shape[-2:])
        if not reference:
            reference.update(path=path, ids=ids, size=size)
        elif ids != reference["ids"]:
            raise DataError(f"{path}: its video ids differ from those of {reference['path']} "
                            "(every file must hold the same val videos in the same order)")
        elif size != reference["size"]:
            raise DataError(f"{path}: {what} of {size[0]}x{size[1]} pixels, those of {reference['path']} "
                            f"are {reference['size'][0]}x{reference['size'][1]}")
        return array, meta

    masks = {name: read(path, f"route {name!r} masks", "(N, H, W)", 3)[0] for name, path in routes.items()}
    forecasts = {}
    for name, path in sequences.items():
        sequence, meta = read(path, f"route {name!r} mask sequence", f"(N, {len(FUTURE_FRAMES)}, H, W)", 4)
        indices = meta.get("frame_indices", FUTURE_FRAMES)
        if sequence.shape[1] != len(FUTURE_FRAMES) or indices != FUTURE_FRAMES:
            raise DataError(f"{path}: expected the masks of frames {FUTURE_FRAMES[0]}…{FUTURE_FRAMES[-1]} "
                            f"({len(FUTURE_FRAMES)} per video), got {sequence.shape[1]} (frame_indices {indices})")
        forecasts[name] = sequence
    predicted, kept = None, None
    if frames:
        predicted, meta = read(frames, "predicted frames", "(N, K, H, W, 3)", 5, np.uint8)
        kept = meta.get("frame_indices")
        if not isinstance(kept, list) or len(kept) != predicted.shape[1] or not set(kept) <= set(FUTURE_FRAMES):
            raise DataError(f"{Path(frames).with_suffix('.json')}: frame_indices {kept} do not name the "
                            f"{predicted.shape[1]} predicted frames (each one of {FUTURE_FRAMES[0]}…{FUTURE_FRAMES[-1]})")
        if data.TARGET_FRAME not in kept:
            raise DataError(f"{frames}: frame_indices {kept} in its sidecar do not include frame {data.TARGET_FRAME}")

    ids = reference["ids"]
    if not ids:
        raise DataError(f"{reference['path']}: holds no videos")
    videos = {v.id: v for v in data.list_videos(root, "val")}
    unknown = [i for i in ids if i not in videos]
    if unknown:
        raise DataError(f"{reference['path']}: video ids {unknown[:3]}{'…' if len(unknown) > 3 else ''} "
                        f"are not in {Path(root) / 'val'}")
    size = data.frame_size(root, "val")
    if reference["size"] != tuple(size):
        raise DataError(f"{reference['path']}: masks of {reference['size'][0]}x{reference['size'][1]} pixels, "
                        f"the val frames of {root} are {size[0]}x{size[1]}")
    rows = sorted({int(i) for i in np.linspace(0, len(ids) - 1, min(n, len(ids))).round()})

    examples = []
    for row in rows:
        video = videos[ids[row]]
        guesses = []
        for name in routes:
            mask = np.array(masks[name][row])
            sequence = np.array(forecasts[name][row]) if name in forecasts else None
            for path, values in ((routes[name], mask), (sequences.get(name), sequence)):
                bad = [] if values is None else values[(values < 0) | (values >= data.NUM_CLASSES)]
                if len(bad):
                    raise DataError(f"{path}: class id {int(bad[0])} in video {video.id}, expected 0…{data.NUM_CLASSES - 1}")
            guesses.append(RouteExample(name, name == submitted, mask, sequence))
        examples.append(Example(
            video.id, data.read_frames(video, size=size), data.read_mask(video, size), guesses,
            None if predicted is None else {t: np.array(predicted[row, c]) for c, t in enumerate(kept)},
        ))
    return Examples(examples, list(routes), [name for name in routes if name in sequences], submitted, kept)


def examples_figure(examples: Examples):
    """A contact sheet, one row per val video: input frame 10, true frame 21 (and route
    frames' predicted frame 21, when given), the true mask of frame 21, then every route's
    mask of frame 21, the submitted route framed and marked in its title."""
    table = palette()
    first = examples.examples[0]
    height, width = first.masks.shape[1:]
    predicted = ["frames: predicted 21"] if examples.kept is not None else []
    titles = ["input 10", "true 21", *predicted, "true mask 21", *(r.title for r in first.routes)]
    cell = 1.9
    fig = _figure(cell * len(titles), cell * height / width * len(examples.examples) + 0.7)
    axes = fig.subplots(len(examples.examples), len(titles), squeeze=False)
    for r, example in enumerate(examples.examples):
        images = [example.frames[data.N_INPUT - 1], example.frames[data.TARGET_FRAME],
                  *([example.predicted[data.TARGET_FRAME]] if predicted else []),
                  colourise(example.masks[data.TARGET_FRAME], table), *(colourise(g.mask, table) for g in example.routes)]
        marked = [False] * (len(images) - len(example.routes)) + [g.submitted for g in example.routes]
        for c, (image, submitted) in enumerate(zip(images, marked)):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if submitted:
                for spine in ax.spines.values():
                    spine.set_edgecolor(SUBMITTED_COLOUR)
                    spine.set_linewidth(2.5)
            if r == 0:
                ax.set_title(titles[c], fontsize=8, color=SUBMITTED_COLOUR if submitted else "black",
                             fontweight="bold" if submitted else "normal")
            if c == 0:
                ax.set_ylabel(f"video {example.video_id}", fontsize=8)
    submitted = f"; submitted: route {examples.submitted}" if examples.submitted else ""
    fig.suptitle(f"val frame 21: every route's mask beside the true mask{submitted}", fontsize=9)
    return fig


def val_examples(root, routes: dict, out_path, n: int = 4, sequences=None, frames=None, scores=None) -> Path:
    """`examples_figure` of `load_examples`'s videos, written as a PNG."""
    return save_png(examples_figure(load_examples(root, routes, n, sequences, frames, scores)), out_path, dpi=120)


# ---------------------------------------------------------------- val animations

GIF_FRAME_MS = 250
GIF_MIN_HEIGHT = 120  # small frames are scaled up (nearest) so the animations can be looked at
GIF_CAPTION_PX = 14
NOT_KEPT_GREY = 200


def animation_frames(example: Example) -> np.ndarray:
    """(22, h, w, 3) uint8 animation of one val video, panels side by side under captions.
    Animated: the true video (inputs 0…10, then the true future); route frames' predicted
    frames, when given (the inputs, then the predicted frames; one not kept shows grey); the
    true masks; the masks of frames 11…21 of each route that forecasts them (grey before 11).
    Held still, when a route forecasts frame 21 only: the true mask of frame 21 and each such
    route's mask of frame 21. The submitted route's captions say so."""
    from PIL import Image, ImageDraw

    height, width = example.frames.shape[1:3]
    scale = max(1, math.ceil(GIF_MIN_HEIGHT / height))
    gap = 2 * scale
    panel_w, panel_h = width * scale, height * scale
    table = palette()
    grey = np.full((height, width, 3), NOT_KEPT_GREY, np.uint8)
    true_masks = colourise(example.masks, table)
    moving = [(g.title, colourise(g.sequence, table)) for g in example.routes if g.sequence is not None]
    still = [(g.title, colourise(g.mask, table)) for g in example.routes if g.sequence is None]
    held = ([(true_masks[data.TARGET_FRAME], f"true mask {data.TARGET_FRAME}")]
            + [(mask, f"{title}: mask {data.TARGET_FRAME}") for title, mask in still]) if still else []
    animation = []
    for t in range(data.N_FRAMES):
        future = t >= data.N_INPUT
        panels = [(example.frames[t], f"true {t}" if future else f"input {t}")]
        if example.predicted is not None:
            guess = example.predicted.get(t)
            panels.append((example.frames[t], f"input {t}") if not future
                          else (grey, f"{t} not kept") if guess is None else (guess, f"predicted {t}"))
        panels.append((true_masks[t], f"true mask {t}"))
        panels += [(masks[t - data.N_INPUT], f"{title}: mask {t}") if future else (grey, f"{title}: from {data.N_INPUT}")
                   for title, masks in moving]
        panels += held
        canvas = Image.new("RGB", (len(panels) * (panel_w + gap) - gap, panel_h + GIF_CAPTION_PX), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, (image, label) in enumerate(panels):
            x = i * (panel_w + gap)
            canvas.paste(Image.fromarray(np.asarray(image)).resize((panel_w, panel_h), Image.NEAREST), (x, GIF_CAPTION_PX))
            draw.text((x + 2, 1), label, fill=(0, 0, 0))
        animation.append(np.asarray(canvas))
    return np.stack(animation)


def _routes_phrase(names: list[str]) -> str:
    return ("route " if len(names) == 1 else "routes ") + ", ".join(names)


def animations_page(examples: Examples) -> str:
    """One self-contained HTML page (the report shows it as is) with an animated GIF per val
    video, the same videos as the contact sheet; see `animation_frames`."""
    import base64
    import html

    import imageio.v3 as iio

    figures = []
    for example in examples.examples:
        gif = iio.imwrite("<bytes>", animation_frames(example), extension=".gif", duration=GIF_FRAME_MS, loop=0)
        figures.append(
            f'<figure><img alt="val video {example.video_id}" src="data:image/gif;base64,{base64.b64encode(gif).decode()}">'
            f"<figcaption>val video {example.video_id}</figcaption></figure>"
        )
    still = [r for r in examples.routes if r not in examples.sequences]
    parts = ["the true video"]
    if examples.kept is not None:
        kept = ", ".join(str(t) for t in examples.kept)
        parts.append(f"route frames' predicted frames (kept: {kept}; the rest grey)")
    parts.append("the true masks")
    if examples.sequences:
        parts.append(f"the masks of frames 11–21 forecast by {_routes_phrase(examples.sequences)} (grey before frame 11)")
    text = "Frames 0–10 are the inputs. Animated, from the left: " + "; ".join(parts) + "."
    if still:
        text += f" Held still on the right: the true mask of frame 21 beside the mask of frame 21 of {_routes_phrase(still)}."
    if examples.submitted:
        text += f" Submitted: route {examples.submitted}, marked (submitted)."
    text += f" {GIF_FRAME_MS} ms per frame, looping."
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>val animations</title>'
        "<style>body{font-family:sans-serif;margin:1em} figure{margin:0 0 1.2em} "
        "img{image-rendering:pixelated}</style></head><body>\n"
        f"<p>{html.escape(text, quote=False)}</p>\n" + "\n".join(figures) + "\n</body></html>\n"
    )


def _write_page(path, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def val_animations(root, routes: dict, out_html, n: int = 4, sequences=None, frames=None, scores=None) -> Path:
    """`animations_page` of `load_examples`'s videos, written."""
    return _write_page(out_html, animations_page(load_examples(root, routes, n, sequences, frames, scores)))


# ---------------------------------------------------------------- verb

VERB = "report-figures"
HELP = "training-curve figure, val-example sheet and animations for the report"


def add_arguments(parser) -> None:
    from futureseg.core.flags import name_path

    parser.add_argument("--metrics", type=name_path, action="append", default=[], metavar="STAGE=CSV",
                        help="a trainer's metrics.csv, STAGE one of " + ", ".join(TRAINERS) + "; repeat per trainer")
    parser.add_argument("--model", type=stage_model, action="append", default=[], metavar="STAGE=NAME",
                        help="the model a stage trained (config.yaml's key: simvp, unet, ...), named in its title")
    parser.add_argument("--curves", metavar="PNG", help="training curves figure to write (with --metrics)")
    parser.add_argument("--root", help="Dataset_Student root (the val videos' true frames and masks)")
    parser.add_argument("--route", type=name_path, action="append", default=[], metavar="NAME=MASKS",
                        help="a route's masks of val frame 21 (masks_val.npy, ids sidecar beside it); repeat per route")
    parser.add_argument("--sequence", type=name_path, action="append", default=[], metavar="NAME=MASKS",
                        help="a route's masks of val frames 11…21 (N, 11, H, W), animated; repeat per route")
    parser.add_argument("--frames", help="route frames' predicted frames of val (frames_val.npy), animated")
    parser.add_argument("--scores", help="scores.json: its submitted_route is marked")
    parser.add_argument("--examples", metavar="PNG", help="contact sheet of val examples to write")
    parser.add_argument("--animations", metavar="HTML", help="page of animated GIFs of the same val videos to write")
    parser.add_argument("--n", type=int, default=4, help="videos in the examples sheet and animations")


def stage_model(text: str) -> tuple[str, str]:
    """argparse type of --model: STAGE=NAME."""
    import argparse

    stage, sep, name = text.partition("=")
    if not sep or not stage or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STAGE=NAME, e.g. predictor=simvp")
    return stage, name


def _unique(pairs, flag: str) -> dict:
    names = [name for name, _ in pairs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"{flag} {twice[0]}=...: given twice")
    return dict(pairs)


def main(args) -> None:
    curves = (args.metrics, args.curves)
    if args.model and not args.metrics:
        raise ConfigError("--model STAGE=NAME titles a --metrics STAGE=CSV: give --metrics and --curves with it")
    outputs = (args.examples, args.animations)
    if any(curves) and not all(curves):
        raise ConfigError("--metrics and --curves go together: give both or neither")
    inputs = (args.root, args.route, args.sequence, args.frames, args.scores)
    if (any(inputs) or any(outputs)) and not (args.root and args.route and any(outputs)):
        raise ConfigError("--root and --route NAME=MASKS (with --sequence, --frames, --scores) go with --examples "
                          "and/or --animations: give them together or none")
    if not any(curves) and not any(outputs):
        raise ConfigError("nothing to draw: give --metrics/--curves and/or --root/--route with --examples/--animations")
    routes, sequences = _unique(args.route, "--route"), _unique(args.sequence, "--sequence")
    # every input is read, checked and drawn before anything is written; the outputs then
    # appear together (each renamed into place), or none of them
    figures = []
    if all(curves):
        figures.append(("training curves", training_curves_figure(_unique(args.metrics, "--metrics"),
                                                                  _unique(args.model, "--model")), args.curves))
    if any(outputs):
        examples = load_examples(args.root, routes, args.n, sequences, args.frames, args.scores)
        if args.examples:
            figures.append(("val examples", examples_figure(examples), args.examples))
        page = animations_page(examples) if args.animations else None
    with contextlib.ExitStack() as stack:
        for _, fig, path in figures:
            fig.savefig(stack.enter_context(atomic_path(path)), format="png", dpi=120 if path == args.examples else 110)
        if args.animations:
            stack.enter_context(atomic_path(args.animations)).write_text(page, encoding="utf-8")
    for what, _, path in figures:
        print(f"{what} -> {path}")
    if args.animations:
        print(f"val animations -> {args.animations}")
