"""Training speed of the U-Net segmenter on the CPU, and the val oracle IoU it reaches in a
fixed wall-clock budget, beside faster ways to run it and a ResNet-18 U-Net (issue: a faster
segmenter on CPU).

    python bench/bench_segmenter.py                                   # both parts, demo data
    python bench/bench_segmenter.py --part speed --size 160x240
    python bench/bench_segmenter.py --part quality --budget-s 480 --quality-variants ours,smp
    python bench/bench_segmenter.py --variants ours,ours+bf16 --repeats 30
    python bench/bench_segmenter.py --part quality --quality-variants ours,enet --budget-s 190   # issue 28
    python bench/bench_segmenter.py --part temporal --root resources/synthetic-quality --budget-s 240 --parallel

Variants are "+"-joined tokens: a model, `ours` (futureseg.models.unet.UNet, base 16,
depth 4: the demo's) or `smp` (segmentation_models_pytorch.Unet, ResNet-18 encoder of
depth 4 from random weights, decoder (128, 64, 32, 16); its input normalised with the same
mean/std and reflect-padded to a multiple of 16 as ours pads, its logits cropped back)
or `enet` (futureseg.models.enet.ENet at the paper's width 16, `enetN` at width N),
then any of `cl` (channels_last weights and inputs), `bf16` (torch.autocast("cpu",
bfloat16); weights, optimiser and loss stay fp32) and `compile` (torch.compile of the
model, default inductor; its first steps are timed apart as the compile time, and a
failure is printed and the variant dropped) and `lrX` (peak learning rate X instead of
0.005, e.g. enet+lr0.01).

The recipe is train-segmenter's U-Net path: batch 16 of the training set (`--data`:
images.npy, masks.npy), flips and brightness x U(0.8, 1.2) (`train_segmenter.augment`),
AdamW lr 0.005 weight decay 0.01 under OneCycleLR, cross-entropy with background weight 0.2
(`dense.dense_losses`), `--threads` torch threads (2, the demo's).

Part `speed`: the time of one training step (forward, backward, AdamW step) on one fixed
augmented batch (`--size` resizes it: bilinear frames, nearest masks), in turns, one step of
every variant per round, so that the drift of a shared machine's load reaches each alike;
median (and quartiles) of `--repeats` rounds after `--warmup` rounds.

Part `quality`: each variant trains for `--budget-s` seconds of its own wall time (batch
reading and augmentation included, a compile included), the variants again in turns (the
next step goes to the one that has used the least of its budget). The one-cycle schedule
follows the fraction of the budget used, not a step count, so every variant ends its cycle
when its time is up. `--clock cpu` counts the process's CPU seconds per thread instead of
wall seconds: near the wall time of an unshared machine, less swayed by other jobs. Then
the model (fp32, eval mode, plain argmax) segments the true frame 21 of every val video
(`--root`) and `dense.macro_iou` scores it: val oracle IoU, what train-segmenter's
validation reports; with `--object-classifier` (a model file of train-object-classifier
on the same training set) also the IoU of those masks with each object repainted by the
classifier, what the pipeline's oracle is (segmenter.object_class: classifier).
`--quality-variants auto`: ours, smp, and the fastest other variant of ours in the speed
part when it is more than 1.1x as fast as ours.

Part `temporal` (issue 28, items 2-3): the pseudo-labels of val's frames 0…10, per-frame
U-Net against the recurrent segmenter (models/temporal_segmenter.py) with no consistency
loss and with each loss on, at equal CPU budget. Every arm trains on the same data, train's
true frames and masks read from `--root` (`train_segmenter.ClipSet`: flips and brightness,
one draw per clip), `--budget-s` process CPU seconds each (one thread each: `--threads`
is ignored; run alone, or beside others: the CPU clock does not count their time), one
arm after the other or, with `--parallel`, each in its own process at once. Arms
(`--temporal-arms`, comma-separated): `perframe` (the demo's U-Net, base 16 depth 4, on
single frames, 16 a step), `convgru` / `convlstm` (the same U-Net with the cell, clips of
`--clip-frames`, 16 // clip_frames clips a step) and `convgru+change` / `+smoothing` /
`+warp` (one loss on at `--loss-weight`). The same AdamW and time-driven one-cycle as part
`quality`. Then each segments val's frames 0…10 as sequences (`Segmenter.sequence_masks`)
and `core.dense.sequence_scores` gives the IoU against the true masks 0…10 and the temporal IoU
beside the truth's, of the plain argmax, of each object voted to one class then each track
(`--object-vote --track-vote`), and, with `--object-classifier`, of the classifier's classes
then the track vote (the pipeline's pseudo-labels, segmenter.object_class: classifier).
`--init-from <scratch>/perframe.pt` starts every arm from an earlier run's per-frame U-Net
(the recurrent arms' cells fresh): fine-tuning at equal CPU instead of training from scratch.

torch.compile's first step is ~70 s on 2 cores with a cold inductor cache and ~4 s once
the cache (/tmp/torchinductor_$USER) holds the graphs; the figure printed is whichever
this run met.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core import data, dense
from futureseg.core.training import epoch_order
from futureseg.models.enet import ENet, ENetConfig
from futureseg.models.unet import UNet, UNetConfig
from futureseg.segment.train_segmenter import augment

DEMO = Path("/tmp/democlone")
BATCH, LR, WEIGHT_DECAY, BACKGROUND_WEIGHT = 16, 0.005, 0.01, 0.2
SCHEDULE_POINTS = 100_000  # resolution of the time-driven one-cycle schedule
MODELS, OPTIONS = ("ours", "smp", "enet"), ("cl", "bf16", "compile")
DEFAULT_VARIANTS = "ours,ours+cl,ours+bf16,ours+compile,smp,smp+cl"


class SmpUNet(nn.Module):
    """segmentation_models_pytorch's U-Net behind our interface: 0…1 input, normalised here,
    reflect-padded to a multiple of 16, logits cropped back to the input's size."""

    multiple = 16

    def __init__(self, mean01, std01):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder_name="resnet18", encoder_weights=None, encoder_depth=4,
                            decoder_channels=(128, 64, 32, 16), in_channels=3, classes=data.NUM_CLASSES)
        self.register_buffer("mean", torch.tensor(mean01).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std01).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        x = (x - self.mean) / self.std
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(pad_h, pad_w) else "replicate")
        return self.net(x)[..., :height, :width]


