"""The segmenter registry: `segmenter.model: unet | enet | maskrcnn`, built and loaded by name.

    build(name, config)  the model from its name and config dict (plain values)
    maskrcnn_config(backend, settings, size, mean01, std01)
                         a Mask R-CNN backend's config dict from segmenter.maskrcnn
    load(path, temporal) a Segmenter from a model file written by `train-segmenter`
                         (`temporal`, when given, the kind the file must be: none | convgru | convlstm)
    Segmenter.masks(frames, device, batch_size) -> uint8 (N, H, W) class ids of uint8
                         (N, H, W, 3) RGB frames (an array or a memmap), each frame alone
    Segmenter.sequence_masks(clips, device, batch_size) -> uint8 (V, T, H, W) of clips
                         (V, T, H, W, 3): a recurrent segmenter carries its state over each
                         clip's frames in order; the others segment each frame alone

The U-Net and ENet give class logits per pixel (argmax; PIXEL_MODELS, one contract:
`futureseg.models.unet`'s docstring). Mask R-CNN gives instances, painted into
a class mask by score (`instances_to_mask`: most confident on top, those under the
model file's score threshold left out). Mask R-CNN has two backends, torchvision and
detectron2, behind one interface (`futureseg.models.maskrcnn_torchvision`'s docstring).
A recurrent segmenter (`segmenter.temporal: convgru | convlstm`, models/temporal_segmenter.py)
is a U-Net or ENet with a recurrent cell at its bottleneck; its model file names the pixel
model as "segmenter" and the cell as "temporal" (a per-frame file has no "temporal").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from futureseg.core.errors import ConfigError, FuturesegError
# the per-pixel models and the recurrent cells, in their own module so that the recurrent
# segmenter builds its U-Net or ENet without importing this registry back
from futureseg.models.pixel_models import PIXEL_MODELS, TEMPORAL, build_pixel_model, model_class  # noqa: F401

SEGMENTERS = ("unet", "enet", "maskrcnn")
BACKENDS = ("torchvision", "detectron2")


def _detectron2_module():
    """The detectron2 backend module, imported only when chosen; a clear error when
    detectron2 itself is missing."""
    try:
        from futureseg.models import maskrcnn_detectron2 as d2

        d2.require_detectron2()
    except ImportError as exc:
        raise ConfigError(f"segmenter.backend: detectron2 is not importable ({exc}); "
                          "install it or set segmenter.backend: torchvision") from None
    return d2


# The settings of segmenter.maskrcnn that shape the model (its config keys) and the field
# of each backend's config dataclass each sets; a setting left out takes the dataclass's
# default.
MASKRCNN_FIELDS = {
    "torchvision": {"backbone": "backbone", "norm": "norm", "fpn_channels": "fpn_channels",
                    "box_head_dim": "box_head_dim", "mask_head_channels": "mask_head_channels",
                    "rpn_post_nms_train": "rpn_post_nms_top_n_train",
                    "box_batch_per_image": "box_batch_size_per_image",
                    "detections_per_image": "box_detections_per_img"},
    "detectron2": {"backbone": "depth", "norm": "norm", "fpn_channels": "fpn_channels",
                   "box_head_dim": "box_head_dim", "mask_head_channels": "mask_head_channels",
                   "rpn_post_nms_train": "rpn_post_nms_top_n_train",
                   "box_batch_per_image": "box_batch_size_per_image",
                   "detections_per_image": "detections_per_img"},
}
DETECTRON2_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def maskrcnn_config(backend: str, settings: dict, size: tuple[int, int], mean01, std01) -> dict:
    """A Mask R-CNN backend's whole model config as plain values, from the model settings of
    segmenter.maskrcnn (keys of MASKRCNN_FIELDS), the frame size (H, W) and the input
    normalisation (0…1 scale)."""
    from dataclasses import asdict

    from futureseg.core.data import NUM_CLASSES

    if backend not in BACKENDS:
        raise ConfigError(f"segmenter.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    unknown = sorted(set(settings) - set(MASKRCNN_FIELDS[backend]))
    if unknown:
        raise ConfigError(f"unknown setting segmenter.maskrcnn.{unknown[0]}")
    given = {MASKRCNN_FIELDS[backend][key]: value for key, value in settings.items()}
    height, width = size
    if backend == "torchvision":
        from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig

        config = MaskRCNNConfig(num_classes=NUM_CLASSES, min_size=min(size), max_size=max(size),
                                image_mean=tuple(mean01), image_std=tuple(std01), **given)
        config.validate()
        return asdict(config)
    if "depth" in given:
        if given["depth"] not in DETECTRON2_DEPTHS:
            raise ConfigError(f"segmenter.backbone: the detectron2 backend offers {', '.join(DETECTRON2_DEPTHS)}, "
                              f"got {given['depth']!r}")
        given["depth"] = DETECTRON2_DEPTHS[given["depth"]]
    if "norm" in given:
        given["norm"] = given["norm"].upper()
    d2 = _detectron2_module()
    config = d2.Detectron2MaskRCNNConfig(
        height=height, width=width, num_classes=NUM_CLASSES,
        pixel_mean=tuple(255.0 * float(v) for v in mean01), pixel_std=tuple(255.0 * float(v) for v in std01),
        **given)
    return asdict(config)


def build_backend(backend: str, config: dict):
    """A Mask R-CNN backend from its name and model config dict."""
    if backend == "torchvision":
        from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig, TorchvisionMaskRCNN

        return TorchvisionMaskRCNN(MaskRCNNConfig.from_dict(config))
    if backend == "detectron2":
        d2 = _detectron2_module()
        return d2.Detectron2MaskRCNN(d2.Detectron2MaskRCNNConfig(**config))
    raise ConfigError(f"segmenter.backend: {backend!r} is not one of {', '.join(BACKENDS)}")


def describe(temporal: str, name: str | None = None) -> str:
    """A model file's kind in words, for the errors that refuse one of another kind."""
    if temporal == "none":
        return f"per-frame {name or 'segmenter'}"
    return f"recurrent {temporal} {name or 'segmenter'}"


