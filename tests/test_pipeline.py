"""The whole DAG on a tiny synthetic dataset: outputs, the report, and which rules a
changed setting reruns (Snakemake's own dry run decides, not file times)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline_helpers import merged, planned_jobs, snakemake, tiny_config, write_config

# rules in pipeline order; a changed setting must rerun its stage and everything after it
# resource_table runs last (after every final output) and shows every job's benchmark
SCORING = {"score", "submission", "report_figures", "resource_table", "all"}
MASKS_ROUTE = {"train_forecaster", "forecast", "forecast_hidden_shard", "gather_hidden_masks"}
DIRECT_ROUTE = {"train_direct", "predict_direct", "predict_direct_hidden_shard", "gather_hidden_masks"}
MOTION_ROUTE = {"extrapolate", "extrapolate_hidden_shard", "gather_hidden_masks"}
# route dynamics learns from unlabeled's pseudo-labelled tracks and train's true ones
DYNAMICS_ROUTE = {"train_dynamics", "dynamics", "dynamics_hidden_shard", "dynamics_truth", "gather_hidden_masks"}
# the segmenter's masks feed route motion, and the motion priors of the forecaster's pseudo-labelled videos
SEGMENTATION = ({"train_segmenter", "segment", "segment_hidden_shard", "segment_references", "gather_hidden_masks",
                 "pseudo_label", "motion_prior", "tracks"} | MASKS_ROUTE | DIRECT_ROUTE | MOTION_ROUTE | DYNAMICS_ROUTE
                | SCORING)
# the object classifier trains on the segmentation training set: what remakes it retrains it
PREDICTION = ({"train_predictor", "predict_frames", "predict_hidden_shard", "make_seg_frames", "train_object_classifier"}
              | SEGMENTATION)
# motion_truth and placement_oracle read the true masks and frames only
ALL_STAGES = {"synth_dataset", "check_data", "mean_std", "cache_frames", "motion_truth", "placement_oracle"} | PREDICTION


@pytest.fixture(scope="module")
def finished_run(tiny_chain):
    """The session's one run of the whole chain (conftest.py)."""
    return tiny_chain


def test_the_chain_plans_every_stage(tmp_path):
    write_config(tmp_path, tiny_config())
    assert set(planned_jobs(tmp_path)) == ALL_STAGES