def parse_variant(name: str) -> tuple[str, set[str]]:
    model, *options = name.split("+")

    def known(option):
        if option.startswith("lr"):
            try:
                return float(option[2:]) > 0
            except ValueError:
                return False
        return option in OPTIONS

    width = model[4:] if model.startswith("enet") else ""
    if (model not in MODELS and not (width.isdigit() and int(width) > 3)) or not all(map(known, options)):
        raise SystemExit(f"{name!r}: a variant is one of {'|'.join(MODELS)} (enetN: ENet of width N) "
                         f"then +{'/+'.join(OPTIONS)}/+lrX options")
    return model, set(options)


class Variant:
    """One model with its optimiser and schedule; `step` trains on one batch and returns
    its wall seconds."""

    def __init__(self, name: str, mean01, std01, seed: int = 0):
        self.name = name
        model, self.options = parse_variant(name)
        torch.manual_seed(seed)
        if model == "ours":
            self.net = UNet(UNetConfig(in_channels=3, num_classes=data.NUM_CLASSES, base_channels=16, depth=4,
                                       image_mean=tuple(mean01), image_std=tuple(std01)))
        elif model.startswith("enet"):
            self.net = ENet(ENetConfig(in_channels=3, num_classes=data.NUM_CLASSES, width=int(model[4:] or 16),
                                       image_mean=tuple(mean01), image_std=tuple(std01)))
        else:
            self.net = SmpUNet(mean01, std01)
        self.net.train()
        self.memory_format = torch.channels_last if "cl" in self.options else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.forward = torch.compile(self.net) if "compile" in self.options else self.net
        lr = next((float(o[2:]) for o in self.options if o.startswith("lr")), LR)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=SCHEDULE_POINTS)
        self.steps = 0
        self.first_steps_s = []  # the first steps' times (a compile's cost lies in them)

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in self.options)

    def set_progress(self, fraction: float) -> None:
        """The one-cycle rate (and AdamW beta1) at `fraction` of the run."""
        point = min(SCHEDULE_POINTS - 1, max(0, int(fraction * (SCHEDULE_POINTS - 1))))
        self.scheduler.last_epoch = point - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            self.scheduler.step()

    def step(self, x, y) -> float:
        started, cpu = time.perf_counter(), time.process_time()
        x = x.contiguous(memory_format=self.memory_format)
        with self.autocast():
            logits = self.forward(x)
        loss = dense.dense_losses(logits.float(), y, 0.0, BACKGROUND_WEIGHT)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        self.last_loss = float(loss.detach())
        seconds = time.perf_counter() - started
        self.last_cpu_s = time.process_time() - cpu
        if len(self.first_steps_s) < 3:
            self.first_steps_s.append(seconds)
        return seconds

    def predict(self, frames: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Plain argmax class ids of uint8 frames (N, H, W, 3), fp32, eval mode (the
        uncompiled module: no eval-mode recompile)."""
        self.net.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                x = torch.from_numpy(np.array(frames[start : start + batch_size])).permute(0, 3, 1, 2).float().div_(255.0)
                out.append(self.net(x.contiguous(memory_format=self.memory_format)).argmax(1).to(torch.uint8).numpy())
        self.net.train()
        return np.concatenate(out)


def batch_tensors(images, masks, indices, seed: int, epoch: int, size=None):
    """An augmented batch as train_unet builds it: x float (B, 3, H, W) 0…1, y int64 (B, H, W)."""
    pairs = [augment(np.asarray(images[i]), np.asarray(masks[i]), np.random.default_rng((seed, epoch, i)))
             for i in indices]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float().div_(255.0)
    y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).contiguous()
        y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return x, y


def build(names, mean01, std01):
    variants = []
    for name in names:
        try:
            variants.append(Variant(name, mean01, std01))
        except Exception as exc:  # smp missing, say
            print(f"{name}: cannot build ({type(exc).__name__}: {exc}); skipped")
    return variants


def first_step(variant, x, y) -> bool:
    """The first step (a compile happens here); False, with the error printed, if it fails."""
    try:
        variant.step(x, y)
        return True
    except Exception as exc:
        print(f"{variant.name}: first training step failed, skipped: {type(exc).__name__}: {exc}")
        traceback.print_exc(limit=3)
        return False


def speed(args, names, images, masks, mean01, std01) -> dict:
    size = args.size or images.shape[1:3]
    x, y = batch_tensors(images, masks, range(BATCH), args.seed, 0, size)
    print(f"\n== step time: batch {BATCH} at {size[0]}x{size[1]}, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.repeats} rounds, one step of each variant per round")
    variants = build(names, mean01, std01)
    variants = [v for v in variants if first_step(v, x, y)]
    for v in variants:
        v.compile_s = v.first_steps_s[0]
    times = {v.name: [] for v in variants}
    cpu = {v.name: [] for v in variants}
    for round_ in range(args.warmup + args.repeats):
        for v in variants:
            seconds = v.step(x, y)
            if round_ >= args.warmup:
                times[v.name].append(seconds)
                cpu[v.name].append(v.last_cpu_s)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("ours")
    print(f"{'variant':16s} {'params':>8s} {'median s':>9s} {'q1':>7s} {'q3':>7s} {'vs ours':>8s} {'cpu s':>6s} {'first step s':>13s}")
    for v in variants:
        q1, _, q3 = statistics.quantiles(times[v.name], n=4)
        ratio = f"{base / medians[v.name]:7.2f}x" if base else "      -"
        print(f"{v.name:16s} {v.params / 1e6:7.2f}M {medians[v.name]:9.3f} {q1:7.3f} {q3:7.3f} {ratio:>8s} "
              f"{statistics.median(cpu[v.name]):6.2f} {v.compile_s:13.1f}")
    print("(median, q1, q3: wall seconds a step; vs ours: ours' median over the variant's; cpu s: the median step's "
          "process CPU time, both threads; first step: includes a compile, the first-call overheads)")
    return medians


def quality(args, names, images, masks, mean01, std01) -> None:
    videos = data.list_videos(args.root, "val")
    frames = np.stack([data.read_frames(v, [data.TARGET_FRAME])[0] for v in videos])
    truth = np.stack([data.read_mask(v, frames.shape[1:3])[data.TARGET_FRAME] for v in videos])
    if frames.shape[1:3] != images.shape[1:3]:
        raise SystemExit(f"val frames are {frames.shape[1:3]}, training frames {images.shape[1:3]}")
    print(f"\n== val oracle IoU after {args.budget_s:.0f} s ({args.clock} clock) of training each ({len(images)} training frames, "
          f"{len(videos)} val videos, frame {data.TARGET_FRAME}), variants in turns")
    if args.clock == "wall":
        clock = time.perf_counter
    else:  # the process's CPU seconds per thread: about the wall time of an unshared machine
        threads = torch.get_num_threads()
        clock = lambda: time.process_time() / threads  # noqa: E731
    variants = build(names, mean01, std01)
    state = {}
    for v in variants:
        order = [b for e in range(1000) for b in ((e, batch) for batch in epoch_order(len(images), BATCH, args.seed, e))]
        state[v.name] = {"order": iter(order), "used": 0.0, "epoch": 0, "failed": False}
    live = list(variants)
    while live:
        v = min(live, key=lambda v: state[v.name]["used"])
        s = state[v.name]
        started = clock()
        epoch, indices = next(s["order"])
        x, y = batch_tensors(images, masks, indices, args.seed, epoch)
        v.set_progress(s["used"] / args.budget_s)
        if v.steps == 0:
            if not first_step(v, x, y):
                live.remove(v)
                s["failed"] = True
                continue
        else:
            v.step(x, y)
        s["used"] += clock() - started
        s["epoch"] = epoch
        if not math.isfinite(v.last_loss):
            print(f"{v.name}: loss {v.last_loss} at step {v.steps}; stopped")
            live.remove(v)
        elif s["used"] >= args.budget_s:
            live.remove(v)
    classifier = None
    if args.object_classifier:
        from futureseg.models import object_classifier

        classifier = object_classifier.load(args.object_classifier)[0].eval()
    print(f"{'variant':16s} {'steps':>6s} {'epochs':>7s} {'s/step':>7s} {'first step s':>13s} {'last loss':>10s} "
          f"{'val IoU':>8s}{' +classifier' if classifier else ''}")
    for v in variants:
        s = state[v.name]
        if s["failed"]:
            continue
        masks = v.predict(frames)
        iou = dense.macro_iou(masks, truth)
        repainted = ""
        if classifier is not None:
            from futureseg.models.object_classifier import repaint

            repainted = f" {dense.macro_iou(repaint(classifier, frames, masks, torch.device('cpu')), truth):11.4f}"
        print(f"{v.name:16s} {v.steps:6d} {v.steps * BATCH / len(images):7.1f} {s['used'] / v.steps:7.3f} "
              f"{v.first_steps_s[0]:13.1f} {v.last_loss:10.4f} {iou:8.4f}{repainted}")


# ---------------------------------------------------------------- part temporal

TEMPORAL_ARMS = "perframe,convgru,convgru+change,convgru+smoothing,convgru+warp"


def temporal_arm(name: str, root: str, mean01, std01, budget_s: float, clip_frames: int, loss_weight: float,
                 seed: int, init_from: str | None = None) -> dict:
    """Train one arm for `budget_s` CPU seconds (one thread); its val sequence scores.
    `init_from`: a per-frame arm's weights (`<scratch>/perframe.pt`) to start from, the
    U-Net's for a per-frame arm, the recurrent segmenter's U-Net for the others (its cell
    starts fresh)."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from futureseg.models.segmenters import Segmenter
    from futureseg.models.temporal_segmenter import TemporalSegmenter, TemporalSegmenterConfig, clip_flows
    from futureseg.segment.train_segmenter import ClipSet, temporal_losses

    torch.set_num_threads(1)
    cell, *losses = name.split("+")
    weights = {f"{loss}_weight": (loss_weight if loss in losses else 0.0) for loss in ("change", "smoothing", "warp")}
    args = SimpleNamespace(soft_iou_weight=0.0, background_weight=BACKGROUND_WEIGHT, **weights)
    frames_per_clip = 1 if cell == "perframe" else clip_frames
    clips = ClipSet(root, frames_per_clip, seed)
    per_step = max(1, BATCH // frames_per_clip)
    torch.manual_seed(seed)
    unet = UNetConfig(in_channels=3, num_classes=data.NUM_CLASSES, base_channels=16, depth=4,
                      image_mean=tuple(mean01), image_std=tuple(std01))
    if cell == "perframe":
        net = UNet(unet)
        segmenter = Segmenter("unet", net)
    else:
        net = TemporalSegmenter(TemporalSegmenterConfig(pixel_model="unet", pixel_config=asdict(unet), cell=cell))
        segmenter = Segmenter("unet", net, temporal=cell)
    if init_from:
        start = torch.load(init_from, weights_only=True)["weights"]
        (net if cell == "perframe" else net.pixel).load_state_dict(start)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=SCHEDULE_POINTS)
    used, steps, epoch, last = 0.0, 0, 0, float("nan")
    order = iter(())
    while used < budget_s:
        started = time.process_time()
        batch = next(order, None)
        if batch is None:
            order = iter(epoch_order(len(clips), per_step, seed, epoch))
            epoch += 1
            batch = next(order)
        pairs = [clips.clip(epoch - 1, i) for i in batch]
        flows = None
        if weights["warp_weight"]:
            computed = [clip_flows(f) for f, _ in pairs]
            flows = (torch.from_numpy(np.stack([f for f, _ in computed])), torch.from_numpy(np.stack([v for _, v in computed])))
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 1, 4, 2, 3).float().div_(255.0)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        point = min(SCHEDULE_POINTS - 1, int(used / budget_s * (SCHEDULE_POINTS - 1)))
        scheduler.last_epoch = point - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.step()
        logits = net(x[:, 0]).unsqueeze(1) if cell == "perframe" else net(x)
        loss = temporal_losses(logits, y, flows, args)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, last = steps + 1, float(loss.detach())
        used += time.process_time() - started
        if not math.isfinite(last):
            break
    return {"arm": name, "steps": steps, "frames_seen": steps * per_step * frames_per_clip, "cpu_s": used,
            "last_loss": last, "segmenter": segmenter}


