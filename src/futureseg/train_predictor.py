"""Stage 2: train the frame predictor (SimVP or ConvLSTM), self-supervised on whole videos.

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

Under torchrun (WORLD_SIZE > 1) each rank takes an equal contiguous slice of every global
batch, so the global batch (and the averaged gradient) is the same for any world size.
Models with BatchNorm (SimVP's gSTA translator) get SyncBatchNorm on GPUs so the batch
statistics are those of the global batch too; on CPU (gloo) torch has no SyncBatchNorm and
each rank normalises over its own share, so only the GroupNorm models (IncepU, ConvLSTM)
match a one-process run there. ConvLSTM's scheduled sampling draws per sample, so ranks
draw differently from one process (same distribution, other samples).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from . import data
from .errors import ConfigError, DataError
from .io import atomic_path

log = logging.getLogger("futureseg")

MODEL_NAMES = ("simvp", "convlstm")
TRANSLATORS = ("gsta", "incepu")
N_FUTURE = data.N_FRAMES - data.N_INPUT  # frames 11…21


# ---------------------------------------------------------------- settings


def model_config(args) -> dict:
    """The chosen model's settings given on the command line (only its own: the other
    model's sizes do not matter to it)."""
    if args.model == "simvp":
        return {"hid_S": args.hid_s, "hid_T": args.hid_t, "N_S": args.n_s, "N_T": args.n_t,
                "translator": args.translator, "drop_path": args.drop_path}
    if args.model == "convlstm":
        return {"patch_size": args.patch_size, "num_hidden": list(args.num_hidden), "filter_size": args.filter_size}
    raise ConfigError(f"--model {args.model!r}: expected one of {', '.join(MODEL_NAMES)}")


def full_model_config(model) -> dict:
    """Every field of the built model's config dataclass (defaults included, so a saved
    model rebuilds the same even if a default changes later), as a plain dict."""
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.config).items() if k != "in_shape"}


def build_model(model_name: str, in_shape, config: dict):
    """The predictor from a plain config dict (lists become the tuples the configs hold)."""
    from .models import build_predictor

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return build_predictor(model_name, in_shape=tuple(in_shape), **kwargs)


