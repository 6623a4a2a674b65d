"""Mask R-CNN for stage 4, built from torchvision's parts and trained from scratch.

Nothing is downloaded: every part is built with `weights=None`. These choices differ from
torchvision's stock `maskrcnn_resnet50_fpn`, because the model starts from random weights
on small frames:

- Trainable normalisation in the backbone (`norm="bn"`: BatchNorm2d, or `"gn"`: GroupNorm).
  Stock torchvision freezes BatchNorm (FrozenBatchNorm2d), which only makes sense with
  ImageNet statistics to freeze; from scratch it would be a fixed affine map of random
  numbers. All five backbone stages train by default for the same reason.
- The input is never resized: `min_size`/`max_size` are the frame's own sides, so a
  160×240 frame stays 160×240 (stock settings upscale it to 800×1200, ~25× the pixels),
  and the resize step is skipped outright when it would be the identity.
- RPN keeps 1000 proposals per image after NMS in training, as detectron2 does (torchvision
  keeps 2000). The box head samples `box_batch_size_per_image` ROIs from them either way,
  but more proposals mean more positives (up to 25% of that sample), and every positive
  goes through the mask head, whose four 256-channel 3×3 convolutions on 14×14 cost
  ~0.5 GMAC per ROI: once the RPN has learnt to find the objects, positive ROIs, not the
  backbone, dominate a step. `box_batch_size_per_image` caps them too (512 → at most 128
  positives per image; 128 would cap them at 32).
  ROIAlign samples adaptively (1 point per bin side for small ROIs, as detectron2) rather
  than torchvision's fixed 2.
  Anchors are 16…256 px (stock: 32…512), since the objects of a 160×240 frame are 10–60 px
  and a 512-px anchor would not fit in the frame.
- Under a caller's bf16 autocast (training on GPU) only the backbone and FPN run in bf16;
  the RPN and ROI heads, with their anchors, proposals and box targets, run in fp32.

Backend interface (what `futureseg.segment.train_segmenter` and `futureseg.segment.segment` use; the
detectron2 backend, `futureseg.models.maskrcnn_detectron2`, provides the same):

    Backend(config)                  constructor; `config` is the backend's own small config
                                     dataclass of plain values (here MaskRCNNConfig)
    backend.config                   that config; checkpoints store `dataclasses.asdict` of
                                     it beside the backend's name, and
                                     `futureseg.segment.train_segmenter.build_backend(name, dict)`
                                     rebuilds either backend from the two
    backend.model                    the nn.Module: the caller moves it to a device and builds
                                     the optimizer from its parameters
    backend.losses(images, targets) -> dict[str, Tensor]
        Switches the model to train mode. images: list of float (3, H, W) tensors, RGB on
        the 0…1 scale, on the model's device; targets: one dict per image: boxes float32
        (N, 4) xyxy in pixel-edge coordinates (pixel (r, c) spans [c, c+1) × [r, r+1), so
        x2/y2 = last column/row + 1: the COCO/detectron2 convention, what
        `futureseg.core.instances.mask_to_instances` returns), labels int64 (N,) in
        1…num_classes-1, masks uint8 (N, H, W). N may be 0. Returns the scalar losses,
        to be summed.
    backend.predict(images) -> list of dict(masks float (N, H, W) in 0…1, labels int64 (N,)
        in 1…num_classes-1, scores float (N,)), one per image, at the input's size; runs
        in eval mode under no-grad/inference mode and leaves the model's mode as it was.
    backend.state_dict() / backend.load_state_dict(state)   the model's weights

A backend that cannot honour a config value (say, a backbone it lacks) raises ConfigError
naming the `segmenter.<key>`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from futureseg.core.errors import ConfigError

BACKEND = "torchvision"
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3")
NORMS = ("bn", "gn")
# Each backbone as five stages, stem first: `trainable_layers` counts them from the top,
# the same convention as torchvision's resnet_fpn_backbone.
N_STAGES = 5


@dataclass
class MaskRCNNConfig:
    num_classes: int = 49  # background + 48 object classes
    backbone: str = "resnet50"
    norm: str = "bn"  # bn | gn: trainable normalisation in the backbone
    trainable_layers: int = N_STAGES  # backbone stages that train, from the top; 5 = all
    min_size: int = 160  # the frame's shorter side: frames are never rescaled
    max_size: int = 240  # the frame's longer side
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, 0…1 scale
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level, strides 4…64
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000  # per FPN level
    rpn_post_nms_top_n_train: int = 1000  # per image; torchvision's default is 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    # ROIAlign samples per bin side; 0 = adaptive, ceil(ROI size / bins), detectron2's
    # default: small ROIs (most of them, in small frames) get 1 sample instead of
    # torchvision's fixed 2, ~10% of a CPU training step
    roi_sampling_ratio: int = 0
    box_head_dim: int = 1024  # width of the box head's two fully connected layers
    mask_head_channels: int = 256  # width of the mask head's four 3×3 convolutions
    box_score_thresh: float = 0.05  # detections below this are dropped before NMS
    box_detections_per_img: int = 100

    def __post_init__(self):
        # tuples, also when rebuilt from a checkpoint's lists
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        self.anchor_sizes = tuple(int(v) for v in self.anchor_sizes)
        self.aspect_ratios = tuple(float(v) for v in self.aspect_ratios)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MaskRCNNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"segmenter model config: unknown keys {unknown}")
        return cls(**values)

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"segmenter.backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.norm not in NORMS:
            raise ConfigError(f"segmenter.norm: {self.norm!r} is not one of {', '.join(NORMS)}")
        if not 0 <= self.trainable_layers <= N_STAGES:
            raise ConfigError(f"segmenter.trainable_layers: {self.trainable_layers} is outside 0…{N_STAGES}")
        if self.num_classes < 2:
            raise ConfigError(f"segmenter.num_classes: {self.num_classes}, needs background + at least one class")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"segmenter.anchor_sizes: {len(self.anchor_sizes)} sizes, expected 5 (one per FPN level)")
        for key in ("min_size", "max_size", "fpn_channels", "box_head_dim", "mask_head_channels",
                    "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "box_batch_size_per_image",
                    "box_detections_per_img"):
            if getattr(self, key) < 1:
                raise ConfigError(f"segmenter.{key}: {getattr(self, key)}, must be at least 1")
        if self.roi_sampling_ratio < 0:
            raise ConfigError(f"segmenter.roi_sampling_ratio: {self.roi_sampling_ratio}, must be 0 (adaptive) or more")
        if self.min_size > self.max_size:
            raise ConfigError(f"segmenter.min_size: {self.min_size} exceeds max_size {self.max_size}")


def norm_layer(kind: str):
    """The backbone's normalisation. GroupNorm uses 32 groups where the width allows
    (MobileNet's 16/24/40-channel layers get gcd(32, width))."""
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)


