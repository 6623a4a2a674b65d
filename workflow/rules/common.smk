# Paths and helpers shared by the rule files.

from pathlib import Path

RESULTS = config["results"]
SYNTHETIC = "resources/synthetic"
# The dataset every stage reads: a real Dataset_Student when data.root is set, else the
# synthetic one (made by rule synth_dataset).
DATA = config["data"]["root"] or SYNTHETIC
if config["data"]["root"] and not Path(DATA).is_dir():
    raise ValueError(f"config data.root: {DATA} does not exist or is not a folder")

SPLITS = ["train", "val", "unlabeled", "hidden"]


wildcard_constraints:
    split="|".join(SPLITS),
    scatteritem=r"\d+-of-\d+",


def res(rule_name):
    """The resources section's entry for a rule, on top of resources.default."""
    return {**config["resources"]["default"], **config["resources"].get(rule_name, {})}


def csv(values):
    """A list as one comma-separated command-line value."""
    return ",".join(str(v) for v in values)


def kept_frames(wildcards):
    """Future frames predict_frames keeps: all 11 for train (the segmenter trains on
    them), predictor.keep_frames for val and hidden."""
    return "11-21" if wildcards.split == "train" else csv(config["predictor"]["keep_frames"])


def shard_arg(wildcards):
    """Snakemake's scatter item 'i-of-K' (1-based) as the verbs' '--shard i/K' (0-based)."""
    index, count = wildcards.scatteritem.split("-of-")
    return f"{int(index) - 1}/{count}"
