"""Mask R-CNN R50-FPN from detectron2, behind the same interface as the torchvision backend.

`segmenter.maskrcnn.backend: detectron2` selects it. detectron2 is an optional dependency that
builds from source (see envs/detectron2.yaml), so it is imported lazily, inside the
functions that need it: importing this module never fails, and building the backend
without detectron2 raises a ConfigError that says how to install it.

The model starts from the COCO Mask R-CNN R50-FPN config file shipped inside detectron2
(read by path, because detectron2's `model_zoo` needs `pkg_resources`), changed for
training from scratch on small frames:

- no weights (`MODEL.WEIGHTS = ""`), and by default nothing frozen
  (`BACKBONE.FREEZE_AT = 0`): the default freezes the stem and res2, which with random
  weights would stay random;
- BatchNorm (or GroupNorm) in the ResNet and the FPN: the default FrozenBN is a fixed
  affine map meant for pretrained statistics; from random weights it diverges to NaN
  within a few iterations. Each residual branch starts at zero (as in the torchvision
  backend), and the stride sits in the 3×3 conv (`STRIDE_IN_1X1 = False`);
- inputs normalised by the dataset's mean/std when given, else ImageNet's (detectron2's
  std of 1 suits only its caffe2 pretrained weights);
- 48 classes (detectron2 has no background class: our labels 1…48 are its 0…47);
- bitmask instance masks, and resize bounds equal to the frame size so that detectron2's
  DatasetMapper keeps frames at their size (the model itself never resizes).

`Detectron2MaskRCNN.losses` / `.predict` take and return the torchvision convention (RGB
images in 0…1, label 0 = background); the conversion to detectron2's inputs (0…255 in
`INPUT.FORMAT` channel order, `Instances` with Boxes/BitMasks) happens here.

`register_training_set` puts the segmentation training set (stage 3's folder) into
detectron2's DatasetCatalog, for users who want detectron2's own data loading and
training loop; `ArrayDatasetMapper` is the DatasetMapper that reads those records' pixels
from `images.npy`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from futureseg.core.data import NUM_CLASSES
from futureseg.core.errors import ConfigError, DataError, FuturesegError
from futureseg.models.checks import is_int

BACKEND = "detectron2"
INSTALL_HINT = (
    "it builds from source: `pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'` into an environment that already "
    "has torch, or create the conda environment in envs/detectron2.yaml"
)
# The config file inside the installed detectron2 package (detectron2/model_zoo/configs/);
# the other ResNet depths differ from it only in MODEL.RESNETS.DEPTH (and RES2_OUT_CHANNELS).
BASE_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
# ImageNet statistics, RGB on the 0…255 scale: the normalisation when no mean_std is given.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
NORMS = ("BN", "GN")
DEPTHS = (18, 34, 50, 101)
N_STAGES = 5  # stem + res2…res5, the unit of `trainable_layers`


def require_detectron2():
    """The detectron2 package, or a ConfigError saying it is missing and how to install it."""
    try:
        detectron2 = importlib.import_module("detectron2")
        # The submodules this backend uses; a broken install (a dependency such as fvcore
        # or pycocotools missing) fails here rather than in the middle of training.
        for name in ("config", "modeling", "structures", "data", "utils.events"):
            importlib.import_module(f"detectron2.{name}")
    except ImportError as exc:
        raise ConfigError(
            f"segmenter.backend: detectron2 is not installed ({INSTALL_HINT}); import failed: {exc}"
        ) from exc
    return detectron2


@dataclass
class Detectron2MaskRCNNConfig:
    """The model's settings, plain values (a checkpoint stores `asdict` of it). Where a
    setting is also in the torchvision backend's MaskRCNNConfig it has the same meaning and
    the same default, so that by default both backends build the same model; that includes
    the anchors, 16…256 px rather than detectron2's COCO 32…512 (a 512-px anchor does not
    fit in a 160×240 frame, whose objects are 10–60 px)."""

    height: int  # frame size: detectron2's DatasetMapper resize bounds keep frames at it
    width: int
    num_classes: int = 49  # with background, as in futureseg.core.data.NUM_CLASSES: detectron2 gets 48
    norm: str = "BN"  # "BN" | "GN" (either case), in the ResNet and the FPN
    depth: int = 50  # ResNet depth of the R-FPN backbone: 18, 34, 50, 101
    trainable_layers: int = N_STAGES  # ResNet stages that train, from the top; 5 = all
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per FPN level p2…p6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000  # per FPN level
    rpn_post_nms_top_n_train: int = 1000  # per image
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_head_dim: int = 1024  # width of the box head's two fully connected layers
    mask_head_channels: int = 256  # width of the mask head's four 3×3 convolutions
    box_score_thresh: float = 0.05  # detections below this are dropped before NMS
    detections_per_img: int = 100
    pixel_mean: tuple[float, float, float] | None = None  # RGB, 0…255; None: ImageNet statistics
    pixel_std: tuple[float, float, float] | None = None

    def __post_init__(self):
        # tuples and upper-case norm, also when rebuilt from a checkpoint's lists
        self.norm = str(self.norm).upper()
        self.anchor_sizes = tuple(self.anchor_sizes)
        self.aspect_ratios = tuple(self.aspect_ratios)
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(self, key)
            if value is not None:
                try:
                    setattr(self, key, tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel()))
                except (TypeError, ValueError):
                    raise ConfigError(f"segmenter.{key}: expected 3 numbers (RGB, 0..255), got {value!r}") from None
        self.validate()

    def validate(self) -> None:
        for key in (
            "height", "width", "fpn_channels", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
            "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
            "box_batch_size_per_image", "box_head_dim", "mask_head_channels", "detections_per_img",
        ):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise ConfigError(f"segmenter.{key}: must be an integer >= 1, got {value!r}")
        if not is_int(self.num_classes) or self.num_classes < 2:
            raise ConfigError(f"segmenter.num_classes: must be an integer >= 2 (background + objects), got {self.num_classes!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"segmenter.norm: must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.depth not in DEPTHS:
            raise ConfigError(f"segmenter.depth: the detectron2 backend has ResNet {', '.join(map(str, DEPTHS))}, got {self.depth!r}")
        if not is_int(self.trainable_layers) or not 0 <= self.trainable_layers <= N_STAGES:
            raise ConfigError(f"segmenter.trainable_layers: must be an integer in 0..{N_STAGES}, got {self.trainable_layers!r}")
        if len(self.anchor_sizes) != 5 or not all(is_int(s) and s >= 1 for s in self.anchor_sizes):
            raise ConfigError(f"segmenter.anchor_sizes: expected 5 positive integers (one per FPN level), got {self.anchor_sizes!r}")
        if not self.aspect_ratios or not all(isinstance(r, (int, float)) and r > 0 for r in self.aspect_ratios):
            raise ConfigError(f"segmenter.aspect_ratios: expected positive numbers, got {self.aspect_ratios!r}")
        if not 0.0 <= float(self.box_score_thresh) <= 1.0:
            raise ConfigError(f"segmenter.box_score_thresh: must lie in [0, 1], got {self.box_score_thresh!r}")
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(self, key)
            if value is None:
                continue
            values = np.asarray(value, dtype=np.float64)
            if values.shape != (3,) or not np.isfinite(values).all() or (key == "pixel_std" and (values <= 0).any()):
                raise ConfigError(
                    f"segmenter.{key}: expected 3 finite RGB values on the 0..255 scale"
                    f"{' (> 0)' if key == 'pixel_std' else ''}, got {value!r}"
                )

    @property
    def num_things(self) -> int:
        """Object classes as detectron2 counts them (no background)."""
        return self.num_classes - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Detectron2MaskRCNNConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"segmenter model config: unknown keys {unknown}")
        return cls(**values)


def _channel_order(values, input_format: str) -> list[float]:
    """RGB values in the order of detectron2's INPUT.FORMAT ("RGB" or "BGR")."""
    values = [float(v) for v in values]
    return values[::-1] if input_format == "BGR" else values