def _resnet_body(config: MaskRCNNConfig):
    from torchvision.models import resnet

    make = getattr(resnet, config.backbone)
    # zero_init_residual: each residual branch starts as identity, the from-scratch
    # recipe of Goyal et al. that makes deep ResNets train without a warm start
    net = make(weights=None, norm_layer=norm_layer(config.norm), zero_init_residual=True)
    del net.fc, net.avgpool
    stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    returned = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    return net, stages, returned


def _mobilenet_body(config: MaskRCNNConfig):
    from torchvision.models import mobilenet_v3_large

    net = mobilenet_v3_large(weights=None, norm_layer=norm_layer(config.norm)).features
    # the last block of each stride (4, 8, 16, 32): torchvision's own extractor returns only
    # strides 16 and 32, too coarse for 10-px objects
    stages = [["0"], ["1", "2", "3"], ["4", "5", "6"], [str(i) for i in range(7, 13)], [str(i) for i in range(13, 17)]]
    returned = {"3": "0", "6": "1", "12": "2", "16": "3"}
    return net, stages, returned


def build_backbone(config: MaskRCNNConfig) -> nn.Module:
    """Backbone + FPN: four feature maps (strides 4…32) plus a max-pooled fifth (stride 64)."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    net, stages, returned = (_mobilenet_body if config.backbone == "mobilenet_v3" else _resnet_body)(config)
    trained = {name for stage in stages[N_STAGES - config.trainable_layers :] for name in stage}
    for name, parameter in net.named_parameters():
        if name.split(".")[0] not in trained:
            parameter.requires_grad_(False)
    # the widths of the returned maps, measured rather than tabulated per architecture
    probe = IntermediateLayerGetter(net, return_layers=returned).eval()
    with torch.no_grad():
        channels = [f.shape[1] for f in probe(torch.zeros(1, 3, 64, 64)).values()]
    return _mixed_precision(BackboneWithFPN)(net, returned, channels, config.fpn_channels,
                                             extra_blocks=LastLevelMaxPool())


def _mixed_precision(backbone_class):
    """The backbone + FPN under the autocast its caller asked for (`MaskRCNN.forward` hands
    it over in `autocast`, since the model turns autocast off around it), its feature maps
    returned in fp32 for the box math of the heads."""

    class Backbone(backbone_class):
        autocast: tuple[bool, torch.dtype] = (False, torch.float32)  # (enabled, dtype)

        def forward(self, x):
            enabled, dtype = self.autocast
            with torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
                features = super().forward(x)
            return OrderedDict((name, f.float()) for name, f in features.items())

    return Backbone


def _identity_resize_skipped(transform_class):
    """torchvision's GeneralizedRCNNTransform, except that resizing to the size an image
    already has is skipped (torchvision runs a bilinear interpolate, and one per target
    mask, even at scale 1)."""

    class Transform(transform_class):
        def resize(self, image, target=None):
            h, w = image.shape[-2:]
            size = self.min_size[-1]
            if self.fixed_size is None and min(size / min(h, w), self.max_size / max(h, w)) == 1.0:
                return image, target
            return super().resize(image, target)

    return Transform


def _fp32_boxes(model_class):
    """Mask R-CNN whose bf16 autocast, when its caller runs it under one, covers the backbone
    and FPN alone. Under autocast the whole model would run in bf16: anchors take the
    features' dtype, proposals the RPN head's, so anchors, proposals, regression targets and
    decoded boxes would all be bf16, whose 8 bits of mantissa put a box edge at 200 px on a
    1-px grid. The RPN and ROI heads run in fp32, as detectron2 and torchvision's AMP
    recipes keep box math; the state dict is MaskRCNN's own."""

    class Model(model_class):
        def forward(self, images, targets=None):
            device = images[0].device.type if len(images) else "cpu"
            self.backbone.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
            with torch.autocast(device, enabled=False):
                return super().forward(images, targets)

    return Model


