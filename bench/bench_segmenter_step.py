"""Time of one Mask R-CNN training iteration on the CPU: forward, backward, optimizer step.

The batch: 4 frames of 160×240 with 4–8 objects each (ellipses and boxes of 10–50 px with
their own colours on a noisy background, drawn into a class-id mask, instances from
`mask_to_instances`), the same batch for every model. The model: R50-FPN, trainable
BatchNorm, RPN post-NMS 1000 per image, 49 classes, from random weights.

The models are timed in turns (one iteration of each, round after round) after
`--warmup` rounds, and the median of `--repeats` rounds is reported with the process CPU
time beside the wall time: on a shared machine the load drifts, and taking turns exposes
every model to the same drift.

    python bench/bench_segmenter_step.py [--threads 2] [--repeats 5] [--warmup 1]
        [--backend all|torchvision|detectron2] [--stock] [--box-batch-per-image 512]

--stock adds torchvision with its stock RPN/ROI settings (post-NMS 2000, ROIAlign sampling
ratio 2) for comparison. detectron2 (`futureseg.models.maskrcnn_detectron2`) is timed when
it is importable and skipped with a message otherwise.

Mind that at random initialisation few proposals overlap an object, so few ROIs reach the
mask head (printed as "mask ROIs"); once the RPN has learnt, up to 25% of the sampled ROIs
are positives and a step costs more, for every backend alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from futureseg.core.instances import mask_to_instances
from futureseg.segment.train_segmenter import make_optimizer

HEIGHT, WIDTH, BATCH = 160, 240, 4


def plausible_batch(seed: int = 0):
    """Frames with coloured objects on a noisy floor, and their instance targets."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for _ in range(BATCH):
        image = np.full((HEIGHT, WIDTH, 3), rng.integers(90, 140), dtype=np.float32)
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        for label in rng.choice(np.arange(1, 49), rng.integers(4, 9), replace=False):
            cy, cx = rng.integers(10, HEIGHT - 10), rng.integers(10, WIDTH - 10)
            ry, rx = rng.integers(5, 25, size=2)
            if rng.random() < 0.5:
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            mask[inside] = label
            image[inside] = rng.integers(0, 256, 3)
        image += rng.normal(0, 4, image.shape)
        instances = mask_to_instances(mask, min_pixels=4)
        images.append(torch.from_numpy(np.clip(image, 0, 255) / 255).permute(2, 0, 1).float().contiguous())
        targets.append({k: torch.from_numpy(v) for k, v in instances.items()})
    return images, targets


class Timed:
    """One backend with its optimizer and its timings."""

    def __init__(self, name, backend):
        self.name, self.backend = name, backend
        # the optimizer train-segmenter uses (fused SGD, momentum, weight decay)
        self.optimizer = make_optimizer(backend.model, lr=0.001, weight_decay=1e-4)
        self.wall, self.cpu = [], []

    def step(self, images, targets, record: bool) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        losses = self.backend.losses(images, targets)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if record:
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)

    def report(self) -> str:
        w = self.wall
        return (f"{self.name:46s} median {statistics.median(w):6.3f} s/iter wall "
                f"(min {min(w):.3f}, max {max(w):.3f}), {statistics.median(self.cpu):6.3f} s CPU, n={len(w)}")


def count_mask_rois(model) -> list[int]:
    """Registers a hook counting the ROIs entering a torchvision mask head."""
    counts = []
    model.roi_heads.mask_head.register_forward_hook(lambda m, inputs, out: counts.append(inputs[0].shape[0]))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--backend", choices=("all", "torchvision", "detectron2"), default="all")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--box-batch-per-image", type=int, default=512, help="torchvision: ROIs sampled per image")
    parser.add_argument("--stock", action="store_true", help="also time torchvision's stock RPN/ROI settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, targets = plausible_batch()
    n_objects = [len(t["labels"]) for t in targets]
    print(f"batch {BATCH}×{HEIGHT}×{WIDTH}, instances per image {n_objects}, {args.threads} threads, "
          f"torch {torch.__version__}")

    models = []
    if args.backend in ("all", "torchvision"):
        from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig, TorchvisionMaskRCNN

        settings = [(f"torchvision {args.backbone}-FPN BN, post-NMS 1000", 1000, 0)]
        if args.stock:
            settings.append((f"torchvision {args.backbone}-FPN BN, post-NMS 2000, ROI s.r. 2", 2000, 2))
        for name, post_nms, sampling in settings:
            torch.manual_seed(0)
            config = MaskRCNNConfig(backbone=args.backbone, norm="bn", min_size=HEIGHT, max_size=WIDTH,
                                    rpn_post_nms_top_n_train=post_nms, roi_sampling_ratio=sampling,
                                    box_batch_size_per_image=args.box_batch_per_image)
            timed = Timed(name, TorchvisionMaskRCNN(config))
            timed.mask_rois = count_mask_rois(timed.backend.model)
            models.append(timed)

    if args.backend in ("all", "detectron2"):
        try:
            from futureseg.models import maskrcnn_detectron2 as d2

            d2.require_detectron2()
        except Exception as exc:  # ImportError, or the backend's ConfigError naming the install
            print(f"detectron2: skipped ({str(exc).splitlines()[0]})")
        else:
            torch.manual_seed(0)
            config = d2.Detectron2MaskRCNNConfig(height=HEIGHT, width=WIDTH, norm="BN", rpn_post_nms_top_n_train=1000)
            models.append(Timed("detectron2 R50-FPN BN, post-NMS 1000", d2.Detectron2MaskRCNN(config)))

    for round_index in range(args.warmup + args.repeats):
        for timed in models:
            timed.step(images, targets, record=round_index >= args.warmup)
    for timed in models:
        rois = getattr(timed, "mask_rois", None)
        print(timed.report() + (f", mask ROIs {int(np.median(rois))}" if rois else ""))


if __name__ == "__main__":
    main()
