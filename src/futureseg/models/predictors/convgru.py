"""ConvGRU frame predictor (Ballas et al. 2016, "Delving deeper into convolutional networks for
learning video representations") over patchified frames, with scheduled sampling.

The GRU's cell has one state where the LSTM has two and three gates where it has four: 25%
fewer recurrent weights and activations at the same width. The seed study on temporal
consistency compares it with ConvLSTM. The roll-out is `_recurrent.PatchRecurrent`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from futureseg.models.predictors._recurrent import PatchRecurrent, RecurrentConfig


@dataclass
class ConvGRUConfig(RecurrentConfig):
    key = "predictor.convgru"


class ConvGRUCell(nn.Module):
    def __init__(self, c_in: int, hidden: int, kernel: int):
        super().__init__()
        self.hidden = hidden
        # reset, update and candidate pre-activations of the input and of the state
        self.conv_x = nn.Conv2d(c_in, 3 * hidden, kernel, padding=kernel // 2, bias=False)
        self.conv_h = nn.Conv2d(hidden, 3 * hidden, kernel, padding=kernel // 2, bias=False)
        bias = torch.zeros(3 * hidden, 1, 1)
        bias[hidden : 2 * hidden] = 1.0  # update-gate bias: keep the state by default
        self.bias = nn.Parameter(bias)

    def zeros(self, x, height: int, width: int):
        return x.new_zeros(x.shape[0], self.hidden, height, width)

    def forward(self, x, h):
        gx_r, gx_z, gx_n = (self.conv_x(x) + self.bias).chunk(3, dim=1)
        gh_r, gh_z, gh_n = self.conv_h(h).chunk(3, dim=1)
        reset = torch.sigmoid(gx_r + gh_r)
        update = torch.sigmoid(gx_z + gh_z)
        candidate = torch.tanh(gx_n + reset * gh_n)
        h = update * h + (1 - update) * candidate
        return h, h


class ConvGRU(PatchRecurrent):
    def make_cell(self, c_in: int, hidden: int, config: ConvGRUConfig) -> nn.Module:
        return ConvGRUCell(c_in, hidden, config.filter_size)


Config, Model = ConvGRUConfig, ConvGRU
