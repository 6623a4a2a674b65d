"""The report's figures: per-class IoU, confusions, training curves, a contact sheet of
val examples; and the `futureseg report-figures` verb.

Figures are built as `matplotlib.figure.Figure` objects and rendered by Agg (the PNG
writer), without pyplot: no global figure state, no display needed, safe on a headless
node. Every PNG is written atomically.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
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

_LOSS_WORDS = ("loss", "mse", "mae", "l1", "l2", "nll", "ce")
_SCORE_WORDS = ("iou", "acc", "ssim", "dice", "ap")
_SKIPPED_COLUMNS = {"step", "epoch"}


def _panel_of(column: str) -> str:
    words = column.lower().replace("-", "_").replace("/", "_").split("_")
    name = column.lower()
    if "psnr" in name:
        return "PSNR (dB)"
    if name == "lr" or "learning_rate" in name or words[-1] == "lr":
        return "learning rate"
    if "loss" in name or any(w in _LOSS_WORDS for w in words):
        return "loss"
    if any(w in _SCORE_WORDS or w.endswith("iou") for w in words):
        return "IoU / accuracy"
    return "other"


def read_metrics_csv(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{column: (steps, values)} of a MetricsLog CSV; non-numeric or empty cells skipped."""
    path = Path(path)
    if not path.is_file():
        raise FuturesegError(f"{path}: metrics CSV does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise FuturesegError(f"{path}: not a metrics CSV (no 'step' column)")
        rows = list(reader)
    series = {}
    for column in reader.fieldnames:
        if column in _SKIPPED_COLUMNS:
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


def _labels_for(paths: list[Path]) -> list[str]:
    """The CSV's folder name (predictor, segmenter, …), its path when that is ambiguous."""
    names = [p.parent.name or p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def training_curves(csv_paths, out_png) -> Path:
    """One panel per kind of metric (loss, IoU/accuracy, PSNR, learning rate, other),
    every CSV's columns of that kind drawn in it against the step."""
    paths = [Path(p) for p in ([csv_paths] if isinstance(csv_paths, (str, Path)) else csv_paths)]
    if not paths:
        raise ConfigError("training_curves: no metrics CSV given")
    panels: dict[str, list] = {}
    for label, path in zip(_labels_for(paths), paths):
        for column, (steps, values) in read_metrics_csv(path).items():
            name = f"{label}: {column}" if len(paths) > 1 else column
            panels.setdefault(_panel_of(column), []).append((name, steps, values))
    order = [p for p in ("loss", "IoU / accuracy", "PSNR (dB)", "learning rate", "other") if p in panels]
    if not order:
        raise FuturesegError(f"{paths[0]}: no numeric metric columns to plot")
    fig = _figure(5.0 * len(order), 3.8)
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, panel in zip(axes, order):
        lines = panels[panel]
        for name, steps, values in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2, label=name)
        all_values = np.concatenate([v for _, _, v in lines])
        if panel in ("loss", "learning rate") and (all_values > 0).all() and all_values.max() / all_values.min() > 20:
            ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training metrics (" + ", ".join(str(p) for p in paths) + ")", fontsize=9)
    return save_png(fig, out_png)


# ---------------------------------------------------------------- val examples

EXAMPLE_INPUT_FRAMES = (0, 5, 10)


def _val_videos(root, frames_val, masks_val, n: int):
    """The arrays behind the examples, checked against each other and the dataset, and the
    rows of `n` val videos spread over the split: (frames, frame_indices, masks, [(row, video)])."""
    if n < 1:
        raise ConfigError(f"--n: must be at least 1, got {n}")
    frames, frames_meta = read_array(frames_val, "predicted frames")
    masks, masks_meta = read_array(masks_val, "masks")
    frame_indices = [int(i) for i in frames_meta.get("frame_indices", [])]
    if data.TARGET_FRAME not in frame_indices:
        raise FuturesegError(f"{frames_val}: frame_indices {frame_indices} in its sidecar do not include frame {data.TARGET_FRAME}")
    frame_ids = [int(i) for i in frames_meta["ids"]]
    if [int(i) for i in masks_meta["ids"]] != frame_ids:
        raise FuturesegError(f"{masks_val}: its ids differ from those of {frames_val}")
    videos = {v.id: v for v in data.list_videos(root, "val")}
    unknown = [i for i in frame_ids if i not in videos]
    if unknown:
        raise FuturesegError(f"{frames_val}: video ids {unknown[:3]}… are not in {Path(root) / 'val'}")
    rows = sorted({int(i) for i in np.linspace(0, len(frame_ids) - 1, min(n, len(frame_ids))).round()})
    return frames, frame_indices, masks, [(row, videos[frame_ids[row]]) for row in rows]


def val_examples(root, frames_val, masks_val, out_path, n: int = 4) -> Path:
    """A contact sheet, one row per val video (spread over the split): input frames
    0, 5, 10 → predicted frame 21 → true frame 21 → predicted mask → true mask."""
    frames, frame_indices, masks, picked = _val_videos(root, frames_val, masks_val, n)
    column = frame_indices.index(data.TARGET_FRAME)
    table = palette()
    titles = [*(f"input {i}" for i in EXAMPLE_INPUT_FRAMES), "predicted 21", "true 21", "predicted mask", "true mask"]
    height, width = frames.shape[2:4]
    cell = 1.9
    fig = _figure(cell * len(titles), cell * height / width * len(picked) + 0.5)
    axes = fig.subplots(len(picked), len(titles), squeeze=False)
    for r, (row, video) in enumerate(picked):
        true_frames = data.read_frames(video, [*EXAMPLE_INPUT_FRAMES, data.TARGET_FRAME])
        true_mask = data.read_mask(video)[data.TARGET_FRAME]
        images = [*true_frames[:-1], np.asarray(frames[row, column]), true_frames[-1], colourise(np.asarray(masks[row]), table), colourise(true_mask, table)]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"video {video.id}", fontsize=8)
    return save_png(fig, out_path, dpi=120)


