"""SimVP frame predictor (Gao et al. 2022; Tan et al. 2022, "SimVP v2").

A per-frame convolutional encoder, a translator that mixes the time-stacked latents
(T * hid_S channels) with 2-D convolutions, and a per-frame decoder. Two translators:

- "gsta": gated spatio-temporal attention blocks (SimVP v2), MetaFormer style;
- "incepu": the UNet of inception blocks of SimVP v1.

The layer layout, channel counts and initialisation follow OpenSTL's SimVP_Model, so
the parameter counts match it exactly; the code is our own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError
from futureseg.models.checks import is_int

TRANSLATORS = ("gsta", "incepu")
KEY = "predictor.simvp"


@dataclass
class SimVPConfig:
    in_shape: tuple[int, int, int, int]  # (T, C, H, W) of the input clip
    hid_S: int = 16  # spatial (encoder/decoder) channels
    hid_T: int = 64  # translator channels
    N_S: int = 4  # encoder layers = decoder layers; every second one resamples by 2
    N_T: int = 4  # translator blocks (gSTA) or encoder/decoder blocks each (IncepU)
    translator: str = "gsta"
    mlp_ratio: float = 8.0
    drop: float = 0.0
    drop_path: float = 0.0
    spatio_kernel_enc: int = 3
    spatio_kernel_dec: int = 3

    def __post_init__(self):
        self.in_shape = tuple(self.in_shape)
        if len(self.in_shape) != 4 or not all(is_int(v) and v > 0 for v in self.in_shape):
            raise ConfigError(f"{KEY}.in_shape must be 4 positive ints (T, C, H, W), got {self.in_shape}")
        for key in ("hid_S", "hid_T", "N_S", "N_T", "spatio_kernel_enc", "spatio_kernel_dec"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{KEY}.{key} must be a positive integer, got {value!r}")
        if self.translator not in TRANSLATORS:
            raise ConfigError(f"{KEY}.translator must be one of {', '.join(TRANSLATORS)}, got {self.translator!r}")
        if self.N_S < 2 or self.N_S % 2:
            raise ConfigError(f"{KEY}.N_S must be even and >= 2, got {self.N_S}")
        if self.N_T < 2:
            raise ConfigError(f"{KEY}.N_T must be >= 2, got {self.N_T}")
        if self.hid_S % 2:
            raise ConfigError(f"{KEY}.hid_S must be even (GroupNorm with 2 groups), got {self.hid_S}")
        for key in ("spatio_kernel_enc", "spatio_kernel_dec"):
            if getattr(self, key) % 2 == 0:
                raise ConfigError(f"{KEY}.{key} must be odd, got {getattr(self, key)}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"{KEY}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for key in ("drop", "drop_path"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{KEY}.{key} must be in [0, 1), got {getattr(self, key)}")
        T, _, H, W = self.in_shape
        factor = 2 ** (self.N_S // 2)
        if H % factor or W % factor:
            raise ConfigError(
                f"{KEY}.N_S={self.N_S} downsamples by {factor}, which must divide the frame size "
                f"(H, W) = ({H}, {W})"
            )
        if self.translator == "incepu":
            if self.hid_T % 2:
                raise ConfigError(f"{KEY}.hid_T must be even for the incepu translator, got {self.hid_T}")
            groups = _incep_groups(self.hid_T // 2)
            if (T * self.hid_S) % groups:
                raise ConfigError(
                    f"{KEY}.hid_S={self.hid_S} times T={T} must be divisible by {groups} "
                    f"(the incepu translator's group count)"
                )


# ---------------------------------------------------------------- encoder / decoder


class ConvSC(nn.Module):
    """conv (optionally stride 2, or conv to 4x channels + PixelShuffle(2)) + GroupNorm(2) + SiLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, downsample=False, upsample=False):
        super().__init__()
        if upsample:
            self.conv = nn.Sequential(
                nn.Conv2d(c_in, c_out * 4, kernel, padding=kernel // 2), nn.PixelShuffle(2)
            )
        else:
            stride = 2 if downsample else 1
            self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - stride + 1) // 2)
        self.norm = nn.GroupNorm(2, c_out)
        self.act = nn.SiLU()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


def _resampling(n: int) -> list[bool]:
    """Which of the n encoder layers downsample: the 2nd, 4th, ... (the decoder mirrors it)."""
    return [i % 2 == 1 for i in range(n)]


class Encoder(nn.Module):
    def __init__(self, c_in: int, hid: int, n: int, kernel: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvSC(c_in if i == 0 else hid, hid, kernel, downsample=down)
            for i, down in enumerate(_resampling(n))
        )

    def forward(self, x):
        """Returns the latent and the first layer's full-resolution output (the skip)."""
        skip = x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(x)
        return x, skip


class Decoder(nn.Module):
    def __init__(self, hid: int, c_out: int, n: int, kernel: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvSC(hid, hid, kernel, upsample=up) for up in reversed(_resampling(n))
        )
        self.readout = nn.Conv2d(hid, c_out, 1)

    def forward(self, x, skip):
        for layer in self.layers[:-1]:
            x = layer(x)
        return self.readout(self.layers[-1](x + skip))


# ---------------------------------------------------------------- gSTA translator


