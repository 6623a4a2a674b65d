# Paths and helpers shared by the rule files. Every function of the rule files lives here and
# no rule does (snakemake --lint flags a file with both, tests/test_lint.py); nor may a comment
# here read like a rule's header, the word rule, a name and a colon: the lint takes it for one.

import functools
import hashlib
import json
import os
from pathlib import Path

RESULTS = config["results"]
SYNTHETIC = config["data"]["synthetic"]["folder"]
# The dataset every stage reads: a real Dataset_Student when data.root is set, else the
# synthetic one (made by rule synth_dataset).
DATA = config["data"]["root"] or SYNTHETIC
if config["data"]["root"] and not Path(DATA).is_dir():
    raise ValueError(f"config data.root: {DATA} does not exist or is not a folder")

# every training rule's --max-steps (0: its epochs); a param, so changing it retrains. The
# flag, not the number: Snakemake compares a job's params as a set of values, so a bare 1
# beside another param of 1 (epochs) reads as unchanged when it was 0 beside a seed of 0
MAX_STEPS_FLAG = f"--max-steps {config['max_train_steps']}"

SPLITS = ["train", "val", "unlabeled", "hidden"]
# The splits the stages read (mean/std's, the predictor's; train, val and hidden always: the
# segmenter, the scores, the submission), in SPLITS order; rule check_data checks them.
DATA_SPLITS = [
    s for s in SPLITS
    if s in {*config["data"]["mean_std_splits"], *config["predictor"]["train_splits"], "train", "val", "hidden",
             # the unlabeled frames that route masks pseudo-labels (and route direct may train on)
             *config["forecaster"]["pseudo_splits"], *(["unlabeled"] if config["direct"]["pseudo_labels"] else []),
             # the pseudo-labelled tracks route dynamics learns from
             *(config["dynamics"]["pseudo_splits"]
               if "dynamics" in config["routes"] or config["forecaster"]["prior"] == "dynamics" else [])}
]
# The report of rule check_data, an input of every rule that reads the dataset, so that a
# bad dataset stops the run before anything trains.
DATA_CHECK = f"{RESULTS}/data/check.json"

# Routes to the mask of frame 21 (DESIGN.md §3b); each writes masks_{val,hidden}.npy here.
ROUTES = config["routes"]
ROUTE_DIRS = {"frames": f"{RESULTS}/segmenter", "masks": f"{RESULTS}/forecaster", "direct": f"{RESULTS}/direct",
              "motion": f"{RESULTS}/motion", "dynamics": f"{RESULTS}/dynamics"}
SUBMIT = config["eval"]["submit"]
if SUBMIT != "best" and SUBMIT not in ROUTES:
    raise ValueError(f"config eval.submit: route {SUBMIT!r} does not run (routes: {', '.join(ROUTES)}); "
                     "name one of them or 'best'")

# resources.allow_cpu reaches the GPU verbs (core/training.py: select_device) through the
# environment every job inherits, SLURM jobs too (sbatch exports it, and the job's Snakemake
# reads this file again). Not a param: it says where a job may run, not what it writes, so
# changing it reruns nothing.
os.environ.update(FUTURESEG_ALLOW_CPU="1" if config["resources"]["allow_cpu"] else "0")


wildcard_constraints:
    split="|".join(SPLITS),
    scatteritem=r"\d+-of-\d+",


# ---------------------------------------------------------------- resources
# The entry of config `resources` taken by each rule without one of its own name. The data
# readers share one, the hidden-set shards run as their parent rule, the pseudo-labels and the
# references are segmentation jobs, the priors, tracks and oracles are route motion's or route
# dynamics' jobs. Every other rule takes `default`. README, "Resources", shows this table
# (tests/test_resources.py checks it against the workflow).
RESOURCE_GROUPS = {
    "synth_dataset": "data", "check_data": "data", "mean_std": "data", "cache_frames": "data",
    "predict_hidden_shard": "predict_frames",
    "segment_references": "segment", "segment_hidden_shard": "segment", "pseudo_label": "segment",
    "forecast_hidden_shard": "forecast",
    "predict_direct_hidden_shard": "predict_direct",
    "extrapolate_hidden_shard": "extrapolate", "motion_truth": "extrapolate", "motion_prior": "extrapolate",
    "tracks": "extrapolate",
    "dynamics_hidden_shard": "dynamics", "dynamics_prior": "dynamics", "dynamics_truth": "dynamics",
    "placement_oracle": "dynamics",
}
# config `resources` keys that are settings, not entries
RESOURCE_SETTINGS = ("hidden_shards", "allow_cpu", "slurm", "default")
# The trainers: SLURM warns them before their time limit (resources.slurm.warn_seconds), and
# they checkpoint and requeue their job (core/training.py).
TRAINERS = ("train_predictor", "train_segmenter", "train_object_classifier", "train_forecaster", "train_direct",
            "train_dynamics")