def test_outputs(finished_run):
    results = finished_run / "results"
    scores = json.loads((results / "eval" / "scores.json").read_text())
    assert scores["n_videos"] == 2
    for method in ("pipeline", "oracle", "copy_last", "segmented_copy_last"):
        assert 0.0 <= scores[method]["iou"] <= 1.0
        assert 0.0 <= scores[method]["pixel_acc"] <= 1.0
    # every route side by side; `best` submits the route of the highest val IoU
    assert set(scores["routes"]) == {"frames", "masks", "direct", "motion", "dynamics"}
    for reference in ("motion_truth", "dynamics_truth", "placement_oracle"):
        assert 0.0 <= scores[reference]["iou"] <= 1.0
    # the ceiling of moving what was seen: every true object of frame 10 at its true place
    assert scores["placement_oracle"]["iou"] >= scores["motion_truth"]["iou"]
    best = max(scores["routes"], key=lambda r: scores["routes"][r]["iou"])
    assert scores["routes"][scores["submitted_route"]]["iou"] == scores["routes"][best]["iou"]
    assert scores["pipeline"] == scores["routes"][scores["submitted_route"]]
    assert set(scores["temporal_iou"]) == {"masks", "motion", "dynamics", "true_masks"}
    # DAVIS 2016's temporal stability T of the same sequences (None: no object outline in two consecutive frames)
    assert set(scores["temporal_stability"]) == set(scores["temporal_iou"])
    assert all(t is None or t >= 0 for t in scores["temporal_stability"].values())
    # the segmenter's masks of val's frames 0…10, which routes masks, motion and dynamics start from
    pseudo = scores["pseudo_labels"]
    assert pseudo["frames"] == list(range(11)) and 0 <= pseudo["iou"] <= 1 and 0 <= pseudo["temporal_iou"] <= 1
    assert 0 < pseudo["true_temporal_iou"] <= 1 and scores["inputs"]["pseudo_labels"] == "results/pseudo/val.npy"
    assert all(pseudo[key] is None or pseudo[key] >= 0 for key in ("temporal_stability", "true_temporal_stability"))
    # every route and reference carries DAVIS's boundary F and J&F beside its IoU (J)
    references = ("pipeline", "oracle", "motion_truth", "dynamics_truth", "placement_oracle", "segmented_copy_last",
                  "copy_last")
    for name, entry in {**scores["routes"], **{m: scores[m] for m in references}}.items():
        assert 0.0 <= entry["boundary_f"] <= 1.0, name
        assert entry["j_and_f"] == pytest.approx((entry["iou"] + entry["boundary_f"]) / 2), name
    submission = torch.load(results / "submission.pt", weights_only=True)
    assert submission.shape == (2, 32, 48) and int(submission.max()) <= 48
    check = subprocess.run(
        [sys.executable, "-m", "futureseg", "check-submission", str(results / "submission.pt"),
         "--hidden", str(finished_run / "resources" / "synthetic")],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr
    frames = np.load(results / "predictor" / "frames_train.npy")
    assert frames.shape == (3, 11, 32, 48, 3) and frames.dtype == np.uint8


def test_every_job_has_a_benchmark_and_the_resource_table_shows_them(finished_run):
    results = finished_run / "results"
    ran = {path.name.split(".")[0] for path in (results / "benchmarks").glob("*.tsv")}
    assert ran == ALL_STAGES - {"all"}
    with open(results / "report" / "resources.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # every job but the table's own, each measured (wall time at least), beside its request;
    # a rule of the workflow that did not run here (dynamics_prior: forecaster.prior is
    # motion; doctor, the pre-flight check, runs when named) has its row, empty
    measured = [row for row in rows if row["s"]]
    assert {row["rule"] for row in measured} == ALL_STAGES - {"all", "resource_table"}
    assert all(row["mem_mb"] in ("1000", "2000") for row in measured), rows  # tiny_config's requests, config.yaml's CPU entries
    assert {row["rule"] for row in rows if not row["s"]} == {"dynamics_prior", "doctor"}
    assert [row["job"] for row in rows if row["rule"] == "cache_frames"] == ["hidden", "train", "unlabeled", "val"]
    assert {row["gpu"] for row in rows if row["rule"] == "train_segmenter"} == {"1"}
    assert {row["gpu"] for row in rows if row["rule"] == "check_data"} == {"0"}


def test_hidden_mask_shards_go_once_gathered_and_intermediates_stay(finished_run):
    results = finished_run / "results"
    # temp(): each route's shards are removed once its gather_hidden_masks is done
    assert not list(results.glob("*/hidden_shards/masks_*.npy"))
    for stage in ("segmenter", "forecaster", "direct", "motion", "dynamics"):
        assert (results / stage / "masks_hidden.npy").is_file(), stage
    # keep_intermediates: true (config.yaml's default) keeps the caches and the predicted frames' shards
    assert (results / "cache" / "unlabeled.npy").is_file() and (results / "pseudo" / "unlabeled.npy").is_file()
    assert len(list((results / "predictor" / "hidden_shards").glob("frames_*.npy"))) == 2


def test_sharded_hidden_masks_equal_an_unsharded_run(finished_run, tmp_path):
    results = finished_run / "results"
    shards = sorted((results / "predictor" / "hidden_shards").glob("frames_*.npy"))
    assert len(shards) == 2, "tiny_config asks for 2 hidden shards"
    futureseg = [sys.executable, "-m", "futureseg"]
    subprocess.run(
        [*futureseg, "predict-frames", "--model", str(results / "predictor" / "model.pt"),
         "--cache", str(results / "cache" / "hidden.npy"), "--out", str(tmp_path / "frames_hidden.npy"),
         "--frames", "21", "--threads", "1"],
        check=True, capture_output=True,
    )
    subprocess.run(
        [*futureseg, "segment", "--model", str(results / "segmenter" / "model.pt"),
         "--hidden-frames", str(tmp_path / "frames_hidden.npy"), "--out-hidden", str(tmp_path / "masks_hidden.npy"),
         "--object-classifier", str(results / "segmenter" / "object_classifier.pt"), "--threads", "1"],
        check=True, capture_output=True,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "masks_hidden.npy"), np.load(results / "segmenter" / "masks_hidden.npy"))
    assert json.loads((tmp_path / "masks_hidden.json").read_text())["ids"] == json.loads((results / "segmenter" / "masks_hidden.json").read_text())["ids"]


def test_report_builds(finished_run):
    snakemake(finished_run, "--report", "report.html")
    html = (finished_run / "report.html").read_text(errors="replace")
    for name in ("scores.json", "scores.html", "examples.png", "animations.html", "training_curves.png", "resources.html"):
        assert name in html, name


def test_nothing_reruns_without_a_change(finished_run):
    assert planned_jobs(finished_run) == {}


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"segmenter": {"unet": {"lr": 0.015}}}, SEGMENTATION),
        # the unselected models' settings shape nothing
        ({"segmenter": {"maskrcnn": {"lr": 0.05}}}, set()),
        ({"forecaster": {"convlstm": {"filter_size": 5}}}, set()),
        ({"predictor": {"convlstm": {"filter_size": 5}}}, set()),
        # a route's setting reruns that route and the scoring only (the report shows every route)
        ({"forecaster": {"lr": 0.002}}, MASKS_ROUTE | SCORING),
        ({"direct": {"lr": 0.002}}, DIRECT_ROUTE | SCORING),
        ({"dynamics": {"lr": 0.003}}, DYNAMICS_ROUTE | SCORING),
        ({"eval": {"submit": "masks"}}, SCORING),
        # the motion settings: route motion, the reference, the forecaster's priors and so the forecaster
        ({"motion": {"velocity_frames": 2}}, MOTION_ROUTE | MASKS_ROUTE | DYNAMICS_ROUTE | SCORING
         | {"motion_truth", "motion_prior"}),
        # the flow method changes the tracks' velocities too
        ({"motion": {"flow": "farneback"}}, MOTION_ROUTE | MASKS_ROUTE | DYNAMICS_ROUTE | SCORING
         | {"motion_truth", "motion_prior", "tracks"}),
        ({"forecaster": {"prior": "copy_last"}}, MASKS_ROUTE | SCORING),
        ({"augment": {"frameskip": 2}}, SEGMENTATION | {"make_seg_frames", "train_object_classifier"}),
        ({"predictor": {"lr": 0.003}}, PREDICTION),
        # two int settings swapped: the same set of values, yet another training
        ({"predictor": {"epochs": 2, "batch_size": 1}}, PREDICTION),
        ({"eval": {"report_examples": 1}}, {"report_figures", "resource_table", "all"}),
        ({"data": {"mean_std_splits": ["train"]}}, PREDICTION | {"mean_std"}),
        # the resource table shows the requests; no stage reruns, whatever allow_cpu says
        ({"resources": {"train_segmenter": {"runtime": 99, "mem_mb": 1234}}}, {"resource_table", "all"}),
        ({"resources": {"allow_cpu": True}}, set()),
        # temp() or not shapes no output: nothing reruns
        ({"keep_intermediates": False}, set()),
        # every training rule gets --max-steps: all of them retrain, and what follows
        ({"max_train_steps": 1}, PREDICTION),
    ],
    ids=["segmenter", "unselected-segmenter", "unselected-forecaster", "unselected-predictor", "forecaster", "direct",
         "dynamics", "submit", "motion", "motion-flow", "forecaster-prior", "augment",
         "predictor", "predictor-swapped-ints", "report-only", "mean-std", "resources", "allow-cpu", "keep-intermediates", "max-train-steps"],
)
def test_a_changed_setting_reruns_its_stage_and_what_follows(finished_run, override, expected):
    assert set(planned_jobs(finished_run, override=override)) == expected