def temporal_scores(segmenter, frames, truth, classifier) -> dict:
    """{"argmax" | "vote" | "classifier": sequence_scores} of the val sequences' pseudo-labels."""
    from futureseg.core.dense import sequence_scores
    from futureseg.segment.pseudo_label import vote
    from futureseg.segment.segment import one_class_per_object

    cpu = torch.device("cpu")
    n, steps, height, width = truth.shape
    raw = segmenter.sequence_masks(frames, cpu, 64)
    flat = frames.reshape(-1, height, width, 3)
    out = {"argmax": sequence_scores([(raw, truth)])}
    voted = one_class_per_object(raw.reshape(-1, height, width), flat, True, None, cpu, 64).reshape(raw.shape)
    out["vote"] = sequence_scores([(np.stack([vote(v) for v in voted]), truth)])
    if classifier is not None:
        painted = one_class_per_object(raw.reshape(-1, height, width), flat, False, classifier, cpu, 64).reshape(raw.shape)
        out["classifier"] = sequence_scores([(np.stack([vote(v) for v in painted]), truth)])
    return out


def _temporal_worker(job):
    name, args, mean01, std01 = job
    result = temporal_arm(name, args.root, mean01, std01, args.budget_s, args.clip_frames, args.loss_weight, args.seed,
                          args.init_from)
    torch.save({"weights": result["segmenter"].net.state_dict()}, Path(args.scratch) / f"{name}.pt")
    return {k: v for k, v in result.items() if k != "segmenter"}


