"""The per-pixel segmenters (`segmenter.model: unet | enet`) by name, and the recurrent cells
that can wrap them (`segmenter.temporal`): what both the segmenter registry
(models/segmenters.py) and the recurrent segmenter (models/temporal_segmenter.py) build
from, so that neither imports the other back. Nothing here imports torch until a model is
built (the verbs' flags read the names).
"""

from __future__ import annotations

from futureseg.core.errors import ConfigError

PIXEL_MODELS = ("unet", "enet")  # per-pixel logits (N, 49, H, W), trained by train_segmenter.train_pixel
# segmenter.temporal: none (per frame) or the recurrent cell of models/temporal_segmenter.py
TEMPORAL = ("none", "convgru", "convlstm")


def model_class(name: str):
    """(module class, config dataclass) of a per-pixel model."""
    if name == "unet":
        from futureseg.models.unet import UNet, UNetConfig

        return UNet, UNetConfig
    if name == "enet":
        from futureseg.models.enet import ENet, ENetConfig

        return ENet, ENetConfig
    raise ConfigError(f"segmenter.model: {name!r} is not one of {', '.join(PIXEL_MODELS)} (the per-pixel models)")


def build_pixel_model(name: str, config: dict):
    """A per-pixel model from its config dict; a key its config does not have (a model file
    of another kind, say) is named."""
    from dataclasses import fields

    module, config_class = model_class(name)
    unknown = sorted(set(config) - {f.name for f in fields(config_class)})
    if unknown:
        raise ConfigError(f"segmenter.{name}: unknown setting {unknown[0]!r} (not a {config_class.__name__} field)")
    return module(config_class(**config))
