"""ConvLSTM frame predictor (Shi et al. 2015) over patchified frames, with scheduled sampling
(the roll-out is `_recurrent.PatchRecurrent`'s)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from futureseg.core.errors import ConfigError
from futureseg.models.predictors._recurrent import PatchRecurrent, RecurrentConfig


@dataclass
class ConvLSTMConfig(RecurrentConfig):
    layer_norm: bool = False

    key = "predictor.convlstm"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.layer_norm, bool):
            raise ConfigError(f"{self.key}.layer_norm must be true or false, got {self.layer_norm!r}")


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

    def zeros(self, x, height: int, width: int):
        h = x.new_zeros(x.shape[0], self.hidden, height, width)
        return h, torch.zeros_like(h)

    def forward(self, x, state):
        h, c = state
        gates = self.norm_x(self.conv_x(x)) + self.norm_h(self.conv_h(h)) + self.bias
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class ConvLSTM(PatchRecurrent):
    def make_cell(self, c_in: int, hidden: int, config: ConvLSTMConfig) -> nn.Module:
        return ConvLSTMCell(c_in, hidden, config.filter_size, config.layer_norm)


Config, Model = ConvLSTMConfig, ConvLSTM