def _init_fan_out(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class LargeKernelGate(nn.Module):
    """Large-kernel attention (21x21 receptive field) producing a sigmoid-gated value."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.conv_gate = nn.Conv2d(dim, 2 * dim, 1)

    def forward(self, x):
        value, gate = self.conv_gate(self.conv_dilated(self.conv_dw(x))).chunk(2, dim=1)
        return torch.sigmoid(gate) * value


class GatedSpatialAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.gate = LargeKernelGate(dim)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return x + self.proj_out(self.gate(F.gelu(self.proj_in(x))))


class ConvMlp(nn.Module):
    """1x1 conv, depthwise 3x3 conv, GELU, 1x1 conv."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(F.gelu(self.conv_dw(self.fc1(x))))
        return self.drop(self.fc2(x))


class GSTABlock(nn.Module):
    """MetaFormer block: x + s1 * attn(BN(x)), then x + s2 * mlp(BN(x)); optional 1x1 reduction."""

    def __init__(self, dim: int, dim_out: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = GatedSpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.drop_path = drop_path
        _init_fan_out(self)
        self.reduction = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x):
        x = x + drop_path(self.layer_scale_1 * self.attn(self.norm1(x)), self.drop_path, self.training)
        x = x + drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)), self.drop_path, self.training)
        return self.reduction(x)


class GSTATranslator(nn.Module):
    """N blocks: the first maps channels -> hid (after its block), the last hid -> channels.

    Drop-path rates rise linearly from 0 to `drop_path` (OpenSTL starts at 0.01, so it
    drops paths even when drop_path=0).
    """

    def __init__(self, channels: int, hid: int, n: int, mlp_ratio: float, drop: float, drop_path: float):
        super().__init__()
        rates = torch.linspace(0.0, drop_path, n).tolist()
        dims = [channels] + [hid] * (n - 1) + [channels]
        self.blocks = nn.Sequential(
            *(GSTABlock(dims[i], dims[i + 1], mlp_ratio, drop, rates[i]) for i in range(n))
        )

    def forward(self, x):
        return self.blocks(x)


# ---------------------------------------------------------------- IncepU translator


def _incep_groups(c_hid: int, groups: int = 8) -> int:
    return groups if c_hid % groups == 0 else 1


class InceptionBlock(nn.Module):
    """1x1 conv, then the sum of grouped convs with kernels 3/5/7/11, each + GroupNorm + LeakyReLU."""

    def __init__(self, c_in: int, c_hid: int, c_out: int, kernels=(3, 5, 7, 11), groups: int = 8):
        super().__init__()
        groups = _incep_groups(c_hid, groups)
        self.conv1 = nn.Conv2d(c_in, c_hid, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_hid, c_out, k, padding=k // 2, groups=groups),
                nn.GroupNorm(groups, c_out),
                nn.LeakyReLU(0.2),
            )
            for k in kernels
        )

    def forward(self, x):
        x = self.conv1(x)
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        return y


class IncepUTranslator(nn.Module):
    """UNet of inception blocks: n encoder blocks, n decoder blocks fed [z, skip] concatenations."""

    def __init__(self, channels: int, hid: int, n: int):
        super().__init__()
        half = hid // 2
        self.enc = nn.ModuleList(InceptionBlock(channels if i == 0 else hid, half, hid) for i in range(n))
        self.dec = nn.ModuleList(
            InceptionBlock(hid if i == 0 else 2 * hid, half, channels if i == n - 1 else hid)
            for i in range(n)
        )

    def forward(self, x):
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        x = self.dec[0](x)
        # the last encoder output feeds dec[0] directly; the others are skipped in reverse order
        for block, skip in zip(self.dec[1:], reversed(skips[:-1])):
            x = block(torch.cat([x, skip], dim=1))
        return x


# ---------------------------------------------------------------- the model


class SimVP(nn.Module):
    """(B, T, C, H, W) frames 0..T-1 -> (B, T, C, H, W) frames T..2T-1."""

    def __init__(self, config: SimVPConfig):
        super().__init__()
        self.config = config
        T, C, _, _ = config.in_shape
        self.encoder = Encoder(C, config.hid_S, config.N_S, config.spatio_kernel_enc)
        self.decoder = Decoder(config.hid_S, C, config.N_S, config.spatio_kernel_dec)
        if config.translator == "gsta":
            self.translator = GSTATranslator(
                T * config.hid_S, config.hid_T, config.N_T, config.mlp_ratio, config.drop, config.drop_path
            )
        else:
            self.translator = IncepUTranslator(T * config.hid_S, config.hid_T, config.N_T)
        # NHWC lets oneDNN (CPU) and cuDNN skip layout reorders around every conv; on CPU it
        # about halves a gSTA training step (depthwise and thin convs gain most).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, sampling_ratio: float = 0.0):
        """`target` and `sampling_ratio` are accepted for a uniform trainer call and ignored."""
        B, T, C, H, W = x.shape
        latent, skip = self.encoder(_nhwc(x.reshape(B * T, C, H, W)))
        _, c, h, w = latent.shape
        hidden = self.translator(_nhwc(latent.reshape(B, T * c, h, w)))
        y = self.decoder(_nhwc(hidden.reshape(B * T, c, h, w)), skip)
        return y.reshape(B, T, C, H, W).contiguous()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


Config, Model = SimVPConfig, SimVP