# Runs a process per GPU (torch DDP), so its threads are each process's.
MULTI_GPU_RULES = ("train_predictor",)
# An entry's SLURM keys and the executor plugin's resource names for them.
SLURM_RESOURCES = {"partition": "slurm_partition", "account": "slurm_account", "qos": "qos", "extra": "slurm_extra"}


def resource_entry(rule_name):
    """A rule's settings from config `resources`: default's, its group's, its own, key by key."""
    entries = config["resources"]
    group = RESOURCE_GROUPS.get(rule_name)
    return {**entries["default"], **(entries.get(group) or {}), **(entries.get(rule_name) or {})}


def rule_threads(rule_name):
    """A rule's threads: its entry's, times its GPUs for a rule that runs a process per GPU."""
    entry = resource_entry(rule_name)
    return entry["threads"] * max(1, entry["gpu"]) if rule_name in MULTI_GPU_RULES else entry["threads"]


def rule_resources(rule_name):
    """What a step asks for, written `resources: **rule_resources("name")`. Runtime, mem_mb
    and gpu, and, for SLURM, the partition (a GPU rule's is resources.slurm.gpu_partition when
    set), account, qos and extra sbatch flags, where set; a trainer's extra flags ask for
    SIGURG resources.slurm.warn_seconds before its time limit. Local runs ignore the SLURM keys."""
    entry, slurm = resource_entry(rule_name), config["resources"]["slurm"]
    if entry["gpu"] > 1 and rule_name not in MULTI_GPU_RULES:
        raise ValueError(f"config resources.{rule_name}.gpu: {entry['gpu']}; only {', '.join(MULTI_GPU_RULES)} "
                         "uses more than one GPU (one process each); give it 1")
    placement = {"partition": (slurm["gpu_partition"] if entry["gpu"] else None) or slurm["partition"],
                 "account": slurm["account"], "qos": slurm["qos"]}
    # a rule's (or its group's) own partition, account or qos wins, null included
    placement.update({key: entry[key] for key in placement if key in entry})
    extra = [slurm["extra"], entry.get("extra", "")]
    if rule_name in TRAINERS:
        extra.append(f"--signal=URG@{slurm['warn_seconds']}")
    requests = {"runtime": entry["runtime"], "mem_mb": entry["mem_mb"], "gpu": entry["gpu"]}
    for key, value in {**placement, "extra": " ".join(flag for flag in extra if flag)}.items():
        if value:  # unset: the plugin adds no flag, and sbatch takes the cluster's default
            requests[SLURM_RESOURCES[key]] = value
    return requests


def check_resource_entries():
    """Refuse a `resources` entry that names no rule and no group (a typo would be ignored
    silently otherwise). Called once the rules are defined (Snakefile)."""
    known = {step.name for step in workflow.rules} | set(RESOURCE_GROUPS.values())
    unknown = sorted(set(config["resources"]) - known - set(RESOURCE_SETTINGS))
    in_default = sorted(set(config["resources"]["default"]) & set(SLURM_RESOURCES))
    if in_default:
        raise ValueError(f"config resources.default: {', '.join(in_default)}: set them for every job in "
                         "resources.slurm, or for one rule in its own entry")
    if unknown:
        # (the message's words are split so that no line reads like a rule's header to the lint)
        raise ValueError(f"config resources: {', '.join(unknown)}: no " "rule or group of that name (the "
                         f"rules are {', '.join(sorted(step.name for step in workflow.rules))}; the groups "
                         f"are {', '.join(sorted(set(RESOURCE_GROUPS.values())))})")