def build_model(config: MaskRCNNConfig) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign

    config.validate()
    backbone = build_backbone(config)
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in config.anchor_sizes),
        aspect_ratios=(config.aspect_ratios,) * len(config.anchor_sizes),
    )
    c = config.fpn_channels
    model = _fp32_boxes(MaskRCNN)(
        backbone,
        num_classes=None,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, config.roi_sampling_ratio),
        box_head=TwoMLPHead(c * 7 * 7, config.box_head_dim),
        box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.box_score_thresh,
        box_detections_per_img=config.box_detections_per_img,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, config.roi_sampling_ratio),
        mask_head=MaskRCNNHeads(c, (config.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(config.mask_head_channels, config.mask_head_channels, config.num_classes),
    )
    old = model.transform
    model.transform = _identity_resize_skipped(GeneralizedRCNNTransform)(
        old.min_size, old.max_size, old.image_mean, old.image_std, size_divisible=old.size_divisible
    )
    return model


class TorchvisionMaskRCNN:
    """The torchvision backend (interface: this module's docstring)."""

    name = BACKEND

    def __init__(self, config: MaskRCNNConfig):
        self.config = config
        self.model = build_model(config)

    def losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.model.train()
        targets = [
            {"boxes": t["boxes"].float(), "labels": t["labels"].long(), "masks": t["masks"]} for t in targets
        ]
        return self.model(images, targets)

    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                outputs = self.model(images)
        finally:
            self.model.train(was_training)
        return [
            {"masks": o["masks"][:, 0], "labels": o["labels"], "scores": o["scores"]} for o in outputs
        ]

    def state_dict(self) -> OrderedDict:
        return self.model.state_dict()

    def load_state_dict(self, state) -> None:
        self.model.load_state_dict(state)
