"""ENet (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
Segmentation"): per-pixel class logits of an RGB frame, `segmenter.model: enet`.

A large encoder and a small decoder, built for speed: the frame is halved at once, the
work is done at 1/8 resolution by residual bottlenecks, and the decoder only upsamples.

    initial       3x3 conv stride 2 (width - 3 filters) beside a 2x2 max-pool of the
                  input, concatenated: `width` channels at 1/2
    stage 1       downsampling bottleneck to 4·width at 1/4, 4 regular bottlenecks
                  (spatial dropout 0.01)
    stages 2, 3   (stage 2 begins with a downsampling bottleneck to 8·width at 1/8)
                  regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8,
                  asymmetric 5, dilated 16 (spatial dropout 0.1)
    stage 4       upsampling bottleneck to 4·width at 1/4, 2 regular bottlenecks
    stage 5       upsampling bottleneck to width at 1/2, 1 regular bottleneck
    fullconv      2x2 transposed conv stride 2 to the class logits at full size

A bottleneck is a residual block: a 1x1 projection to a quarter of its input channels
(`internal_ratio`), the main conv (3x3 regular or dilated, or 5x1 then 1x5), a 1x1
expansion to its output channels, each with BN and PReLU (the last with BN alone),
spatial dropout, added to the main branch, then PReLU.
No conv ahead of a BN has a bias (the paper's: BN's shift is the bias). Downsampling: the
projection is a 2x2 conv of stride 2 and the main branch max-pools, keeping the indices,
zero-padded to the wider channel count. Upsampling: the main branch is a 1x1 conv to the
narrower count, then max-unpooled with the indices of the matching downsampling, so the
decoder puts the features back where the encoder's maxima were; the extension's main conv
is a 3x3 transposed conv of stride 2.

`width` scales every channel count (the paper's 16 gives 16/64/128 and 0.36 M parameters
at 49 classes). The dilations are the paper's whatever the frame size: on 80x120 frames
the 1/8 map is 10x15, where a dilation of 16 reaches only the padding and its 3x3 conv
acts as a 1x1.

Interface (the U-Net's, `futureseg.models.unet`: what train-segmenter and `segment` use):

    ENet(config)              config: ENetConfig of plain values; model files store
                              `dataclasses.asdict(config)` and rebuild from it
    model(x) -> logits        x: float (B, 3, H, W) on the 0…1 scale, normalised here with
                              `image_mean`/`image_std`; logits: float (B, num_classes, H, W),
                              same H, W as x (any size: three halvings need a multiple of
                              8, so the input is padded to one and the logits cropped back)
    model.encode(x) -> (features, context), model.decode(features, context) -> logits
                              the same forward split after stage 3 (the bottleneck,
                              `bottleneck_channels`), for the recurrent segmenter's cell
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError

MULTIPLE = 8  # three halvings: initial block, stage 1, stage 2
# Stages 2 and 3 after stage 2's downsampling: (kind, dilation or kernel); the paper's Table 1.
STAGE_2_3 = (("regular", 1), ("dilated", 2), ("asymmetric", 5), ("dilated", 4),
             ("regular", 1), ("dilated", 8), ("asymmetric", 5), ("dilated", 16))


@dataclass
class ENetConfig:
    in_channels: int = 3
    num_classes: int = 49
    width: int = 16  # the initial block's channels; stage 1 has 4x, stages 2-3 8x (16/64/128)
    internal_ratio: int = 4  # a bottleneck's projection keeps 1/internal_ratio of its channels
    dropout: float = 0.1  # spatial dropout of stages 2-5 (stage 1: a tenth of it, 0.01)
    # per-channel normalisation on the 0…1 scale: the dataset's own statistics from stage 1
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.25, 0.25, 0.25)
    key: str = "segmenter.enet"  # the config section, for error messages

    def __post_init__(self):
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        for name in ("in_channels", "num_classes", "width", "internal_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.key}.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(f"{self.key}.num_classes must be at least 2, got {self.num_classes}")
        # the initial block's conv gives width - in_channels of the channels (the pool the rest)
        if self.width <= self.in_channels:
            raise ConfigError(f"{self.key}.width must exceed the {self.in_channels} input channels, got {self.width}")
        if self.width // self.internal_ratio < 1:
            raise ConfigError(f"{self.key}.internal_ratio {self.internal_ratio} leaves no channels of "
                              f"width {self.width}")
        if isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"{self.key}.dropout must lie in [0, 1), got {self.dropout!r}")
        if len(self.image_mean) != self.in_channels or len(self.image_std) != self.in_channels:
            raise ConfigError(f"{self.key}: image_mean/image_std need {self.in_channels} values, "
                              f"got {len(self.image_mean)}/{len(self.image_std)}")
        if min(self.image_std) <= 0:
            raise ConfigError(f"{self.key}.image_std must be positive, got {self.image_std}")


def bn_prelu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.PReLU(channels)]


class InitialBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out - c_in, 3, stride=2, padding=1, bias=False)
        self.out = nn.Sequential(*bn_prelu(c_out))

    def forward(self, x):
        return self.out(torch.cat([self.conv(x), F.max_pool2d(x, 2)], dim=1))


class Bottleneck(nn.Module):
    """Regular, dilated or asymmetric bottleneck, or the downsampling one (`down`), which
    also returns the max-pool indices for the decoder."""

    def __init__(self, c_in: int, c_out: int, ratio: int, dropout: float, kind: str = "regular",
                 size: int = 1, down: bool = False):
        super().__init__()
        inner = c_in // ratio
        self.down, self.pad = down, c_out - c_in
        if down:
            project = nn.Conv2d(c_in, inner, 2, stride=2, bias=False)
        else:
            project = nn.Conv2d(c_in, inner, 1, bias=False)
        if kind == "asymmetric":
            main = [nn.Conv2d(inner, inner, (size, 1), padding=(size // 2, 0), bias=False),
                    nn.Conv2d(inner, inner, (1, size), padding=(0, size // 2), bias=False)]
        else:  # regular (size 1) or dilated (size = the dilation)
            main = [nn.Conv2d(inner, inner, 3, padding=size, dilation=size, bias=False)]
        self.ext = nn.Sequential(project, *bn_prelu(inner), *main, *bn_prelu(inner),
                                 nn.Conv2d(inner, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.Dropout2d(dropout))
        self.act = nn.PReLU(c_out)

    def forward(self, x):
        ext = self.ext(x)  # a downsampling one's projection strides by itself
        main, indices = F.max_pool2d(x, 2, return_indices=True) if self.down else (x, None)
        if self.pad:  # zero channels, so the sum has the wider count
            main = F.pad(main, (0, 0, 0, 0, 0, self.pad))
        return self.act(main + ext), indices


class UpBottleneck(nn.Module):
    """Upsampling bottleneck: the main branch max-unpooled with a downsampling's indices,
    the extension through a 3x3 transposed conv of stride 2."""

    def __init__(self, c_in: int, c_out: int, ratio: int, dropout: float):
        super().__init__()
        inner = c_in // ratio
        self.main = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.ext = nn.Sequential(
            nn.Conv2d(c_in, inner, 1, bias=False), *bn_prelu(inner),
            nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1, bias=False), *bn_prelu(inner),
            nn.Conv2d(inner, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(c_out)

    def forward(self, x, indices):
        main = F.max_unpool2d(self.main(x), indices, 2)  # the input was a multiple of 8: exact sizes
        return self.act(main + self.ext(x))


class ENet(nn.Module):
    def __init__(self, config: ENetConfig):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.width, 4 * config.width, 8 * config.width
        r, p = config.internal_ratio, config.dropout
        self.initial = InitialBlock(config.in_channels, c0)
        self.down1 = Bottleneck(c0, c1, r, p / 10, down=True)
        self.stage1 = nn.ModuleList(Bottleneck(c1, c1, r, p / 10) for _ in range(4))
        self.down2 = Bottleneck(c1, c2, r, p, down=True)
        # stage 3 repeats stage 2 without its downsampling
        self.stage23 = nn.ModuleList(Bottleneck(c2, c2, r, p, kind, size) for _ in range(2) for kind, size in STAGE_2_3)
        self.up4 = UpBottleneck(c2, c1, r, p)
        self.stage4 = nn.ModuleList(Bottleneck(c1, c1, r, p) for _ in range(2))
        self.up5 = UpBottleneck(c1, c0, r, p)
        self.stage5 = Bottleneck(c0, c0, r, p)
        # 2x2 stride 2, as the authors' Torch code: each logit from one 1/2-scale pixel, 4/9 of a
        # 3x3's work at the largest size the net computes at
        self.fullconv = nn.ConvTranspose2d(c0, config.num_classes, 2, stride=2)
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, -1, 1, 1), persistent=False)

    @property
    def bottleneck_channels(self) -> int:
        """Channels of `encode`'s features (stage 3's, at 1/8), what a recurrent cell there carries."""
        return 8 * self.config.width

    def encode(self, x: torch.Tensor):
        """(stage 3's features at 1/8, context for `decode`): the encoder, so the recurrent
        segmenter (models/temporal_segmenter.py) can carry a state between it and the
        decoder. decode(*encode(x)) is forward(x), operation for operation."""
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
        x = (x - self.mean) / self.std
        if pad_h or pad_w:  # reflect, as the U-Net: the border the net sees looks like the frame's own
            mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        x = self.initial(x)
        x, indices1 = self.down1(x)
        for block in self.stage1:
            x = block(x)[0]
        x, indices2 = self.down2(x)
        for block in self.stage23:
            x = block(x)[0]
        return x, (indices1, indices2, height, width)

    def decode(self, x: torch.Tensor, context) -> torch.Tensor:
        indices1, indices2, height, width = context
        x = self.up4(x, indices2)
        for block in self.stage4:
            x = block(x)[0]
        x = self.stage5(self.up5(x, indices1))[0]
        return self.fullconv(x)[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))
