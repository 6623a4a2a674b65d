"""Object classifier: each object's shape and material, decided once from the whole object.

A per-pixel segmenter finds the objects of this dataset and their colour (foreground IoU
0.99, colour right on 99.6% of the object pixels on held-out data) but guesses the shape
pixel by pixel: 47% right there, and one object comes out in two or three classes. Shape is
a property of the silhouette, so this model looks at one object at a time: a square crop
around it, scaled to `crop_size`², with the object's silhouette as a fourth channel beside
the RGB, and gives its shape (3) and material (2). The colour stays the segmenter's: an
object here is an 8-connected component of the segmenter's pixels of one colour
(`core.instances.colour_components`, the objects of `object_vote`), so it has one colour.
Measured on the demo's val (U-Net oracle masks of frame 21): macro IoU 0.407 with the
object vote, 0.840 with this classifier (50 s of training on 2 cores).

The crop: centred on the object's box, its side 1.25 × the box's longer side + 2 pixels
(some context, the shading around a silhouette), sampled by torchvision's `roi_align`
(bilinear, `aligned=True`) from the whole frame, so an object at the border is padded with
zeros; the RGB is normalised with the dataset's mean/std, the silhouette scaled to ±1.
Scaling every object to one size drops its size, which says nothing of its class.

The net: three stages of two 3×3 conv-BN-ReLU blocks (`width`, 2·`width`, 4·`width`
channels, max-pool between), global average pool, one linear read-out per factor. At 32²
crops it runs ~1,000 objects a second per CPU core in training.

Interface (as the Mask R-CNN backends' contract, `models/maskrcnn_torchvision.py`):

    ObjectClassifierConfig       plain values; model files store `dataclasses.asdict` of it
    ObjectClassifier(config)     nn.Module
    model(crops) -> {"shape": (B, 3), "material": (B, 2)} float logits; crops: float
                                 (B, 4, crop_size, crop_size) from `object_crops`
    object_crops(model, frames, labels, n_objects) -> (crops, frame of each object)
                                 frames uint8 (N, H, W, 3); labels int (N, H, W): object k
                                 of frame i is labels[i] == k, 1…n_objects[i]
    repaint(model, frames, masks, device, batch_size) -> uint8 (N, H, W): every object
                                 (colour component) of each mask repainted in the class
                                 of (its predicted shape, material; its colour), but those
                                 under MIN_OBJECT_PIXELS, which keep the mask's classes; runs in
                                 eval mode under inference mode and leaves the mode as it was
    paint(labels, n_objects, colour, shape, material) -> uint8 (N, H, W): the masks of
                                 objects whose factors are known (repaint's last step)
    load(path) -> (model, model file contents) of a file written by
                                 `futureseg train-object-classifier`

A config value out of range raises ConfigError naming `segmenter.object_classifier.<key>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.classes import COLORS, MATERIALS, SHAPES
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.models.checks import is_int

FACTORS = {"shape": len(SHAPES), "material": len(MATERIALS)}
CONTEXT = 1.25  # crop side / the object box's longer side
# Objects smaller than this many pixels keep the segmenter's classes: a crop of a speck says
# nothing of a shape, and a barely trained segmenter's masks hold hundreds of one-pixel specks
# a frame (78% of 2,127 components over 44 frames of a 20-step U-Net at 160×240), each a
# classifier pass. Mask R-CNN's min_fragment default is the same 4.
MIN_OBJECT_PIXELS = 4
# Objects whose silhouettes are cut at once: each is a full-frame float image before
# roi_align, so this bounds that memory (64 × 160 × 240 × 13 bytes: 32 MB).
SILHOUETTE_CHUNK = 64
MARGIN = 2.0  # pixels added to the crop side, so a 1-pixel object still has surroundings


@dataclass
class ObjectClassifierConfig:
    crop_size: int = 32  # side of the square crop every object is scaled to
    width: int = 32  # channels of the first stage; each later stage doubles them
    # per-channel normalisation of the RGB on the 0…1 scale (the dataset's, stage 1)
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.25, 0.25, 0.25)

    def __post_init__(self):
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        key = "segmenter.object_classifier"
        for name, low in (("crop_size", 8), ("width", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"{key}.{name} must be an integer of at least {low}, got {value!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ConfigError(f"{key}: image_mean and image_std need 3 values each, std positive; "
                              f"got {self.image_mean}, {self.image_std}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ObjectClassifier(nn.Module):
    def __init__(self, config: ObjectClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            _block(4, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), _block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(4 * w, n) for name, n in FACTORS.items()})
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, crops: torch.Tensor) -> dict:
        features = self.features(crops)
        return {name: head(features) for name, head in self.heads.items()}


def crop_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """float32 (n, 4) xyxy crop boxes (pixel edges) of objects 1…n of a (H, W) label image:
    square, centred on each object's box, side CONTEXT × its longer side + MARGIN."""
    from scipy import ndimage

    boxes = np.zeros((n, 4), np.float32)
    for k, found in enumerate(ndimage.find_objects(labels, max_label=n)):
        rows, cols = found
        cy, cx = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2
        half = (CONTEXT * max(rows.stop - rows.start, cols.stop - cols.start) + MARGIN) / 2
        boxes[k] = (cx - half, cy - half, cx + half, cy + half)
    return boxes


