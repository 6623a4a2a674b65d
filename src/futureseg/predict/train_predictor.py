"""Stage 2: train the frame predictor (any of `futureseg.models.predictors`), self-supervised on
whole videos.

Input frames 0…10, target frames 11…21, both normalised with the dataset's per-channel
mean/std; MSE loss; AdamW under one OneCycleLR schedule spanning every step of the run.
Frames come from the uint8 caches of `futureseg cache-frames`, memory-mapped.

Resuming is exact: batches are drawn from a permutation seeded by (seed, epoch), so a run
that restarts from a checkpoint at step s skips the s mod steps-per-epoch batches it had
already done in that epoch, and with the model, optimizer, scheduler, RNG states and the
running loss sums restored, it ends with the same weights as a run never interrupted
(bit for bit on CPU with the same thread count).

Each config gets its own folder `<checkpoints>/<fingerprint>/` holding `last.pt`, the
live `metrics.csv` and `tensorboard/`; `--metrics` is a copy made when training ends, so
a rerun of another config never mixes its rows into this one's.

Validation, at each epoch end (and at the last step), reports on the val split the MSE,
PSNR and SSIM of the predicted frames 11…21 and of frame 21 alone, in the 0…1 data range,
next to the same figures for copying frame 10 forward: a model that does not beat that
baseline has learnt nothing useful about motion.

`--gpus N` (N > 1) trains with one process per GPU (torch DDP): the verb re-executes
itself under torch.distributed.run (`torchrun --standalone --nproc-per-node N`), and each
rank takes `--threads` / N torch threads and its share of `--loader-workers`. Under torchrun
(WORLD_SIZE > 1) each rank takes an equal contiguous slice of every global batch (and of
every validation batch), so the global batch (and the averaged gradient) is the same for
any world size.
Models with BatchNorm (SimVP's gSTA translator) get SyncBatchNorm on GPUs so the batch
statistics are those of the global batch too; on CPU (gloo) torch has no SyncBatchNorm and
each rank normalises over its own share, so only the models without BatchNorm (IncepU,
ConvLSTM, ConvGRU) match a one-process run there. The recurrent models' scheduled sampling
draws per sample, so ranks draw differently from one process (same distribution, other
samples). The loop itself, with its checkpoints and stop signals, is `core.training.fit`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from futureseg.core import data
from futureseg.core.errors import ConfigError, DataError

N_FUTURE = data.N_FRAMES - data.N_INPUT  # frames 11…21


# ---------------------------------------------------------------- settings


def build_model(model_name: str, in_shape, config: dict):
    """The predictor from the registry (a seam the tests wrap to inject faults)."""
    from futureseg.models import predictors

    return predictors.build(model_name, in_shape, config)


def check_settings(args) -> None:
    for name in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("max_steps", "log_every", "val_limit", "loader_workers", "threads", "gpus"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be 0 or more")
    if not args.lr > 0:
        raise ConfigError(f"--lr {args.lr}: must be positive")
    if args.weight_decay < 0:
        raise ConfigError(f"--weight-decay {args.weight_decay}: must be 0 or more")


# ---------------------------------------------------------------- processes

# What torchrun sets in each process it starts: a process that has them is a rank already.
RANK_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE")
# The signals torchrun passes on to its ranks: its default four and SIGUSR1, on which the
# ranks checkpoint and stop as on SIGTERM. Not SIGURG, SLURM's warning before the time limit
# (core/training.py): torchrun takes any signal it forwards for the end and stops the ranks,
# and SLURM sends that one to every rank itself.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def rank_launch(gpus: int, argv: list[str] | None, threads: int, environ=os.environ) -> tuple[list[str], dict] | None:
    """(command, environment) that runs this command line `argv` (the verb and its flags) as
    `gpus` ranks under torch.distributed.run, when `gpus` > 1 and this process is no rank yet;
    None when this process trains itself."""
    if gpus <= 1 or any(name in environ for name in RANK_VARIABLES):
        return None
    if argv is None:
        raise ConfigError(f"--gpus {gpus}: starting {gpus} processes needs the command line; "
                          "run it as `futureseg train-predictor ...`")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               f"--signals-to-handle={FORWARDED_SIGNALS}", "-m", "futureseg", *argv]
    # torchrun would set 1 (with a warning); each rank sets its torch threads itself
    return command, {**environ, "OMP_NUM_THREADS": str(rank_threads(threads, gpus) or 1)}


def rank_threads(threads: int, world: int) -> int:
    """Each rank's torch threads of the job's `threads` (0: torch's default)."""
    return max(1, threads // world) if threads else 0


def rank_workers(workers: int, world: int) -> int:
    """Each rank's loader workers of the job's `workers`; one at least where there are any:
    a worker mostly waits on the disk, and a rank without one reads between its GPU steps."""
    return max(1, workers // world) if workers else 0


# ---------------------------------------------------------------- data


class CachedVideos:
    """Rows of one or more frame caches seen as one indexable set of videos.

    `batch(indices)` returns uint8 (B, T, H, W, 3). The memmaps are opened lazily, in the
    process that reads them, so DataLoader workers each map the files themselves instead
    of receiving a pickled copy of the data.
    """

    def __init__(self, paths, frames_needed: int):
        from futureseg.core.io import load_cache

        self.paths = [Path(p) for p in paths]
        self.shapes = []
        for path in self.paths:
            frames, _ = load_cache(path)
            if frames.shape[1] < frames_needed:
                raise DataError(
                    f"{path}: cache holds {frames.shape[1]} frames per video, training needs "
                    f"{frames_needed} (the hidden split has no future frames to learn from)"
                )
            if self.shapes and frames.shape[2:] != self.shapes[0][2:]:
                raise DataError(
                    f"{path}: frames are {frames.shape[2]}x{frames.shape[3]}, but "
                    f"{self.paths[0]} has {self.shapes[0][2]}x{self.shapes[0][3]}"
                )
            self.shapes.append(tuple(frames.shape))
        self.frames_needed = frames_needed
        self.offsets = np.cumsum([0] + [s[0] for s in self.shapes])
        self._arrays = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.shapes[0][2], self.shapes[0][3]

    def batch(self, indices) -> np.ndarray:
        if self._arrays is None:
            self._arrays = [np.load(p, mmap_mode="r") for p in self.paths]
        rows = []
        for index in indices:
            file = int(np.searchsorted(self.offsets, index, side="right")) - 1
            rows.append(self._arrays[file][index - self.offsets[file], : self.frames_needed])
        return np.stack(rows)

    # the torch Dataset protocol, keyed by a whole batch of indices (DataLoader batch_size=None)
    def __getitem__(self, indices):
        import torch

        return torch.from_numpy(self.batch(indices))

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}


def epoch_batches(n_videos: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a permutation drawn from (seed, epoch) alone, so any
    process, at any time, draws the same one; the incomplete last batch is dropped so every
    step sees `batch_size` videos."""
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_videos, generator=generator).tolist()
    return [sorted(order[i : i + batch_size]) for i in range(0, n_videos - batch_size + 1, batch_size)]


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (sizes are equal: batch % world == 0)."""
    share = len(batch) // world
    return batch[rank * share : (rank + 1) * share]


def loader(videos: CachedVideos, batches, workers: int, pin: bool):
    import torch

    # Its own generator: creating a DataLoader iterator draws a seed, which must not come
    # from the global RNG, or a run resumed mid-epoch would drift from an uninterrupted one.
    from futureseg.core.training import ignore_stop_signals

    return torch.utils.data.DataLoader(
        videos, sampler=batches, batch_size=None, num_workers=workers, pin_memory=pin,
        generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals,
    )


def normalise(frames_uint8, mean, std, device):
    """uint8 (B, T, H, W, 3) → float (B, T, 3, H, W) on `device`, (x - mean) / std."""
    x = frames_uint8.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float()
    return (x - mean) / std


# ---------------------------------------------------------------- validation


class FrameScores:
    """MSE, PSNR and SSIM (0…1 data range) of predicted vs true frames 11…21, for all 11
    frames and for frame 21 alone, accumulated over a whole split (and across DDP ranks:
    torchmetrics syncs its states in `compute`)."""

    def __init__(self, device):
        from torchmetrics import MeanSquaredError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.metrics = {}
        for frames in ("", "_f21"):
            self.metrics["mse" + frames] = MeanSquaredError().to(device)
            self.metrics["psnr" + frames] = PeakSignalNoiseRatio(data_range=1.0).to(device)
            self.metrics["ssim" + frames] = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)

    def update(self, predicted, target) -> None:
        """predicted, target: float (B, 11, 3, H, W) in 0…1."""
        for frames, (p, t) in (("", (predicted, target)), ("_f21", (predicted[:, -1:], target[:, -1:]))):
            p, t = p.flatten(0, 1), t.flatten(0, 1)
            self.metrics["mse" + frames].update(p.flatten(), t.flatten())
            self.metrics["psnr" + frames].update(p, t)
            self.metrics["ssim" + frames].update(p, t)

    def compute(self, prefix: str) -> dict:
        return {f"{prefix}_{name}": float(metric.compute()) for name, metric in self.metrics.items()}


def evaluate(model, videos: CachedVideos, rows, mean, std, device, batch_size: int, workers: int,
             with_copy_last: bool) -> dict:
    """Val metrics of the model (`val_*`, plus `val_loss` in normalised units comparable
    with the training loss) and, if asked, of the copy-last-frame baseline (`copy_last_*`)."""
    import torch
    from torchmetrics import MeanSquaredError

    from futureseg.core.training import autocast

    model_scores, baseline_scores = FrameScores(device), FrameScores(device)
    normalised_mse = MeanSquaredError().to(device)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for frames in loader(videos, batches, workers, device.type == "cuda"):
            pixels = frames.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float()
            x = (pixels - mean) / std
            with autocast(device):
                predicted = model(x[:, : data.N_INPUT])
            predicted = predicted.float()
            normalised_mse.update(predicted.flatten(), x[:, data.N_INPUT :].flatten())
            target = pixels / 255
            model_scores.update(((predicted * std + mean) / 255).clamp(0, 1), target[:, data.N_INPUT :])
            if with_copy_last:
                last = target[:, data.N_INPUT - 1 : data.N_INPUT].expand(-1, N_FUTURE, -1, -1, -1)
                baseline_scores.update(last, target[:, data.N_INPUT :])
    model.train(was_training)
    result = {"val_loss": float(normalised_mse.compute()), **model_scores.compute("val")}
    if with_copy_last:
        result.update(baseline_scores.compute("copy_last"))
    return result


# ---------------------------------------------------------------- training


def train(args) -> dict:
    """Train (or resume, or just re-export a finished run); return the final val metrics."""
    import torch
    import torch.nn.functional as F

    from futureseg.core.io import read_mean_std
    from futureseg.models import predictors
    from futureseg.core.training import (autocast, cleanup_distributed, data_fingerprint, fit, seed_everything,
                                         select_device, setup_distributed)

    check_settings(args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.gpus > 1 and world != args.gpus:
        raise ConfigError(f"--gpus {args.gpus}: but this process is one of {world} (WORLD_SIZE); start the verb "
                          f"as `futureseg train-predictor --gpus {args.gpus}`, which starts the {args.gpus} "
                          "processes itself, not under a torchrun of another count")
    if world > 1 and torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise ConfigError(f"--gpus {world}: torch sees {torch.cuda.device_count()} CUDA devices "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
    if args.threads:
        torch.set_num_threads(rank_threads(args.threads, world))
    workers = rank_workers(args.loader_workers, world)
    rank, world = setup_distributed()
    try:
        device = select_device(bf16_autocast=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        # On CPU the ops these models use are deterministic for a fixed thread count (the
        # resume test checks bit-equality); torch.use_deterministic_algorithms would add
        # nothing but a multi-second import of torch._inductor to every run.
        if args.batch_size % world:
            raise ConfigError(f"--batch-size {args.batch_size}: must be a multiple of the {world} processes")

        train_videos = CachedVideos(args.cache, data.N_FRAMES)
        val_videos = CachedVideos([args.val_cache], data.N_FRAMES)
        if val_videos.frame_size != train_videos.frame_size:
            raise DataError(f"{args.val_cache}: frames are {val_videos.frame_size}, training frames "
                            f"are {train_videos.frame_size}")
        if len(train_videos) < args.batch_size:
            raise ConfigError(f"--batch-size {args.batch_size}: larger than the {len(train_videos)} "
                              f"training videos in {', '.join(map(str, args.cache))}")
        mean_values, std_values = read_mean_std(args.mean_std)
        in_shape = (data.N_INPUT, 3, *train_videos.frame_size)
        seed_everything(args.seed)  # the same initial weights on every rank
        model = build_model(args.model, in_shape, args.model_config)
        config = predictors.model_config(model)

        steps_per_epoch = len(train_videos) // args.batch_size
        total_steps = args.epochs * steps_per_epoch
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        settings = {
            "model": args.model, "model_config": config, "in_shape": list(in_shape),
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "seed": args.seed,
            "mean": [float(v) for v in mean_values], "std": [float(v) for v in std_values],
            "train_caches": [[p.name, list(s)] for p, s in zip(train_videos.paths, train_videos.shapes)],
            "val_cache": [val_videos.paths[0].name, list(val_videos.shapes[0])],
            # what the caches hold, not only their names and shapes: another dataset's caches
            # under the same paths start a new run instead of resuming (or re-exporting) this one
            "training_data": data_fingerprint(*(np.load(path, mmap_mode="r")
                                                for path in [*train_videos.paths, *val_videos.paths])),
        }
        if world > 1 and device.type == "cuda":
            # batch statistics over the global batch, as in a one-process run (SyncBatchNorm
            # exists only for GPUs: on CPU each rank normalises over its own share)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
        train_model = model
        if world > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        mean = torch.as_tensor(mean_values, device=device).view(1, 1, 3, 1, 1)
        std = torch.as_tensor(std_values, device=device).view(1, 1, 3, 1, 1)
        val_rows = list(range(len(val_videos)))[: args.val_limit or None][rank::world]
        copy_last = {}  # the baseline's figures: the same at every validation, computed once

        def step_losses(epoch, frames, step, total):
            x = normalise(frames, mean, std, device)
            inputs, targets = x[:, : data.N_INPUT], x[:, data.N_INPUT :]
            ratio = predictors.scheduled_sampling_ratio(step, total)
            with autocast(device):
                predicted = train_model(inputs, target=targets, sampling_ratio=ratio)
            return {"loss": F.mse_loss(predicted.float(), targets)}

        def validate():
            # this rank's share of a global batch, as in training: each rank holds its own
            scores = evaluate(model, val_videos, val_rows, mean, std, device, args.batch_size // world,
                              workers, with_copy_last=not copy_last)
            copy_last.update({k: v for k, v in scores.items() if k.startswith("copy_last_")})
            return {**scores, **copy_last}

        def epoch_batches_of(epoch):
            return epoch_batches(len(train_videos), args.batch_size, args.seed, epoch)

        def read_batches(batches):
            local = [rank_slice(b, rank, world) for b in batches]
            return loader(train_videos, local, workers, device.type == "cuda")

        return fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=settings,
                   checkpoints=args.checkpoints, metrics_out=args.metrics, out=args.out,
                   model_file={"model_name": args.model, "model_config": config, "in_shape": list(in_shape),
                               "mean": settings["mean"], "std": settings["std"]},
                   epochs=args.epochs, total_steps=total_steps, epoch_batches=epoch_batches_of,
                   read_batches=read_batches, checkpoint_every=args.checkpoint_every, step_losses=step_losses,
                   validate=validate, log_every=args.log_every, rank=rank, world=world, desc=args.model)
    finally:
        cleanup_distributed()


# ---------------------------------------------------------------- CLI

VERB = "train-predictor"
HELP = "train the frame predictor (SimVP, ConvLSTM, ConvGRU) on cached frames (stage 2)"


def add_arguments(parser) -> None:
    from futureseg.core.flags import json_object
    from futureseg.models import predictors

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--cache", nargs="+", required=True, help="frame caches (.npy) of the training splits")
    io.add_argument("--val-cache", required=True, help="frame cache of the val split")
    io.add_argument("--mean-std", required=True, help="mean_std.json of stage 1")
    io.add_argument("--out", required=True, help="model file to write (model.pt)")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True,
                    help="folder of per-config checkpoint folders (last.pt, live metrics.csv, tensorboard/)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=predictors.names(), required=True, help="the predictor (its module name)")
    model.add_argument("--model-config", type=json_object, default={},
                       help='its settings as JSON (its config section), e.g. \'{"hid_S": 16, "N_S": 2}\'; '
                            "unset ones take the defaults of its Config dataclass")
    # No defaults of its own for what shapes the weights: the rule passes config.yaml's.
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, required=True)
    opt.add_argument("--batch-size", type=int, required=True, help="global batch (split across DDP ranks)")
    opt.add_argument("--lr", type=float, required=True, help="OneCycleLR peak learning rate")
    opt.add_argument("--weight-decay", type=float, required=True)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps; also at each epoch end")
    run.add_argument("--log-every", type=int, default=50, help="steps between training-loss rows (0: epoch rows only)")
    run.add_argument("--val-limit", type=int, default=0, help="validate on the first N val videos (0: all)")
    run.add_argument("--threads", type=int, default=0,
                     help="torch CPU threads of the job, shared by its processes (0: torch's default)")
    run.add_argument("--loader-workers", type=int, default=2,
                     help="processes reading batches from the caches, shared by the job's processes")
    run.add_argument("--gpus", type=int, default=0,
                     help="GPUs of the job: N > 1 trains with N processes (torch DDP) under torchrun, "
                          "started by the verb itself; 0 or 1: one process")


def main(args) -> None:
    launch = rank_launch(args.gpus, getattr(args, "argv", None), args.threads)
    if launch is not None:
        check_settings(args)  # a bad flag stops here, not once per rank
        command, environ = launch
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # exec, not a child: the launcher becomes this very process, so the signals SLURM or
        # Snakemake send it (time limit, cancel) reach torchrun, which hands them on to the
        # ranks, and its exit status is the job's
        os.execve(command[0], command, environ)
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
