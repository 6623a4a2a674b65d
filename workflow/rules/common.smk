# Paths and helpers shared by the rule files.

import json
from pathlib import Path

RESULTS = config["results"]
SYNTHETIC = config["data"]["synthetic"]["folder"]
# The dataset every stage reads: a real Dataset_Student when data.root is set, else the
# synthetic one (made by rule synth_dataset).
DATA = config["data"]["root"] or SYNTHETIC
if config["data"]["root"] and not Path(DATA).is_dir():
    raise ValueError(f"config data.root: {DATA} does not exist or is not a folder")

SPLITS = ["train", "val", "unlabeled", "hidden"]

# Routes to the mask of frame 21 (DESIGN.md §3b); each writes masks_{val,hidden}.npy here.
ROUTES = config["routes"]
ROUTE_DIRS = {"frames": f"{RESULTS}/segmenter", "masks": f"{RESULTS}/forecaster", "direct": f"{RESULTS}/direct"}
SUBMIT = config["eval"]["submit"]
if SUBMIT != "best" and SUBMIT not in ROUTES:
    raise ValueError(f"config eval.submit: route {SUBMIT!r} does not run (routes: {', '.join(ROUTES)}); "
                     "name one of them or 'best'")


wildcard_constraints:
    split="|".join(SPLITS),
    scatteritem=r"\d+-of-\d+",


def res(rule_name):
    """The resources section's entry for a rule, on top of resources.default."""
    return {**config["resources"]["default"], **config["resources"].get(rule_name, {})}


def csv(values):
    """A list as one comma-separated command-line value."""
    return ",".join(str(v) for v in values)


def flags(settings):
    """A model's config section as the verb's command-line flags: key_name: v → --key-name v
    (lists comma-separated)."""
    return " ".join(
        f"--{key.replace('_', '-')} {csv(value) if isinstance(value, list) else value}"
        for key, value in settings.items()
    )


def selected(section, models):
    """A config section with only the selected model's sub-section (`model: name` picks it),
    so editing an unselected model's settings reruns nothing."""
    return {key: value for key, value in section.items() if key not in models or key == section["model"]}


def kept_frames(wildcards):
    """Future frames predict_frames keeps: all 11 for train (the segmenter trains on
    them), predictor.keep_frames for val and hidden."""
    return "11-21" if wildcards.split == "train" else csv(config["predictor"]["keep_frames"])


def shard_arg(wildcards):
    """Snakemake's scatter item 'i-of-K' (1-based) as the verbs' '--shard i/K' (0-based)."""
    index, count = wildcards.scatteritem.split("-of-")
    return f"{int(index) - 1}/{count}"