def check_settings(args) -> None:
    for name in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("max_steps", "log_every", "val_limit", "loader_workers", "threads"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be 0 or more")
    if not args.lr > 0:
        raise ConfigError(f"--lr {args.lr}: must be positive")
    if args.weight_decay < 0:
        raise ConfigError(f"--weight-decay {args.weight_decay}: must be 0 or more")


# ---------------------------------------------------------------- data


class CachedVideos:
    """Rows of one or more frame caches seen as one indexable set of videos.

    `batch(indices)` returns uint8 (B, T, H, W, 3). The memmaps are opened lazily, in the
    process that reads them, so DataLoader workers each map the files themselves instead
    of receiving a pickled copy of the data.
    """

    def __init__(self, paths, frames_needed: int):
        from .frame_cache import load_cache

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
    from .training import ignore_stop_signals

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

    from .training import autocast

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


# ---------------------------------------------------------------- RNG state (weights-only)


# ---------------------------------------------------------------- training


def train(args) -> dict:
    """Train (or resume, or just re-export a finished run); return the final val metrics."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from . import mean_std as mean_std_module
    from .training import (MetricsLog, StopFlag, TrainingInterrupted, autocast, check_finite,
                           checkpoint_path, cleanup_distributed, fingerprint, progress, resume,
                           rng_state, save_checkpoint, seed_everything, select_device,
                           setup_distributed)

    check_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world = setup_distributed()
    try:
        device = select_device()
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
        mean_values, std_values = mean_std_module.load(args.mean_std)
        in_shape = (data.N_INPUT, 3, *train_videos.frame_size)
        seed_everything(args.seed)  # the same initial weights on every rank
        model = build_model(args.model, in_shape, model_config(args))
        config = full_model_config(model)

        steps_per_epoch = len(train_videos) // args.batch_size
        total_steps = args.epochs * steps_per_epoch
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        settings = {
            "model": args.model, "model_config": config, "in_shape": list(in_shape),
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "seed": args.seed, "total_steps": total_steps,
            "mean": [float(v) for v in mean_values], "std": [float(v) for v in std_values],
            "train_caches": [[p.name, list(s)] for p, s in zip(train_videos.paths, train_videos.shapes)],
            "val_cache": [val_videos.paths[0].name, list(val_videos.shapes[0])],
        }
        fp = fingerprint(settings)
        ckpt_path = checkpoint_path(args.checkpoints, fp)
        run_dir = ckpt_path.parent

        if world > 1 and device.type == "cuda":
            # batch statistics over the global batch, as in a one-process run (SyncBatchNorm
            # exists only for GPUs: on CPU each rank normalises over its own share)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps)
        step, tally, last_val = 0, {"window_sum": 0.0, "window_steps": 0, "epoch_sum": 0.0, "epoch_steps": 0}, {}
        resumed = resume(ckpt_path, fp, model.load_state_dict, optimizer, scheduler)
        if resumed:
            step, tally, last_val = resumed
            if rank == 0:
                log.info("resuming from %s at step %d (epoch %d, batch %d of %d)", ckpt_path, step,
                         step // steps_per_epoch + 1, step % steps_per_epoch, steps_per_epoch)
        elif rank == 0:
            log.info("training %s from scratch: %d steps (%d epochs × %d), checkpoints in %s",
                     args.model, total_steps, args.epochs, steps_per_epoch, run_dir)

        train_model = model
        if world > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        mean = torch.as_tensor(mean_values, device=device).view(1, 1, 3, 1, 1)
        std = torch.as_tensor(std_values, device=device).view(1, 1, 3, 1, 1)
        val_rows = list(range(len(val_videos)))[: args.val_limit or None][rank::world]
        metrics = MetricsLog(run_dir / "metrics.csv", resume_step=step,
                             tensorboard_dir=run_dir / "tensorboard") if rank == 0 else None
        copy_last = {k: v for k, v in last_val.items() if k.startswith("copy_last_")}

        def save():
            if rank == 0:
                save_checkpoint(ckpt_path, {
                    "fingerprint": fp, "settings": settings, "step": step,
                    "epoch": step // steps_per_epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "tally": tally, "val_metrics": last_val,
                })

        if args.model == "convlstm":
            from .models.convlstm import scheduled_sampling_ratio

        train_model.train()
        with StopFlag() as stop:
            while step < total_steps:
                epoch, done_in_epoch = divmod(step, steps_per_epoch)
                batches = epoch_batches(len(train_videos), args.batch_size, args.seed, epoch)
                batches = batches[done_in_epoch : done_in_epoch + total_steps - step]
                local = [rank_slice(b, rank, world) for b in batches]
                frames_iter = loader(train_videos, local, args.loader_workers, device.type == "cuda")
                if rank == 0:
                    frames_iter = progress(frames_iter, total=steps_per_epoch, initial=done_in_epoch,
                                           desc=f"epoch {epoch + 1}/{args.epochs}")
                for frames in frames_iter:
                    x = normalise(frames, mean, std, device)
                    inputs, targets = x[:, : data.N_INPUT], x[:, data.N_INPUT :]
                    with autocast(device):
                        if args.model == "convlstm":
                            ratio = scheduled_sampling_ratio(step, total_steps)
                            predicted = train_model(inputs, target=targets, sampling_ratio=ratio)
                        else:
                            predicted = train_model(inputs)
                    loss = F.mse_loss(predicted.float(), targets)
                    # One collective per step carries the loss (for the log and the NaN check)
                    # and the stop flag, so every rank stops, or fails, at the same step.
                    status = torch.stack([loss.detach(), torch.tensor(float(stop.raised), device=device)])
                    if world > 1:
                        dist.all_reduce(status)
                    loss_sum, stop_requests = status.tolist()  # the step's one device sync
                    loss_value = loss_sum / world
                    check_finite(torch.tensor(loss_value), step + 1, ckpt_path)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    lr = scheduler.get_last_lr()[0]  # the rate this step used
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    for key in ("window", "epoch"):
                        tally[f"{key}_sum"] += loss_value
                        tally[f"{key}_steps"] += 1
                    epoch_end = step % steps_per_epoch == 0 or step == total_steps
                    if metrics is not None and args.log_every and step % args.log_every == 0 and not epoch_end:
                        metrics.log(step, epoch=epoch + 1, lr=lr,
                                    train_loss=tally["window_sum"] / tally["window_steps"])
                    if args.log_every and step % args.log_every == 0:
                        tally["window_sum"], tally["window_steps"] = 0.0, 0
                    if epoch_end:
                        last_val = evaluate(model, val_videos, val_rows, mean, std, device, args.batch_size,
                                            args.loader_workers, with_copy_last=not copy_last)
                        copy_last = copy_last or {k: v for k, v in last_val.items() if k.startswith("copy_last_")}
                        last_val.update(copy_last)
                        if metrics is not None:
                            metrics.log(step, epoch=epoch + 1, lr=lr,
                                        train_loss=tally["epoch_sum"] / tally["epoch_steps"], **last_val)
                        tally = {"window_sum": 0.0, "window_steps": 0, "epoch_sum": 0.0, "epoch_steps": 0}
                    if step % args.checkpoint_every == 0 or epoch_end or stop_requests:
                        save()
                    if stop_requests:
                        if stop.raised:
                            stop.interrupt(ckpt_path, step)
                        raise TrainingInterrupted(f"{ckpt_path}: another process received a stop signal "
                                                  f"at step {step}; checkpoint written, rerun to resume")

        if rank == 0:
            save_checkpoint(args.out, {
                "model": model.state_dict(), "model_name": args.model, "model_config": config,
                "in_shape": list(in_shape), "mean": settings["mean"], "std": settings["std"],
                "fingerprint": fp, "settings": settings, "step": step, "val_metrics": last_val,
            })
            with atomic_path(args.metrics) as tmp:
                shutil.copyfile(run_dir / "metrics.csv", tmp)
            log.info("wrote %s (step %d): val SSIM f21 %.4f (copy-last %.4f), PSNR f21 %.2f (copy-last %.2f)",
                     args.out, step, last_val["val_ssim_f21"], last_val["copy_last_ssim_f21"],
                     last_val["val_psnr_f21"], last_val["copy_last_psnr_f21"])
        return last_val
    finally:
        cleanup_distributed()


# ---------------------------------------------------------------- CLI

VERB = "train-predictor"
HELP = "train the frame predictor (SimVP or ConvLSTM) on cached frames (stage 2)"


def add_arguments(parser) -> None:
    import argparse

    from .cli import comma_list

    def int_list(text):
        try:
            return tuple(int(v) for v in comma_list(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 32,32") from None

    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--cache", nargs="+", required=True, help="frame caches (.npy) of the training splits")
    io.add_argument("--val-cache", required=True, help="frame cache of the val split")
    io.add_argument("--mean-std", required=True, help="mean_std.json of stage 1")
    io.add_argument("--out", required=True, help="model file to write (model.pt)")
    io.add_argument("--metrics", required=True, help="metrics CSV to write when training ends")
    io.add_argument("--checkpoints", required=True,
                    help="folder of per-config checkpoint folders (last.pt, live metrics.csv, tensorboard/)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_NAMES, default="simvp")
    model.add_argument("--translator", choices=TRANSLATORS, default="gsta", help="SimVP's temporal module")
    model.add_argument("--hid-s", type=int, default=16, help="SimVP spatial channels")
    model.add_argument("--hid-t", type=int, default=64, help="SimVP temporal channels")
    model.add_argument("--n-s", type=int, default=2, help="SimVP encoder/decoder blocks")
    model.add_argument("--n-t", type=int, default=4, help="SimVP translator blocks")
    model.add_argument("--drop-path", type=float, default=0.0, help="SimVP stochastic depth rate")
    model.add_argument("--patch-size", type=int, default=4, help="ConvLSTM space-to-depth patch")
    model.add_argument("--num-hidden", type=int_list, default=(32, 32), help="ConvLSTM channels per layer, e.g. 32,32")
    model.add_argument("--filter-size", type=int, default=3, help="ConvLSTM kernel size")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=4)
    opt.add_argument("--batch-size", type=int, default=8, help="global batch (split across DDP ranks)")
    opt.add_argument("--lr", type=float, default=2e-3, help="OneCycleLR peak learning rate")
    opt.add_argument("--weight-decay", type=float, default=0.05)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=200, help="steps; also at each epoch end")
    run.add_argument("--log-every", type=int, default=50, help="steps between training-loss rows (0: epoch rows only)")
    run.add_argument("--val-limit", type=int, default=0, help="validate on the first N val videos (0: all)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    run.add_argument("--loader-workers", type=int, default=2, help="processes reading batches from the caches")


def main(args) -> None:
    scores = train(args)
    print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
