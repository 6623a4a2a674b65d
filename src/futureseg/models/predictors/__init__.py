"""The frame-predictor registry: `predictor.model` (and `forecaster.model`) names a module of
this package. Adding a predictor is adding one module here; the trainer, the rules, the
mask forecaster and the model files find it by its name.

A predictor module defines

    Config         a dataclass of plain values, the only place its defaults live; its first
                   field is in_shape = (T, C, H, W) of the input clip; __post_init__ raises
                   ConfigError naming `predictor.<name>.<key>` for a bad value
    Model(config)  an nn.Module: model(x, target=None, sampling_ratio=0.0) maps frames
                   0…T-1 (B, T, C, H, W) to frames T…2T-1; during training the trainer passes
                   the true future frames and the teacher-forcing probability, which models
                   without scheduled sampling ignore

The registry (nothing here imports torch until a model is built):

    names()                          the predictors, by module name
    build(name, in_shape, settings)  the model from its config section (a plain dict)
    model_config(model)              the built model's whole config as plain values (what
                                     model files store, defaults included)
    load(path)                       (model with its weights, model file) of the --out of
                                     `futureseg train-predictor`
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

from futureseg.core.errors import ConfigError, FuturesegError


def names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def module(name: str):
    if name not in names():
        raise ConfigError(f"predictor.model must be one of {', '.join(names())}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def build(name: str, in_shape, settings: dict):
    """Predictor `name` for clips of `in_shape` = (T, C, H, W); `settings` are its config
    fields (lists become the tuples the configs hold)."""
    predictor = module(name)
    known = {f.name for f in dataclasses.fields(predictor.Config)} - {"in_shape"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting predictor.{name}.{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    return predictor.Model(predictor.Config(in_shape=tuple(in_shape), **kwargs))


def model_config(model) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.config).items() if k != "in_shape"}


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load(path: str | Path):
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    missing = [k for k in ("model_name", "model_config", "in_shape", "mean", "std") if k not in state]
    if missing:
        raise FuturesegError(f"{path}: not a predictor model file (no {', '.join(missing)}); "
                             "expected the --out of `futureseg train-predictor`")
    model = build(state["model_name"], state["in_shape"], state["model_config"])
    model.load_state_dict(state["model"])
    return model, state


def scheduled_sampling_ratio(step: int, total_steps: int, start: float = 1.0, end: float = 0.0) -> float:
    """Teacher-forcing probability at `step`: linear from `start` (step 0) to `end` (total_steps on)."""
    if total_steps <= 0:
        return end
    progress = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * progress