@dataclass
class Segmenter:
    name: str  # unet | enet | maskrcnn
    net: object  # the UNet or ENet module (or the TemporalSegmenter around one), or the Mask R-CNN backend
    score_threshold: float = 0.5  # Mask R-CNN: instances below it are not painted
    temporal: str = "none"  # none | convgru | convlstm (a TemporalSegmenter)

    @property
    def module(self):
        return self.net if self.name in PIXEL_MODELS else self.net.model

    def to(self, device) -> "Segmenter":
        self.module.to(device)
        return self

    def masks(self, frames, device, batch_size: int = 16) -> np.ndarray:
        import torch

        from futureseg.core.instances import instances_to_mask

        n, h, w = len(frames), *frames.shape[1:3]
        out = np.zeros((n, h, w), dtype=np.uint8)
        was_training = self.module.training
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                # a writable copy of the memmap rows
                chunk = torch.from_numpy(np.array(frames[start : start + batch_size])).to(device)
                images = chunk.permute(0, 3, 1, 2).float().div_(255.0)
                if self.name in PIXEL_MODELS:
                    out[start : start + len(chunk)] = self.net(images).argmax(1).to(torch.uint8).cpu().numpy()
                    continue
                for offset, result in enumerate(self.net.predict(list(images))):
                    out[start + offset] = instances_to_mask(
                        result["masks"].float().cpu().numpy(), result["labels"].cpu().numpy(),
                        result["scores"].float().cpu().numpy(), self.score_threshold, size=(h, w),
                    )
        self.module.train(was_training)
        return out

    def sequence_masks(self, clips, device, batch_size: int = 16) -> np.ndarray:
        """uint8 (V, T, H, W) class ids of clips (V, T, H, W, 3). A per-frame segmenter sees
        each frame alone (`masks` of the frames, as before recurrent ones existed); a
        recurrent one runs each clip as one sequence, `batch_size` frames a pass (at least
        one whole clip: the state cannot be cut)."""
        import torch

        clips = np.asarray(clips)
        n, steps, h, w = clips.shape[:4]
        if self.temporal == "none":
            return self.masks(clips.reshape(-1, h, w, 3), device, batch_size).reshape(n, steps, h, w)
        out = np.zeros((n, steps, h, w), dtype=np.uint8)
        per_pass = max(1, batch_size // steps)
        was_training = self.module.training
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, n, per_pass):
                chunk = torch.from_numpy(np.array(clips[start : start + per_pass])).to(device)
                sequences = chunk.permute(0, 1, 4, 2, 3).float().div_(255.0)
                out[start : start + len(chunk)] = self.net(sequences).argmax(2).to(torch.uint8).cpu().numpy()
        self.module.train(was_training)
        return out


