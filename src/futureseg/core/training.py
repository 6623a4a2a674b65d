"""What every trainer shares: the training loop `fit`, checkpoints, stop signals, metrics, devices, DDP.

Contract (DESIGN.md §6): checkpoints are written atomically every N steps and at the end;
a rerun resumes from the last checkpoint of the same config; SIGTERM/SIGUSR1 (SLURM time
limit, preemption) writes a checkpoint and exits non-zero, SIGURG (SLURM's warning before the
time limit) also requeues the SLURM job; every checkpoint is read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from futureseg.core.errors import FuturesegError
from futureseg.core.io import atomic_path, progress

log = logging.getLogger("futureseg")


class TrainingInterrupted(FuturesegError):
    """A stop signal arrived; a checkpoint was written. Exit non-zero so SLURM requeues."""


class NonFiniteLoss(FuturesegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class UnreadableCheckpoint(FuturesegError):
    """torch.load could not parse the file (truncated, empty, garbage); `fit` moves its own
    run's checkpoint aside and trains afresh, every other reader stops with the file named."""


# ---------------------------------------------------------------- config fingerprint


def fingerprint(settings: dict) -> str:
    """A short stable hash of everything that shapes a model: a checkpoint only resumes
    a run whose fingerprint equals its own."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(*arrays, samples: int = 32) -> str:
    """A short hash of what arrays hold, cheaply: their shapes, dtypes and `samples` evenly
    spaced rows of each (memory-mapped arrays read only those rows). A trainer's settings
    carry it, so a checkpoint never resumes on other data under the same paths and shapes
    (the pseudo-labels of a retrained segmenter, say), where it would re-export the model of
    the old data as finished."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype}{tuple(array.shape)}".encode())
        for row in np.unique(np.linspace(0, len(array) - 1, min(len(array), samples)).astype(int)):
            digest.update(np.ascontiguousarray(array[row]).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temp file beside `path`, then rename: a kill mid-write (or a full
    disk) leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, expected_fingerprint: str | None = None) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FuturesegError(f"{path}: checkpoint does not exist") from None
    except Exception as exc:
        text = str(exc).strip()
        if "Unsupported global" in text:
            raise FuturesegError(
                f"{path}: not a weights-only checkpoint (it holds pickled objects); refusing to load it"
            ) from None
        reason = text.splitlines()[0] if text else "file is empty" if path.stat().st_size == 0 else type(exc).__name__
        # What torch.load raises on bytes it cannot parse: a truncated zip gives RuntimeError
        # (no central directory) or OSError EINVAL (a seek before the file's start), an empty
        # file EOFError, garbage UnpicklingError. Other OSErrors (permissions, a folder, I/O)
        # are no verdict on the file's contents.
        unreadable = isinstance(exc, (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile)) or (
            isinstance(exc, OSError) and exc.errno == errno.EINVAL)
        raise (UnreadableCheckpoint if unreadable else FuturesegError)(
            f"{path}: unreadable or truncated checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "fingerprint" not in state:
        raise FuturesegError(f"{path}: not a futureseg checkpoint (no 'model'/'fingerprint' entries)")
    if expected_fingerprint is not None and state["fingerprint"] != expected_fingerprint:
        raise FuturesegError(
            f"{path}: checkpoint was made with a different config "
            f"(fingerprint {state['fingerprint']}, this run {expected_fingerprint}); refusing to resume"
        )
    return state


def checkpoint_path(folder: str | Path, fp: str) -> Path:
    """Checkpoints live in a folder per config, so changing a setting starts afresh and
    changing it back resumes where that config stopped."""
    return Path(folder) / fp / "last.pt"


def resume(path: Path, fp: str, load_model, optimizer, scheduler=None) -> tuple[int, dict, dict, dict] | None:
    """Restore a run from its checkpoint, when there is one: the model (`load_model` gets the
    saved state dict), the optimizer, the scheduler and every random generator. Returns
    (step, tally, val_metrics, best) to go on from (best: fit's keep_best record, {} when the
    run keeps none), or None for a fresh run."""
    if not path.exists():
        return None
    state = load_checkpoint(path, fp)
    needed = ["optimizer", "rng", "step", "tally", "val_metrics"] + (["scheduler"] if scheduler is not None else [])
    missing = [k for k in needed if k not in state]
    if missing:
        raise FuturesegError(f"{path}: a checkpoint of another futureseg version (no {', '.join(missing)}); "
                             f"remove {path.parent} to train this config afresh")
    load_model(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return state["step"], state["tally"], state["val_metrics"], state.get("best", {})


def rng_state() -> dict:
    """Every random generator a training run draws from (torch, CUDA, numpy, Python), as
    tensors and plain values a weights-only checkpoint can hold."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # this process's device only: a checkpoint of a run on N GPUs resumes on fewer
        # (rank 0 saves it; every rank starts from the same seed, so it is each rank's)
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, (list, tuple)):
        # older checkpoints: one state per visible device, of which rank 0, the saver, drew
        # from the first alone (device LOCAL_RANK=0); restoring them all by index failed
        # where fewer devices were visible
        cuda = cuda[0] if cuda else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------- stop signals


# SLURM's warning that a job nears its time limit, which SLURM itself ends without requeueing
# the job: the trainers' jobs ask for it (sbatch --signal=URG@<seconds>, config
# resources.slurm.warn_seconds), and on it a trainer writes its checkpoint and requeues its
# own job, which starts again and resumes from it. SIGURG, not the customary SIGUSR1: SLURM
# signals every process of the job's steps, and the plugin's step runs Snakemake, which runs
# a shell, which runs the trainer. SIGUSR1's default action ends Snakemake and the shell, so
# the step and the job fail while the trainer checkpoints (on a cgroup cluster the trainer
# dies with them); SIGURG's default action is to ignore it, so only the trainer, which
# listens, reacts. (`B:USR1` signals the batch shell alone, which it ends: the trainer never
# hears of it. All four tried on slurm/local-cluster.sh.)
TIME_LIMIT_SIGNAL = signal.SIGURG


class StopFlag:
    """Turns SIGTERM/SIGUSR1 (stop: a cancel, a preemption, the time limit itself) and
    TIME_LIMIT_SIGNAL (stop, then requeue the SLURM job) into flags the training loop checks
    after each step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, TIME_LIMIT_SIGNAL)

    def __init__(self):
        self.signum: int | None = None
        # the time limit warning came, whatever came after it (the SIGTERM of a requeue)
        self.time_limit = False
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signum = signum
        self.time_limit = self.time_limit or signum == TIME_LIMIT_SIGNAL

    @property
    def raised(self) -> bool:
        return self.signum is not None

    def interrupt(self, checkpoint: Path, step: int, then: str = "rerun to resume"):
        names = [signal.Signals(self.signum).name]
        if self.time_limit:
            warning = signal.Signals(TIME_LIMIT_SIGNAL).name
            names = [f"{warning} (SLURM's time limit warning)", *(name for name in names if name != warning)]
        raise TrainingInterrupted(f"{checkpoint}: {' and '.join(names)} received at step {step}; checkpoint written, "
                                  f"{then}")


def requeue_slurm_job(environ=os.environ) -> str:
    """Put this process's SLURM job back in the queue (`scontrol requeue`; a job may requeue
    itself): SLURM ends it and starts it again, under the same job id, which Snakemake keeps
    watching. What happened, for the stop message: the job requeued, or why not (then it just
    ends, and Snakemake's `retries` may resubmit it)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return "not in a SLURM job (no SLURM_JOB_ID), nothing to requeue: rerun to resume"
    command = ["scontrol", "requeue", job]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        problem = result.returncode and (result.stderr.strip() or f"exit status {result.returncode}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        return (f"`{' '.join(command)}` failed ({problem}): not requeued, the job ends here; rerun to resume "
                "(a batch job whose cluster allows requeueing can requeue itself: sbatch --requeue)")
    return f"requeued SLURM job {job}: it starts again and resumes from the checkpoint"


def ignore_stop_signals(_worker_id=None) -> None:
    """DataLoader worker_init_fn. SLURM signals every process of a job; torch kills a worker
    that gets SIGTERM, which crashes the main process before StopFlag can checkpoint. The
    workers leave the signals to the main process, which stops them itself."""
    for sig in StopFlag.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def check_finite(loss: torch.Tensor, step: int, checkpoint: Path) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(
            f"loss is {loss.item()} at step {step}; stopped, the last good checkpoint {checkpoint} is kept "
            "(lower the learning rate)"
        )


# ---------------------------------------------------------------- metrics and progress


class MetricsLog:
    """Per-epoch metrics as CSV (always) and TensorBoard scalars (when installed).

    On resume, rows after the resumed step are dropped so the CSV never holds a step twice.
    """

    def __init__(self, csv_path: str | Path, resume_step: int = 0, tensorboard_dir: str | Path | None = None):
        self.path = Path(csv_path)
        self.rows: list[dict] = []
        if resume_step and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.writer = None
        if tensorboard_dir is not None:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tensorboard_dir))

    def log(self, step: int, **metrics):
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(self.rows)
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


# ---------------------------------------------------------------- devices and DDP


class NoUsableGpu(FuturesegError):
    """A job that SLURM gave GPUs finds no CUDA device torch can use (a CPU build of torch, no
    driver on the node, a broken CUDA_VISIBLE_DEVICES): it stops before reading anything rather
    than train for hours on the CPU inside a GPU allocation."""


# What SLURM sets in a job that holds GPUs (gres or --gpus): GPU indices ("0,1"), and a count.
# Only these count: a CUDA_VISIBLE_DEVICES alone may come from the shell that submitted the
# job (sbatch exports its environment).
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")
SLURM_GPU_COUNT = "SLURM_GPUS_ON_NODE"
# 1: a GPU verb in a SLURM job given GPUs where torch finds none runs on the CPU instead of
# stopping. The workflow sets it from config.yaml's resources.allow_cpu (common.smk) for every
# job it runs; unset (a verb run by hand) it stops, as with the config's default.
ALLOW_CPU_VARIABLE = "FUTURESEG_ALLOW_CPU"


def cpu_allowed(environ=os.environ) -> bool:
    value = environ.get(ALLOW_CPU_VARIABLE, "0").strip()
    if value not in ("0", "1"):
        raise FuturesegError(f"environment variable {ALLOW_CPU_VARIABLE}={value!r}: expected 0 or 1")
    return value == "1"


def slurm_job(environ=os.environ) -> str:
    """This SLURM job as a message names it: its rule, from the job comment that
    snakemake-executor-plugin-slurm gives every job (rule_NAME or rule_NAME_wildcards_VALUES),
    and its id; the id alone when the comment cannot be read."""
    job_id = environ.get("SLURM_JOB_ID", "?")
    try:
        shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True,
                               timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    comment = next((field.removeprefix("Comment=") for field in shown.split() if field.startswith("Comment=")), "")
    if not comment.startswith("rule_"):
        return f"SLURM job {job_id}"
    rule, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
    return f"rule {rule}" + (f" ({wildcards})" if wildcards else "") + f" in SLURM job {job_id}"


def slurm_gpus(environ=os.environ) -> dict[str, str]:
    """SLURM_GPU_VARIABLES that say this job holds GPUs, with their values ({} outside such a job)."""
    held = {name: environ[name].strip() for name in SLURM_GPU_VARIABLES if environ.get(name, "").strip()}
    if held.get(SLURM_GPU_COUNT) == "0":  # a count of none (the others hold indices, where 0 is a GPU)
        del held[SLURM_GPU_COUNT]
    return held


def nvidia_smi() -> str:
    """`nvidia-smi -L` (the GPUs the driver sees) on one line, or why there is nothing to show."""
    try:
        run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "not installed"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed ({exc})"
    text = " / ".join(line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip())
    return text or f"no output (exit {run.returncode})"


def precision(device: torch.device, bf16_autocast: bool) -> str:
    """What `autocast(device)` gives a verb that uses it: bf16 autocast on GPU, else fp32."""
    return "bf16 autocast" if bf16_autocast and device.type == "cuda" else "fp32"


def select_device(*, bf16_autocast: bool) -> torch.device:
    """The device of a GPU verb: CUDA when torch has it, else the CPU, which is refused (NoUsableGpu,
    with what was found and what to do) inside a SLURM GPU allocation unless FUTURESEG_ALLOW_CPU=1
    (config resources.allow_cpu) allows it. Logs one line first: the device, torch and its CUDA build, and the
    precision (`bf16_autocast`: the caller runs its forward passes under `autocast`)."""
    allow_cpu = cpu_allowed()  # a bad value stops every run, not only the one that would need it
    versions = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        log.info("device %s (%s), %s, precision %s", device, torch.cuda.get_device_name(device), versions,
                 precision(device, bf16_autocast))
        return device
    device = torch.device("cpu")
    allocated = slurm_gpus()
    if not allocated:
        log.info("device cpu: no CUDA device and no SLURM GPU allocation, so the CPU (a local run), %s, "
                 "precision fp32", versions)
        return device
    found = (f"{versions}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}, "
             f"nvidia-smi: {nvidia_smi()}")
    granted = " ".join(f"{name}={value}" for name, value in allocated.items())
    if allow_cpu:
        log.warning("device cpu: SLURM gave this job GPUs (%s) but torch finds no usable CUDA device (%s); "
                    "running on the CPU as %s=1 (config resources.allow_cpu) allows, precision fp32",
                    granted, found, ALLOW_CPU_VARIABLE)
        return device
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    raise NoUsableGpu(
        f"{slurm_job()} on node {node}: SLURM gave it GPUs ({granted}) but torch finds no usable CUDA device "
        f"({found}); stopped instead of running on the CPU. Install a CUDA build of torch that the node's driver "
        "supports (or ask the cluster's admins about the node), or set resources.allow_cpu: true in config.yaml "
        f"({ALLOW_CPU_VARIABLE}=1 by hand) to run on the CPU on purpose")


def autocast(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (bf16 matmuls are slow on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def setup_distributed() -> tuple[int, int]:
    """(rank, world_size). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), world


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- the training loop


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation drawn from (seed, epoch) alone, so a resumed
    run draws the batches an uninterrupted one would; the last batch may be short."""
    order = np.random.default_rng((seed, epoch, 1)).permutation(n)
    return [order[s : s + batch_size].tolist() for s in range(0, n, batch_size)]


def plan_steps(n_samples: int, batch_size: int, epochs: int, max_steps: int = 0) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run: every sample once per epoch, the last batch
    possibly short; `max_steps` > 0 cuts the run short."""
    steps_per_epoch = math.ceil(n_samples / batch_size)
    total_steps = epochs * steps_per_epoch
    return steps_per_epoch, min(total_steps, max_steps) if max_steps else total_steps


