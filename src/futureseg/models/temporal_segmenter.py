"""Recurrent segmenter for sequences (`segmenter.temporal: convgru | convlstm`): a per-pixel
model (U-Net or ENet, `pixel_models.PIXEL_MODELS`) with a convolutional recurrent cell between
its encoder and its decoder, the cell's state carried over a video's frames in order.

Why there: the bottleneck is the smallest map (1/8 of the frame for both models), so the
cell is cheap, and its receptive field already spans the objects, so the state can carry
"what was here" while the encoder's skips (U-Net) keep the frame's own edges sharp. The
cell is the frame predictors' own (`predictors.convgru.ConvGRUCell`,
`predictors.convlstm.ConvLSTMCell`, imported, not copied). Its output is added to the
encoder's features (a residual): the decoder reads the frame's features plus what the
state adds, so an untrained cell perturbs the per-frame model instead of replacing its
input.

    TemporalSegmenter(config)  config: TemporalSegmenterConfig of plain values (the pixel
                               model's config dict inside); model files store its asdict
    model(x) -> logits         x (B, 3, H, W): each frame alone, zero initial state, one
                               step -> (B, 49, H, W), the per-pixel models' contract;
                               x (B, T, 3, H, W): frames 0…T-1 of each sequence in order,
                               the state carried -> (B, T, 49, H, W). A sequence of one
                               frame is the single-frame case.

The temporal-consistency losses of its training (weights in `segmenter.recurrent`, 0 = off),
on softmax probabilities p (B, T, C, H, W) and one-hot truth y:

    change_loss     |p_t - p_{t-1}| should equal |y_t - y_{t-1}|: predictions change where
                    the truth changes, and only there
    smoothing_loss  mean |p_t - p_{t-1}|: any change between consecutive frames costs
    warp_loss       Lai et al., ECCV 2018 ("Learning Blind Video Temporal Consistency"):
                    |p_t - warp(p_{t-1})| where the warp is valid. The flow is OpenCV's DIS
                    between the true frames (`core.motion`'s, as route motion measures it),
                    valid where forward and backward flow agree and the source lies inside
                    the frame (`clip_flows`, computed on the CPU while the batch is built).

Each per-pixel difference is the total-variation distance 0.5 · sum_c |·|, in 0…1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError
from futureseg.models.checks import is_int
from futureseg.models.pixel_models import PIXEL_MODELS, TEMPORAL, build_pixel_model

CELLS = TEMPORAL[1:]  # segmenter.temporal's recurrent cells


@dataclass
class TemporalSegmenterConfig:
    pixel_model: str = "unet"  # unet | enet: the per-pixel model split at its bottleneck
    pixel_config: dict = field(default_factory=dict)  # that model's config (UNetConfig / ENetConfig fields)
    cell: str = "convgru"  # convgru | convlstm
    filter_size: int = 3  # the cell's kernel: 3 at 1/8 already spans an object of these scenes
    key = "segmenter.recurrent"  # the config section named in errors (a class attribute, not a field)

    def __post_init__(self):
        if self.pixel_model not in PIXEL_MODELS:
            raise ConfigError(f"segmenter.model: the recurrent segmenter wraps {' or '.join(PIXEL_MODELS)}, "
                              f"got {self.pixel_model!r}")
        if self.cell not in CELLS:
            raise ConfigError(f"segmenter.temporal: {self.cell!r} is not one of {', '.join(CELLS)}")
        if not is_int(self.filter_size) or self.filter_size < 1 or self.filter_size % 2 == 0:
            raise ConfigError(f"{self.key}.filter_size must be a positive odd integer, got {self.filter_size!r}")
        self.pixel_config = dict(self.pixel_config)


class TemporalSegmenter(nn.Module):
    def __init__(self, config: TemporalSegmenterConfig):
        super().__init__()
        self.config = config
        self.pixel = build_pixel_model(config.pixel_model, config.pixel_config)
        channels = self.pixel.bottleneck_channels
        if config.cell == "convgru":
            from futureseg.models.predictors.convgru import ConvGRUCell

            self.cell = ConvGRUCell(channels, channels, config.filter_size)
        else:
            from futureseg.models.predictors.convlstm import ConvLSTMCell

            self.cell = ConvLSTMCell(channels, channels, config.filter_size, layer_norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # single frames: each a sequence of one, from the zero state
            return self.forward(x.unsqueeze(1)).squeeze(1)
        if x.ndim != 5:
            raise ValueError(f"expected frames (B, 3, H, W) or sequences (B, T, 3, H, W), got {tuple(x.shape)}")
        batch, steps = x.shape[:2]
        # the encoder and decoder see all B·T frames at once (one pass, and BatchNorm's
        # statistics over the whole clip); only the cell runs frame by frame
        features, context = self.pixel.encode(x.flatten(0, 1))
        features = features.unflatten(0, (batch, steps))
        state = self.cell.zeros(features[:, 0], *features.shape[-2:])
        carried = []
        for t in range(steps):
            out, state = self.cell(features[:, t], state)
            carried.append(features[:, t] + out)
        logits = self.pixel.decode(torch.stack(carried, 1).flatten(0, 1), context)
        return logits.unflatten(0, (batch, steps))


# ---------------------------------------------------------------- temporal-consistency losses


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel total-variation distance 0.5 · sum_c |a - b| of (..., C, H, W) -> (..., H, W)."""
    return 0.5 * (a - b).abs().sum(-3)