# ---------------------------------------------------------------- val animations

GIF_FRAME_MS = 250
GIF_MIN_HEIGHT = 120  # small frames are scaled up (nearest) so the animations can be looked at
GIF_CAPTION_PX = 14
NOT_KEPT_GREY = 200


def animation_frames(true_frames, predicted: dict, predicted_mask, true_mask) -> np.ndarray:
    """(22, h, w, 3) uint8 animation of one video, four panels side by side under captions:
    the true video (inputs 0…10, then the true future); the same inputs, then the predicted
    frames (`predicted` maps a frame number to its (H, W, 3) prediction; a frame that was not
    kept shows grey); and, held still, the predicted and the true mask of frame 21."""
    from PIL import Image, ImageDraw

    height, width = true_frames.shape[1:3]
    scale = max(1, math.ceil(GIF_MIN_HEIGHT / height))
    gap = 2 * scale
    panel_w, panel_h = width * scale, height * scale
    table = palette()
    masks = (colourise(np.asarray(predicted_mask), table), colourise(np.asarray(true_mask), table))
    not_kept = np.full((height, width, 3), NOT_KEPT_GREY, np.uint8)
    animation = []
    for t in range(data.N_FRAMES):
        if t < data.N_INPUT:
            panels = [(true_frames[t], f"input {t}"), (true_frames[t], f"input {t}")]
        else:
            guess = predicted.get(t)
            panels = [(true_frames[t], f"true {t}"),
                      (not_kept, f"{t} not kept") if guess is None else (guess, f"predicted {t}")]
        panels += [(masks[0], f"pred. mask {data.TARGET_FRAME}"), (masks[1], f"true mask {data.TARGET_FRAME}")]
        canvas = Image.new("RGB", (len(panels) * (panel_w + gap) - gap, panel_h + GIF_CAPTION_PX), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, (image, label) in enumerate(panels):
            x = i * (panel_w + gap)
            canvas.paste(Image.fromarray(np.asarray(image)).resize((panel_w, panel_h), Image.NEAREST), (x, GIF_CAPTION_PX))
            draw.text((x + 2, 1), label, fill=(0, 0, 0))
        animation.append(np.asarray(canvas))
    return np.stack(animation)


def val_animations(root, frames_val, masks_val, out_html, n: int = 4) -> Path:
    """One self-contained HTML page (the report shows it as is) with an animated GIF per val
    video, the same videos as the contact sheet; see `animation_frames`."""
    import base64
    import html

    import imageio.v3 as iio

    frames, frame_indices, masks, picked = _val_videos(root, frames_val, masks_val, n)
    figures = []
    for row, video in picked:
        predicted = {t: np.asarray(frames[row, c]) for c, t in enumerate(frame_indices)}
        true_mask = data.read_mask(video)[data.TARGET_FRAME]
        animation = animation_frames(data.read_frames(video), predicted, masks[row], true_mask)
        gif = iio.imwrite("<bytes>", animation, extension=".gif", duration=GIF_FRAME_MS, loop=0)
        figures.append(
            f'<figure><img alt="val video {video.id}" src="data:image/gif;base64,{base64.b64encode(gif).decode()}">'
            f"<figcaption>val video {video.id}</figcaption></figure>"
        )
    kept = ", ".join(str(t) for t in frame_indices)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>val animations</title>'
        "<style>body{font-family:sans-serif;margin:1em} figure{margin:0 0 1.2em} "
        "img{image-rendering:pixelated}</style></head><body>\n"
        f"<p>Frames 0–10 are the inputs. From frame 11: the true video (left) beside the predicted "
        f"frames (kept: {html.escape(kept)}; the rest grey). Right: the masks of frame 21, "
        f"predicted from the predicted frame, and true. {GIF_FRAME_MS} ms per frame, looping.</p>\n"
        + "\n".join(figures)
        + "\n</body></html>\n"
    )
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_html


