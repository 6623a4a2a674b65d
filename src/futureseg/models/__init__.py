"""Frame-prediction models: frames 0..10 in, frames 11..21 out, both (B, 11, C, H, W).

Every predictor is called the same way by the trainer: `model(x, target=y, sampling_ratio=r)`;
models without scheduled sampling ignore the last two.
"""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from futureseg.errors import ConfigError
from futureseg.models.convlstm import ConvLSTM, ConvLSTMConfig, scheduled_sampling_ratio
from futureseg.models.simvp import SimVP, SimVPConfig

PREDICTORS = {
    "simvp": (SimVPConfig, SimVP),
    "convlstm": (ConvLSTMConfig, ConvLSTM),
}

__all__ = [
    "PREDICTORS",
    "ConvLSTM",
    "ConvLSTMConfig",
    "SimVP",
    "SimVPConfig",
    "build_predictor",
    "count_parameters",
    "scheduled_sampling_ratio",
]


def build_predictor(name: str, in_shape, **kwargs) -> nn.Module:
    """Build predictor `name` for clips of `in_shape` = (T, C, H, W); kwargs are its config fields."""
    if name not in PREDICTORS:
        raise ConfigError(f"predictor.model must be one of {', '.join(PREDICTORS)}, got {name!r}")
    config_class, model_class = PREDICTORS[name]
    known = {f.name for f in fields(config_class)} - {"in_shape"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting predictor.{name}.{unknown[0]} (known: {', '.join(sorted(known))})"
        )
    return model_class(config_class(in_shape=tuple(in_shape), **kwargs))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
