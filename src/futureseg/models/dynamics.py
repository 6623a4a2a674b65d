"""Dynamics model of route `dynamics`: how the objects of a video move, learnt from their tracks.

Route motion moves every object at constant velocity, reflected at the borders. The videos
teach more than that: friction slows objects, perspective makes near ones bigger and faster,
they bounce off the walls and off each other. This model reads the states of all objects of a
video over the last `history` input frames (`core.motion.object_tracks`: centroid, area, box)
and gives each object's centroid and log-scale in each of the next 11 frames. It is the
object-centric view of video prediction (interaction networks, Battaglia et al. 2016;
SlotFormer, Wu et al. 2023), on objects that the masks make explicit.

Residual on the rule: the output is added to route motion's constant-velocity centroids
(`core.motion.track_future`) and the read-out is initialised to zero, so an untrained model
moves every object exactly as route motion does (and scales it by 1), and training only
learns what the rule misses. Objects see each other through `layers` of self-attention over
the set of objects of a video (collisions), and the borders through their absolute
positions and boxes (bounces); `layers: 0` is a per-object MLP.

Units: positions are in pixels; the network sees and gives them in units of
`min(H, W) / 16` (5 px at 80×120), so its numbers stay near 1 at any frame size.

Interface (as the Mask R-CNN backends' contract, `models/maskrcnn_torchvision.py`):

    DynamicsConfig              plain values; model files store `dataclasses.asdict` of it
    Dynamics(config)            nn.Module
    model(x, valid) -> (B, K, 11, 3) float: per object, the residual (rows, cols, in units)
                                on the rule's centroid and the log-scale of frames t+1…t+11;
                                x: float (B, K, n_features) from `inputs`; valid: bool (B, K),
                                False on padding
    inputs(classes, states, t, size, config, velocity_frames, bounce) -> (x (K, n_features),
                                base (K, 11, 2) the rule's centroids): the objects present at
                                frame t of tracks (classes, states) of object_tracks
    forecast(model, masks, frames, motion_config) -> (11, H, W) uint8: the route on one video
                                (masks (T, H, W) of frames 0…T-1, frames or None), objects
                                are route motion's (`core.motion.moving_objects`), each moved
                                by the rule plus its class's residual and scaled, painted by
                                `core.motion.paint`; eval mode, no grad
    load(path) -> (model, model file contents) of a file written by `futureseg train-dynamics`

A config value out of range raises ConfigError naming `dynamics.<key>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from futureseg.core import motion
from futureseg.core.classes import MATERIALS, SHAPES
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.models.checks import is_int

KEY = "dynamics"
HORIZON = motion.HORIZON
OUTPUTS = 3  # residual rows, residual cols, log-scale
# A training window ends at frames FIRST_WINDOW_END…10 of a 22-frame video (its targets are
# the 11 frames after its end); object_tracks measures the flow velocity there.
FIRST_WINDOW_END = 4
PER_FRAME = 4  # present, rows and cols from the last frame's centroid, log area ratio
STATIC = 2 + 1 + 4 + 2 + 6 + len(SHAPES) + len(MATERIALS)
# Scales are clipped to 1/4…4: an object 4× bigger or smaller than at the last input frame
# would be the network's error, not perspective.
MAX_LOG_SCALE = math.log(4.0)


@dataclass
class DynamicsConfig:
    size: tuple[int, int]  # (H, W) of the masks: sets the unit of positions
    # input frames seen per object, the last included: 6 frames carry a bounce or a slowdown,
    # and a window ending at frame 4 still has 5 of them
    history: int = 6
    width: int = 64
    # self-attention layers over the objects of a video (0: each object alone)
    layers: int = 2
    heads: int = 4

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size)
        for name, low in (("history", 1), ("width", 1), ("layers", 0), ("heads", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"{KEY}.{name} must be an integer >= {low}, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"{KEY}.width ({self.width}) must be a multiple of {KEY}.heads ({self.heads})")

    @property
    def unit(self) -> float:
        return min(self.size) / 16.0

    @property
    def n_features(self) -> int:
        return self.history * PER_FRAME + STATIC


class Dynamics(nn.Module):
    def __init__(self, config: DynamicsConfig):
        super().__init__()
        self.config = config
        c = config.width
        self.encode = nn.Sequential(nn.Linear(config.n_features, c), nn.GELU(), nn.Linear(c, c))
        self.interact = nn.ModuleList(
            nn.TransformerEncoderLayer(c, config.heads, 2 * c, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(config.layers))
        self.head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, HORIZON * OUTPUTS))
        # zero read-out: an untrained model is the rule (residual 0, scale 1)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        for layer in self.interact:
            h = layer(h, src_key_padding_mask=~valid)
        out = self.head(h).reshape(*x.shape[:2], HORIZON, OUTPUTS)
        return out * valid[..., None, None]


def _class_factors(classes: np.ndarray) -> np.ndarray:
    """(K, shapes + materials) one-hots of each class id (id = shape*16 + material*8 + colour + 1)."""
    index = np.asarray(classes, dtype=np.int64) - 1
    shape = np.eye(len(SHAPES))[np.clip(index // 16, 0, len(SHAPES) - 1)]
    material = np.eye(len(MATERIALS))[(index // 8) % len(MATERIALS)]
    return np.concatenate([shape, material], axis=1)


def mirror(states: np.ndarray, width: int) -> np.ndarray:
    """Tracks of the left-right mirrored video: columns, boxes and flow reflected."""
    out = states.copy()
    s = motion.STATE
    present = states[..., s["present"]] > 0
    out[..., s["col"]] = np.where(present, width - 1 - states[..., s["col"]], 0)
    out[..., s["left"]] = np.where(present, width - 1 - states[..., s["right"]], 0)
    out[..., s["right"]] = np.where(present, width - 1 - states[..., s["left"]], 0)
    out[..., s["flow_col"]] = -states[..., s["flow_col"]]
    return out


def inputs(classes, states, t: int, size, config: DynamicsConfig, velocity_frames: int, bounce: bool):
    """(x, base, present): the network's features of the objects present at frame t, the rule's
    centroids of frames t+1…t+11 for them, and which of the K tracks they are (bool (K,))."""
    s = motion.STATE
    present = states[:, t, s["present"]] > 0
    states = states[present]
    h, w = size
    unit = config.unit
    velocity = motion.track_velocity(states, t, velocity_frames)
    base = motion.track_future(states, t, velocity, size, bounce)
    k = len(states)
    centre = states[:, t, s["row"] : s["col"] + 1]
    area = np.maximum(states[:, t, s["area"]], 1.0)
    frames = np.arange(t - config.history + 1, t + 1)
    past = np.zeros((k, config.history, PER_FRAME), dtype=np.float32)
    seen = frames >= 0
    window = states[:, frames[seen]]
    on = window[..., s["present"]] > 0
    past[:, seen, 0] = on
    past[:, seen, 1:3] = np.where(on[..., None], (window[..., s["row"] : s["col"] + 1] - centre[:, None]) / unit, 0)
    with np.errstate(divide="ignore"):
        past[:, seen, 3] = np.where(on, np.log(np.maximum(window[..., s["area"]], 1.0) / area[:, None]), 0)
    scale = np.array([h, w], dtype=np.float64)
    box = states[:, t, s["top"] : s["right"] + 1] / np.tile(scale, 2) * 2 - 1
    static = np.concatenate([
        centre / scale * 2 - 1,
        np.sqrt(area)[:, None] / unit,
        box,
        velocity / unit,
        ((base[:, [0, 5, 10]] - centre[:, None]) / unit).reshape(k, 6),
        _class_factors(classes[present]),
    ], axis=1)
    x = np.concatenate([past.reshape(k, -1), static], axis=1).astype(np.float32)
    return x, base, present


@torch.inference_mode()
def predict(model: Dynamics, x: np.ndarray, base: np.ndarray, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(centroids (K, 11, 2) in pixels, scales (K, 11)) of one video's objects."""
    if not len(x):
        return np.zeros((0, HORIZON, 2)), np.ones((0, HORIZON))
    was_training = model.training
    model.eval()
    out = model(torch.from_numpy(x)[None].to(device), torch.ones(1, len(x), dtype=torch.bool, device=device))
    model.train(was_training)
    out = out[0].double().cpu().numpy()
    return base + out[..., :2] * model.config.unit, np.exp(np.clip(out[..., 2], -MAX_LOG_SCALE, MAX_LOG_SCALE))


