"""The mask-forecaster registry (route `masks`): `forecaster.model` names the frame predictor
(of `futureseg.models.predictors`) the forecaster runs over its mask embeddings.

    build(name, size, settings)  a MaskForecaster over (H, W) masks; `settings` is the
                                 forecaster's config section for that model: its own
                                 keys (embed_dim, residual_scale, prior_input) and the frame
                                 predictor's (its Config fields)
    load(path)                   (model with its weights, model file contents) of a file
                                 written by `train-forecaster`
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from futureseg.core.errors import FuturesegError


def names() -> tuple[str, ...]:
    from futureseg.models import predictors

    return predictors.names()


def build(name: str, size, settings: dict):
    from futureseg.models.mask_forecaster import MaskForecaster, MaskForecasterConfig

    own = {f.name for f in fields(MaskForecasterConfig)} - {"size", "core", "core_config"}
    config = MaskForecasterConfig(size=tuple(size), core=name, **{k: v for k, v in settings.items() if k in own},
                                  core_config={k: v for k, v in settings.items() if k not in own})
    return MaskForecaster(config)


def model_config(model) -> dict:
    """The built model's whole config as plain values (what model files store)."""
    config = asdict(model.config)
    config["core_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config["core_config"].items()}
    config["size"] = list(config["size"])
    return config


def load(path: str | Path):
    from futureseg.models.mask_forecaster import MaskForecaster, MaskForecasterConfig
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != "mask_forecaster" or "model_config" not in state:
        raise FuturesegError(f"{path}: not a mask forecaster (no kind 'mask_forecaster'); "
                             "expected the --out of futureseg train-forecaster")
    model = MaskForecaster(MaskForecasterConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model, state
