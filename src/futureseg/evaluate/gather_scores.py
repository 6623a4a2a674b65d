"""`futureseg gather-scores`: several runs' eval/scores.json side by side in one Markdown table.

Each run is a results folder (the `results/` of one config); its scores are read from
`<folder>/eval/scores.json`, the fixed path `futureseg score` writes in the DAG.
"""

from __future__ import annotations

import json
from pathlib import Path

from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import atomic_path

SCORES_FILE = Path("eval") / "scores.json"

# (header, method, key) of each column after the run's label and its routes' IoU columns
COLUMNS = (
    ("pipeline IoU", "pipeline", "iou"),
    ("oracle IoU", "oracle", "iou"),
    ("motion truth IoU", "motion_truth", "iou"),
    ("dynamics truth IoU", "dynamics_truth", "iou"),
    ("placement oracle IoU", "placement_oracle", "iou"),
    ("segmented copy-last IoU", "segmented_copy_last", "iou"),
    ("copy-last IoU", "copy_last", "iou"),
    ("pipeline micro IoU", "pipeline", "iou_micro"),
    ("pipeline pixel acc", "pipeline", "pixel_acc"),
    ("pipeline foreground IoU", "pipeline", "foreground_iou"),
    ("oracle shape acc", "oracle", "shape"),
)


def read_scores(folder) -> dict:
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        raise FuturesegError(f"{path}: scores file does not exist (run `futureseg score` for that run first)")
    try:
        scores = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FuturesegError(f"{path}: unreadable scores file ({exc})") from None
    if not isinstance(scores, dict) or not isinstance(scores.get("pipeline"), dict):
        raise FuturesegError(f"{path}: not a scores file (no 'pipeline' entry)")
    return scores


def run_labels(folders, labels=None) -> list[str]:
    """The given labels, else each folder's name (its path where names repeat)."""
    folders = [Path(f) for f in folders]
    if labels:
        if len(labels) != len(folders):
            raise ConfigError(f"--labels: {len(labels)} labels for {len(folders)} run folders")
        return list(labels)
    names = [f.resolve().name for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


def _cell(scores: dict, method: str, key: str) -> str:
    entry = scores.get(method) if isinstance(scores.get(method), dict) else {}
    # a factor's accuracy lives under factor_accuracy
    value = entry.get(key, (entry.get("factor_accuracy") or {}).get(key))
    return "–" if value is None else f"{float(value):.4f}"


def table(folders, labels=None) -> str:
    """The Markdown table: one row per run; the IoU of every route any run scored, the
    submitted route, the metric columns of COLUMNS, then N videos."""
    names = run_labels(folders, labels)
    rows = [(name, read_scores(folder)) for name, folder in zip(names, folders)]
    routes = list(dict.fromkeys(r for _, scores in rows for r in scores.get("routes", {})))
    # a figure no run has (segmented copy-last before routes existed, motion truth and the
    # factor diagnostics before motion did) gets no column
    columns = [c for c in COLUMNS if any(_cell(scores, c[1], c[2]) != "–" for _, scores in rows)]
    route_headers = [*(f"{r} IoU" for r in routes), "submitted"] if routes else []
    header = ["run", *route_headers, *(c[0] for c in columns), "val videos"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, scores in rows:
        route_cells = [*(_cell(scores.get("routes", {}), r, "iou") for r in routes),
                       str(scores.get("submitted_route", "–"))] if routes else []
        cells = [name.replace("|", "\\|"), *route_cells, *(_cell(scores, m, k) for _, m, k in columns),
                 str(scores.get("n_videos", "–"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(folders, out, labels=None) -> str:
    if not folders:
        raise ConfigError("gather-scores: give at least one run folder")
    text = table(folders, labels)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text


VERB = "gather-scores"
HELP = "several runs' eval/scores.json as one Markdown table"


def add_arguments(parser) -> None:
    from futureseg.core.flags import comma_list

    parser.add_argument("folders", nargs="+", metavar="DIR", help="results folders, each holding eval/scores.json")
    parser.add_argument("--out", required=True, help="Markdown file to write")
    parser.add_argument("--labels", type=comma_list, help="comma-separated row labels, one per DIR (default: folder names)")


def main(args) -> None:
    print(run(args.folders, args.out, args.labels), end="")
