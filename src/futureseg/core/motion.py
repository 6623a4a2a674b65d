"""Motion: the masks of frames 11…21 from the masks (and frames) of 0…10, training-free.

Objects in these videos move with simple physics (constant velocity, some friction,
bounces off the walls, rare collisions and entries). Warping the last segmentation by
each object's own motion is the classical baseline of future segmentation ("warp last
input", Luc et al. 2017); on this task it beats every learned route we had. Route
`motion` is this module, the mask forecaster's `prior: motion` starts from it, the
reference `motion_truth` applies it to the true masks, and `pseudo_label`'s track vote
reuses its tracks.

Contract (every caller honours it; nothing else in futureseg estimates motion):

    extrapolate(masks, frames, config) -> (11, H, W) uint8
        masks:  integer (T, H, W) class ids of frames 0…T-1 (T >= 1; the route passes 11)
        frames: uint8 (T, H, W, 3) RGB of the same frames, or None (no optical flow)
        config: MotionConfig of plain values
        Returns the masks of the next 11 frames (T…T+10). Pure numpy (OpenCV for the flow),
        deterministic: the same input gives the same bytes.
    track_vote(masks) -> (T, H, W) uint8
        every object of a mask sequence painted in the majority class of its track.
    MotionConfig(**settings)
        the `motion:` config section; a bad value raises ConfigError naming the key.

How:
1. Objects are the 8-connected components of each class id in each frame (one class per
   object in this dataset; a segmenter's noisy object may come in pieces, each its own
   component, which flow then moves alike).
2. Components are linked frame to frame by pixel overlap, whatever their class (on a
   segmenter's masks 40-60% of an object's pixels may carry a wrong class); with no
   overlap, by the nearest centroid of the same class within `max_jump` pixels. A
   component with no predecessor starts a track (an object entering, or seen once).
3. Velocity per frame-T-1 object: the least-squares slope of its track's centroids over
   the last `velocity_frames` frames; with `flow` set, the median over its pixels of the
   OpenCV optical flow of the last `flow_pairs` frame pairs replaces it (centroids jump
   when an occluder cuts an object; the flow of its visible pixels does not).
4. The future: constant velocity, the centroid reflected at the image borders when
   `bounce` (the object's box stays inside; one already crossing a border may finish
   entering). A fixed friction did not pay (quality benchmark, true masks: 0.520 without,
   0.519 at 2% per frame, 0.484 at 5%), so velocity stays constant.
5. Painting: each object's last-frame pixels shifted by its displacement, far to near
   (the object whose lowest row is highest is painted first: on a floor seen from above
   the front, lower means nearer), background elsewhere; pixels leaving the image drop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

from futureseg.core.errors import ConfigError

KEY = "motion"
HORIZON = 11  # future frames: 11…21 from 0…10
FLOWS = ("none", "dis", "farneback")
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


@dataclass
class MotionConfig:
    # Centroid slope over the last 3 frames: over all 11 the fit averages across bounces
    # and collisions (quality benchmark, true masks: 0.458 over frames 8…10, 0.339 over 0…10).
    velocity_frames: int = 3
    # Optical flow of the frames refines the velocity (when frames are given). DIS (preset
    # medium) is OpenCV's fast dense flow; Farnebäck the older one.
    flow: str = "dis"
    flow_pairs: int = 1  # frame pairs (T-1←T-2, T-2←T-3, …) whose flow is averaged
    bounce: bool = True  # reflect at the image borders
    max_jump: float = 8.0  # pixels: farthest centroid link between frames without overlap

    def __post_init__(self):
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{KEY}.{name} must be a positive integer, got {value!r}")

        positive_int("velocity_frames")
        positive_int("flow_pairs")
        if self.flow not in FLOWS:
            raise ConfigError(f"{KEY}.flow must be one of {', '.join(FLOWS)}, got {self.flow!r}")
        if not isinstance(self.bounce, bool):
            raise ConfigError(f"{KEY}.bounce must be true or false, got {self.bounce!r}")
        if isinstance(self.max_jump, bool) or not isinstance(self.max_jump, (int, float)) or self.max_jump < 0:
            raise ConfigError(f"{KEY}.max_jump must be a number >= 0, got {self.max_jump!r}")


def config_from(settings: dict | None) -> MotionConfig:
    """The `motion:` section (a dict of plain values) as a MotionConfig; unknown keys are errors."""
    settings = dict(settings or {})
    known = {f.name for f in fields(MotionConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{KEY}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return MotionConfig(**settings)


# ---------------------------------------------------------------- objects and tracks


@dataclass
class _Component:
    class_id: int
    flat: np.ndarray  # flat pixel indices (row * W + col)
    centroid: np.ndarray  # (row, col)


def _components(mask: np.ndarray) -> tuple[list[_Component], np.ndarray]:
    """The 8-connected components of each class of one frame, and a map of their index + 1
    (0 on background)."""
    h, w = mask.shape
    index_map = np.zeros((h, w), dtype=np.int32)
    components = []
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        labels, n = ndimage.label(mask == class_id, structure=_EIGHT_NEIGHBOURS)
        flat_labels = labels.ravel()
        order = np.argsort(flat_labels, kind="stable")
        starts = np.searchsorted(flat_labels[order], np.arange(1, n + 2))
        for k in range(n):
            flat = order[starts[k] : starts[k + 1]]
            rows, cols = np.divmod(flat, w)
            components.append(_Component(int(class_id), flat, np.array([rows.mean(), cols.mean()])))
            index_map.ravel()[flat] = len(components)
    return components, index_map


def _best_predecessor(component: _Component, previous: list[_Component], previous_map: np.ndarray,
                      max_jump: float) -> int:
    """Index of the component of the previous frame this one continues, or -1."""
    if not previous:
        return -1
    overlap = np.bincount(previous_map.ravel()[component.flat], minlength=len(previous) + 1)
    overlap[0] = 0
    if overlap.max() > 0:
        return int(overlap.argmax()) - 1
    best, best_distance = -1, max_jump
    for k, other in enumerate(previous):
        if other.class_id == component.class_id:
            distance = float(np.hypot(*(component.centroid - other.centroid)))
            if distance <= best_distance:
                best, best_distance = k, distance
    return best


def _link(masks: np.ndarray, max_jump: float):
    """Per frame: its components, their index map, and each component's predecessor in the
    previous frame (-1: none)."""
    frames = [_components(np.asarray(m)) for m in masks]
    predecessors = [[-1] * len(frames[0][0])]
    for t in range(1, len(frames)):
        previous, previous_map = frames[t - 1]
        predecessors.append([_best_predecessor(c, previous, previous_map, max_jump) for c in frames[t][0]])
    return frames, predecessors


# ---------------------------------------------------------------- velocity


@functools.lru_cache(maxsize=None)
def _dis():
    import cv2

    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _backward_flow(later: np.ndarray, earlier: np.ndarray, method: str) -> np.ndarray:
    """(H, W, 2) flow (dx, dy) at the pixels of `later` pointing to where they were in
    `earlier`: its negation is their motion from earlier to later."""
    import cv2

    a = cv2.cvtColor(np.ascontiguousarray(later), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(earlier), cv2.COLOR_RGB2GRAY)
    if method == "dis":
        return _dis().calc(a, b, None)
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _centroid_velocity(track: list[np.ndarray]) -> np.ndarray:
    """Least-squares slope (rows, cols per frame) of centroids of consecutive frames."""
    if len(track) < 2:
        return np.zeros(2)
    points = np.asarray(track)
    t = np.arange(len(points), dtype=np.float64)
    t -= t.mean()
    return (t[:, None] * (points - points.mean(0))).sum(0) / (t**2).sum()


# ---------------------------------------------------------------- the future


def _reflect(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Positions x folded into [low, high] as a ball bouncing between two walls."""
    span = high - low
    if span <= 0:
        return x
    y = np.mod(x - low, 2 * span)
    return low + np.where(y > span, 2 * span - y, y)