def temporal(args, mean01, std01) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from futureseg.models.segmenters import Segmenter
    from futureseg.models.temporal_segmenter import TemporalSegmenter, TemporalSegmenterConfig

    videos = data.list_videos(args.root, "val")
    frames = np.stack([data.read_frames(v, range(data.N_INPUT)) for v in videos])
    truth = np.stack([data.read_mask(v, frames.shape[2:4])[: data.N_INPUT] for v in videos])
    names = args.temporal_arms.split(",")
    print(f"\n== pseudo-labels of val frames 0…10 ({len(videos)} videos): arms trained {args.budget_s:.0f} CPU s each "
          f"(one thread), clips of {args.clip_frames}, loss weight {args.loss_weight}"
          + (f", from {args.init_from}" if args.init_from else ""))
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    jobs = [(name, args, mean01, std01) for name in names]
    if args.parallel:
        with ProcessPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(_temporal_worker, jobs))
    else:
        results = [_temporal_worker(job) for job in jobs]
    classifier = None
    if args.object_classifier:
        from futureseg.models import object_classifier

        classifier = object_classifier.load(args.object_classifier)[0].eval()
    torch.set_num_threads(args.threads)
    columns = ["argmax", "vote"] + (["classifier"] if classifier is not None else [])
    header = " ".join(f"{c + ' IoU':>15s} {c + ' tIoU':>15s}" for c in columns)
    print(f"{'arm':20s} {'steps':>6s} {'frames':>7s} {'cpu s':>6s} {'last loss':>9s} {header}")
    true_tiou = None
    for result in results:
        name = result["arm"]
        unet = UNetConfig(in_channels=3, num_classes=data.NUM_CLASSES, base_channels=16, depth=4,
                          image_mean=tuple(mean01), image_std=tuple(std01))
        cell = name.split("+")[0]
        if cell == "perframe":
            segmenter = Segmenter("unet", UNet(unet))
        else:
            from dataclasses import asdict

            segmenter = Segmenter("unet", TemporalSegmenter(TemporalSegmenterConfig(
                pixel_model="unet", pixel_config=asdict(unet), cell=cell)), temporal=cell)
        segmenter.net.load_state_dict(torch.load(Path(args.scratch) / f"{name}.pt", weights_only=True)["weights"])
        scores = temporal_scores(segmenter, frames, truth, classifier)
        true_tiou = scores["argmax"]["true_temporal_iou"]
        cells = " ".join(f"{scores[c]['iou']:15.4f} {scores[c]['temporal_iou']:15.4f}" for c in columns)
        print(f"{name:20s} {result['steps']:6d} {result['frames_seen']:7d} {result['cpu_s']:6.0f} {result['last_loss']:9.4f} "
              f"{cells}", flush=True)
    print(f"{'truth':20s} {'':6s} {'':7s} {'':6s} {'':9s} " + " ".join(f"{1.0:15.4f} {true_tiou:15.4f}" for _ in columns))
    print("(IoU: macro IoU of val frames 0…10 against their true masks; tIoU: temporal IoU, the mean IoU of "
          "consecutive frames' masks; truth: the true masks' own; vote: each object one class, then each track "
          "(--object-vote --track-vote); classifier: the object classifier's classes, then the track vote)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "quality", "both", "temporal"), default="both")
    parser.add_argument("--temporal-arms", default=TEMPORAL_ARMS, help="part temporal: comma-separated arms")
    parser.add_argument("--clip-frames", type=int, default=5, help="part temporal: frames per training clip")
    parser.add_argument("--loss-weight", type=float, default=1.0, help="part temporal: the weight of the one loss on")
    parser.add_argument("--parallel", action="store_true", help="part temporal: every arm in its own process at once")
    parser.add_argument("--scratch", default="/tmp/bench_temporal", help="part temporal: the arms' weights")
    parser.add_argument("--init-from", help="part temporal: every arm starts from this per-frame arm's weights "
                        "(<scratch>/perframe.pt of an earlier run; the recurrent arms' cells start fresh)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated, for the speed part")
    parser.add_argument("--quality-variants", default="auto", help="comma-separated, or auto (ours, smp, the fastest of ours)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="wall seconds of training per variant (demo: 240)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="the budget's clock: wall seconds, or process CPU seconds / threads (less "
                             "sensitive to other jobs on a shared machine)")
    parser.add_argument("--size", help="HxW of the speed part's batch (default: the data's)")
    parser.add_argument("--data", default=str(DEMO / "results/segframes"), help="folder of images.npy and masks.npy")
    parser.add_argument("--root", default=str(DEMO / "resources/synthetic"), help="dataset root (val frame 21 and masks)")
    parser.add_argument("--mean-std", default=str(DEMO / "results/data/mean_std.json"),
                        help="stage 1's mean_std.json (missing: ImageNet's)")
    parser.add_argument("--object-classifier", help="train-object-classifier's model file: also the IoU with each "
                        "object repainted by it (the pipeline's oracle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.size:
        args.size = tuple(int(v) for v in args.size.lower().split("x"))
    for name in args.variants.split(",") + [n for n in args.quality_variants.split(",") if n != "auto"]:
        parse_variant(name)

    torch.set_num_threads(args.threads)
    if args.part == "temporal":  # its own data: train's and val's videos under --root
        mean01, std01 = dense.normalisation(args.mean_std if Path(args.mean_std).is_file() else None)
        print(f"torch {torch.__version__}; {args.root}; mean {np.round(mean01, 3).tolist()} std {np.round(std01, 3).tolist()}; "
              f"load average {os.getloadavg()[0]:.2f}")
        temporal(args, mean01, std01)
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0
    images = np.load(Path(args.data) / "images.npy", mmap_mode="r")
    masks = np.load(Path(args.data) / "masks.npy", mmap_mode="r")
    mean01, std01 = dense.normalisation(args.mean_std if Path(args.mean_std).is_file() else None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.data}: {images.shape[0]} frames of "
          f"{images.shape[1]}x{images.shape[2]}; mean {np.round(mean01, 3).tolist()} std {np.round(std01, 3).tolist()}")

    print(f"load average {os.getloadavg()[0]:.2f} (this machine's other jobs slow every variant alike, in turns)")
    medians = {}
    if args.part in ("speed", "both"):
        medians = speed(args, args.variants.split(","), images, masks, mean01, std01)
    if args.part in ("quality", "both"):
        names = args.quality_variants.split(",")
        if names == ["auto"]:
            names = ["ours", "smp"]
            ours = {n: t for n, t in medians.items() if n.startswith("ours+")}
            if ours and "ours" in medians:
                fastest = min(ours, key=ours.get)
                if ours[fastest] < medians["ours"] / 1.1:
                    names.insert(1, fastest)
        quality(args, names, images, masks, mean01, std01)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