def intermediate(path):
    """An output that only later stages of the same run read (frame caches, pseudo-labels, priors,
    predicted frames, the segmenter's training frames): kept with keep_intermediates: true, else
    temp(), so Snakemake removes it once every job of the run that reads it is done."""
    return path if config["keep_intermediates"] else temp(path)


def csv(values):
    """A list as one comma-separated command-line value."""
    return ",".join(str(v) for v in values)


def flags(settings):
    """A model's config section as the verb's command-line flags: key_Name: v → --key-name v
    (lists comma-separated; a boolean as --key-name or --no-key-name)."""

    def flag(key, value):
        name = key.lower().replace("_", "-")
        if isinstance(value, bool):
            return f"--{name}" if value else f"--no-{name}"
        return f"--{name} {csv(value) if isinstance(value, list) else value}"

    return " ".join(flag(key, value) for key, value in settings.items())


def selected(section):
    """A config section with only the selected model's sub-section (`model: name` picks it;
    the models' sub-sections are its only mappings), so editing an unselected model's
    settings reruns nothing."""
    return {key: value for key, value in section.items() if not isinstance(value, dict) or key == section["model"]}


def kept_frames(wildcards):
    """Future frames predict_frames keeps: all 11 for train (the segmenter trains on
    them), predictor.keep_frames for val and hidden."""
    return "11-21" if wildcards.split == "train" else csv(config["predictor"]["keep_frames"])


def shard_arg(wildcards):
    """Snakemake's scatter item 'i-of-K' (1-based) as the verbs' '--shard i/K' (0-based)."""
    index, count = wildcards.scatteritem.split("-of-")
    return f"{int(index) - 1}/{count}"


def motion_frames(split):
    """The frame cache route motion's optical flow reads, when motion.flow is on."""
    return [f"{RESULTS}/cache/{split}.npy"] if config["motion"]["flow"] != "none" else []


def frames_flag(wildcards, input):
    """The frame cache of motion_frames as the extrapolate verb's flag (none when flow is off)."""
    return f"--frames {input.frames}" if input.frames else ""


@functools.lru_cache(maxsize=None)
def _files_fingerprint(root, splits):
    # The layout's two levels, <split>/<video>/<file>, and no deeper: a symlinked video
    # folder counts, a symlink loop cannot trap the walk.
    digest = hashlib.sha256()

    def entries(folder):
        try:
            return sorted(os.scandir(folder), key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):  # a missing split: check_data names it
            return []

    for split in splits:
        for video in entries(os.path.join(root, split)):
            for entry in entries(video.path) if video.is_dir() else [video]:
                try:
                    stat = entry.stat()
                    size, mtime = stat.st_size, stat.st_mtime_ns
                except OSError:  # a dangling link: check_data names it
                    size = mtime = -1
                digest.update(f"{os.path.relpath(entry.path, root)}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()[:16]


def data_fingerprint(wildcards):
    """A hash of (relative path, size, mtime) of every file of DATA_SPLITS, as rule check_data's
    params: an added, removed, resized or rewritten file reruns the check (Snakemake compares
    only the folder's own mtime, which sees its direct entries). The synthetic dataset is
    Snakemake's own output, rewritten as a whole by synth_dataset: its mtime suffices, and
    it does not exist yet when the first DAG is built. One pass of os.scandir per process."""
    if not config["data"]["root"]:
        return "synthetic"
    return _files_fingerprint(DATA, tuple(DATA_SPLITS))


def resource_requests():
    """Each rule's resources request, {rule: {threads, mem_mb, runtime (minutes), gpu}}, for the
    resource table (its rule, resource_table), every rule of the workflow but `all` and the table's own, in
    the order the rule files define them. Read from the rules themselves, so a rule that
    borrows another's config entry (pseudo_label takes segment's) shows what it asks for."""
    requests = {}
    for step in workflow.rules:  # Snakemake's Rule objects
        if step.name in ("all", "resource_table"):
            continue
        def value(name, default):
            # a Snakemake Resource; one given as a function (none of ours) is known per job only, and
            # one a rule does not declare (gpu of the CPU rules) may be there with the value None
            declared = step.resources.get(name)
            known = declared is not None and not declared.is_evaluable() and declared.value is not None
            return declared.value if known else default

        requests[step.name] = {"threads": value("_cores", 1), "mem_mb": value("mem_mb", None),
                               "runtime": value("runtime", None), "gpu": value("gpu", 0)}
    return requests