def extrapolate(masks, frames=None, config: MotionConfig | None = None) -> np.ndarray:
    """The masks of the next 11 frames (see the module docstring)."""
    config = config or MotionConfig()
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) < 1:
        raise ValueError(f"extrapolate: expected masks (T, H, W), got shape {masks.shape}")
    if frames is not None and (np.shape(frames)[:3] != masks.shape or np.shape(frames)[3:] != (3,)):
        raise ValueError(f"extrapolate: frames {np.shape(frames)} do not match masks {masks.shape} (T, H, W, 3)")
    h, w = masks.shape[1:]
    out = np.zeros((HORIZON, h, w), dtype=np.uint8)
    use_flow = frames is not None and config.flow != "none"
    depth = max(config.velocity_frames, config.flow_pairs + 1 if use_flow else 1)
    recent = masks[max(0, len(masks) - depth) :]
    linked_frames, predecessors = _link(recent, config.max_jump)
    objects = linked_frames[-1][0]
    if not objects:
        return out
    flows = []
    if use_flow:
        frames = np.asarray(frames)
        for k in range(min(config.flow_pairs, len(masks) - 1)):
            flows.append(_backward_flow(frames[-1 - k], frames[-2 - k], config.flow))

    steps = np.arange(1, HORIZON + 1, dtype=np.float64)
    painted = []
    for index, obj in enumerate(objects):
        # the object's track backwards: its components in frames T-1, T-2, …
        chain = [(len(linked_frames) - 1, index)]
        while chain[-1][0] > 0 and len(chain) < depth:
            t, k = chain[-1]
            previous = predecessors[t][k]
            if previous < 0:
                break
            chain.append((t - 1, previous))
        components = [linked_frames[t][0][k] for t, k in chain]
        if flows:
            estimates = []
            for flow, component in zip(flows, components):
                # flow k is frame T-1-k back to T-2-k, sampled at the object's pixels in T-1-k
                dx, dy = np.median(flow.reshape(-1, 2)[component.flat], axis=0)
                estimates.append((-dy, -dx))
            velocity = np.mean(estimates, axis=0)
        else:
            velocity = _centroid_velocity([c.centroid for c in components[: config.velocity_frames]][::-1])
        rows, cols = np.divmod(obj.flat, w)
        centre = obj.centroid
        future = centre[None, :] + steps[:, None] * velocity[None, :]  # (11, 2) centroids
        if config.bounce:
            # the centroid's range that keeps the object's visible box inside the image; an
            # object cut by a border at frame 10 has its box at that border, so it may move in
            extent_low = centre - (rows.min(), cols.min())
            extent_high = (rows.max(), cols.max()) - centre
            for axis, size in enumerate((h, w)):
                future[:, axis] = _reflect(future[:, axis], extent_low[axis], size - 1 - extent_high[axis])
        shift = np.rint(future - centre[None, :]).astype(np.int64)  # (11, 2)
        painted.append((obj.class_id, rows, cols, shift))

    for s in range(HORIZON):
        # far to near: the lowest row of each moved object, ascending (ties: class id)
        order = sorted(range(len(painted)), key=lambda i: (painted[i][1].max() + painted[i][3][s, 0], painted[i][0]))
        frame = out[s]
        for i in order:
            class_id, rows, cols, shift = painted[i]
            r, c = rows + shift[s, 0], cols + shift[s, 1]
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            frame[r[inside], c[inside]] = class_id
    return out


