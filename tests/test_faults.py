"""Fault injection, each case through what a rule runs (`snakemake -n` for a config, the
verb for an option or a file): a bad config, a bad option, a missing or broken input, a
broken checkpoint, a full disk, a kill at the worst moment. Each must fail with one error
line naming the file or the config key and what is wrong, and leave no output behind.
Then determinism: the same seed gives the same bytes at every stage (CPU, one thread).

A bad dataset runs the whole chain (`snakemake`, the default target): it must stop in the first
rule, check_data, with the bad file named on the console (profiles/default's show-failed-logs)
and nothing of a later rule written.

What other files already cover is not repeated here: the dataset matrix (test_data.py,
test_check_data.py),
SIGKILL/SIGTERM resume and NaN (test_train_predictor.py, test_segmenter.py), the
make-seg-frames bad inputs (test_make_seg_frames.py), synth's same-seed bytes (test_synth.py).
"""

from __future__ import annotations

import concurrent.futures
import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from futureseg import cli
from futureseg.core import data
from futureseg.core.io import load_array, save_array
from futureseg.data.synth import generate_dataset
from futureseg.core.training import load_checkpoint
from pipeline_helpers import snakemake, tiny_config, write_config
from test_data import _mask_class_out_of_range, _mask_float, _mask_wrong_shape, _missing_frame, _truncated_png

SPLITS = ("train", "val", "unlabeled", "hidden")
# Tiny models and short runs (3 steps) so every stage takes about a second on one thread.
TINY_SIMVP = {"hid_S": 8, "hid_T": 16, "N_S": 2, "N_T": 2}
TINY_PREDICTOR = ["--model", "simvp", "--model-config", json.dumps(TINY_SIMVP), "--epochs", "4", "--lr", "0.002",
                  "--weight-decay", "0.05", "--batch-size", "2",
                  "--max-steps", "3", "--checkpoint-every", "1", "--log-every", "1", "--seed", "5",
                  "--threads", "1", "--loader-workers", "0"]
