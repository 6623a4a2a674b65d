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
learns what the rule misses. Objects see each other through `layers` interaction layers
(collisions): `pairwise`, an interaction network's messages, one per pair of objects, from
both objects' features and their relative pose (positions, velocities, extents, the rule's
futures); or `attention`, self-attention over the set of objects; `layers: 0` is a
per-object MLP. They see the borders through their box's distance to each border and which
borders cut them (bounces, exits, entries). On 14,000 videos of tracks pairwise layers won
(docs/results.md, "Design at the real count"): attention led at 1,000 and 4,000 videos,
each object alone stopped gaining at 4,000.

Two more read-outs, each a setting: `exits`, the probability that each object is still in
view in each future frame (an object predicted out is not painted); `spread`, the standard
deviation of each future centroid (trained by a Gaussian NLL in its own head, on detached
features). The painter (`core.motion.paint_probable`) smears each silhouette by its spread,
weighs it by its probability of being in view, and paints a pixel with its most probable
object where that probability clears `paint_threshold`, a buffer of the model chosen on val
by the trainer. Without either setting the probabilities are 0 or 1 and the painting is
`core.motion.paint`'s.

Units: positions are in pixels; the network sees and gives them in units of
`min(H, W) / 16` (5 px at 80×120), so its numbers stay near 1 at any frame size.

