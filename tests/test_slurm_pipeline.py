"""The whole demo chain under `snakemake --profile slurm` on the local cluster of
slurm/local-cluster.sh, a training job stopped the way SLURM stops one, and a GPU job that
finds no usable GPU. The three runs go one after another in a SlurmLane, a thread that
conftest.py starts with the session, so their jobs run beside the other tests.

Like tests/test_slurm_cluster.py, these tests skip when no SLURM cluster answers, and fail
instead under FUTURESEG_REQUIRE_SLURM=1 (CI). The flags added to the profile are the ones
slurm/README.md names: `--slurm-status-command squeue` because the local cluster has no
accounting database, and two polling flags for speed (LOCAL_CLUSTER_FLAGS).

The chain runs on tiny_config() (1 thread, 1000 MB per rule) through SLURM, and its outputs
must equal bit for bit those of the session's local run of the same config (conftest.py,
tiny_chain, which test_pipeline reads too): every verb runs with
`--threads 1` in both, on the same CPU, and the pipeline is seeded throughout (torch's CPU
kernels give the same bits for a fixed thread count). A cluster whose nodes have another
CPU than the login node would need a tolerance for the trained weights and what follows.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
import json
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from pipeline_helpers import merged, planned_jobs, snakemake_command, tiny_config, write_config
from test_slurm_cluster import (
    SlurmRun,
    default_partition,
    finish_snakemake_on_slurm,
    slurm_cluster,  # noqa: F401  (the fixture)
    slurm_jobs,
    start_snakemake_on_slurm,
    stop_snakemake_on_slurm,
)

# Rules whose config.yaml resources ask for a GPU (tiny_config keeps gpu: 1); the hidden-set
# shards take predict_frames' and segment's resources.
GPU_RULES = {
    "train_predictor", "predict_frames", "predict_hidden_shard",
    "train_segmenter", "train_object_classifier", "segment", "segment_hidden_shard", "segment_references",
    "pseudo_label",
    "train_forecaster", "forecast", "forecast_hidden_shard",
    "train_direct", "predict_direct", "predict_direct_hidden_shard",
    "train_dynamics",
}  # fmt: skip
# The chain's one local rule: `all` only gathers the targets, Snakemake runs it itself.
LOCAL_RULES = {"all"}
CHAIN_TIMEOUT_S = 1500


@dataclasses.dataclass
class Chains:
    local: Path  # the reference run's folder (the session's local run, conftest.py tiny_chain)
    slurm: Path  # the SLURM run's folder
    planned: dict  # {rule: jobs} of the DAG, from a dry run
    run: SlurmRun

    def summary(self) -> str:
        jobs = [job for rule_jobs in self.run.jobs.values() for job in rule_jobs]
        counts = ", ".join(f"{rule} {len(rule_jobs)}" for rule, rule_jobs in self.run.jobs.items())
        # From the first job's start to the last one's end, and the jobs' own run times.
        times = [(datetime.fromisoformat(job.start), datetime.fromisoformat(job.end)) for job in jobs]
        span = (max(end for _, end in times) - min(start for start, _ in times)).total_seconds()
        in_jobs = sum((end - start).total_seconds() for start, end in times)
        return (
            f"the chain under SLURM: {self.run.job_count} SLURM jobs, {self.run.seconds:.0f} s wall for "
            f"snakemake, {span:.0f} s from the first job's start to the last's "
            f"end, {in_jobs:.0f} s of job run time; jobs per rule: {counts}"
        )


class SlurmLane:
    """This module's SLURM runs, one after another in a thread of their own: the chain, then
    (each on a copy of the chain's folder) a training job stopped the way SLURM stops one, then
    a GPU job without a usable GPU. conftest.py starts it as the session starts, so these runs
    go on on the cluster beside the other tests, which keep about one of two cores busy,
    instead of after them; each test here reads its part (`result`), and a part that failed
    raises its error in the test that reads it."""

    def __init__(self, base: Path):
        # The runs' environment is the session's as it starts: a test that sets a variable
        # (monkeypatch.setenv) while a run starts must not reach its jobs.
        self.base, self.env = base, dict(os.environ)
        self.folder = base / "chain"
        self.folder.mkdir(parents=True)
        self.running, self._results = None, {}
        try:
            # The local cluster's GPUs are fake (torch finds none): its GPU jobs run on the CPU on
            # purpose. allow_cpu shapes no output (not a param): the local run's outputs still hold.
            write_config(self.folder, merged(tiny_config(), {"resources": {"allow_cpu": True}}))
            self.planned = planned_jobs(self.folder)  # {rule: jobs} of the DAG, from a dry run
            self.start(self.folder, snakemake=snakemake_command(self.folder))
        except BaseException as exc:  # raised in the tests that read the lane, not in every test's setup
            self._results = dict.fromkeys(("chain", "preempt", "no_gpu"), exc)
        self._thread = threading.Thread(target=self._run, name="slurm-lane", daemon=True)
        self._thread.start()

    def _run(self):
        parts = (
            ("chain", lambda: finish_snakemake_on_slurm(self.running, timeout=CHAIN_TIMEOUT_S)),
            ("preempt", lambda: run_preempted_training(self.folder, self.base / "preempt", self)),
            ("no_gpu", lambda: run_gpu_job_without_a_gpu(self.folder, self.base / "no_gpu", self)),
        )
        for name, part in parts:
            if name in self._results:
                continue
            try:
                self._results[name] = part()
            except BaseException as exc:  # pytest.fail's Failed is a BaseException
                self._results[name] = exc
                if name == "chain":  # the others need the chain's folder
                    self._results.update((later, exc) for later, _ in parts[1:])

    def start(self, workdir, *args, snakemake):
        """start_snakemake_on_slurm in the lane's environment; the run the lane now waits for."""
        self.running = start_snakemake_on_slurm(workdir, *args, snakemake=snakemake, env=self.env)
        return self.running

    def result(self, name):
        self._thread.join()
        value = self._results[name]
        if isinstance(value, BaseException):
            raise value
        return value

    def stop(self):
        """At the session's end: a run still going (the session stopped early) is killed and
        its jobs cancelled."""
        if self._thread.is_alive() and self.running is not None:
            stop_snakemake_on_slurm(self.running)
            self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def lane(slurm_cluster, slurm_lane, tmp_path_factory):  # noqa: F811
    return slurm_lane or SlurmLane(tmp_path_factory.mktemp("slurm_lane"))


@pytest.fixture(scope="module")
def chains(lane, tiny_chain):
    chains = Chains(tiny_chain, lane.folder, lane.planned, lane.result("chain"))
    print(f"\n{chains.summary()}")
    return chains


def test_every_rule_but_the_local_one_ran_as_a_slurm_job(chains):
    summary = chains.summary()
    ran_locally = set(re.findall(r"^localrule (\w+):", chains.run.output, flags=re.MULTILINE))
    assert ran_locally == LOCAL_RULES, summary
    expected = {rule: n for rule, n in chains.planned.items() if rule not in LOCAL_RULES}
    assert {rule: len(jobs) for rule, jobs in chains.run.jobs.items()} == expected, summary
    for jobs in chains.run.jobs.values():
        for job in jobs:
            assert job.state == "COMPLETED" and job.restarts == 0, job
            assert job.cpus == 1, job  # tiny_config's threads: 1 became --cpus-per-task
    assert chains.run.job_count == sum(expected.values()), summary


def test_the_gpu_rules_asked_for_a_gpu_and_the_others_did_not(chains):
    assert GPU_RULES <= set(chains.run.jobs), chains.summary()
    partition = default_partition()
    for rule, jobs in chains.run.jobs.items():
        for job in jobs:
            if rule in GPU_RULES:
                assert job.gpus.endswith("gpu:1"), job
            else:
                assert job.gpus == "", job
            assert job.partition == partition, job  # the profile names none: the default


def _weights(path):
    state = torch.load(path, weights_only=True, map_location="cpu")
    return state["model"]


def test_outputs_equal_the_local_run(chains):
    local, slurm = chains.local / "results", chains.slurm / "results"
    # Byte for byte: data statistics, caches, predicted frames, the segmentation training set,
    # masks (with their id sidecars), scores.
    same_bytes = [
        "data/mean_std.json",
        *(f"cache/{split}.{ext}" for split in ("train", "val", "unlabeled", "hidden") for ext in ("npy", "json")),
        *(p.relative_to(local).as_posix() for p in sorted(local.glob("predictor/**/frames_*.*"))),
        *(p.relative_to(local).as_posix() for p in sorted(local.glob("segframes/*"))),
        *(p.relative_to(local).as_posix() for p in sorted(local.glob("segmenter/**/masks_*.*"))),
        "eval/scores.json",
        "eval/per_class.csv",
    ]
    assert "predictor/frames_val.npy" in same_bytes and "segmenter/masks_hidden.npy" in same_bytes
    assert any("hidden_shards/frames_" in name for name in same_bytes)
    differing = [name for name in same_bytes if not filecmp.cmp(local / name, slurm / name, shallow=False)]
    assert not differing, f"differ between the SLURM and the local run: {differing}"
    assert json.loads((slurm / "eval/scores.json").read_text())["n_videos"] == 2

    # Trained weights, tensor for tensor (the files also hold timings, so not byte for byte).
    for model in ("predictor/model.pt", "segmenter/model.pt"):
        ours, reference = _weights(slurm / model), _weights(local / model)
        assert ours.keys() == reference.keys(), model
        unequal = [name for name in ours if not torch.equal(ours[name], reference[name])]
        assert not unequal, f"{model}: weights differ from the local run's: {unequal[:5]}"

    submission = torch.load(slurm / "submission.pt", weights_only=True)
    assert torch.equal(submission, torch.load(local / "submission.pt", weights_only=True))
    assert submission.shape == (2, 32, 48)
    # the submitted route's hidden masks (score picks the best route)
    submitted = json.loads((slurm / "eval/scores.json").read_text())["submitted_route"]
    route_dir = {"frames": "segmenter", "masks": "forecaster", "direct": "direct", "motion": "motion"}[submitted]
    np.testing.assert_array_equal(submission.numpy(), np.load(slurm / route_dir / "masks_hidden.npy"))


# ---------------------------------------------------------------- preemption

# Long enough to be stopped mid-way, short enough to finish soon after resuming:
# (2 unlabeled + 3 train videos) // batch 2 = 2 steps per epoch, 60 steps of well under 1 s.
PREEMPT_OVERRIDE = {"predictor": {"epochs": 30, "checkpoint_every": 1}}
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")


def _checkpoint_step(path):
    return int(torch.load(path, weights_only=True, map_location="cpu")["step"])


def _wait(what, condition, run, deadline, interval=0.2):
    """Poll `condition` until it returns something true; fail if the snakemake run ends first
    or the deadline passes."""
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run.process.poll() is not None:
            pytest.fail(f"snakemake ended while waiting for {what}:\n{stop_snakemake_on_slurm(run)[-6000:]}")
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


class Preempted(NamedTuple):
    job: object  # the SlurmJob that got SIGTERM
    checkpoint: Path  # its checkpoint when the signal was sent
    step_before_signal: int
    result: SlurmRun
    workdir: Path


def run_preempted_training(chain_folder: Path, workdir: Path, lane: SlurmLane) -> Preempted:
    """The SLURM run's folder (its config lets the fake-GPU jobs run on the CPU), less the
    predictor: its data, caches and mean/std are up to date (Snakemake's metadata comes
    along), so only train_predictor runs, as a SLURM job; SIGTERM reaches it once it has a
    checkpoint, as at a time limit."""
    shutil.copytree(chain_folder, workdir)
    shutil.rmtree(workdir / "results" / "predictor")
    target = "results/predictor/model.pt"
    planned = planned_jobs(workdir, target, override=PREEMPT_OVERRIDE)
    assert planned == {"train_predictor": 1}, planned

    # The profile as it is: its `retries: 1` resubmits the stopped job, its
    # `show-failed-logs: true` puts the stopped job's log in Snakemake's output before the
    # retry rewrites the file.
    run = lane.start(workdir, target, snakemake=snakemake_command(workdir, override=PREEMPT_OVERRIDE))
    try:
        deadline = time.monotonic() + 300

        def running_job_with_a_checkpoint():
            running = [job for job in slurm_jobs(workdir) if job.rule == "train_predictor" and job.state == "RUNNING"]
            checkpoints = list(workdir.glob("results/predictor/checkpoints/*/last.pt"))
            return running and checkpoints and (running[0], checkpoints[0])

        job, checkpoint = _wait("a train_predictor job with a checkpoint", running_job_with_a_checkpoint, run, deadline)
        step_before_signal = _checkpoint_step(checkpoint)
        # What SLURM does at a job's time limit: SIGTERM to every process of the job (the
        # DataLoader workers included), SIGKILL KillWait (30 s) later unless they have ended.
        subprocess.run(["scancel", "--signal=TERM", str(job.job_id)], check=True, capture_output=True)

        def ended():
            state = next(j.state for j in slurm_jobs(workdir) if j.job_id == job.job_id)
            return state not in ACTIVE_STATES and state

        _wait(f"SLURM job {job.job_id} to end after SIGTERM", ended, run, deadline)
        result = finish_snakemake_on_slurm(run, timeout=600)
    except BaseException:
        stop_snakemake_on_slurm(run)
        raise
    return Preempted(job, checkpoint, step_before_signal, result, workdir)


def test_training_stopped_by_sigterm_under_slurm_resumes_from_its_checkpoint(lane):
    job, checkpoint, step_before_signal, result, workdir = lane.result("preempt")
    target = "results/predictor/model.pt"
    first, *retries = result.jobs["train_predictor"]
    summary = (
        f"preemption: SLURM job {first.job_id} got SIGTERM after step {step_before_signal} and ended {first.state}; "
        f"then {[(j.job_id, j.state) for j in retries]}; {result.seconds:.0f} s in all"
    )
    print(f"\n{summary}")
    assert first.job_id == job.job_id, summary
    # FAILED: the job ended by itself, non-zero, within KillWait (SLURM did not kill it).
    assert first.state == "FAILED", summary
    assert [retry.state for retry in retries] == ["COMPLETED"], summary
    assert retries[0].gpus.endswith("gpu:1") and retries[0].partition == default_partition(), retries[0]

    # The stopped attempt's log, as Snakemake printed it: the SIGTERM handler wrote a checkpoint.
    stopped = re.findall(r"SIGTERM received at step (\d+); checkpoint written", result.output)
    assert len(stopped) == 1, f"{summary}; the stopped attempt did not checkpoint on SIGTERM:\n{result.output[-6000:]}"
    step_at_stop = int(stopped[0])
    # The retry's log (the rule's log file, rewritten by the retry) says where it started.
    log = (workdir / "results" / "logs" / "train_predictor.log").read_text()
    resumed = re.findall(r"resuming from (\S+) at step (\d+)", log)
    assert [(str(workdir / path), int(step)) for path, step in resumed] == [(str(checkpoint), step_at_stop)], log
    assert "from scratch" not in log, log

    model = torch.load(workdir / target, weights_only=True)
    total_steps = model["settings"]["total_steps"]
    assert model["step"] == total_steps == 60
    assert step_before_signal <= step_at_stop < total_steps, summary
    assert f"wrote {target} (step {total_steps})" in log, log


# ---------------------------------------------------------------- a GPU job without a GPU


NO_GPU_TARGET = "results/direct/masks_val.npy"


def run_gpu_job_without_a_gpu(chain_folder: Path, workdir: Path, lane: SlurmLane) -> tuple[Path, SlurmRun]:
    """The SLURM run's folder less route direct's val masks: only predict_direct runs, as a
    SLURM job given a fake GPU, with resources.allow_cpu: false, the config's default
    (changing it reruns nothing else)."""
    shutil.copytree(chain_folder, workdir)
    (workdir / NO_GPU_TARGET).unlink()
    strict = {"resources": {"allow_cpu": False}}
    planned = planned_jobs(workdir, NO_GPU_TARGET, override=strict)
    assert planned == {"predict_direct": 1}, planned
    run = lane.start(workdir, NO_GPU_TARGET, snakemake=snakemake_command(workdir, override=strict))
    return workdir, finish_snakemake_on_slurm(run, timeout=300, check=False)


def test_a_gpu_job_without_a_usable_gpu_stops_at_once_saying_why(lane):
    workdir, result = lane.result("no_gpu")
    target = NO_GPU_TARGET
    assert result.returncode != 0, result.output[-3000:]
    jobs = result.jobs["predict_direct"]
    # the profile's `retries: 1` submits it twice; each attempt stops by itself, in seconds
    assert [job.state for job in jobs] == ["FAILED", "FAILED"], jobs
    for job in jobs:
        assert job.gpus.endswith("gpu:1"), job
        seconds = (datetime.fromisoformat(job.end) - datetime.fromisoformat(job.start)).total_seconds()
        assert seconds < 60, job
    log = (workdir / "results" / "logs" / "predict_direct.log").read_text()
    (line,) = [line for line in log.splitlines() if "error" in line]
    # inside the job's step (the plugin runs the rule under srun) SLURM sets SLURM_STEP_GPUS, not SLURM_JOB_GPUS
    assert re.match(r"futureseg predict-direct: error: rule predict_direct in SLURM job \d+ on node \S+: SLURM gave it "
                    r"GPUs \(SLURM_(?:JOB|STEP)_GPUS=\S+.*\) but torch finds no usable CUDA device \(torch .*CUDA_VISIBLE_DEVICES="
                    r"\S+, nvidia-smi: .*\); stopped instead of running on the CPU\..*resources\.allow_cpu: true", line), line
    assert not (workdir / target).exists()
    print(f"\na GPU job without a GPU: {line}")