TINY_SEGMENTER = ["--backbone", "resnet18", "--fpn-channels", "32", "--box-head-dim", "64",
                  "--mask-head-channels", "32", "--box-batch-per-image", "64", "--rpn-post-nms-train", "100",
                  "--detections-per-image", "20", "--batch-size", "2", "--epochs", "1", "--max-steps", "3",
                  "--lr", "0.01", "--weight-decay", "0.0001", "--warmup-steps", "2", "--seed", "7", "--checkpoint-every", "1", "--threads", "1"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PARALLEL = 3  # subprocesses at once: the machine has 2 cores and may be shared


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """In-process verbs set torch's thread count (--threads 1); give pytest its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers


def predictor_argv(results: Path, out: Path | None = None) -> list:
    out = out or results / "predictor"
    return ["train-predictor", "--cache", results / "cache/unlabeled.npy", results / "cache/train.npy",
            "--val-cache", results / "cache/val.npy", "--mean-std", results / "data/mean_std.json",
            "--out", out / "model.pt", "--metrics", out / "metrics.csv", "--checkpoints", out / "checkpoints",
            *TINY_PREDICTOR]


def segmenter_argv(root: Path, results: Path, out: Path | None = None) -> list:
    out = out or results / "segmenter"
    return ["train-segmenter", "--root", root, "--seg-frames", results / "segframes",
            "--mean-std", results / "data/mean_std.json", "--out", out / "model.pt",
            "--metrics", out / "metrics.csv", "--checkpoints", out / "checkpoints", *TINY_SEGMENTER]


def verb(*argv) -> int:
    """`futureseg ARGV` in this process (exit code; an uncaught exception propagates)."""
    return cli.main([str(a) for a in argv])


def lower_box_threshold(model: Path, out: Path) -> None:
    """A copy of a segmenter model.pt whose Mask R-CNN keeps detections of any score: after
    3 training steps every class score is below torchvision's 0.05 cut, so the masks would
    be all background and comparing them would prove nothing."""
    state = torch.load(model, map_location="cpu", weights_only=True)
    state["model_config"]["box_score_thresh"] = 0.0
    torch.save(state, out)


def run_chain(root: Path, results: Path) -> None:
    """Every stage once, in pipeline order, as the rules call them (tiny settings)."""
    r = results
    assert verb("mean-std", "--root", root, "--out", r / "data/mean_std.json", "--splits", "train,unlabeled") == 0
    for split in SPLITS:
        assert verb("cache-frames", "--root", root, "--split", split, "--out", r / f"cache/{split}.npy") == 0
    assert verb(*predictor_argv(r)) == 0
    for split, frames in (("train", "11-21"), ("val", "21"), ("hidden", "21")):
        assert verb("predict-frames", "--model", r / "predictor/model.pt", "--cache", r / f"cache/{split}.npy",
                    "--out", r / f"predictor/frames_{split}.npy", "--frames", frames, "--threads", "1") == 0
    assert verb("make-seg-frames", "--root", root, "--frames", r / "predictor/frames_train.npy",
                "--out", r / "segframes", "--frameskip", "4", "--seed", "2") == 0
    assert verb(*segmenter_argv(root, r)) == 0
    lower_box_threshold(r / "segmenter/model.pt", r / "segmenter/model_any_score.pt")
    seg = r / "segmenter"
    assert verb("segment", "--root", root, "--model", seg / "model_any_score.pt",
                "--val-frames", r / "predictor/frames_val.npy", "--out-val", seg / "masks_val.npy",
                "--out-val-oracle", seg / "masks_val_oracle.npy", "--out-val-frame10", seg / "masks_val_frame10.npy",
                "--score-threshold", "0.01", "--threads", "1") == 0
    assert verb("segment", "--model", seg / "model_any_score.pt", "--hidden-frames", r / "predictor/frames_hidden.npy",
                "--out-hidden", seg / "masks_hidden.npy", "--score-threshold", "0.01", "--threads", "1") == 0
    assert verb("score", "--root", root, "--pred", seg / "masks_val.npy", "--oracle", seg / "masks_val_oracle.npy",
                "--out", r / "eval/scores.json", "--per-class", r / "eval/per_class.csv") == 0
    assert verb("submission", "--masks", seg / "masks_hidden.npy", "--out", r / "submission.pt") == 0


@pytest.fixture(scope="module")
def chain(tiny_dataset, tmp_path_factory):
    """(dataset root, results folder) of one run of every stage: the inputs of the cases below."""
    results = tmp_path_factory.mktemp("chain") / "results"
    run_chain(tiny_dataset, results)
    return tiny_dataset, results


def error_line(capsys, verb_name: str) -> str:
    """The verb's stderr, which must be exactly one `futureseg VERB: error: ...` line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    prefix = f"futureseg {verb_name}: error: "
    assert err[0].startswith(prefix), err[0]
    return err[0][len(prefix):]


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (relative), to tell whether a failed verb wrote anything."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def is_temp(name: str) -> bool:
    """The temporary names of futureseg.core.io.atomic_path: `.<output name>.<random>.tmp`."""
    return name.startswith(".") and name.endswith(".tmp")


# ---------------------------------------------------------------- config, through `snakemake -n`

NOWHERE = "/nonexistent/Dataset_Student"
# What the schema refuses (workflow/schemas/config.schema.yaml): checked in-process with the
# validate() the Snakefile calls, a case in milliseconds; one of them (unknown-key) also goes
# through `snakemake -n` below, to show the Snakefile validates before anything runs.
SCHEMA_CASES = {
    # case: (partial config merged over the tiny one, text naming the key)
    "unknown-key": ({"predictor": {"epochz": 3}}, "'epochz' was unexpected"),
    "wrong-type": ({"predictor": {"lr": "fast"}}, "['predictor']['lr']"),
    "negative-epochs": ({"predictor": {"epochs": -1}}, "['predictor']['epochs']"),
    "odd-N_S": ({"predictor": {"simvp": {"N_S": 3}}}, "['predictor']['simvp']['N_S']"),
    "unknown-backend": ({"segmenter": {"maskrcnn": {"backend": "mmdet"}}}, "['segmenter']['maskrcnn']['backend']"),
    "unknown-route": ({"routes": ["frames", "teleport"]}, "['routes']"),
    "negative-dynamics-layers": ({"dynamics": {"layers": -1}}, "['dynamics']['layers']"),
    "unknown-dynamics-key": ({"dynamics": {"friction": 0.1}}, "'friction' was unexpected"),
    "unknown-dynamics-interaction": ({"dynamics": {"interaction": "telepathy"}}, "['dynamics']['interaction']"),
    "non-boolean-dynamics-spread": ({"dynamics": {"spread": "wide"}}, "['dynamics']['spread']"),
    "unknown-prior": ({"forecaster": {"prior": "oracle"}}, "['forecaster']['prior']"),
    "unknown-resources-key": ({"resources": {"segment": {"cpus": 4}}}, "'cpus' was unexpected"),
    "unknown-slurm-key": ({"resources": {"slurm": {"partitions": "gpu"}}}, "'partitions' was unexpected"),
}
# What the workflow refuses once the schema has passed (workflow/rules/common.smk), through
# `snakemake -n` as a user meets it.
CONFIG_CASES = {
    "unknown-key": SCHEMA_CASES["unknown-key"],
    "submit-route-not-run": ({"routes": ["frames"], "eval": {"submit": "masks"}}, "eval.submit"),
    "data-root-nowhere": ({"data": {"root": NOWHERE}}, f"config data.root: {NOWHERE} does not exist"),
    # a resources entry names a rule or a group of rules (README, "Resources")
    "resources-of-no-rule": ({"resources": {"pseudo_labl": {"runtime": 900}}},
                             "config resources: pseudo_labl: no rule or group of that name"),
    "partition-in-resources-default": ({"resources": {"default": {"partition": "gpu"}}},
                                       "config resources.default: partition: set them for every job in resources.slurm"),
    "two-gpus-for-one-process": ({"resources": {"train_segmenter": {"gpu": 2}}},
                                 "config resources.train_segmenter.gpu: 2; only train_predictor"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_the_schema_names_what_is_wrong(case):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from pipeline_helpers import REPO, merged

    override, names = SCHEMA_CASES[case]
    with pytest.raises(WorkflowError) as refused:
        validate(merged(tiny_config(), override), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert names in str(refused.value), str(refused.value)[-3000:]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """`snakemake -n` of every config case, a few at a time (each is seconds of imports)."""

    workdirs = {case: tmp_path_factory.mktemp(f"config-{case}") for case in CONFIG_CASES}
    for workdir in workdirs.values():
        write_config(workdir, tiny_config())

    def dry_run(case):
        return workdirs[case], snakemake(workdirs[case], "-n", override=CONFIG_CASES[case][0], check=False)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(CONFIG_CASES, pool.map(dry_run, CONFIG_CASES)))


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_stops_snakemake_before_anything_runs(dry_runs, case):
    workdir, result = dry_runs[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert CONFIG_CASES[case][1] in output, output[-3000:]
    assert "Traceback" not in output
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


# ---------------------------------------------------------------- a bad dataset, through the whole chain


def _short_hidden_video(root):
    path = data.list_videos(root, "hidden")[-1].frame_path(10)
    path.unlink()
    return path, "frame is missing"


# Each breaks a copy of the tiny dataset and returns (the file at fault, what the error says).
BAD_DATA_CASES = [_truncated_png, _mask_wrong_shape, _mask_class_out_of_range, _missing_frame,
                  _short_hidden_video, _mask_float]


@pytest.fixture(scope="module")
def bad_data_runs(tiny_dataset, tmp_path_factory):
    """`snakemake --cores 2` (every rule, as the README's demo runs it) on each broken copy,
    a few at a time: case → (workdir, bad file, what, result)."""

    def run(breakage):
        base = tmp_path_factory.mktemp(breakage.__name__.lstrip("_"))
        root = base / "dataset"
        shutil.copytree(tiny_dataset, root)
        path, what = breakage(root)
        workdir = base / "work"
        workdir.mkdir()
        write_config(workdir, tiny_config())
        result = snakemake(workdir, "--cores", "2", override={"data": {"root": str(root)}}, check=False)
        return workdir, path, what, result

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(BAD_DATA_CASES, pool.map(run, BAD_DATA_CASES)))


@pytest.mark.parametrize("breakage", BAD_DATA_CASES, ids=lambda f: f.__name__.lstrip("_"))
def test_bad_dataset_stops_the_chain_in_check_data_naming_the_file(bad_data_runs, breakage):
    workdir, path, what, result = bad_data_runs[breakage]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    # the verb's one error line, as the default profile's show-failed-logs prints the log
    assert f"futureseg check-data: error: {path}: " in output and what in output, output[-3000:]
    assert "Error in rule check_data:" in output
    # the first rule failed and nothing else ran: no output of any rule, only the check's log
    started = set(re.findall(r"^(?:local)?rule (\w+):", output, flags=re.MULTILINE))
    assert started == {"check_data"}, started
    # (Snakemake makes the benchmark file's folder before the job; a failed job writes none)
    assert tree(workdir / "results") == ["benchmarks", "logs", "logs/check_data.log"]
    assert not (workdir / "resources").exists()


# ---------------------------------------------------------------- options and inputs, through the verb


@pytest.fixture(scope="module")
def odd_size(tmp_path_factory):
    """Caches of a 30×46 dataset: SimVP with N_S=4 downsamples by 4, which divides neither."""
    folder = tmp_path_factory.mktemp("odd-size")
    generate_dataset(folder / "dataset", {"train": 2, "val": 1, "unlabeled": 0, "hidden": 1}, 30, 46, seed=2)
    for split in ("train", "val"):
        assert verb("cache-frames", "--root", folder / "dataset", "--split", split,
                    "--out", folder / f"{split}.npy") == 0
    assert verb("mean-std", "--root", folder / "dataset", "--out", folder / "mean_std.json", "--splits", "train") == 0
    return folder


def _mean_std_file(tmp_path, text):
    path = tmp_path / "inputs" / "mean_std.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _predictor_with(chain, out, *extra, mean_std=None):
    argv = predictor_argv(chain[1], out) + list(extra)
    if mean_std is not None:
        argv[argv.index("--mean-std") + 1] = mean_std
    return argv


def _segmenter_with(chain, out, mean_std):
    argv = segmenter_argv(*chain, out)
    argv[argv.index("--mean-std") + 1] = mean_std
    return argv


# Each case: chain, odd_size, tmp, out → (argv, what the message starts with, text it must hold).
# The verb writes only under `out`, which must stay absent.
def _n_s_odd(chain, odd, tmp, out):
    return (_predictor_with(chain, out, "--model-config", json.dumps({**TINY_SIMVP, "N_S": 3})), "predictor.simvp.N_S",
            "even and >= 2, got 3")


def _epochs_negative(chain, odd, tmp, out):
    return _predictor_with(chain, out, "--epochs", "-1"), "--epochs -1", "must be at least 1"


def _frame_size_not_divisible(chain, odd, tmp, out):
    argv = ["train-predictor", "--cache", odd / "train.npy", "--val-cache", odd / "val.npy",
            "--mean-std", odd / "mean_std.json", "--out", out / "model.pt", "--metrics", out / "metrics.csv",
            "--checkpoints", out / "checkpoints", *TINY_PREDICTOR,
            "--model-config", json.dumps({**TINY_SIMVP, "N_S": 4}), "--batch-size", "1"]
    return argv, "predictor.simvp.N_S=4", "downsamples by 4, which must divide the frame size (H, W) = (30, 46)"


def _val_cache_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "val.npy"
    argv = predictor_argv(chain[1], out)
    argv[argv.index("--val-cache") + 1] = missing
    return argv, str(missing), "frame cache file does not exist"


def _mean_std_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "mean_std.json"
    return _predictor_with(chain, out, mean_std=missing), str(missing), "does not exist"


def _mean_std_truncated(chain, odd, tmp, out):
    path = _mean_std_file(tmp, '{"mean": [114.3, 114.6')
    return _predictor_with(chain, out, mean_std=path), str(path), "JSON"


def _mean_std_zero_std(chain, odd, tmp, out):
    path = _mean_std_file(tmp, '{"mean": [114.3, 114.6, 120.2], "std": [0.0, 27.9, 28.3]}')
    return _predictor_with(chain, out, mean_std=path), str(path), "std"


def _segmenter_mean_std_truncated(chain, odd, tmp, out):
    path = _mean_std_file(tmp, '{"mean": [114.3, 114.6')
    return _segmenter_with(chain, out, path), str(path), "JSON"


def _mean_std_root_nowhere(chain, odd, tmp, out):
    missing = tmp / "nowhere"
    return (["mean-std", "--root", missing, "--out", out / "mean_std.json"], str(missing),
            "dataset root does not exist")


def _predict_with_a_segmenter_model(chain, odd, tmp, out):
    model = chain[1] / "segmenter/model.pt"
    return (["predict-frames", "--model", model, "--cache", chain[1] / "cache/val.npy", "--out", out / "f.npy"],
            str(model), "not a predictor model file")


def _segment_with_a_predictor_model(chain, odd, tmp, out):
    model = chain[1] / "predictor/model.pt"
    return (["segment", "--model", model, "--hidden-frames", chain[1] / "predictor/frames_hidden.npy",
             "--out-hidden", out / "m.npy"], str(model), "not a segmenter model")


def _segment_frames_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "frames_hidden.npy"
    return (["segment", "--model", chain[1] / "segmenter/model.pt", "--hidden-frames", missing,
             "--out-hidden", out / "m.npy"], str(missing), "does not exist")


def _score_pred_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "masks_val.npy"
    return (["score", "--root", chain[0], "--pred", missing, "--out", out / "scores.json"], str(missing),
            "does not exist")


def _gather_shard_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "masks_1-of-2.npy"
    return (["gather-shards", "--shards", chain[1] / "segmenter/masks_hidden.npy", missing,
             "--out", out / "masks_hidden.npy"], str(missing), "shard file does not exist")


def _report_metrics_missing(chain, odd, tmp, out):
    missing = tmp / "nowhere" / "metrics.csv"
    return (["report-figures", "--metrics", f"predictor={missing}", "--curves", out / "curves.png"], str(missing),
            "does not exist")


BAD_OPTIONS = [
    _n_s_odd,
    _epochs_negative,
    _frame_size_not_divisible,
    _val_cache_missing,
    _mean_std_missing,
    _mean_std_truncated,
    _mean_std_zero_std,
    _segmenter_mean_std_truncated,
    _mean_std_root_nowhere,
    _predict_with_a_segmenter_model,
    _segment_with_a_predictor_model,
    _segment_frames_missing,
    _score_pred_missing,
    _gather_shard_missing,
    _report_metrics_missing,
]


def _case_id(case):
    return case.__name__.lstrip("_").replace("_", "-")


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=_case_id)
def test_bad_option_or_input_fails_with_one_line_and_writes_nothing(chain, odd_size, tmp_path, capsys, case):
    out = tmp_path / "out"
    argv, starts, says = case(chain, odd_size, tmp_path, out)
    capsys.readouterr()
    code = verb(*argv)
    message = error_line(capsys, argv[0])
    assert code == 2
    assert message.startswith(starts) and says in message, message
    assert tree(out) == [], "no output, no temp file, no checkpoint folder"


def test_wrong_type_on_the_command_line_names_the_option(chain, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        verb(*_predictor_with(chain, tmp_path / "out", "--epochs", "four"))
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage first
    assert last.endswith("error: argument --epochs: invalid int value: 'four'"), last
    assert not (tmp_path / "out").exists()


# Run in a fresh interpreter where `import detectron2` fails, as on a machine without it.
WITHOUT_DETECTRON2 = """
import sys
sys.modules["detectron2"] = None
from futureseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("use", ["train-segmenter", "segment"])
def test_detectron2_not_installed_names_segmenter_backend(chain, tmp_path, use):
    root, results = chain
    out = tmp_path / "out"
    if use == "train-segmenter":
        # the default model sizes, which the detectron2 backend supports
        argv = ["train-segmenter", "--root", root, "--seg-frames", results / "segframes",
                "--mean-std", results / "data/mean_std.json", "--out", out / "model.pt",
                "--metrics", out / "metrics.csv", "--checkpoints", out / "checkpoints",
                "--backend", "detectron2", "--epochs", "1", "--batch-size", "2", "--lr", "0.01", "--weight-decay", "0.0001",
                "--warmup-steps", "2", "--max-steps", "1", "--threads", "1"]
    else:  # a model trained with detectron2 elsewhere, segmented here
        model = tmp_path / "detectron2_model.pt"
        torch.save({"model": {}, "fingerprint": "0" * 16, "backend": "detectron2",
                    "model_config": {"height": 32, "width": 48}}, model)
        argv = ["segment", "--model", model, "--hidden-frames", results / "predictor/frames_hidden.npy",
                "--out-hidden", out / "masks_hidden.npy"]
    result = subprocess.run([sys.executable, "-c", WITHOUT_DETECTRON2, *map(str, argv)],
                            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"futureseg {use}: error: segmenter.backend: detectron2 is not installed"), last
    assert "Traceback" not in result.stderr
    assert tree(out) == []


# ---------------------------------------------------------------- broken checkpoints and model files


class PickledThing:
    """Any class: torch.save pickles it, so the file is not weights-only."""


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "unreadable or truncated checkpoint"


def _empty(path):
    path.write_bytes(b"")
    return "unreadable or truncated checkpoint"


def _pickled_object(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["model"] = PickledThing()
    torch.save(state, path)
    return "not a weights-only checkpoint"


def _not_a_dict(path):
    torch.save(torch.zeros(3), path)
    return "not a futureseg checkpoint"


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return "checkpoint"


CORRUPTIONS = [
    _truncated,
    _empty,
    _pickled_object,
    _not_a_dict,
    _garbage,
]


def _rerun_train_predictor(chain, tmp):
    """The rerun's own checkpoint: <checkpoints>/<fingerprint>/last.pt of the same config."""
    out = tmp / "out"
    shutil.copytree(chain[1] / "predictor/checkpoints", out / "checkpoints")
    (checkpoint,) = (out / "checkpoints").glob("*/last.pt")
    return predictor_argv(chain[1], out), checkpoint, out


def _rerun_train_segmenter(chain, tmp):
    out = tmp / "out"
    shutil.copytree(chain[1] / "segmenter/checkpoints", out / "checkpoints")
    (checkpoint,) = (out / "checkpoints").glob("*/last.pt")
    return segmenter_argv(*chain, out), checkpoint, out


def _predict_frames_model(chain, tmp):
    model = tmp / "in" / "model.pt"
    model.parent.mkdir()
    shutil.copy(chain[1] / "predictor/model.pt", model)
    out = tmp / "out"
    return ["predict-frames", "--model", model, "--cache", chain[1] / "cache/val.npy",
            "--out", out / "frames_val.npy", "--threads", "1"], model, out


def _segment_model(chain, tmp):
    model = tmp / "in" / "model.pt"
    model.parent.mkdir()
    shutil.copy(chain[1] / "segmenter/model.pt", model)
    out = tmp / "out"
    return ["segment", "--model", model, "--hidden-frames", chain[1] / "predictor/frames_hidden.npy",
            "--out-hidden", out / "masks_hidden.npy", "--threads", "1"], model, out


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=_case_id)
@pytest.mark.parametrize("reader", [_rerun_train_predictor, _rerun_train_segmenter, _predict_frames_model,
                                    _segment_model], ids=_case_id)
def test_broken_checkpoint_names_the_file(chain, tmp_path, capsys, caplog, reader, corrupt):
    argv, checkpoint, out = reader(chain, tmp_path)
    says = corrupt(checkpoint)
    before = tree(out)
    capsys.readouterr()
    if reader in (_rerun_train_predictor, _rerun_train_segmenter) and corrupt in (_truncated, _empty, _garbage):
        # A trainer's own checkpoint that torch.load cannot parse is moved aside, with one
        # warning naming it, and the run trains from scratch to the end.
        broken = checkpoint.read_bytes()
        caplog.clear()
        assert verb(*argv) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and warnings[0].startswith(f"{checkpoint}: ") and says in warnings[0], warnings
        assert "starts over" in warnings[0], warnings
        assert checkpoint.with_name("last.pt.corrupt").read_bytes() == broken
        assert load_checkpoint(checkpoint)["step"] == 3
        return
    code = verb(*argv)
    message = error_line(capsys, argv[0])
    assert code == 2
    assert message.startswith(f"{checkpoint}: ") and says in message, message
    assert tree(out) == before, "the failed verb wrote nothing"


# ---------------------------------------------------------------- a full disk


@pytest.mark.parametrize("fail_on, kept_step", [(2, 1), (4, 3)], ids=["checkpoint", "model"])
def test_disk_full_keeps_the_last_checkpoint_and_leaves_no_temp(chain, tmp_path, monkeypatch, caplog,
                                                                  fail_on, kept_step):
    """Saves of a 3-step run: checkpoints at steps 1, 2, 3, then model.pt. The disk fills
    during save `fail_on`, after part of the file reached it."""
    real_save = torch.save
    saves = []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves.append(Path(f))
        if len(saves) == fail_on:
            Path(f).write_bytes(b"PK\x03\x04 the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    out = tmp_path / "out"
    argv = predictor_argv(chain[1], out)
    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    try:
        code = verb(*argv)
    except OSError as exc:  # the CLI passes OSError through (a traceback, exit 1)
        assert exc.errno == errno.ENOSPC
    else:
        assert code != 0
    monkeypatch.undo()
    assert saves[fail_on - 1].name.startswith(".") and not saves[fail_on - 1].exists(), "temp removed"
    (checkpoint,) = (out / "checkpoints").glob("*/last.pt")
    assert load_checkpoint(checkpoint)["step"] == kept_step
    assert not (out / "model.pt").exists() and not (out / "metrics.csv").exists()
    assert [p for p in out.rglob(".*")] == [], "no temp file left"

    # the rerun resumes from the kept checkpoint and ends where an undisturbed run ends
    caplog.set_level("INFO", logger="futureseg")
    assert verb(*argv) == 0
    assert f"at step {kept_step} " in caplog.text
    _assert_same_weights(out / "model.pt", chain[1] / "predictor/model.pt")


# ---------------------------------------------------------------- killed verbs

# In a fresh interpreter: the verb runs normally, but the moment it renames the first of its
# declared outputs into place (the output complete under its temp name) the process gets
# SIGKILL, which no handler can intercept.
KILL_AT_RENAME = """
import os, signal, sys
outputs = set(sys.argv[1].split(os.pathsep))
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.fspath(dst) in outputs:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from futureseg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _kill_cases(root: Path, r: Path, base: Path) -> dict:
    """case: (argv, declared outputs (as the rule lists them), other entries allowed in out)."""
    seg = r / "segmenter"
    masks = load_array(seg / "masks_hidden.npy")
    shards = []
    for i, rows in enumerate((slice(0, 1), slice(1, None))):
        shards.append(base / "inputs" / f"masks_{i + 1}-of-2.npy")
        save_array(shards[-1], masks[0][rows], masks[1]["ids"][rows], frame_index=21)
    cases = {
        "synth": (["synth", "--out", "{out}/dataset", "--height", "32", "--width", "48", "--train", "2", "--val", "1",
                   "--unlabeled", "0", "--hidden", "1"], ["dataset"], set()),
        "mean-std": (["mean-std", "--root", root, "--out", "{out}/mean_std.json"], ["mean_std.json"], set()),
        "cache-frames": (["cache-frames", "--root", root, "--split", "val", "--out", "{out}/val.npy"],
                         ["val.npy", "val.json"], set()),
        "train-predictor": (predictor_argv(r, Path("{out}")) + ["--max-steps", "1"], ["model.pt", "metrics.csv"],
                            {"checkpoints"}),
        "predict-frames": (["predict-frames", "--model", r / "predictor/model.pt", "--cache", r / "cache/val.npy",
                            "--out", "{out}/frames_val.npy", "--frames", "21", "--threads", "1"],
                           ["frames_val.npy", "frames_val.json"], set()),
        "make-seg-frames": (["make-seg-frames", "--root", root, "--frames", r / "predictor/frames_train.npy",
                             "--out", "{out}/segframes", "--frameskip", "4"], ["segframes"], set()),
        "train-segmenter": (segmenter_argv(root, r, Path("{out}")) + ["--max-steps", "1"],
                            ["model.pt", "metrics.csv"], {"checkpoints"}),
        "segment": (["segment", "--root", root, "--model", seg / "model.pt", "--val-frames",
                     r / "predictor/frames_val.npy", "--out-val", "{out}/masks_val.npy",
                     "--out-val-oracle", "{out}/masks_val_oracle.npy", "--out-val-frame10",
                     "{out}/masks_val_frame10.npy", "--threads", "1"],
                    ["masks_val.npy", "masks_val_oracle.npy", "masks_val_frame10.npy"], set()),
        "score": (["score", "--root", root, "--pred", seg / "masks_val.npy", "--oracle", seg / "masks_val_oracle.npy",
                   "--out", "{out}/scores.json", "--per-class", "{out}/per_class.csv"],
                  ["scores.json", "per_class.csv"], set()),
        # the ids sidecar is renamed into place first, then the tensor
        "submission": (["submission", "--masks", seg / "masks_hidden.npy", "--out", "{out}/submission.pt"],
                       ["submission.json", "submission.pt"], set()),
        "gather-shards": (["gather-shards", "--shards", *shards, "--out", "{out}/masks_hidden.npy"],
                          ["masks_hidden.npy"], set()),
        "report-figures": (["report-figures", "--metrics", f"predictor={r / 'predictor/metrics.csv'}",
                            "--metrics", f"segmenter={seg / 'metrics.csv'}",
                            "--curves", "{out}/training_curves.png"], ["training_curves.png"], set()),
    }
    return cases


@pytest.fixture(scope="module")
def killed_at_rename(chain, tmp_path_factory):
    """Every verb killed at its first output's rename, a few at a time: case → (result, out, case)."""
    base = tmp_path_factory.mktemp("killed")
    cases = _kill_cases(*chain, base)

    def run(name):
        out = base / name
        out.mkdir()
        argv, outputs, _ = cases[name]
        argv = [str(a).replace("{out}", str(out)) for a in argv]
        declared = os.pathsep.join(str(out / o) for o in outputs)
        result = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, declared, *argv],
                                capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
        return result, out

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return {name: (*done, cases[name]) for name, done in zip(cases, pool.map(run, cases))}


KILLED_VERBS = ["synth", "mean-std", "cache-frames", "train-predictor", "predict-frames", "make-seg-frames",
                "train-segmenter", "segment", "score", "submission", "gather-shards", "report-figures"]


@pytest.mark.parametrize("name", KILLED_VERBS)
def test_verb_killed_before_its_output_is_in_place_leaves_no_output(killed_at_rename, name):
    result, out, (_, outputs, allowed) = killed_at_rename[name]
    assert result.returncode == -signal.SIGKILL, (
        f"exit {result.returncode}: the verb never renamed an output into place\n{result.stderr[-3000:]}")
    left = {p.name for p in out.iterdir()}
    assert not left & set(outputs), f"declared outputs present after the kill: {left & set(outputs)}"
    junk = sorted(n for n in left if n not in allowed)
    # SIGKILL cannot be handled, so the complete temp stays; it is hidden and never an output name
    assert len(junk) == 1 and is_temp(junk[0]) and any(junk[0].startswith(f".{o}.") for o in outputs), left


def _wait_for(condition, process, what, limit=120):
    deadline = time.monotonic() + limit
    while not condition():
        assert process.poll() is None, f"the verb ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit} s"
        time.sleep(0.01)


def test_synth_killed_midway_leaves_only_its_temp_folder_which_the_next_run_removes(tmp_path):
    out = tmp_path / "dataset"
    process = subprocess.Popen(
        [sys.executable, "-m", "futureseg", "synth", "--out", str(out), "--height", "32", "--width", "48",
         "--train", "400", "--val", "1", "--unlabeled", "0", "--hidden", "1", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SUBPROCESS_ENV)
    try:
        _wait_for(lambda: any(tmp_path.glob(".dataset.*.tmp/train/video_*")), process, "video was written")
        time.sleep(0.3)
        assert process.poll() is None, "synth finished before the kill (make the dataset bigger)"
    finally:
        process.kill()
        process.wait()
    (temp,) = tmp_path.iterdir()
    assert is_temp(temp.name) and temp.name.startswith(".dataset.") and not out.exists()
    assert 0 < len(list(temp.glob("train/video_*"))) < 400, "killed midway"

    # the next run of the stage (smaller, for speed) removes the killed run's temp folder
    rerun = subprocess.run(
        [sys.executable, "-m", "futureseg", "synth", "--out", str(out), "--height", "32", "--width", "48",
         "--train", "1", "--val", "1", "--unlabeled", "0", "--hidden", "1", "--workers", "1"],
        capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_cache_frames_killed_midway_leaves_only_its_temp_file_which_the_next_run_removes(tiny_dataset, tmp_path):
    # 600 train videos that are links to one tiny video: seconds of decoding, no rendering
    big = tmp_path / "big"
    (big / "train").mkdir(parents=True)
    source = data.list_videos(tiny_dataset, "train")[0].path
    for video_id in range(600):
        (big / "train" / f"video_{video_id:05d}").symlink_to(source, target_is_directory=True)
    out = tmp_path / "cache" / "train.npy"
    process = subprocess.Popen(
        [sys.executable, "-m", "futureseg", "cache-frames", "--root", str(big), "--split", "train", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SUBPROCESS_ENV)
    try:
        _wait_for(lambda: any(out.parent.glob(".train.npy.*.tmp")), process, "temp file appeared")
        time.sleep(0.2)
        assert process.poll() is None, "cache-frames finished before the kill (add videos)"
    finally:
        process.kill()
        process.wait()
    (temp,) = out.parent.iterdir()
    assert is_temp(temp.name) and temp.name.startswith(".train.npy.")
    assert not out.exists() and not out.with_suffix(".json").exists()

    # the next run of the stage removes the killed run's temp before writing its own
    (big / "train" / "video_00599").unlink()  # a changed input, as when a rerun is due
    rerun = subprocess.run(
        [sys.executable, "-m", "futureseg", "cache-frames", "--root", str(big), "--split", "train", "--out", str(out)],
        capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.json", "train.npy"]


# ---------------------------------------------------------------- determinism


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b):
    a, b = _weights(a), _weights(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _csv_without(path, *columns):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in columns} for row in csv.DictReader(f)]


def test_same_seed_same_results_at_every_stage(chain, tmp_path):
    root, first = chain
    second = tmp_path / "results"
    run_chain(root, second)

    def same_bytes(relative):
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative

    same_bytes("data/mean_std.json")
    for split in SPLITS:
        same_bytes(f"cache/{split}.npy")
    _assert_same_weights(first / "predictor/model.pt", second / "predictor/model.pt")
    # every metrics.csv times its steps (step_seconds): the clock is the one thing that differs
    assert _csv_without(first / "predictor/metrics.csv", "step_seconds") == _csv_without(second / "predictor/metrics.csv", "step_seconds")
    for split in ("train", "val", "hidden"):
        same_bytes(f"predictor/frames_{split}.npy")
        same_bytes(f"predictor/frames_{split}.json")
    for name in ("images.npy", "masks.npy", "index.csv", "counts.json"):
        same_bytes(f"segframes/{name}")
    _assert_same_weights(first / "segmenter/model.pt", second / "segmenter/model.pt")
    timings = ("seconds_per_step", "val_seconds", "step_seconds")
    assert _csv_without(first / "segmenter/metrics.csv", *timings) == _csv_without(second / "segmenter/metrics.csv", *timings)
    for name in ("val", "val_oracle", "val_frame10", "hidden"):
        a, b = load_array(first / f"segmenter/masks_{name}.npy"), load_array(second / f"segmenter/masks_{name}.npy")
        np.testing.assert_array_equal(a[0], b[0], err_msg=name)
        assert a[1]["ids"] == b[1]["ids"]
    assert len(np.unique(load_array(first / "segmenter/masks_val.npy")[0])) > 1, "masks hold objects, not only background"
    scores = [json.loads((r / "eval/scores.json").read_text()) for r in (first, second)]
    assert scores[0].pop("inputs") != scores[1].pop("inputs"), "the input paths differ, nothing else may"
    assert scores[0] == scores[1]
    same_bytes("eval/per_class.csv")
    assert torch.equal(torch.load(first / "submission.pt", weights_only=True),
                       torch.load(second / "submission.pt", weights_only=True))