def fit(*, model, optimizer, scheduler, settings: dict, checkpoints, metrics_out, out, model_file: dict,
        epochs: int, epoch_batches, total_steps: int, checkpoint_every: int, step_losses, validate,
        read_batches=None, weights=None, log_every: int = 0, loss_prefix: str = "train_", rank: int = 0,
        world: int = 1, desc: str = "train", keep_best: str | None = None, patience: int = 0) -> dict:
    """The one resumable training loop; every trainer (frame predictor, both segmenters, mask
    forecaster, direct U-Net) brings its own batches, step and validation.

    epoch_batches(epoch) -> the epoch's batches (a list whose length, the steps per epoch,
    is the same every epoch), drawn from (seed, epoch) alone so that a resumed run draws the
    batches an uninterrupted one would. read_batches(batches) -> an iterable of what
    step_losses gets per batch (a DataLoader; default: the batches themselves).
    step_losses(epoch, batch, step, total_steps) -> dict of scalar loss tensors whose "loss"
    entry is minimised (all are logged, named `loss_prefix` + key). validate() -> dict of
    floats, run at each epoch end. `weights` (default: `model`) is what the checkpoint
    saves and restores (state_dict / load_state_dict).

    The checkpoint (`<checkpoints>/<fingerprint of settings>/last.pt`) holds the weights,
    optimizer, scheduler, every RNG and the running loss sums, so a resumed run ends with the
    weights of an uninterrupted one. It is written every `checkpoint_every` steps and at
    each epoch end; SIGTERM/SIGUSR1 write it and stop (SIGURG, SLURM's time limit warning, also
    requeues the job); a NaN loss stops with the last good
    one kept; one torch.load cannot parse (truncated) is moved to `last.pt.corrupt` with a
    warning and the run starts over, while one of another config or loop stops the run.
    `log_every` > 0 adds a training-loss row every that many steps. Under DDP
    (world > 1) one all-reduce per step carries the losses and the stop flag, so every rank
    logs the global mean and stops, or fails, at the same step; rank 0 alone writes files.
    At the end it writes the model file `out`: `model_file` (what rebuilds the model: its
    kind, its config) with the weights, the fingerprint, the settings, the step and the last
    validation metrics, which it returns. With `keep_best` (a key of validate()'s metrics,
    higher is better) the model file holds instead the weights of the epoch end where that
    metric was highest, its step and its metrics (the checkpoint carries them, so a resumed
    run exports what an uninterrupted one would); `last_val_metrics` keeps the last epoch's.
    With `patience` > 0 (and `keep_best`) the untrained model is validated first, as the
    baseline to beat (the mask forecaster's is its prior), and training stops at the first
    epoch end `patience` epochs after the best one: a flat val metric costs `patience` epochs,
    not the whole plan. The best epoch's step is in the checkpoint, so a resumed run stops
    where an uninterrupted one would, and a stopped one does not train on when rerun.
    """
    if patience and not keep_best:
        raise ValueError("fit: patience needs keep_best, the metric it watches")
    weights = model if weights is None else weights
    steps_per_epoch = len(epoch_batches(0))
    settings = {**settings, "total_steps": total_steps}
    fp = fingerprint(settings)
    ckpt_path = checkpoint_path(checkpoints, fp)
    run_dir = ckpt_path.parent
    step, tally, last_val = 0, {"epoch": {}, "window": {}}, {}
    best = {}  # keep_best: {"step", "value", "val_metrics", "model"} of the best epoch end so far
    try:
        resumed = resume(ckpt_path, fp, weights.load_state_dict, optimizer, scheduler)
    except UnreadableCheckpoint as exc:
        # A checkpoint cut short (a full disk before atomic saves, a copy interrupted): what it
        # held is lost, so it goes aside (the newest .corrupt replaces an older one) and the run
        # starts over. Every rank read the same bytes and got here; rank 0 moves the file once
        # every rank is done reading it.
        if world > 1:
            dist.barrier()
        if rank == 0:
            corrupt = ckpt_path.with_name(ckpt_path.name + ".corrupt")
            os.replace(ckpt_path, corrupt)
            log.warning("%s; moved it to %s, training starts over from scratch", exc, corrupt)
        resumed = None
    if resumed:
        step, tally, last_val, best = resumed
        if set(tally) != {"epoch", "window"}:
            raise FuturesegError(f"{ckpt_path}: a checkpoint of another futureseg version (its running sums are "
                                 f"not this loop's); remove {run_dir} to train this config afresh")
        if rank == 0:
            log.info("resuming from %s at step %d of %d (epoch %d, batch %d of %d)", ckpt_path, step, total_steps,
                     step // steps_per_epoch + 1, step % steps_per_epoch, steps_per_epoch)
    elif rank == 0:
        log.info("%s from scratch: %d steps (%d epochs × %d batches), checkpoints in %s",
                 desc, total_steps, epochs, steps_per_epoch, run_dir)
    metrics = MetricsLog(run_dir / "metrics.csv", resume_step=step,
                         tensorboard_dir=run_dir / "tensorboard") if rank == 0 else None

    def patience_spent() -> bool:
        # only at an epoch end, so the stop and its checkpoint fall where validation did
        return bool(patience and best and step % steps_per_epoch == 0
                    and step - best["step"] >= patience * steps_per_epoch)

    if patience and not best:
        baseline = validate()
        model.train()
        best = {"step": 0, "value": float(baseline[keep_best]), "val_metrics": dict(baseline),
                "model": {k: v.detach().clone() for k, v in weights.state_dict().items()}}
        if rank == 0:
            log.info("untrained: %s=%.4g, the baseline to beat within %d epochs", keep_best, best["value"], patience)

    def save():
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "fingerprint": fp, "settings": settings, "step": step, "model": weights.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                "tally": tally, "val_metrics": last_val, **({"best": best} if keep_best else {}),
            })

    def means(sums: dict) -> dict:
        # the losses get the prefix; step_seconds is the mean wall time of a step (batch
        # reading included; validation, checkpoints and logging not), to time a run from its CSV
        n = sums.get("steps", 0)
        return {(k if k == "step_seconds" else f"{loss_prefix}{k}"): v / n for k, v in sums.items() if k != "steps"}

    # A finished run whose live CSV was removed validates once more to rewrite it. Decided
    # here, not after the loop: rank 0 writes the CSV at the last step, so a rank that looked
    # afterwards could find it missing and validate alone, its metrics' sync waiting forever
    # for partners that had moved on. Rank 0's answer is every rank's.
    revalidate = [(step >= total_steps or patience_spent()) and not (run_dir / "metrics.csv").exists()]
    if world > 1:
        dist.broadcast_object_list(revalidate, src=0)
    model.train()
    with StopFlag() as stop:
        while step < total_steps and not patience_spent():
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            batches = epoch_batches(epoch)[done_in_epoch : done_in_epoch + total_steps - step]
            items = batches if read_batches is None else read_batches(batches)
            if rank == 0:
                items = progress(items, total=steps_per_epoch, initial=done_in_epoch,
                                 desc=f"{desc} epoch {epoch + 1}/{epochs}")
            step_start = time.perf_counter()
            for batch in items:
                losses = step_losses(epoch, batch, step, total_steps)
                # One device sync (and, under DDP, one collective) per step carries the
                # losses for the log and the NaN check, and the stop flag.
                device = losses["loss"].device
                status = torch.stack([*(v.detach().float() for v in losses.values()),
                                      torch.tensor(float(stop.raised), device=device),
                                      torch.tensor(float(stop.time_limit), device=device)])
                if world > 1:
                    dist.all_reduce(status)
                *values, stop_requests, time_limit_warnings = status.tolist()
                values = dict(zip(losses, (v / world for v in values)))
                check_finite(torch.tensor(values["loss"]), step + 1, ckpt_path)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                optimizer.step()
                scheduler.step()
                step += 1
                values["step_seconds"] = time.perf_counter() - step_start
                for sums in tally.values():
                    for name, value in values.items():
                        sums[name] = sums.get(name, 0.0) + value
                    sums["steps"] = sums.get("steps", 0) + 1
                epoch_end = step % steps_per_epoch == 0 or step == total_steps
                window_end = log_every and step % log_every == 0
                if window_end and not epoch_end and metrics is not None:
                    metrics.log(step, epoch=epoch + 1, lr=lr, **means(tally["window"]))
                if window_end:
                    tally["window"] = {}
                if epoch_end:
                    last_val = validate()
                    model.train()
                    if keep_best and (not best or last_val[keep_best] > best["value"]):
                        best = {"step": step, "value": float(last_val[keep_best]), "val_metrics": dict(last_val),
                                "model": {k: v.detach().clone() for k, v in weights.state_dict().items()}}
                    if metrics is not None:
                        metrics.log(step, epoch=epoch + 1, lr=lr, **means(tally["epoch"]), **last_val)
                    tally["epoch"] = {}
                if epoch_end or step % checkpoint_every == 0 or stop_requests:
                    save()
                if stop_requests:
                    then = "rerun to resume"
                    if time_limit_warnings:
                        # SLURM ends a job at its limit without requeueing it: the job requeues
                        # itself, once the checkpoint it resumes from is written (by rank 0,
                        # which asks; under DDP any rank's warning counts, they come together)
                        then = requeue_slurm_job() if rank == 0 else "rank 0 requeues the SLURM job"
                    if stop.raised:
                        stop.interrupt(ckpt_path, step, then)
                    raise TrainingInterrupted(f"{ckpt_path}: another process received a stop signal at step "
                                              f"{step}; checkpoint written, {then}")
                if epoch_end and patience_spent():
                    if rank == 0:
                        log.info("stopping at step %d of %d: %s has not beaten %.4g (step %d) for %d epochs",
                                 step, total_steps, keep_best, best["value"], best["step"], patience)
                    break
                step_start = time.perf_counter()  # the next step's clock starts after validation and checkpoints
    if revalidate[0]:
        last_val = validate()
        if metrics is not None:
            metrics.log(step, epoch=epochs, **last_val)
    exported = {"model": weights.state_dict(), "step": step, "val_metrics": last_val}
    if best:
        exported = {"model": best["model"], "step": best["step"], "val_metrics": best["val_metrics"],
                    "last_step": step, "last_val_metrics": last_val}
    if rank == 0:
        if best:
            log.info("exporting the best epoch end by %s: step %d of %d", keep_best, best["step"], step)
        save_checkpoint(out, {**model_file, **exported, "fingerprint": fp, "settings": settings})
        with atomic_path(metrics_out) as tmp:
            shutil.copyfile(run_dir / "metrics.csv", tmp)
        log.info("wrote %s (step %d): %s", out, exported["step"],
                 " ".join(f"{k}={v:.4g}" for k, v in exported["val_metrics"].items()))
    return exported["val_metrics"]


def adamw_one_cycle(model, lr: float, weight_decay: float, total_steps: int):
    """AdamW under one OneCycleLR schedule over the whole run: the dense models' recipe
    (as the frame predictor's), robust from scratch without tuning a warm-up."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, total_steps))