Interface (as the Mask R-CNN backends' contract, `models/maskrcnn_torchvision.py`):

    DynamicsConfig              plain values; model files store `dataclasses.asdict` of it
    Dynamics(config)            nn.Module
    model(x, valid) -> (B, K, 11, OUTPUTS) float: per object and frame t+1…t+11, the residual
                                (rows, cols, in units) on the rule's centroid, the log-scale,
                                the logit of being in view and the centroid's spread (units);
                                x: float (B, K, n_features) from `inputs`; valid: bool (B, K),
                                False on padding
    inputs(classes, states, t, size, config, velocity_frames, bounce) -> (x (K, n_features),
                                base (K, 11, 2) the rule's centroids, present (K_all,) bool):
                                the objects present at frame t of tracks (classes, states)
    forecast(model, masks, frames, motion_config) -> (11, H, W) uint8: the route on one video
                                (masks (T, H, W) of frames 0…T-1, frames or None), objects
                                are route motion's (`core.motion.moving_objects`); the model
                                moves each class (the tracks' object) and every piece of it
                                keeps its offset from the class's centroid; eval mode, no grad.
                                `forecast_probabilities` gives the painter's probabilities
    load(path) -> (model, model file contents) of a file written by `futureseg train-dynamics`;
                                a file of an older format is refused, naming it and what to do

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
# per object and future frame: residual rows, residual cols (on the rule's centroid, in units),
# log-scale, the logit of being in view (`exits`), the centroid's spread in units (`spread`)
OUTPUTS = 5
RESIDUAL, LOG_SCALE, PRESENCE, SPREAD = slice(0, 2), 2, 3, 4
PER_FRAME = 4  # present, rows and cols from the last frame's centroid, log area ratio
# centre, size, box, velocity, the rule at 3 steps, the box's distance to each border, which
# borders it touches, shape and material
STATIC = 2 + 1 + 4 + 2 + 6 + 4 + 4 + len(SHAPES) + len(MATERIALS)
# The pose, last in the features and read by the pairwise layers alone (absolute positions
# are no input to the encoder): centroid, velocity, box extents around the centroid, the
# rule's centroid at 3 steps, all in units.
POSE = 2 + 2 + 4 + 6
RULE_STEPS = (0, 5, 10)  # steps of the rule's future (t+1, t+6, t+11) the features carry
PAIR = 2 + 2 + 1 + 4 + 4 + 6 + 3  # relative pose of a pair (`_pairs`)
INTERACTIONS = ("attention", "pairwise")
# Scales are clipped to 1/4…4: an object 4× bigger or smaller than at the last input frame
# would be the network's error, not perspective.
MAX_LOG_SCALE = math.log(4.0)
BORDER_UNITS = 8.0  # a box's distance to a border is seen up to this many units
# An untrained model paints every object (in view with probability sigmoid(4) = 0.98) at a
# spread of a tenth of a pixel: the means, as the rule. A spread is at least MIN_SPREAD_PX.
PRESENCE_INIT, SPREAD_INIT_PX, MIN_SPREAD_PX = 4.0, 0.1, 0.05
# model files of this format; an older one (no `format` key) is refused with what to do
FORMAT = 2


@dataclass
class DynamicsConfig:
    size: tuple[int, int]  # (H, W) of the masks: sets the unit of positions
    # input frames seen per object, the last included: 6 frames carry a bounce or a slowdown,
    # and a window ending at frame 4 still has 5 of them
    history: int = 6
    width: int = 64
    # interaction layers over the objects of a video (0: each object alone)
    layers: int = 2
    # attention: self-attention over the objects' features; pairwise: interaction-network
    # messages from each pair's own features and their relative pose (positions, velocities,
    # extents, the rule's futures)
    interaction: str = "pairwise"
    heads: int = 4  # attention heads (interaction: attention)
    # predict whether each object is still in view in each future frame; one predicted out
    # (it left the image) is not painted
    exits: bool = True
    # predict a spread with each future centroid (Gaussian NLL); the painter smears each
    # silhouette by it and paints a pixel where its most probable object is probable enough
    spread: bool = True

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size)
        for name, low in (("history", 1), ("width", 1), ("layers", 0), ("heads", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ConfigError(f"{KEY}.{name} must be an integer >= {low}, got {value!r}")
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"{KEY}.interaction must be one of {', '.join(INTERACTIONS)}, got {self.interaction!r}")
        for name in ("exits", "spread"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{KEY}.{name} must be true or false, got {getattr(self, name)!r}")
        if self.interaction == "attention" and self.width % self.heads:
            raise ConfigError(f"{KEY}.width ({self.width}) must be a multiple of {KEY}.heads ({self.heads})")

    @property
    def unit(self) -> float:
        return min(self.size) / 16.0

    @property
    def n_features(self) -> int:
        return self.history * PER_FRAME + STATIC + POSE


def _pairs(pose: torch.Tensor) -> torch.Tensor:
    """(B, K, K, PAIR): for object i (dim 1) and object j (dim 2), j's pose relative to i's
    (positions, velocities, the rule's futures and their distances) and both extents; the
    positions scaled by 1/4 to keep them near 1."""
    def rel(a):
        return a[:, None, :, :] - a[:, :, None, :]

    k = pose.shape[1]
    position, velocity, extent, future = pose[..., :2], pose[..., 2:4], pose[..., 4:8], pose[..., 8:]
    dp, dv, df = rel(position), rel(velocity), rel(future)
    future_distance = df.reshape(*df.shape[:3], len(RULE_STEPS), 2).norm(dim=-1)
    return torch.cat([dp / 4, dv, dp.norm(dim=-1, keepdim=True) / 4, extent[:, :, None].expand(-1, -1, k, -1),
                      extent[:, None].expand(-1, k, -1, -1), df / 4, future_distance / 4], dim=-1)


class PairwiseLayer(nn.Module):
    """An interaction network's step (Battaglia et al. 2016): every object sums one message
    per other object, a function of both objects' features and their relative pose, then
    updates its own features (pre-norm residual, as the attention layers)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.relation = nn.Sequential(nn.Linear(2 * width + PAIR, width), nn.GELU(), nn.Linear(width, width))
        self.update = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                    nn.Linear(2 * width, width))

    def forward(self, h, pairs, others):
        n = self.norm(h)
        k = h.shape[1]
        messages = self.relation(torch.cat([n[:, :, None].expand(-1, -1, k, -1), n[:, None].expand(-1, k, -1, -1),
                                            pairs], dim=-1))
        h = h + (messages * others[..., None]).sum(2)
        return h + self.update(h)


class Dynamics(nn.Module):
    def __init__(self, config: DynamicsConfig):
        super().__init__()
        self.config = config
        c = config.width
        self.encode = nn.Sequential(nn.Linear(config.n_features - POSE, c), nn.GELU(), nn.Linear(c, c))
        if config.interaction == "attention":
            self.interact = nn.ModuleList(
                nn.TransformerEncoderLayer(c, config.heads, 2 * c, dropout=0.0, batch_first=True, norm_first=True)
                for _ in range(config.layers))
        else:
            self.interact = nn.ModuleList(PairwiseLayer(c) for _ in range(config.layers))
        self.head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, HORIZON * (OUTPUTS - 1)))
        # The spread has its own head on the detached features: a Gaussian NLL's gradients grow
        # as 1/spread², and through a shared trunk they wrecked the centroids it is about.
        self.spread_head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU(), nn.Linear(c, HORIZON))
        # zero read-out: an untrained model is the rule (residual 0, scale 1, in view, no spread)
        nn.init.zeros_(self.head[-1].weight)
        bias = torch.zeros(HORIZON, OUTPUTS - 1)
        bias[:, PRESENCE] = PRESENCE_INIT
        nn.init.zeros_(self.spread_head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.copy_(bias.flatten())
            # softplus(b) + MIN_SPREAD_PX (in units) = SPREAD_INIT_PX
            self.spread_head[-1].bias.fill_(math.log(math.expm1((SPREAD_INIT_PX - MIN_SPREAD_PX) / config.unit)))
        # the painter's threshold on an object's probability at a pixel, chosen on val by the
        # trainer (`futureseg train-dynamics`) and saved with the weights
        self.register_buffer("paint_threshold", torch.tensor(0.5))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.encode(x[..., :-POSE])
        if self.config.layers and self.config.interaction == "pairwise":
            pairs = _pairs(x[..., -POSE:])
            others = valid[:, None, :] & valid[:, :, None] & ~torch.eye(x.shape[1], dtype=torch.bool,
                                                                       device=x.device)
        for layer in self.interact:
            if self.config.interaction == "attention":
                h = layer(h, src_key_padding_mask=~valid)
            else:
                h = layer(h, pairs, others)
        out = self.head(h).reshape(*x.shape[:2], HORIZON, OUTPUTS - 1)
        if self.config.spread:
            spread = nn.functional.softplus(self.spread_head(h.detach())) + MIN_SPREAD_PX / self.config.unit
        else:  # unused without the setting: not computed
            spread = h.new_zeros(*x.shape[:2], HORIZON)
        return torch.cat([out, spread[..., None]], dim=-1) * valid[..., None, None]


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
    box = states[:, t, s["top"] : s["right"] + 1]
    to_border = np.stack([box[:, 0], box[:, 1], h - 1 - box[:, 2], w - 1 - box[:, 3]], axis=1)
    extent = np.concatenate([centre - box[:, :2], box[:, 2:] - centre], axis=1)
    rule = base[:, list(RULE_STEPS)]
    static = np.concatenate([
        centre / scale * 2 - 1,
        np.sqrt(area)[:, None] / unit,
        box / np.tile(scale, 2) * 2 - 1,
        velocity / unit,
        ((rule - centre[:, None]) / unit).reshape(k, 2 * len(RULE_STEPS)),
        np.minimum(to_border / unit, BORDER_UNITS),
        to_border <= 0,  # cut by that border: its centroid and area are the visible part's
        _class_factors(classes[present]),
    ], axis=1)
    pose = np.concatenate([centre / unit, velocity / unit, extent / unit, rule.reshape(k, -1) / unit], axis=1)
    x = np.concatenate([past.reshape(k, -1), static, pose], axis=1).astype(np.float32)
    return x, base, present


@torch.inference_mode()
def predict(model: Dynamics, x: np.ndarray, base: np.ndarray, device="cpu"):
    """(centroids (K, 11, 2) in pixels, scales (K, 11), in view (K, 11) the probability that
    each object is still in the image, spreads (K, 11) the standard deviation of each centroid
    in pixels) of one video's objects; in view is 1 without `exits`, the spread 0 without
    `spread`."""
    k = len(x)
    if not k:
        return np.zeros((0, HORIZON, 2)), np.ones((0, HORIZON)), np.ones((0, HORIZON)), np.zeros((0, HORIZON))
    was_training = model.training
    model.eval()
    out = model(torch.from_numpy(x)[None].to(device), torch.ones(1, k, dtype=torch.bool, device=device))
    model.train(was_training)
    out = out[0].double().cpu().numpy()
    config = model.config
    in_view = 1 / (1 + np.exp(-out[..., PRESENCE])) if config.exits else np.ones((k, HORIZON))
    spread = out[..., SPREAD] * config.unit if config.spread else np.zeros((k, HORIZON))
    return (base + out[..., RESIDUAL] * config.unit, np.exp(np.clip(out[..., LOG_SCALE], -MAX_LOG_SCALE, MAX_LOG_SCALE)),
            in_view, spread)


def forecast_probabilities(model: Dynamics, masks, frames=None, motion_config: motion.MotionConfig | None = None,
                           device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probability (11, H, W) float32, classes (11, H, W) uint8): per pixel of the 11 frames
    after the last of `masks`, its most probable object's class and that object's probability
    there (`core.motion.paint_probable`); `forecast` thresholds them."""
    motion_config = motion_config or motion.MotionConfig()
    masks = np.asarray(masks)
    size = masks.shape[1:]
    if tuple(size) != model.config.size:
        raise ValueError(f"dynamics model of {model.config.size} masks given masks of {tuple(size)}")
    objects = motion.moving_objects(masks, frames, motion_config)
    if not objects:
        return np.zeros((HORIZON, *size), dtype=np.float32), np.zeros((HORIZON, *size), dtype=np.uint8)
    # the tracks of the frames the model reads (its history, the rule's velocity frames) alone:
    # the same states, in half the time of all 11
    recent = masks[-max(model.config.history, motion_config.velocity_frames):]
    t = len(recent) - 1
    classes, states = motion.object_tracks(recent)
    if frames is not None and motion_config.flow != "none":
        # the class's flow velocity is the rule's of its largest piece: the flow is measured once
        for obj in sorted(objects, key=lambda o: len(o.rows)):
            states[np.searchsorted(classes, obj.class_id), t, motion.STATE["flow_row"] :] = obj.velocity
    x, base, present = inputs(classes, states, t, size, model.config, motion_config.velocity_frames,
                              motion_config.bounce)
    centroids, scales, in_view, spreads = predict(model, x, base, device)
    row = {int(c): k for k, c in enumerate(classes[present])}
    centre = states[present, t, motion.STATE["row"] : motion.STATE["col"] + 1]
    # the model moves a class (the tracks' object, as in training); each of its pieces (the
    # components route motion paints) keeps its offset from the class's centroid, so a speck
    # beside an object moves with it instead of adding the object's residual to its own path
    picked = [row[obj.class_id] for obj in objects]
    moved = [centroids[r] + (obj.centroid - centre[r]) for obj, r in zip(objects, picked)]
    return motion.paint_probable(objects, size, moved, [scales[r] for r in picked], [spreads[r] for r in picked],
                                 [in_view[r] for r in picked])


def forecast(model: Dynamics, masks, frames=None, motion_config: motion.MotionConfig | None = None,
             device="cpu") -> np.ndarray:
    """(11, H, W) uint8: the masks of the 11 frames after the last of `masks` (see the module
    docstring): each pixel the class of its most probable object where that probability is
    above the model's `paint_threshold`, else background."""
    probability, classes = forecast_probabilities(model, masks, frames, motion_config, device)
    return np.where(probability > float(model.paint_threshold), classes, 0).astype(np.uint8)


def load(path: str | Path) -> tuple[Dynamics, dict]:
    """(model, model file contents) of a file of `futureseg train-dynamics`."""
    from futureseg.core.training import load_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != "dynamics" or "model_config" not in state:
        raise FuturesegError(f"{path}: not a dynamics model (kind {state.get('kind')!r}); "
                             "was it written by futureseg train-dynamics?")
    if state.get("format") != FORMAT:
        raise FuturesegError(f"{path}: a dynamics model of an older futureseg (format {state.get('format', 1)}, "
                             f"this one reads {FORMAT}); retrain it with futureseg train-dynamics "
                             "(snakemake reruns rule train_dynamics)")
    model = Dynamics(DynamicsConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model, state
