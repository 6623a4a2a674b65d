"""The segmenter registry: `segmenter.model: unet | maskrcnn`, built and loaded by name.

    build(name, config)  the model from its name and config dict (plain values)
    load(path)           a Segmenter from a model file written by `train-segmenter`
    Segmenter.masks(frames, device, batch_size) -> uint8 (N, H, W) class ids of uint8
                         (N, H, W, 3) RGB frames (an array or a memmap)

The U-Net gives class logits per pixel (argmax). Mask R-CNN gives instances, painted into
a class mask by score (`instances_to_mask`: most confident on top, those under the
model file's score threshold left out). Mask R-CNN has two backends, torchvision and
detectron2, behind one interface (`futureseg.models.maskrcnn_torchvision`'s docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from futureseg.core.errors import ConfigError, FuturesegError

SEGMENTERS = ("unet", "maskrcnn")
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


def build_backend(backend: str, config: dict):
    """A Mask R-CNN backend from its name and model config dict."""
    if backend == "torchvision":
        from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig, TorchvisionMaskRCNN

        return TorchvisionMaskRCNN(MaskRCNNConfig.from_dict(config))
    if backend == "detectron2":
        d2 = _detectron2_module()
        return d2.Detectron2MaskRCNN(d2.Detectron2MaskRCNNConfig(**config))
    raise ConfigError(f"segmenter.backend: {backend!r} is not one of {', '.join(BACKENDS)}")


def build_unet(config: dict):
    from futureseg.models.unet import UNet, UNetConfig

    return UNet(UNetConfig(**config))


@dataclass
class Segmenter:
    name: str  # unet | maskrcnn
    net: object  # the UNet module, or the Mask R-CNN backend
    score_threshold: float = 0.5  # Mask R-CNN: instances below it are not painted

    @property
    def module(self):
        return self.net if self.name == "unet" else self.net.model

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
                if self.name == "unet":
                    out[start : start + len(chunk)] = self.net(images).argmax(1).to(torch.uint8).cpu().numpy()
                    continue
                for offset, result in enumerate(self.net.predict(list(images))):
                    out[start + offset] = instances_to_mask(
                        result["masks"].float().cpu().numpy(), result["labels"].cpu().numpy(),
                        result["scores"].float().cpu().numpy(), self.score_threshold, size=(h, w),
                    )
        self.module.train(was_training)
        return out


def build(name: str, config: dict, backend: str = "torchvision", score_threshold: float = 0.5) -> Segmenter:
    if name == "unet":
        return Segmenter("unet", build_unet(config))
    if name == "maskrcnn":
        return Segmenter("maskrcnn", build_backend(backend, config), score_threshold)
    raise ConfigError(f"segmenter.model: {name!r} is not one of {', '.join(SEGMENTERS)}")


def load(path: str | Path, score_threshold: float | None = None) -> tuple[Segmenter, dict]:
    """(segmenter, model file contents) of a model written by train-segmenter, weights
    loaded. Files of Mask R-CNN written before the U-Net existed have no "segmenter" entry;
    `score_threshold`, when given, overrides the one saved with a Mask R-CNN."""
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    name = state.get("segmenter", "maskrcnn" if "backend" in state else None)
    if name not in SEGMENTERS or "model_config" not in state:
        raise FuturesegError(f"{path}: not a segmenter model (no 'segmenter'/'backend' and 'model_config'); "
                             "was it written by futureseg train-segmenter?")
    threshold = state.get("score_threshold", 0.5) if score_threshold is None else score_threshold
    segmenter = build(name, state["model_config"], state.get("backend", "torchvision"), threshold)
    segmenter.net.load_state_dict(state["model"])
    return segmenter, state