def object_crops(model: ObjectClassifier, frames, labels, n_objects) -> tuple[torch.Tensor, np.ndarray]:
    """The classifier's input for every object of a batch of frames: float (sum n, 4, S, S)
    crops on the model's device (RGB normalised, silhouette ±1), and the frame index of each
    object. frames uint8 (N, H, W, 3); labels int (N, H, W); n_objects (N,) objects per frame."""
    from torchvision.ops import roi_align

    device = model.mean.device
    size = model.config.crop_size
    boxes = [crop_boxes(np.asarray(lab), int(n)) for lab, n in zip(labels, n_objects)]
    owner = np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)]).astype(np.int64)
    if not len(owner):
        return torch.zeros((0, 4, size, size), device=device), owner
    boxes = torch.from_numpy(np.concatenate(boxes)).to(device)
    images = torch.from_numpy(np.array(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    images = (images - model.mean) / model.std
    rgb = roi_align(images, torch.cat([torch.from_numpy(owner).to(device, torch.float32)[:, None], boxes], 1),
                    size, 1.0, 2, aligned=True)
    # each object's own silhouette: one channel per object, cut from its frame's label image,
    # SILHOUETTE_CHUNK objects at a time
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    first = np.concatenate([[0], np.cumsum(n_objects)[:-1]]).astype(np.int64)
    owner_t = torch.from_numpy(owner).to(device)
    object_id = torch.from_numpy(np.arange(len(owner)) - first[owner] + 1).to(device)
    silhouette = []
    for start in range(0, len(owner), SILHOUETTE_CHUNK):
        part = slice(start, start + SILHOUETTE_CHUNK)
        silhouettes = (labels_t[owner_t[part]] == object_id[part, None, None]).float()[:, None]
        rois = torch.cat([torch.arange(len(silhouettes), device=device, dtype=torch.float32)[:, None], boxes[part]], 1)
        silhouette.append(roi_align(silhouettes, rois, size, 1.0, 2, aligned=True))
    return torch.cat([rgb, torch.cat(silhouette) * 2 - 1], 1), owner


def predict_parts(model: ObjectClassifier, crops: torch.Tensor, batch_size: int = 512) -> dict:
    """{"shape": int64 (n,), "material": int64 (n,)} of a stack of object crops."""
    out = {name: [] for name in FACTORS}
    for start in range(0, len(crops), batch_size):
        logits = model(crops[start : start + batch_size])
        for name in FACTORS:
            out[name].append(logits[name].argmax(1).cpu())
    return {name: (torch.cat(v) if v else torch.zeros(0, dtype=torch.int64)).numpy() for name, v in out.items()}


def repaint(model: ObjectClassifier, frames, masks, device=None, batch_size: int = 64) -> np.ndarray:
    """Every object of each mask repainted in one class: shape and material from the
    classifier, colour from the mask (see the module docstring). frames uint8 (N, H, W, 3)
    (an array or a memmap), masks integer (N, H, W); returns uint8 (N, H, W)."""
    from futureseg.core.instances import colour_components

    masks = np.asarray(masks)
    if masks.ndim != 3 or tuple(frames.shape[:3]) != masks.shape or frames.shape[-1] != 3:
        raise ValueError(f"repaint: need frames (N, H, W, 3) and masks (N, H, W) of one size, "
                         f"got {tuple(frames.shape)} and {masks.shape}")
    out = np.zeros(masks.shape, np.uint8)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(masks), batch_size):
            parts = [_large_objects(*colour_components(m)) for m in masks[start : start + batch_size]]
            labels = np.stack([p[0] for p in parts])
            crops, _ = object_crops(model, np.asarray(frames[start : start + len(parts)]), labels,
                                    [p[1] for p in parts])
            predicted = predict_parts(model, crops)
            painted = paint(labels, [p[1] for p in parts], np.concatenate([p[2] for p in parts]),
                            predicted["shape"], predicted["material"])
            specks = np.stack([p[3] for p in parts])
            chunk = masks[start : start + len(parts)]
            out[start : start + len(parts)] = np.where(specks, chunk, painted)
    model.train(was_training)
    return out


def _large_objects(labels, n, colour):
    """(labels, n, colour) of the objects of MIN_OBJECT_PIXELS or more, renumbered 1…n in
    order, and a bool (H, W) of the smaller ones' pixels (labels 0 there)."""
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= MIN_OBJECT_PIXELS
    keep[0] = False
    if keep[1:].all():
        return labels, n, colour, np.zeros(labels.shape, bool)
    renumber = np.zeros(n + 1, np.int64)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum()), colour[keep[1:]], (labels != 0) & ~keep[labels]


def paint(labels, n_objects, colour, shape, material) -> np.ndarray:
    """uint8 (N, H, W) class-id masks of label images (N, H, W) (object k of frame i:
    labels[i] == k, 1…n_objects[i]) from each object's colour, shape and material, (sum n,)
    int arrays in frame order."""
    # class id = shape*16 + material*8 + colour + 1, index 0 the background
    classes = np.asarray(shape) * 2 * len(COLORS) + np.asarray(material) * len(COLORS) + np.asarray(colour) + 1
    out = np.zeros(np.shape(labels), np.uint8)
    offset = 0
    for i, n in enumerate(n_objects):
        out[i] = np.concatenate([[0], classes[offset : offset + n]])[labels[i]]
        offset += n
    return out


def load(path: str | Path) -> tuple[ObjectClassifier, dict]:
    """(model, model file contents) of a file of `futureseg train-object-classifier`."""
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != "object_classifier" or "model_config" not in state:
        raise FuturesegError(f"{path}: not an object classifier (kind {state.get('kind')!r}); "
                             "was it written by futureseg train-object-classifier?")
    model = ObjectClassifier(ObjectClassifierConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model, state
