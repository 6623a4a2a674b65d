"""A trainer that reaches its SLURM time limit comes back by itself (issue 29, item 3).

SLURM does not requeue a job it ends at its time limit. The trainers' jobs ask SLURM for
TIME_LIMIT_SIGNAL (SIGURG) resources.slurm.warn_seconds before the limit; on it `fit` writes its
checkpoint and requeues its own job (`scontrol requeue`), which starts again under the same
job id, resumes from the checkpoint, and so on until training ends; Snakemake keeps polling
that one job. core/training.py (TIME_LIMIT_SIGNAL) says why SIGURG and not SIGUSR1.

The first tests need no cluster (a fake `scontrol` on PATH). The last one runs the workflow's
train_predictor under `snakemake --profile slurm` on the local cluster of
slurm/local-cluster.sh with a 1-minute limit and about 3 minutes of work; it takes ~10 minutes,
so it is marked slow_slurm, which the default `python -m pytest` deselects (pyproject.toml):

    python -m pytest -m slow_slurm tests/test_time_limit.py

It skips when no cluster answers, and fails instead under FUTURESEG_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from futureseg.core.training import TIME_LIMIT_SIGNAL, TrainingInterrupted, adamw_one_cycle, epoch_order, fit
from pipeline_helpers import merged, planned_resources, snakemake, snakemake_command, tiny_config, write_config
from test_slurm_cluster import (
    finish_snakemake_on_slurm,
    slurm_cluster,  # noqa: F401  (the fixture)
    slurm_jobs,
    start_snakemake_on_slurm,
    stop_snakemake_on_slurm,
)

SETTINGS = {"what": "a line through two points"}


def fit_line(tmp_path, signal_at_step=None, signum=TIME_LIMIT_SIGNAL, total_steps=6):
    """`fit` on a 1-parameter line, 2 steps an epoch; the process sends itself `signum` during
    step `signal_at_step` (1-based), as SLURM would."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, total_steps)
    x, y = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [5.0], [7.0]])

    def step_losses(epoch, batch, step, total):
        if step + 1 == signal_at_step:
            os.kill(os.getpid(), signum)
        return {"loss": torch.nn.functional.mse_loss(model(x[batch]), y[batch])}

    return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=tmp_path / "ckpt",
               metrics_out=tmp_path / "metrics.csv", out=tmp_path / "model.pt", model_file={"kind": "line"},
               epochs=3, epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=total_steps,
               checkpoint_every=100, step_losses=step_losses, validate=lambda: {"val_loss": 0.0})


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """An `scontrol` first on PATH that records its arguments, and which checkpoints existed
    when it ran, in calls.txt; exits with $FAKE_SCONTROL_EXIT (0 unless set)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f"""#!/bin/sh
echo "args: $*" >> {calls}
for ckpt in {tmp_path}/ckpt/*/last.pt; do [ -f "$ckpt" ] && echo "checkpoint: $ckpt" >> {calls}; done
[ "${{FAKE_SCONTROL_EXIT:-0}}" = 0 ] || echo "scontrol: error: Requested operation is presently disabled" >&2
exit ${{FAKE_SCONTROL_EXIT:-0}}
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    return calls


def _checkpoint(tmp_path):
    (path,) = (tmp_path / "ckpt").glob("*/last.pt")
    return path, torch.load(path, weights_only=True)["step"]


def test_the_time_limit_warning_writes_the_checkpoint_then_requeues_the_job(tmp_path, fake_scontrol):
    with pytest.raises(TrainingInterrupted) as stopped:
        fit_line(tmp_path, signal_at_step=3)
    path, step = _checkpoint(tmp_path)
    assert step == 3
    assert str(stopped.value) == (f"{path}: SIGURG (SLURM's time limit warning) received at step 3; checkpoint "
                                  "written, requeued SLURM job 4242: it starts again and resumes from the checkpoint")
    # scontrol ran once, for this job, with the checkpoint already there
    assert fake_scontrol.read_text().splitlines() == ["args: requeue 4242", f"checkpoint: {path}"]
    # the requeued job's run resumes from it and ends the training
    fit_line(tmp_path)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 6


def test_sigterm_stops_without_requeueing(tmp_path, fake_scontrol):
    # a cancel, a preemption, the time limit itself: SLURM decides what follows, not the trainer
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM received at step 2; checkpoint written, rerun to resume$"):
        fit_line(tmp_path, signal_at_step=2, signum=signal.SIGTERM)
    assert _checkpoint(tmp_path)[1] == 2
    assert not fake_scontrol.exists()