# ---------------------------------------------------------------- verb

VERB = "report-figures"
HELP = "training-curve and val-example figures for the report"


def add_arguments(parser) -> None:
    parser.add_argument("--metrics", nargs="+", metavar="CSV", help="metrics.csv files written by training (MetricsLog)")
    parser.add_argument("--curves", metavar="PNG", help="training curves figure to write (with --metrics)")
    parser.add_argument("--root", help="Dataset_Student root (for the examples sheet)")
    parser.add_argument("--frames", help="frames_val.npy: predicted frames with ids sidecar")
    parser.add_argument("--masks", help="masks_val.npy: predicted frame-21 masks with ids sidecar")
    parser.add_argument("--examples", metavar="PNG", help="contact sheet of val examples to write")
    parser.add_argument("--animations", metavar="HTML", help="page of animated GIFs of the same val videos to write")
    parser.add_argument("--n", type=int, default=4, help="videos in the examples sheet and animations")


def main(args) -> None:
    curves = (args.metrics, args.curves)
    inputs = (args.root, args.frames, args.masks)
    outputs = (args.examples, args.animations)
    if any(curves) and not all(curves):
        raise ConfigError("--metrics and --curves go together: give both or neither")
    if (any(inputs) or any(outputs)) and not (all(inputs) and any(outputs)):
        raise ConfigError("--root, --frames and --masks go with --examples and/or --animations: give them together or none")
    if not any(curves) and not any(outputs):
        raise ConfigError("nothing to draw: give --metrics/--curves and/or --root/--frames/--masks with --examples/--animations")
    if all(curves):
        print(f"training curves -> {training_curves(args.metrics, args.curves)}")
    if args.examples:
        print(f"val examples -> {val_examples(args.root, args.frames, args.masks, args.examples, args.n)}")
    if args.animations:
        print(f"val animations -> {val_animations(args.root, args.frames, args.masks, args.animations, args.n)}")