def build_cfg(config: Detectron2MaskRCNNConfig):
    """The detectron2 CfgNode of `config` (see the module docstring for what is changed)."""
    detectron2 = require_detectron2()
    from detectron2.config import get_cfg

    path = Path(detectron2.__file__).parent / "model_zoo" / "configs" / BASE_CONFIG
    if not path.is_file():
        raise ConfigError(
            f"segmenter.backend: detectron2 is installed without its config files ({path} is missing); "
            f"reinstall it ({INSTALL_HINT})"
        )
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"  # built on the CPU; the caller moves `.model` to its device
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.FREEZE_AT = N_STAGES - config.trainable_layers
    cfg.MODEL.RESNETS.DEPTH = config.depth
    if config.depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # BasicBlock stages, as detectron2 requires
    cfg.MODEL.RESNETS.NORM = config.norm
    cfg.MODEL.FPN.NORM = config.norm
    # The stride sits in the 3×3 conv (as in torchvision); the 1×1 placement only exists to
    # match the MSRA pretrained weights, which are not used.
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.FPN.OUT_CHANNELS = config.fpn_channels
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[int(s)] for s in config.anchor_sizes]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[float(r) for r in config.aspect_ratios]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = config.rpn_pre_nms_top_n_train
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = config.rpn_post_nms_top_n_train
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = config.rpn_pre_nms_top_n_test
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = config.rpn_post_nms_top_n_test
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = config.rpn_batch_size_per_image
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = config.num_things
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = config.box_batch_size_per_image
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(config.box_score_thresh)
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = config.box_head_dim
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = config.mask_head_channels
    cfg.TEST.DETECTIONS_PER_IMAGE = config.detections_per_img
    mean = config.pixel_mean if config.pixel_mean is not None else IMAGENET_MEAN
    std = config.pixel_std if config.pixel_std is not None else IMAGENET_STD
    cfg.MODEL.PIXEL_MEAN = _channel_order(mean, cfg.INPUT.FORMAT)
    cfg.MODEL.PIXEL_STD = _channel_order(std, cfg.INPUT.FORMAT)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    short, long = sorted((config.height, config.width))
    cfg.INPUT.MIN_SIZE_TRAIN = (short,)
    cfg.INPUT.MIN_SIZE_TEST = short
    cfg.INPUT.MAX_SIZE_TRAIN = long
    cfg.INPUT.MAX_SIZE_TEST = long
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    return cfg