def build_temporal(config: dict) -> Segmenter:
    """A recurrent segmenter from its model config dict (TemporalSegmenterConfig's fields)."""
    from dataclasses import fields

    from futureseg.models.temporal_segmenter import TemporalSegmenter, TemporalSegmenterConfig

    unknown = sorted(set(config) - {f.name for f in fields(TemporalSegmenterConfig)})
    if unknown:
        raise ConfigError(f"segmenter.recurrent: unknown setting {unknown[0]!r} (not a TemporalSegmenterConfig field)")
    net = TemporalSegmenter(TemporalSegmenterConfig(**config))
    return Segmenter(net.config.pixel_model, net, temporal=net.config.cell)


def build(name: str, config: dict, backend: str = "torchvision", score_threshold: float = 0.5) -> Segmenter:
    if name in PIXEL_MODELS:
        return Segmenter(name, build_pixel_model(name, config))
    if name == "maskrcnn":
        return Segmenter("maskrcnn", build_backend(backend, config), score_threshold)
    raise ConfigError(f"segmenter.model: {name!r} is not one of {', '.join(SEGMENTERS)}")


def load(path: str | Path, score_threshold: float | None = None, temporal: str | None = None) -> tuple[Segmenter, dict]:
    """(segmenter, model file contents) of a model written by train-segmenter, weights
    loaded. Files of Mask R-CNN written before the U-Net existed have no "segmenter" entry;
    `score_threshold`, when given, overrides the one saved with a Mask R-CNN. `temporal`,
    when given (none | convgru | convlstm), is the kind the file must be: a per-frame file
    where a recurrent one is expected, or the other way round, is refused in one line."""
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    name = state.get("segmenter", "maskrcnn" if "backend" in state else None)
    if name not in SEGMENTERS or "model_config" not in state:
        raise FuturesegError(f"{path}: not a segmenter model (no 'segmenter'/'backend' and 'model_config'); "
                             "was it written by futureseg train-segmenter?")
    kind = state.get("temporal", "none")
    if temporal is not None and kind != temporal:
        raise FuturesegError(f"{path}: a {describe(kind, name)} model file, but segmenter.temporal is {temporal!r} "
                             f"(expected a {describe(temporal)}); retrain the segmenter or fix the setting")
    threshold = state.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    if kind != "none":
        try:
            segmenter = build_temporal(state["model_config"])
            if segmenter.name != name or segmenter.temporal != kind:
                raise ConfigError(f"its config is a {describe(segmenter.temporal, segmenter.name)}")
            segmenter.net.load_state_dict(state["model"])
        except (ConfigError, RuntimeError, TypeError) as exc:
            raise FuturesegError(f"{path}: not a {describe(kind, name)} model file: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        return segmenter, state
    if name in PIXEL_MODELS:
        # a file whose config or weights are another model's (a U-Net's labelled enet, say)
        # is refused in one line that names the file
        try:
            segmenter = build(name, state["model_config"])
            segmenter.net.load_state_dict(state["model"])
        except (ConfigError, RuntimeError) as exc:
            raise FuturesegError(f"{path}: not a {name} model file: {str(exc).strip().splitlines()[0]}") from None
        return segmenter, state
    segmenter = build(name, state["model_config"], state.get("backend", "torchvision"), threshold)
    segmenter.net.load_state_dict(state["model"])
    return segmenter, state