def track_vote(masks, max_jump: float = MotionConfig.max_jump) -> np.ndarray:
    """Every component of a mask sequence (T, H, W) repainted in the majority class of its
    track: the pixels of all components linked to it through the frames. An object keeps
    its class through a video; a segmenter that calls some frames' pixels of it another
    class is outvoted by the rest of its track. Each component joins the track of its
    predecessor (most overlap), so the pieces of an object cut in two classes in one frame
    join the object's track; the price: two objects of one class that touch in one frame
    (one component) and then part join one track too."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"track_vote: expected masks (T, H, W), got shape {masks.shape}")
    linked_frames, predecessors = _link(masks, max_jump)
    offsets = np.cumsum([0] + [len(c) for c, _ in linked_frames])
    parent = np.arange(offsets[-1])

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for t in range(1, len(linked_frames)):
        for k, p in enumerate(predecessors[t]):
            if p >= 0:
                parent[root(offsets[t] + k)] = root(offsets[t - 1] + p)

    votes: dict[int, np.ndarray] = {}
    for t, (components, _) in enumerate(linked_frames):
        for k, component in enumerate(components):
            tally = votes.setdefault(root(offsets[t] + k), np.zeros(256, dtype=np.int64))
            tally[component.class_id] += len(component.flat)
    out = masks.astype(np.uint8, copy=True)
    for t, (components, _) in enumerate(linked_frames):
        flat_frame = out[t].ravel()
        for k, component in enumerate(components):
            flat_frame[component.flat] = int(votes[root(offsets[t] + k)].argmax())
    return out