def test_the_painting_threshold_reaches_segment_not_training(tmp_path):
    # Mask R-CNN's score_threshold shapes the masks it paints, not its weights: rule
    # train_segmenter does not get it (editing it reruns no training), rule segment does
    write_config(tmp_path, merged(tiny_config(), {"segmenter": {"model": "maskrcnn"}}))
    commands = snakemake(tmp_path, "--dry-run", "--printshellcmds").stdout
    train = [line for line in commands.splitlines() if "futureseg train-segmenter" in line]
    segment = [line for line in commands.splitlines() if "futureseg segment " in line]
    assert train and segment
    assert all("--score-threshold" not in line and "--warmup-steps" in line for line in train)
    assert all("--score-threshold 0.5" in line for line in segment)


@pytest.mark.parametrize("change", [{"object_class": "vote"}, {"object_class": "none"}, {"track_vote": False},
                                    {"object_classifier": {"width": 5}}])
def test_one_class_per_object_reruns_the_masks_and_what_follows_never_the_training(finished_run, change):
    # how objects get their class shapes the segmenter's masks, not its weights: changing it
    # reruns the rules that paint masks (object_class: segment*, pseudo_label; track_vote:
    # pseudo_label only; the classifier's settings: its training, then the painting rules)
    # and what reads them, never train_segmenter or the frame predictor
    assert tiny_config()["segmenter"]["object_class"] == "classifier" and tiny_config()["segmenter"]["track_vote"]
    jobs = set(planned_jobs(finished_run, override={"segmenter": change}))
    painting = {"segment", "segment_hidden_shard", "segment_references"}
    assert "pseudo_label" in jobs and {"train_forecaster", "score"} <= jobs
    assert painting <= jobs if "track_vote" not in change else not painting & jobs
    assert ("train_object_classifier" in jobs) == ("object_classifier" in change)
    assert not jobs & {"train_segmenter", "make_seg_frames", "train_predictor", "predict_frames",
                       "predict_hidden_shard", "mean_std", "cache_frames"}