def forecast(model: Dynamics, masks, frames=None, motion_config: motion.MotionConfig | None = None,
             device="cpu") -> np.ndarray:
    """(11, H, W) uint8: the masks of the 11 frames after the last of `masks` (see the module
    docstring)."""
    motion_config = motion_config or motion.MotionConfig()
    masks = np.asarray(masks)
    size = masks.shape[1:]
    if tuple(size) != model.config.size:
        raise ValueError(f"dynamics model of {model.config.size} masks given masks of {tuple(size)}")
    objects = motion.moving_objects(masks, frames, motion_config)
    if not objects:
        return np.zeros((HORIZON, *size), dtype=np.uint8)
    t = len(masks) - 1
    classes, states = motion.object_tracks(masks)
    if frames is not None and motion_config.flow != "none":
        # the class's flow velocity is the rule's of its largest piece: the flow is measured once
        for obj in sorted(objects, key=lambda o: len(o.rows)):
            states[np.searchsorted(classes, obj.class_id), t, motion.STATE["flow_row"] :] = obj.velocity
    x, base, present = inputs(classes, states, t, size, model.config, motion_config.velocity_frames,
                              motion_config.bounce)
    centroids, scales = predict(model, x, base, device)
    row = {int(c): k for k, c in enumerate(classes[present])}
    # each object (a component, as route motion's) keeps the rule's own centroids and gets its
    # class's residual: the pieces of one object move alike, and an untrained model is the rule
    moved = [obj.future + (centroids[row[obj.class_id]] - base[row[obj.class_id]]) for obj in objects]
    scaled = [scales[row[obj.class_id]] for obj in objects]
    return motion.paint(objects, size, moved, scaled)


def load(path: str | Path) -> tuple[Dynamics, dict]:
    """(model, model file contents) of a file of `futureseg train-dynamics`."""
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != "dynamics" or "model_config" not in state:
        raise FuturesegError(f"{path}: not a dynamics model (kind {state.get('kind')!r}); "
                             "was it written by futureseg train-dynamics?")
    model = Dynamics(DynamicsConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model, state

