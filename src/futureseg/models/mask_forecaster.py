"""Mask-space forecaster of the `masks` route: masks of frames 0…10 in, logits of 11…21 out.

The best published results on this task forecast in mask space: segment the input
frames, then run a frame predictor over the mask sequence. Here every class id becomes a
learnt embedding (`embed_dim` channels), the sequence of embeddings goes through one of
the frame predictors of `futureseg.models.predictors` (SimVP, ConvLSTM, ConvGRU, with their own configs),
and a 1x1 conv reads 49 logits out of each predicted embedding.

Residual on a prior: the logits of future frame k are `delta_k + residual_scale *
onehot(prior_k)` with the read-out conv initialised to zero, so an untrained forecaster
predicts exactly its prior, and training only has to learn what the prior misses.
`prior: motion` takes route motion's masks of frames 11…21 (each object moved by its own
motion, `futureseg.core.motion`), so the forecaster learns collisions, entries and
occlusion rather than motion from scratch (F2MF, Šarić et al. 2020, splits the work the
same way); `prior: copy_last` takes mask 10 for every future frame, which in a CPU
run's step budget the forecaster never left (docs/results.md). `residual_scale` (default 8) sets
how sure that starting guess is: at 8, with the other 48 logits at 0, softmax puts 0.98
on the prior's class.

`prior_input`: the core sees the prior too, each time step t carrying the embeddings of
input mask t and of prior mask 11+t (2 * `embed_dim` channels), so it can learn where the
prior is wrong. Without it (model files written before it existed) the core saw only the
input masks, and on every dataset measured the forecaster never left its prior (docs/results.md).

Interface (as the U-Net's, `futureseg.models.unet`):

    MaskForecaster(config)             config: MaskForecasterConfig of plain values
    model(masks, prior=None) -> logits masks: int64 (B, 11, H, W) class ids of frames 0…10;
                                       prior: int64 (B, 11, H, W) of frames 11…21 (needed
                                       when config.prior is "motion", else ignored);
                                       logits: float (B, 11, num_classes, H, W) of frames 11…21
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from futureseg.core.errors import ConfigError

KEY = "forecaster"
# a sequence prior (masks 11…21 given with the input: route motion's or route dynamics') or mask 10 copied
PRIORS = ("motion", "dynamics", "copy_last")


@dataclass
class MaskForecasterConfig:
    size: tuple[int, int]  # (H, W) of the masks
    core: str = "simvp"  # a predictor of futureseg.models.predictors: the one run over the embeddings
    core_config: dict = field(default_factory=dict)  # that predictor's own settings
    n_input: int = 11
    num_classes: int = 49
    embed_dim: int = 16
    residual_scale: float = 8.0
    # "copy_last": a model file written before priors existed forecast on copy-last, and
    # still reads so; config.yaml's forecaster.prior chooses for new ones.
    prior: str = "copy_last"
    # True: the core sees the prior beside the input masks (time step t carries the
    # embeddings of input mask t and of prior mask 11+t), so it can learn where the prior is
    # wrong. False: a model file written before this field existed, whose core saw the
    # input masks alone, and still reads so; config.yaml's sections choose for new ones.
    prior_input: bool = False

    def __post_init__(self):
        self.size = tuple(self.size)
        from futureseg.models import predictors

        if self.core not in predictors.names():
            raise ConfigError(f"{KEY}.model must be one of {', '.join(predictors.names())}, got {self.core!r}")
        for name in ("embed_dim", "num_classes", "n_input"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{KEY}.{name} must be a positive integer, got {value!r}")
        if self.prior not in PRIORS:
            raise ConfigError(f"{KEY}.prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if not isinstance(self.prior_input, bool):
            raise ConfigError(f"{KEY}.prior_input must be true or false, got {self.prior_input!r}")
        if not self.residual_scale >= 0:
            raise ConfigError(f"{KEY}.residual_scale must be 0 or more, got {self.residual_scale}")


class MaskForecaster(nn.Module):
    def __init__(self, config: MaskForecasterConfig):
        super().__init__()
        from futureseg.models import predictors

        self.config = config
        self.embed = nn.Embedding(config.num_classes, config.embed_dim)
        # with prior_input each time step carries two embeddings (input mask, prior mask),
        # from the one table: a class means the same wherever it is seen
        channels = config.embed_dim * (2 if config.prior_input else 1)
        try:
            self.core = predictors.build(config.core, (config.n_input, channels, *config.size), config.core_config)
        except ConfigError as exc:  # name the forecaster's section, not the predictor's
            raise ConfigError(str(exc).replace("predictor.", f"{KEY}.")) from None
        self.read_out = nn.Conv2d(channels, config.num_classes, 1)
        nn.init.zeros_(self.read_out.weight)
        nn.init.zeros_(self.read_out.bias)

    def forward(self, masks: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        B, T, H, W = masks.shape
        if self.config.prior == "copy_last":
            base = masks[:, -1:].expand(B, T, H, W)  # mask 10 for every future frame
        elif prior is None or prior.shape != masks.shape:
            raise ValueError(f"forecaster with prior {self.config.prior!r}: needs the prior masks of frames 11…21, shaped like "
                             f"the input {tuple(masks.shape)}, got {None if prior is None else tuple(prior.shape)}")
        else:
            base = prior
        x = self.embed(masks)  # (B, T, H, W, E)
        if self.config.prior_input:
            # input mask t beside prior mask 11+t: SimVP's decoder adds step t's encoder
            # features to output t, so the prior of a frame reaches that frame's logits directly
            x = torch.cat([x, self.embed(base)], dim=-1)
        y = self.core(x.permute(0, 1, 4, 2, 3))  # (B, T, channels, H, W): frames T…2T-1
        delta = self.read_out(y.reshape(B * T, -1, H, W)).reshape(B, T, -1, H, W)
        # in fp32 even under bf16 autocast: bf16's spacing near 8 is 1/16, so a small delta
        # added to the prior's logit there would vanish (8 + 0.02 == 8)
        onehot = F.one_hot(base, self.config.num_classes).permute(0, 1, 4, 2, 3).float()
        return delta.float() + self.config.residual_scale * onehot