def test_a_refused_requeue_says_why_and_the_run_just_stops(tmp_path, fake_scontrol, monkeypatch):
    monkeypatch.setenv("FAKE_SCONTROL_EXIT", "1")
    with pytest.raises(TrainingInterrupted) as stopped:
        fit_line(tmp_path, signal_at_step=4)
    assert _checkpoint(tmp_path)[1] == 4
    assert str(stopped.value).endswith(
        "received at step 4; checkpoint written, `scontrol requeue 4242` failed (scontrol: error: Requested operation "
        "is presently disabled): not requeued, the job ends here; rerun to resume (a batch job whose cluster allows "
        "requeueing can requeue itself: sbatch --requeue)")


def test_outside_slurm_the_warning_only_stops(tmp_path, fake_scontrol, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(TrainingInterrupted, match=r"not in a SLURM job \(no SLURM_JOB_ID\), nothing to requeue"):
        fit_line(tmp_path, signal_at_step=1)
    assert not fake_scontrol.exists()


def _two_rank_fit(rank, port, folder):
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, 6)

    def step_losses(epoch, batch, step, total):
        if rank == 1 and step + 1 == 3:  # the warning reaches rank 1 a step before rank 0
            os.kill(os.getpid(), TIME_LIMIT_SIGNAL)
        return {"loss": model(torch.ones(1, 1)).pow(2).mean()}

    try:
        fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=folder / "ckpt",
            metrics_out=folder / "metrics.csv", out=folder / "model.pt", model_file={"kind": "line"}, epochs=3,
            epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=6, checkpoint_every=100,
            step_losses=step_losses, validate=lambda: {"val_loss": 0.0}, rank=rank, world=2)
    except TrainingInterrupted as exc:
        (folder / f"rank{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_under_ddp_one_ranks_warning_stops_every_rank_and_rank_0_requeues_once(tmp_path, fake_scontrol):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_two_rank_fit, args=(port, tmp_path), nprocs=2, start_method="fork")
    path, step = _checkpoint(tmp_path)
    assert step == 3
    assert (tmp_path / "rank0.txt").read_text() == (
        f"{path}: another process received a stop signal at step 3; checkpoint written, requeued SLURM job 4242: "
        "it starts again and resumes from the checkpoint")
    assert (tmp_path / "rank1.txt").read_text() == (
        f"{path}: SIGURG (SLURM's time limit warning) received at step 3; checkpoint written, rank 0 requeues the "
        "SLURM job")
    assert fake_scontrol.read_text().splitlines() == ["args: requeue 4242", f"checkpoint: {path}"]


def test_a_process_that_does_not_listen_survives_the_warning():
    # SLURM signals every process of the job step: Snakemake and the shell that run the
    # trainer must live on (SIGUSR1, say, would end them, and with them the job)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)  # past the interpreter's start
        sleeper.send_signal(TIME_LIMIT_SIGNAL)
        time.sleep(0.5)
        assert sleeper.poll() is None, f"{TIME_LIMIT_SIGNAL!r} ended a process that does not handle it"
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- on the local SLURM cluster

# ~3 minutes of train_predictor on .test/config.yaml (2 steps an epoch, ~0.28 s a step with
# its validation on one CPU) under a 1-minute limit. SLURM checks time limits every 30 s and
# sends the warning at the first check past limit - warn_seconds - 30 s, so a job gets it
# 25-55 s after its start with warn_seconds 5 (at 0-30 s with 30: before the trainer is up) and
# is ended at the next check, 30 s later; the trainer needs ~1 s to checkpoint and requeue.
REQUEUE_OVERRIDE = {
    "predictor": {"epochs": 320, "checkpoint_every": 50},
    "resources": {"train_predictor": {"runtime": 1}, "slurm": {"warn_seconds": 5}},
}
TOTAL_STEPS = 640
# Each run: up to 60 s, then the requeued job waits cred_expire + 1 s (21 s on the local
# cluster, 121 s on SLURM's default) before it may start again.
REQUEUE_TIMEOUT_S = 2400
TARGET = "results/predictor/model.pt"


@dataclasses.dataclass
class Run:
    """One run of the train_predictor job (SLURM's Restarts count when it ran), from its log."""

    restarts: int
    first_line: str = ""  # its log's first line (timestamped): tells its log from the run before's
    begin: str = ""  # "from scratch" or "resuming ... at step N"
    end: str = ""  # the stop line (the requeue) or the export line
    resumed_at: int | None = None
    stopped_at: int | None = None


def _watch(workdir, run, runs, deadline):
    """Until snakemake ends: follow the train_predictor job and its log, one Run per restart
    (each run of the job rewrites the rule's log)."""
    log = workdir / "results" / "logs" / "train_predictor.log"
    states = []
    while run.process.poll() is None and time.monotonic() < deadline:
        jobs = [job for job in slurm_jobs(workdir) if job.rule == "train_predictor"]
        if jobs:
            job = jobs[-1]
            if not states or states[-1] != job.state:
                states.append(job.state)
            text = log.read_text(errors="replace") if log.exists() else ""
            first_line = text.partition("\n")[0] if "\n" in text else ""  # a whole line only
            if job.state == "RUNNING" and (not runs or runs[-1].restarts != job.restarts):
                runs.append(Run(job.restarts))
            # The log is the run's whose first line it has: SLURM counts the restart when the
            # job requeues, before the run's last line; a new run's log is the run before's
            # until the run rewrites it.
            owners = [r for r in runs if first_line and r.first_line == first_line]
            if first_line and not owners and runs and not runs[-1].first_line:
                runs[-1].first_line = first_line
                owners = runs[-1:]
            for current in owners:
                if match := re.search(r"resuming from \S+ at step (\d+)", text):
                    current.begin, current.resumed_at = match.group(0), int(match.group(1))
                elif "from scratch" in text:
                    current.begin = "from scratch"
                stop = r"(SIG\w+ \(SLURM's time limit warning\)|SIGTERM) received at step (\d+);.*"
                if match := re.search(stop, text):
                    current.end, current.stopped_at = match.group(0), int(match.group(2))
                elif match := re.search(rf"wrote {TARGET} \(step (\d+)\)", text):
                    current.end, current.stopped_at = match.group(0), int(match.group(1))
        time.sleep(0.5)
    return states


@pytest.mark.slow_slurm
def test_a_trainer_at_its_time_limit_requeues_itself_until_training_ends(slurm_cluster, tmp_path):  # noqa: F811
    workdir = tmp_path
    # The local cluster's GPUs are fake (torch finds none): train_predictor runs on the CPU.
    write_config(workdir, merged(tiny_config(), {"resources": {"allow_cpu": True}}))
    # train_predictor's inputs, locally: only it runs under SLURM
    snakemake(workdir, "--cores", "1", *(f"results/cache/{split}.npy" for split in ("unlabeled", "train", "val")),
              "results/data/mean_std.json")
    dry_run = snakemake(workdir, "--dry-run", TARGET, override=REQUEUE_OVERRIDE).stdout
    planned = planned_resources(dry_run)
    assert [rule for rule, _ in planned] == ["train_predictor"], dry_run[-3000:]
    resources = planned[0][1]
    assert resources["runtime"] == "1", resources
    # what the trainer listens for, from the config's warn_seconds
    signal_flag = f"--signal={signal.Signals(TIME_LIMIT_SIGNAL).name.removeprefix('SIG')}@5"
    assert signal_flag in resources.get("slurm_extra", "").split(), (
        f"train_predictor's sbatch flags {resources.get('slurm_extra')!r} lack {signal_flag}: the warning the "
        "trainer checkpoints and requeues on (core/training.py TIME_LIMIT_SIGNAL)")

    started = time.monotonic()
    run = start_snakemake_on_slurm(workdir, TARGET, snakemake=snakemake_command(workdir, override=REQUEUE_OVERRIDE))
    runs = []
    try:
        states = _watch(workdir, run, runs, started + REQUEUE_TIMEOUT_S)
        result = finish_snakemake_on_slurm(run, timeout=REQUEUE_TIMEOUT_S)
    except BaseException:
        stop_snakemake_on_slurm(run)
        raise
    wall = time.monotonic() - started

    (job,) = result.jobs["train_predictor"]  # one job: requeued by itself, never resubmitted by Snakemake
    lines = [f"  run {r.restarts}: {r.begin or '?'} -> {r.end or '?'}" for r in runs]
    summary = (f"time limit requeue: SLURM job {job.job_id} ran {len(runs)} times (requeued {job.restarts} times, "
               f"1-minute limit, {TOTAL_STEPS} steps), {wall:.0f} s wall for snakemake; job states seen "
               f"{' > '.join(states)}\n" + "\n".join(lines))
    print(f"\n{summary}")
    assert job.state == "COMPLETED", summary
    # ~3 minutes of work under a 1-minute limit: at least 3 runs
    assert job.restarts >= 2, summary
    assert [r.restarts for r in runs] == list(range(job.restarts + 1)), summary
    # every run but the last ended by the trainer's own requeue at the warning, never by the
    # time limit's SIGTERM; each resumed where the one before stopped
    for before, after in zip(runs, runs[1:]):
        assert f"requeued SLURM job {job.job_id}" in before.end and "SIGTERM" not in before.end, summary
        assert after.resumed_at == before.stopped_at and after.resumed_at > 0, summary
    assert runs[0].begin == "from scratch" and runs[-1].stopped_at == TOTAL_STEPS, summary
    model = torch.load(workdir / TARGET, weights_only=True)
    assert model["step"] == model["settings"]["total_steps"] == TOTAL_STEPS, summary
