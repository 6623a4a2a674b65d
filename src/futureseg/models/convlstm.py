"""ConvLSTM frame predictor (Shi et al. 2015) over patchified frames, with scheduled sampling.

Frames are folded space-to-depth by `patch_size` ((C, H, W) -> (C*p*p, H/p, W/p)), run
through stacked ConvLSTM cells for 2T-1 steps over the 2T-frame sequence, and read out
by a 1x1 conv from the top hidden state. During the T future steps the input is either
the true frame (teacher forcing, with probability `sampling_ratio` per sample) or the
model's own previous prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.errors import ConfigError

KEY = "predictor.convlstm"


@dataclass
class ConvLSTMConfig:
    in_shape: tuple[int, int, int, int]  # (T, C, H, W) of the input clip
    patch_size: int = 4
    num_hidden: tuple[int, ...] = (32, 32)  # hidden channels per stacked layer
    filter_size: int = 5
    layer_norm: bool = False

    def __post_init__(self):
        self.in_shape = tuple(self.in_shape)
        if len(self.in_shape) != 4 or not all(_is_int(v) and v > 0 for v in self.in_shape):
            raise ConfigError(f"{KEY}.in_shape must be 4 positive ints (T, C, H, W), got {self.in_shape}")
        if isinstance(self.num_hidden, int):
            self.num_hidden = (self.num_hidden,)
        self.num_hidden = tuple(self.num_hidden)
        if not self.num_hidden or not all(_is_int(v) and v > 0 for v in self.num_hidden):
            raise ConfigError(f"{KEY}.num_hidden must be a non-empty list of positive ints, got {self.num_hidden}")
        if not _is_int(self.patch_size) or self.patch_size < 1:
            raise ConfigError(f"{KEY}.patch_size must be a positive integer, got {self.patch_size!r}")
        _, _, H, W = self.in_shape
        if H % self.patch_size or W % self.patch_size:
            raise ConfigError(
                f"{KEY}.patch_size={self.patch_size} must divide the frame size (H, W) = ({H}, {W})"
            )
        if not _is_int(self.filter_size) or self.filter_size < 1 or self.filter_size % 2 == 0:
            raise ConfigError(f"{KEY}.filter_size must be a positive odd integer, got {self.filter_size!r}")
        if not isinstance(self.layer_norm, bool):
            raise ConfigError(f"{KEY}.layer_norm must be true or false, got {self.layer_norm!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scheduled_sampling_ratio(step: int, total_steps: int, start: float = 1.0, end: float = 0.0) -> float:
    """Teacher-forcing probability at `step`: linear from `start` (step 0) to `end` (total_steps on)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * progress


class ConvLSTMCell(nn.Module):
    def __init__(self, c_in: int, hidden: int, kernel: int, layer_norm: bool):
        super().__init__()
        self.hidden = hidden
        self.conv_x = nn.Conv2d(c_in, 4 * hidden, kernel, padding=kernel // 2, bias=False)
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)
        # GroupNorm with one group normalises each sample over (C, H, W): a layer norm
        # that does not tie the model to one frame size.
        self.norm_x = nn.GroupNorm(1, 4 * hidden, affine=False) if layer_norm else nn.Identity()
        self.norm_h = nn.GroupNorm(1, 4 * hidden, affine=False) if layer_norm else nn.Identity()
        bias = torch.zeros(4 * hidden, 1, 1)
        bias[hidden : 2 * hidden] = 1.0  # forget-gate bias: remember by default
        self.bias = nn.Parameter(bias)

    def forward(self, x, h, c):
        gates = self.norm_x(self.conv_x(x)) + self.norm_h(self.conv_h(h)) + self.bias
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """(B, T, C, H, W) frames 0..T-1 -> (B, T, C, H, W) frames T..2T-1."""

    def __init__(self, config: ConvLSTMConfig):
        super().__init__()
        self.config = config
        _, C, _, _ = config.in_shape
        p = config.patch_size
        channels = C * p * p
        widths = (channels,) + config.num_hidden
        self.cells = nn.ModuleList(
            ConvLSTMCell(widths[i], widths[i + 1], config.filter_size, config.layer_norm)
            for i in range(len(config.num_hidden))
        )
        self.head = nn.Conv2d(config.num_hidden[-1], channels, 1, bias=False)

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

        h = [x.new_zeros(B, n, H // p, W // p) for n in self.config.num_hidden]
        c = [x.new_zeros(B, n, H // p, W // p) for n in self.config.num_hidden]
        predictions = []
        for t in range(T + future - 1):
            if t < T:
                step_input = frames[:, t]
            else:
                step_input = self._mix(predictions[-1], truth[:, t - T] if target is not None else None, sampling_ratio)
            h[0], c[0] = self.cells[0](step_input, h[0], c[0])
            for i in range(1, len(self.cells)):
                h[i], c[i] = self.cells[i](h[i - 1], h[i], c[i])
            if t >= T - 1:  # the outputs before that predict input frames; nothing uses them
                predictions.append(self.head(h[-1]))

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
