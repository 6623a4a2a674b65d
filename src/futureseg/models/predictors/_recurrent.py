"""What the convolutional recurrent predictors (ConvLSTM, ConvGRU) share: their config
fields and checks, space-to-depth patches, the stacked roll-out and scheduled sampling.

Frames are folded space-to-depth by `patch_size` ((C, H, W) -> (C*p*p, H/p, W/p)), run
through stacked recurrent cells for 2T-1 steps over the 2T-frame sequence, and read out
by a 1x1 conv from the top layer's output. During the T future steps the input is either
the true frame (teacher forcing, with probability `sampling_ratio` per sample) or the
model's own previous prediction. A subclass brings its cell:

    make_cell(c_in, hidden, config) -> a module with zeros(x, height, width) -> state
                                       and forward(x, state) -> (output, state)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError
from futureseg.models.checks import is_int


@dataclass
class RecurrentConfig:
    in_shape: tuple[int, int, int, int]  # (T, C, H, W) of the input clip
    patch_size: int = 4
    num_hidden: tuple[int, ...] = (32, 32)  # hidden channels per stacked layer
    filter_size: int = 5

    key = "predictor"  # the config section named in errors (a class attribute, not a field)

    def __post_init__(self):
        key = self.key
        self.in_shape = tuple(self.in_shape)
        if len(self.in_shape) != 4 or not all(is_int(v) and v > 0 for v in self.in_shape):
            raise ConfigError(f"{key}.in_shape must be 4 positive ints (T, C, H, W), got {self.in_shape}")
        if isinstance(self.num_hidden, int):
            self.num_hidden = (self.num_hidden,)
        self.num_hidden = tuple(self.num_hidden)
        if not self.num_hidden or not all(is_int(v) and v > 0 for v in self.num_hidden):
            raise ConfigError(f"{key}.num_hidden must be a non-empty list of positive ints, got {self.num_hidden}")
        if not is_int(self.patch_size) or self.patch_size < 1:
            raise ConfigError(f"{key}.patch_size must be a positive integer, got {self.patch_size!r}")
        _, _, H, W = self.in_shape
        if H % self.patch_size or W % self.patch_size:
            raise ConfigError(f"{key}.patch_size={self.patch_size} must divide the frame size (H, W) = ({H}, {W})")
        if not is_int(self.filter_size) or self.filter_size < 1 or self.filter_size % 2 == 0:
            raise ConfigError(f"{key}.filter_size must be a positive odd integer, got {self.filter_size!r}")


class PatchRecurrent(nn.Module):
    """(B, T, C, H, W) frames 0..T-1 -> (B, T, C, H, W) frames T..2T-1."""

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = config
        _, C, _, _ = config.in_shape
        channels = C * config.patch_size**2
        widths = (channels,) + config.num_hidden
        self.cells = nn.ModuleList(self.make_cell(widths[i], widths[i + 1], config)
                                   for i in range(len(config.num_hidden)))
        self.head = nn.Conv2d(config.num_hidden[-1], channels, 1, bias=False)

    def make_cell(self, c_in: int, hidden: int, config) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, sampling_ratio: float = 0.0):
        B, T, C, H, W = x.shape
        p = self.config.patch_size
        frames = F.pixel_unshuffle(x.reshape(B * T, C, H, W), p).reshape(B, T, C * p * p, H // p, W // p)
        if target is not None:
            if target.shape[0] != B or target.shape[2:] != x.shape[2:]:
                raise ValueError(f"target shape {tuple(target.shape)} does not match input {tuple(x.shape)}")
            future = target.shape[1]
            truth = F.pixel_unshuffle(target.reshape(B * future, C, H, W), p).reshape(
                B, future, C * p * p, H // p, W // p
            )
        else:
            future = T
            sampling_ratio = 0.0

        states = [cell.zeros(x, H // p, W // p) for cell in self.cells]
        predictions = []
        for t in range(T + future - 1):
            if t < T:
                out = frames[:, t]
            else:
                out = self._mix(predictions[-1], truth[:, t - T] if target is not None else None, sampling_ratio)
            for i, cell in enumerate(self.cells):
                out, states[i] = cell(out, states[i])
            if t >= T - 1:  # the outputs before that predict input frames; nothing uses them
                predictions.append(self.head(out))

        y = torch.stack(predictions, dim=1).reshape(B * future, C * p * p, H // p, W // p)
        return F.pixel_shuffle(y, p).reshape(B, future, C, H, W)

    @staticmethod
    def _mix(prediction, truth, ratio: float):
        if truth is None or ratio <= 0.0:
            return prediction
        if ratio >= 1.0:
            return truth
        use_truth = torch.rand(prediction.shape[0], 1, 1, 1, device=prediction.device) < ratio
        return torch.where(use_truth, truth, prediction)