def test_one_class_per_object_reaches_the_painting_rules_not_training(tmp_path):
    for object_class, flag in (("classifier", "--object-classifier results/segmenter/object_classifier.pt"),
                               ("vote", "--object-vote")):
        write_config(tmp_path, merged(tiny_config(), {"segmenter": {"object_class": object_class, "track_vote": True}}))
        commands = snakemake(tmp_path, "--dry-run", "--printshellcmds").stdout.splitlines()
        train = [line for line in commands if "futureseg train-segmenter" in line]
        segment = [line for line in commands if "futureseg segment " in line]
        pseudo = [line for line in commands if "futureseg pseudo-label" in line]
        classifier = [line for line in commands if "futureseg train-object-classifier" in line]
        assert train and segment and pseudo
        assert bool(classifier) == (object_class == "classifier")
        assert all("vote" not in line and "object-classifier" not in line for line in train)
        assert all(flag in line and "--track-vote" not in line for line in segment)
        assert all(f"{flag} --track-vote" in line for line in pseudo)


@pytest.mark.parametrize("routes, prior, stages", [
    (None, "motion", ["predictor", "segmenter", "object_classifier", "forecaster", "direct", "dynamics"]),
    (["frames", "motion"], "motion", ["predictor", "segmenter", "object_classifier"]),
    # route dynamics does not run, but the forecaster's prior trains the dynamics model
    (["masks"], "dynamics", ["predictor", "segmenter", "object_classifier", "forecaster", "dynamics"]),
])
def test_the_training_curves_get_every_trainer_that_runs_by_stage(tmp_path, routes, prior, stages):
    config = merged(tiny_config(), {"forecaster": {"prior": prior}, "segmenter": {"model": "maskrcnn"}})
    config["routes"] = routes or config["routes"]
    write_config(tmp_path, config)
    command = next(line for line in snakemake(tmp_path, "--dry-run", "--printshellcmds").stdout.splitlines()
                   if "futureseg report-figures" in line)
    given = dict(pair.split("=", 1) for pair in command.split("--metrics ")[1:] for pair in [pair.split()[0]])
    assert list(given) == stages
    assert given["object_classifier"] == "results/segmenter/object_classifier_metrics.csv"
    assert all(given[stage] == f"results/{stage}/metrics.csv" for stage in stages if stage != "object_classifier")
    models = [pair.split()[0] for pair in command.split("--model ")[1:]]
    assert models == [m for m in ("predictor=simvp", "segmenter=maskrcnn", "forecaster=simvp")
                      if m.split("=")[0] in stages]
