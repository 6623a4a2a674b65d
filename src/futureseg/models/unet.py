"""U-Net (Ronneberger et al. 2015): per-pixel class logits of an image, or of a stack of frames.

Two routes use it: the semantic segmenter (one RGB frame, 3 channels, `segmenter.unet`)
and the `direct` route (the 11 input frames stacked, 33 channels, `direct.unet`). Both
train it with a per-pixel loss from scratch, so it is the plain recipe that segments the
task's real frames at val IoU ~0.97 in published results: `depth` levels of two 3x3
conv-BN-ReLU blocks, channels doubling at each level from `base_channels`, max-pool
down, transposed-conv up, skip connections by concatenation, a 1x1 conv to the logits.

Interface (shared by every dense model of futureseg, what the trainers and `segment` use):

    UNet(config)              config: UNetConfig of plain values; model files store
                              `dataclasses.asdict(config)` and rebuild from it
    model(x) -> logits        x: float (B, in_channels, H, W) on the 0…1 scale (frames
                              divided by 255); the model normalises with `image_mean`/
                              `image_std` itself, so callers never need the statistics.
                              logits: float (B, num_classes, H, W), same H, W as x (any
                              size: the input is padded to a multiple of 2^(depth-1)
                              and the logits cropped back)
    model.encode(x) -> (features, context), model.decode(features, context) -> logits
                              the same forward split at the bottleneck (`bottleneck_channels`
                              channels there), for the recurrent segmenter's cell
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError


@dataclass
class UNetConfig:
    in_channels: int = 3
    num_classes: int = 49
    base_channels: int = 32  # channels of the first level; each level down doubles them
    depth: int = 4  # levels, including the bottom one: 4 levels = 3 poolings
    # per-input-channel normalisation on the 0…1 scale (repeated when the channels are
    # stacked frames); the dataset's own statistics from stage 1
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.25, 0.25, 0.25)
    key: str = "segmenter.unet"  # the config section, for error messages

    def __post_init__(self):
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        for name in ("in_channels", "num_classes", "base_channels", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.key}.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ConfigError(f"{self.key}.num_classes must be at least 2, got {self.num_classes}")
        if len(self.image_mean) != len(self.image_std) or self.in_channels % len(self.image_mean):
            raise ConfigError(f"{self.key}: image_mean/image_std ({len(self.image_mean)} values) must divide "
                              f"the {self.in_channels} input channels")
        if min(self.image_std) <= 0:
            raise ConfigError(f"{self.key}.image_std must be positive, got {self.image_std}")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for width in widths:
            self.down.append(conv_block(c_in, width))
            c_in = width
        self.up = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.up_blocks = nn.ModuleList(conv_block(w * 2, w) for w in reversed(widths[:-1]))
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)
        repeats = config.in_channels // len(config.image_mean)
        self.register_buffer("mean", torch.tensor(config.image_mean * repeats).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std * repeats).view(1, -1, 1, 1), persistent=False)

    @property
    def bottleneck_channels(self) -> int:
        """Channels of `encode`'s features (the bottom level's), what a recurrent cell there carries."""
        return self.config.base_channels * 2 ** (self.config.depth - 1)

    def encode(self, x: torch.Tensor):
        """(bottleneck features, context for `decode`): the U-Net split at its bottom level,
        so the recurrent segmenter (models/temporal_segmenter.py) can carry a state there.
        decode(*encode(x)) is forward(x), operation for operation."""
        height, width = x.shape[-2:]
        multiple = 2 ** (self.config.depth - 1)
        pad_h, pad_w = -height % multiple, -width % multiple
        x = (x - self.mean) / self.std
        if pad_h or pad_w:  # reflect, so the border the net sees looks like the frame's own
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(pad_h, pad_w) else "replicate")
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        return x, (skips[:-1], height, width)

    def decode(self, x: torch.Tensor, context) -> torch.Tensor:
        skips, height, width = context
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))