def _zero_init_residuals(model) -> None:
    """Start every residual branch at zero (its last norm's scale γ = 0), so each block is
    the identity at first: the from-scratch recipe of Goyal et al. that the torchvision
    backend uses too (`zero_init_residual=True`); detectron2 leaves it commented out."""
    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    for module in model.modules():
        last = {BottleneckBlock: "conv3", BasicBlock: "conv2"}.get(type(module))
        if last is not None:
            weight = getattr(getattr(module, last).norm, "weight", None)
            # Only trainable scales: a frozen stage's γ is a buffer that would stay 0.
            if isinstance(weight, torch.nn.Parameter) and weight.requires_grad:
                torch.nn.init.zeros_(weight)


class Detectron2MaskRCNN:
    """detectron2's Mask R-CNN with the torchvision backend's interface (see
    futureseg.models.maskrcnn_torchvision's docstring): `.config` is the
    Detectron2MaskRCNNConfig, `.cfg` detectron2's CfgNode and `.model` its
    GeneralizedRCNN, which the caller moves to a device and builds the optimizer from.
    `.losses` puts the model in training mode; `.predict` runs it in eval mode and leaves
    the mode as it was.
    """

    name = BACKEND

    def __init__(self, config: Detectron2MaskRCNNConfig):
        require_detectron2()
        from detectron2.modeling import build_model

        self.config = config
        self.cfg = build_cfg(config)
        self.model = build_model(self.cfg)
        _zero_init_residuals(self.model)

    @property
    def _core(self):
        """The GeneralizedRCNN, also when `.model` was wrapped in DistributedDataParallel."""
        return getattr(self.model, "module", self.model)

    @property
    def device(self) -> torch.device:
        return self._core.pixel_mean.device

    def _image_input(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB in 0…1 → (3, H, W) float in 0…255, channels in INPUT.FORMAT order."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise FuturesegError(f"segmenter input: expected an RGB image tensor (3, H, W), got shape {tuple(image.shape)}")
        image = image.to(self.device, torch.float32) * 255.0
        return image.flip(0) if self.cfg.INPUT.FORMAT == "BGR" else image

    def _instances(self, target: dict, image_size: tuple[int, int]):
        from detectron2.structures import BitMasks, Boxes, Instances

        labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=self.device)
        masks = torch.as_tensor(target["masks"], device=self.device)
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=self.device).reshape(-1, 4)
        n = labels.shape[0]
        if boxes.shape[0] != n or masks.shape != (n, *image_size):
            raise FuturesegError(
                f"segmenter target: {n} labels need boxes (N, 4) and masks (N, {image_size[0]}, {image_size[1]}), "
                f"got boxes {tuple(boxes.shape)} and masks {tuple(masks.shape)}"
            )
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = labels - 1  # detectron2 has no background class
        instances.gt_masks = BitMasks(masks.bool())
        return instances

    def detectron2_inputs(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> list[dict]:
        """The model's input dicts: "image" (3, H, W) float 0…255 in INPUT.FORMAT channel
        order, and with targets "instances" with gt_boxes (Boxes), gt_classes = labels - 1
        and gt_masks (BitMasks), on the model's device."""
        if targets is None:
            return [{"image": self._image_input(image)} for image in images]
        if len(images) != len(targets):
            raise FuturesegError(f"segmenter batch: {len(images)} images but {len(targets)} targets")
        labels = torch.cat([torch.as_tensor(t["labels"]).reshape(-1).cpu() for t in targets])
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.config.num_things):
            raise FuturesegError(
                f"segmenter target: labels must lie in 1..{self.config.num_things} (0 is background), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        batched_inputs = []
        for image, target in zip(images, targets):
            pixels = self._image_input(image)
            batched_inputs.append({"image": pixels, "instances": self._instances(target, tuple(pixels.shape[1:]))})
        return batched_inputs

    def losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Training losses of one batch: loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg,
        loss_mask. Images (3, H, W) RGB in 0…1; targets with `boxes` (N, 4) xyxy, `labels`
        (N,) in 1…num_classes-1 and `masks` (N, H, W); N may be 0."""
        from detectron2.utils.events import EventStorage, has_event_storage

        batched_inputs = self.detectron2_inputs(images, targets)
        self.model.train()
        # detectron2's heads log accuracies into the current EventStorage and assert one
        # exists; a fresh one per call keeps that history from growing without bound.
        storage = contextlib.nullcontext() if has_event_storage() else EventStorage()
        with storage:
            return self.model(batched_inputs)

    @torch.inference_mode()
    def predict(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: `masks` (N, H, W) float soft masks in 0…1, `labels` int64 in
        1…num_classes-1, `scores` float (N,), highest score first."""
        from detectron2.layers.mask_ops import _do_paste_mask

        model = self._core
        was_training = model.training
        model.eval()
        try:
            batched_inputs = self.detectron2_inputs(images)
            raw = model.inference(batched_inputs, do_postprocess=False)
        finally:
            model.train(was_training)
        results = []
        for item, instances in zip(batched_inputs, raw):
            size = tuple(item["image"].shape[1:])
            # detector_postprocess's steps at scale 1 (the input is never resized), except
            # the pasting: it binarises the masks, and its soft variant (threshold < 0)
            # quantises them to 8 bits, which moves values near 0.5 across the threshold.
            # Its own paste step, _do_paste_mask, gives the probabilities as floats.
            instances.pred_boxes.clip(size)
            instances = instances[instances.pred_boxes.nonempty()]
            if len(instances):
                masks, _ = _do_paste_mask(instances.pred_masks, instances.pred_boxes.tensor, *size, skip_empty=False)
            else:
                masks = torch.zeros((0, *size), device=instances.pred_masks.device)
            results.append(
                {
                    "masks": masks.to(torch.float32),
                    "labels": instances.pred_classes.to(torch.int64) + 1,
                    "scores": instances.scores.to(torch.float32),
                }
            )
        return results

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._core.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._core.load_state_dict(state)


# ---------------------------------------------------------------- detectron2 datasets


def _read_training_arrays(seg_frames_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """images.npy and masks.npy of a segmentation training set, memory-mapped and checked."""
    arrays = {}
    for name in ("images", "masks"):
        path = seg_frames_dir / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the segmentation training set's {name} ({exc})") from exc
        if arrays[name].dtype != np.uint8:
            raise DataError(f"{path}: expected uint8, got {arrays[name].dtype}")
    images, masks = arrays["images"], arrays["masks"]
    if images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"{seg_frames_dir / 'images.npy'}: expected (N, H, W, 3), got {images.shape}")
    if masks.shape != images.shape[:3]:
        raise DataError(f"{seg_frames_dir / 'masks.npy'}: expected {images.shape[:3]} to match images.npy, got {masks.shape}")
    return images, masks


def training_records(seg_frames_dir: str | os.PathLike, min_pixels: int = 0) -> list[dict]:
    """detectron2 dataset dicts of a segmentation training set folder, one per sample.

    `file_name` is `<folder>/images.npy` and `row` the sample's index in it (the pixels are
    read by ArrayDatasetMapper); each connected object of at least `min_pixels` pixels is an
    annotation with its XYXY_ABS box, category_id = class - 1, and its mask as COCO RLE.
    """
    require_detectron2()
    import pycocotools.mask as mask_util
    from detectron2.structures import BoxMode

    from futureseg.core.instances import mask_to_instances

    folder = Path(seg_frames_dir)
    images, masks = _read_training_arrays(folder)
    _, height, width, _ = images.shape
    records = []
    for row in range(images.shape[0]):
        instances = mask_to_instances(np.asarray(masks[row]), min_pixels)
        annotations = []
        for object_mask, label, box in zip(instances["masks"], instances["labels"], instances["boxes"]):
            rle = mask_util.encode(np.asfortranarray(object_mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")  # str, as in COCO json files
            annotations.append(
                {
                    "bbox": [float(v) for v in box],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": int(label) - 1,
                    "segmentation": rle,
                    "iscrowd": 0,
                }
            )
        records.append(
            {
                "file_name": str(folder / "images.npy"),
                "row": row,
                "image_id": row,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    return records


def register_training_set(name: str, seg_frames_dir: str | os.PathLike, min_pixels: int = 0) -> None:
    """Register the segmentation training set folder as detectron2 dataset `name`.

    DatasetCatalog.get(name) then returns `training_records(seg_frames_dir, min_pixels)`
    (computed on each call, as detectron2 does); MetadataCatalog.get(name).thing_classes
    are the 48 object class names (category_id c is class c + 1). The folder is checked now. Registering a name again replaces it.
    """
    require_detectron2()
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from futureseg.core.classes import class_name

    folder = Path(seg_frames_dir)
    _read_training_arrays(folder)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: training_records(folder, min_pixels))
    MetadataCatalog.get(name).set(
        thing_classes=[class_name(label) for label in range(1, NUM_CLASSES)],
        seg_frames_dir=str(folder),
    )


class ArrayDatasetMapper:
    """detectron2's DatasetMapper(cfg, is_train) for the records of `training_records`:
    the image is row `row` of the `images.npy` named by `file_name` (RGB, converted to the
    cfg's INPUT.FORMAT), then the same augmentations (resize bounds, random flip) and
    annotation handling (BitMasks, boxes recomputed from masks) as DatasetMapper; a frame
    without objects gets empty gt_masks too."""

    def __init__(self, cfg, is_train: bool = True):
        require_detectron2()
        from detectron2.data import DatasetMapper

        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ConfigError(f"INPUT.FORMAT: ArrayDatasetMapper reads RGB or BGR, got {cfg.INPUT.FORMAT!r}")
        self.mapper = DatasetMapper(cfg, is_train=is_train)
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self):
        # DataLoader workers reopen the memory maps rather than receive pickled copies.
        return {**self.__dict__, "_arrays": {}}

    def _read_image(self, record: dict) -> np.ndarray:
        path = record["file_name"]
        if path not in self._arrays:
            self._arrays[path] = np.load(path, mmap_mode="r")
        image = np.asarray(self._arrays[path][record["row"]])
        return image[:, :, ::-1] if self.mapper.image_format == "BGR" else image

    def __call__(self, record: dict) -> dict:
        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T

        record = copy.deepcopy(record)
        image = self._read_image(record)
        utils.check_image_size(record, image)
        aug_input = T.AugInput(image)
        transforms = self.mapper.augmentations(aug_input)
        image = aug_input.image
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.mapper.is_train:
            record.pop("annotations", None)
            return record
        if "annotations" in record:
            # DatasetMapper's own step: transform, to Instances with BitMasks, drop empties.
            self.mapper._transform_annotations(record, transforms, image.shape[:2])
            instances = record["instances"]
            if self.mapper.use_instance_mask and not instances.has("gt_masks"):
                # A frame without objects gets no gt_masks from detectron2; an empty one
                # gives every item the same fields (Instances.cat needs that).
                from detectron2.structures import BitMasks

                instances.gt_masks = BitMasks(torch.zeros((0, *image.shape[:2]), dtype=torch.bool))
        return record