def smoothing_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean change of the predictions (B, T, C, H, W) between consecutive frames."""
    return _distance(probs[:, 1:], probs[:, :-1]).mean()


def change_loss(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Mean of 0.5 · sum_c | |p_t - p_{t-1}| - |y_t - y_{t-1}| |: 0 when the predictions
    change exactly where and as much as the truth does."""
    predicted = (probs[:, 1:] - probs[:, :-1]).abs()
    true = (onehot[:, 1:] - onehot[:, :-1]).abs()
    return 0.5 * (predicted - true).abs().sum(-3).mean()


def warp(previous: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`previous` (N, C, H, W) sampled at x + flow(x): flow (N, H, W, 2) (dx, dy) at each pixel
    of the current frame pointing to where it was in the previous one (bilinear)."""
    n, _, height, width = previous.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device, dtype=flow.dtype),
                            torch.arange(width, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[..., 0]) * (2 / max(width - 1, 1)) - 1
    gy = (ys + flow[..., 1]) * (2 / max(height - 1, 1)) - 1
    return F.grid_sample(previous, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def warp_loss(probs: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid pixels of the distance between p_t and p_{t-1} warped to frame t.
    probs (B, T, C, H, W); flow (B, T-1, H, W, 2) of frame t+1 back to frame t; valid
    (B, T-1, H, W) 1/0. With zero flow and every pixel valid it is `smoothing_loss`."""
    batch, steps = probs.shape[:2]
    warped = warp(probs[:, :-1].flatten(0, 1), flow.flatten(0, 1).to(probs.dtype)).unflatten(0, (batch, steps - 1))
    distance = _distance(probs[:, 1:], warped)
    valid = valid.to(distance.dtype)
    return (distance * valid).sum() / valid.sum().clamp_min(1.0)


def clip_flows(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flow (T-1, H, W, 2) float32, valid (T-1, H, W) uint8) of a clip's RGB frames (T, H, W, 3):
    for each t ≥ 1, DIS flow (`core.motion`'s) at the pixels of frame t pointing to frame t-1,
    valid where the forward-backward check passes (Sundaram et al. 2010, as Lai et al.
    use it: |b + f(x + b)|² < 0.01 (|b|² + |f(x + b)|²) + 0.5) and x + b lies inside the
    frame: pixels occluded or disoccluded between the frames are not compared."""
    import cv2

    from futureseg.core.motion import _gray, _gray_flow

    gray = [_gray(frame) for frame in frames]
    height, width = gray[0].shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    flows, valids = [], []
    for t in range(1, len(gray)):
        backward = _gray_flow(gray[t], gray[t - 1], "dis")  # frame t -> t-1
        forward = _gray_flow(gray[t - 1], gray[t], "dis")  # frame t-1 -> t
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
        returned = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        loop = ((backward + returned) ** 2).sum(-1)
        bound = 0.01 * ((backward**2).sum(-1) + (returned**2).sum(-1)) + 0.5
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        flows.append(backward.astype(np.float32))
        valids.append(((loop < bound) & inside).astype(np.uint8))
    return np.stack(flows), np.stack(valids)
