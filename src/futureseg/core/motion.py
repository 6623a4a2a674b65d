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
    moving_objects(masks, frames, config) -> [MovingObject]; paint(objects, size, centroids,
        scales) -> (F, H, W) uint8
        extrapolate's two halves: the objects of the last frame with the rule's future
        centroids, and the painter, which also places each object at given centroids and
        scales (route dynamics, the placement oracle); extrapolate = paint(moving_objects).
    object_tracks(masks, frames, flow_frames) -> (classes (K,), states (K, T, STATE_FIELDS))
        every object's (class id's) state in every frame: tracks as data (route dynamics);
        track_velocity and track_future give the rule's velocity and centroids from them.
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
# A dynamics training window ends at frames FIRST_WINDOW_END…10 of a 22-frame video (its
# targets are the HORIZON frames after its end); object_tracks measures the flow velocity there.
FIRST_WINDOW_END = 4
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


def _gray(frame: np.ndarray) -> np.ndarray:
    """The grey (H, W) uint8 image the flow reads of an RGB frame."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def _gray_flow(later: np.ndarray, earlier: np.ndarray, method: str) -> np.ndarray:
    """`_backward_flow` of two frames already grey (`_gray`): object_tracks converts each
    frame once, though most are the later frame of one pair and the earlier of the next."""
    import cv2

    if method == "dis":
        return _dis().calc(later, earlier, None)
    return cv2.calcOpticalFlowFarneback(later, earlier, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _backward_flow(later: np.ndarray, earlier: np.ndarray, method: str) -> np.ndarray:
    """(H, W, 2) flow (dx, dy) at the pixels of `later` pointing to where they were in
    `earlier`: its negation is their motion from earlier to later."""
    return _gray_flow(_gray(later), _gray(earlier), method)


def _centroid_velocity(track: list[np.ndarray]) -> np.ndarray:
    """Least-squares slope (rows, cols per frame) of centroids of consecutive frames."""
    if len(track) < 2:
        return np.zeros(2)
    points = np.asarray(track)
    t = np.arange(len(points), dtype=np.float64)
    t -= t.mean()
    return (t[:, None] * (points - points.mean(0))).sum(0) / (t**2).sum()


# ---------------------------------------------------------------- object tracks as data

# One row of an object's state in one frame (object_tracks); positions in pixels.
STATE_FIELDS = ("present", "row", "col", "area", "top", "left", "bottom", "right", "flow_row", "flow_col")
STATE = {name: i for i, name in enumerate(STATE_FIELDS)}


def object_tracks(masks, frames=None, flow_frames=(), method: str = "dis",
                  flow_pairs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every object's state in every frame of a mask sequence: (classes (K,) int, states
    (K, T, len(STATE_FIELDS)) float32), objects in class order.

    An object is a class id: in this dataset each object has its own class through the
    video, and the pseudo-labels keep one class per object and track (object classifier,
    track vote), so the class links an object across frames, occlusions and gaps included,
    where overlap links (`_link`) break at the first frame it is hidden. State per frame:
    `present` (1/0), the centroid `row`, `col`, the pixel `area`, the box `top`, `left`,
    `bottom`, `right` (inclusive) of all its pixels, and, at the frames t of `flow_frames`
    (frames given), its velocity (rows, cols per frame): the median optical flow over its
    pixels from t-1 to t, averaged over the `flow_pairs` pairs t←t-1, t-1←t-2, … where it is
    present, as route motion measures it (`MotionConfig.flow_pairs`; NaN elsewhere). Absent:
    zeros.
    Two histograms a frame give everything but the flow: about 2 ms for 22 frames at 160×240
    (the flow, DIS at 7 window ends, ~27 ms more), so a split's tracks are written once and
    read by every later stage."""
    import cv2

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"object_tracks: expected masks (T, H, W), got shape {masks.shape}")
    if frames is not None and (np.shape(frames)[:3] != masks.shape or np.shape(frames)[3:] != (3,)):
        raise ValueError(f"object_tracks: frames {np.shape(frames)} do not match masks {masks.shape} (T, H, W, 3)")
    n_frames, h, w = masks.shape
    if masks.dtype != np.uint8 and masks.size and (masks.min() < 0 or masks.max() > 255):
        raise ValueError("object_tracks: class ids must lie in 0…255, as in a uint8 mask")
    # OpenCV's 2-D histograms of (class id, row) and (class id, column) over each frame's
    # pixels, background included; areas, centroids and boxes all follow from them. A third
    # of the CPU time of numpy bincounts over flat (frame, object, row) keys (2 ms against 6
    # for 22 frames at 160×240), the same integer counts.
    depth = np.uint8 if max(h, w) <= 256 else np.uint16  # the row and column images' type
    ids = np.ascontiguousarray(masks, dtype=depth)
    row_image, col_image = _index_images(h, w, depth)
    top = int(ids.max(initial=0)) + 1  # class ids 0…top-1: bins for those only
    row_hist = np.empty((n_frames, top, h), np.float32)
    col_hist = np.empty((n_frames, top, w), np.float32)
    for t in range(n_frames):
        # written in place (hist=): an array OpenCV allocates per call is an mmap and its page
        # faults each time, about a second of kernel time per 200 videos
        cv2.calcHist([ids[t], row_image], [0, 1], None, [top, h], [0, top, 0, h], hist=row_hist[t])
        cv2.calcHist([ids[t], col_image], [0, 1], None, [top, w], [0, top, 0, w], hist=col_hist[t])
    pixels = row_hist.sum(2)  # (T, top) pixels of each class id; integers, exact in float32 below 2**24
    classes = np.flatnonzero(pixels[:, 1:].any(0)).astype(np.int64) + 1
    states = np.zeros((len(classes), n_frames, len(STATE_FIELDS)), dtype=np.float32)
    states[:, :, STATE["flow_row"] :] = np.nan
    if not len(classes):
        return classes, states
    row_counts = row_hist[:, classes].transpose(1, 0, 2).astype(np.int64)  # (K, T, H)
    col_counts = col_hist[:, classes].transpose(1, 0, 2).astype(np.int64)  # (K, T, W)
    area = row_counts.sum(2)
    present = area > 0
    safe = np.maximum(area, 1)
    row_hits, col_hits = row_counts > 0, col_counts > 0
    box = np.stack([row_hits.argmax(2), col_hits.argmax(2),
                    h - 1 - row_hits[..., ::-1].argmax(2), w - 1 - col_hits[..., ::-1].argmax(2)], axis=-1)
    states[..., STATE["present"]] = present
    states[..., STATE["row"]] = np.where(present, row_counts @ np.arange(h, dtype=np.float64) / safe, 0)
    states[..., STATE["col"]] = np.where(present, col_counts @ np.arange(w, dtype=np.float64) / safe, 0)
    states[..., STATE["area"]] = area
    states[..., STATE["top"] : STATE["right"] + 1] = np.where(present[..., None], box, 0)
    if frames is not None:
        ends = [t for t in flow_frames if 0 < t < n_frames]
        # each pair's flow once, however many window ends share it, and each frame turned
        # grey once, though most are the later frame of one pair and the earlier of the next
        pair_ends = sorted({t - k for t in ends for k in range(flow_pairs) if t - k > 0})
        gray = {u: _gray(np.asarray(frames[u])) for u in sorted(set(pair_ends) | {u - 1 for u in pair_ends})}
        moved = {}  # frame u -> (K, 2) median motion of each object present at u from u-1, NaN if absent
        for u in pair_ends:
            flow = _gray_flow(gray[u], gray[u - 1], method).reshape(-1, 2)
            # frame u's pixels grouped by class id (a stable radix sort of the small ids), each
            # class's run where the histogram's cumulative count says
            order = np.argsort(ids[u].ravel(), kind="stable")
            starts = np.concatenate([[0], np.cumsum(pixels[u], dtype=np.int64)])
            moved[u] = np.full((len(classes), 2), np.nan)
            for k in np.flatnonzero(present[:, u]):
                dx, dy = np.median(flow[order[starts[classes[k]] : starts[classes[k] + 1]]], axis=0)
                moved[u][k] = (-dy, -dx)
        for t in ends:
            pairs = np.stack([moved[t - k] for k in range(flow_pairs) if t - k > 0])
            seen = np.isfinite(pairs[..., 0])
            with np.errstate(invalid="ignore"):
                mean = np.where(seen[..., None], pairs, 0).sum(0) / seen.sum(0)[:, None]
            # measured at t only when the object is there at t (as the rule's last frame)
            states[:, t, STATE["flow_row"] :] = np.where(present[:, t, None], mean, np.nan)
    return classes, states


@functools.lru_cache(maxsize=4)
def _index_images(h: int, w: int, depth) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) images of each pixel's row and of its column, of `depth` (made once per size)."""
    rows = np.ascontiguousarray(np.broadcast_to(np.arange(h, dtype=depth)[:, None], (h, w)))
    cols = np.ascontiguousarray(np.broadcast_to(np.arange(w, dtype=depth)[None, :], (h, w)))
    return rows, cols


def track_velocity(states: np.ndarray, t: int, velocity_frames: int) -> np.ndarray:
    """(K, 2) velocity of each object at frame t as route motion's rule sees it: its flow
    velocity where object_tracks measured one, else the least-squares slope of its centroids
    over the last `velocity_frames` frames it was present in a row (0 when seen once).
    Vectorised over the objects (the training windows of a whole split at once)."""
    present = states[:, : t + 1, STATE["present"]] > 0
    # run[k]: frames t, t-1, … the object was present in a row, at most velocity_frames
    run = np.ones(len(states), dtype=np.int64)
    for back in range(1, min(velocity_frames, t + 1)):
        run += (run == back) & present[:, t - back]
    back = np.arange(min(velocity_frames, t + 1))
    used = back[None, :] < run[:, None]  # (K, frames back)
    tau = -back[None, :].astype(np.float64)
    points = states[:, t - back, STATE["row"] : STATE["col"] + 1].astype(np.float64)  # (K, frames back, 2)
    n = run[:, None]
    tau_c = np.where(used, tau - (tau * used).sum(1, keepdims=True) / n, 0)
    mean = (points * used[..., None]).sum(1) / n
    numerator = (tau_c[..., None] * (points - mean[:, None])).sum(1)
    denominator = (tau_c**2).sum(1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0)
    flow = states[:, t, STATE["flow_row"] :].astype(np.float64)
    return np.where(np.all(np.isfinite(flow), axis=1, keepdims=True), flow, slope)


def track_future(states: np.ndarray, t: int, velocity: np.ndarray, size: tuple[int, int], bounce: bool) -> np.ndarray:
    """(K, 11, 2) centroids of frames t+1…t+11 under the rule (constant_velocity) from each
    object's state at frame t."""
    centre = states[:, t, STATE["row"] : STATE["col"] + 1].astype(np.float64)
    low = centre - states[:, t, STATE["top"] : STATE["left"] + 1]
    high = states[:, t, STATE["bottom"] : STATE["right"] + 1] - centre
    return constant_velocity(centre, velocity, low, high, size, bounce)


# ---------------------------------------------------------------- the future


def _reflect(x: np.ndarray, low, high) -> np.ndarray:
    """Positions x folded into [low, high] as a ball bouncing between two walls (elementwise;
    where the range is empty, x stays)."""
    span = np.asarray(high - low, dtype=np.float64)
    y = np.mod(x - low, 2 * np.where(span > 0, span, 1))
    return np.where(span > 0, low + np.where(y > span, 2 * span - y, y), x)


@dataclass
class MovingObject:
    """An object of the last input frame and where route motion's rule puts it."""
    class_id: int
    rows: np.ndarray  # its pixels in the last input frame
    cols: np.ndarray
    centroid: np.ndarray  # (row, col) in the last input frame
    future: np.ndarray  # (11, 2): its centroid in the next 11 frames under the rule
    velocity: np.ndarray  # (rows, cols) per frame: the rule's


def _check_inputs(masks, frames, caller: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) < 1:
        raise ValueError(f"{caller}: expected masks (T, H, W), got shape {masks.shape}")
    if frames is not None and (np.shape(frames)[:3] != masks.shape or np.shape(frames)[3:] != (3,)):
        raise ValueError(f"{caller}: frames {np.shape(frames)} do not match masks {masks.shape} (T, H, W, 3)")
    return masks


def constant_velocity(centre, velocity, extent_low, extent_high, size, bounce: bool) -> np.ndarray:
    """(…, 11, 2) centroids at constant velocity from `centre` (…, 2), reflected at the image
    borders when `bounce`: the centroid's range keeps the box (extents (…, 2) below and above
    the centroid) inside the image; an object cut by a border has its box at that border, so
    it may move in."""
    steps = np.arange(1, HORIZON + 1, dtype=np.float64)[:, None]
    centre = np.asarray(centre, dtype=np.float64)[..., None, :]
    future = centre + steps * np.asarray(velocity, dtype=np.float64)[..., None, :]
    if bounce:
        low = np.asarray(extent_low, dtype=np.float64)[..., None, :]
        high = np.asarray(extent_high, dtype=np.float64)[..., None, :]
        for axis in range(2):
            future[..., axis] = _reflect(future[..., axis], low[..., axis], size[axis] - 1 - high[..., axis])
    return future


def moving_objects(masks, frames=None, config: MotionConfig | None = None) -> list[MovingObject]:
    """The objects of the last input frame, each with the rule's future centroids (steps 1-4
    of the module docstring)."""
    config = config or MotionConfig()
    masks = _check_inputs(masks, frames, "extrapolate")
    h, w = masks.shape[1:]
    use_flow = frames is not None and config.flow != "none"
    depth = max(config.velocity_frames, config.flow_pairs + 1 if use_flow else 1)
    recent = masks[max(0, len(masks) - depth) :]
    linked_frames, predecessors = _link(recent, config.max_jump)
    objects = linked_frames[-1][0]
    if not objects:
        return []
    flows = []
    if use_flow:
        frames = np.asarray(frames)
        for k in range(min(config.flow_pairs, len(masks) - 1)):
            flows.append(_backward_flow(frames[-1 - k], frames[-2 - k], config.flow))

    moving = []
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
        future = constant_velocity(centre, velocity, centre - (rows.min(), cols.min()),
                                   (rows.max(), cols.max()) - centre, (h, w), config.bounce)
        moving.append(MovingObject(obj.class_id, rows, cols, centre, future, velocity))
    return moving


def _placed(obj: MovingObject, centroid: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of `obj`'s silhouette moved to `centroid` and scaled by `scale` about it."""
    if scale == 1.0:
        # a pure shift, rounded once: route motion's painting, pixel for pixel
        shift = np.rint(centroid - obj.centroid).astype(np.int64)
        return obj.rows + shift[0], obj.cols + shift[1]
    top, left = int(obj.rows.min()), int(obj.cols.min())
    crop = np.zeros((int(obj.rows.max()) - top + 1, int(obj.cols.max()) - left + 1), dtype=bool)
    crop[obj.rows - top, obj.cols - left] = True
    # every target pixel of the scaled box samples its nearest source pixel (no holes when
    # it grows, no doubled pixels when it shrinks)
    low = np.floor(centroid + scale * (np.array([top, left]) - 0.5 - obj.centroid)).astype(np.int64)
    high = np.ceil(centroid + scale * (np.array([top + crop.shape[0], left + crop.shape[1]]) - 0.5
                                       - obj.centroid)).astype(np.int64)
    # the source row depends on the target row alone, the column on the column: two 1-D maps
    rows, cols = np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1)
    src_r = np.rint(obj.centroid[0] + (rows - centroid[0]) / scale).astype(np.int64) - top
    src_c = np.rint(obj.centroid[1] + (cols - centroid[1]) / scale).astype(np.int64) - left
    in_r = (src_r >= 0) & (src_r < crop.shape[0])
    in_c = (src_c >= 0) & (src_c < crop.shape[1])
    keep = np.zeros((len(rows), len(cols)), dtype=bool)
    keep[np.ix_(in_r, in_c)] = crop[np.ix_(src_r[in_r], src_c[in_c])]
    r, c = np.nonzero(keep)
    return rows[r], cols[c]


def paint(objects: list[MovingObject], size: tuple[int, int], centroids=None, scales=None) -> np.ndarray:
    """(F, H, W) uint8 masks: every object's silhouette at its centroid of each future frame
    (default: the rule's `future`; else `centroids[i]` (F, 2)) scaled by `scales[i]` (F,)
    about it (default 1), painted far to near (the object whose lowest row is highest first:
    on a floor seen from above the front, lower means nearer), background elsewhere. Pixels
    that leave the image are dropped (never wrapped); an object with a non-finite centroid or
    a scale <= 0 in a frame is not painted there."""
    h, w = size
    n_future = HORIZON if centroids is None else (len(centroids[0]) if len(objects) else HORIZON)
    out = np.zeros((n_future, h, w), dtype=np.uint8)
    for s in range(n_future):
        placed = []
        for i, obj in enumerate(objects):
            centroid = obj.future[s] if centroids is None else np.asarray(centroids[i][s], dtype=np.float64)
            scale = 1.0 if scales is None else float(scales[i][s])
            if not (np.all(np.isfinite(centroid)) and np.isfinite(scale) and scale > 0):
                continue
            rows, cols = _placed(obj, centroid, scale)
            if len(rows):
                placed.append((int(rows.max()), obj.class_id, rows, cols))
        frame = out[s]
        # far to near: the lowest row of each placed object, ascending (ties: class id)
        for _, class_id, rows, cols in sorted(placed, key=lambda p: (p[0], p[1])):
            inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
            frame[rows[inside], cols[inside]] = class_id
    return out


def paint_probable(objects: list[MovingObject], size: tuple[int, int], centroids, scales, spreads,
                   in_view) -> tuple[np.ndarray, np.ndarray]:
    """(probability (F, H, W) float32, classes (F, H, W) uint8): for each pixel of each future
    frame, the object most likely to be seen there and that likelihood. Object i covers a
    pixel with probability in_view[i][s] × its silhouette (at `centroids[i][s]`, scaled by
    `scales[i][s]`, as `paint` places it) smoothed by a Gaussian of `spreads[i][s]` pixels,
    the uncertainty of its centroid; nearer objects hide farther ones in proportion (near to
    far, each object is seen where nothing nearer was: its probability times what the nearer
    ones left). With spreads of 0 and in_view of 1 the probability is 1 exactly where `paint`
    paints, and the classes are paint's: thresholding at any value in [0, 1) gives paint."""
    import cv2

    h, w = size
    n_future = len(centroids[0]) if len(objects) else HORIZON
    probability = np.zeros((n_future, h, w), dtype=np.float32)
    classes = np.zeros((n_future, h, w), dtype=np.uint8)
    for s in range(n_future):
        placed = []
        for i, obj in enumerate(objects):
            centroid = np.asarray(centroids[i][s], dtype=np.float64)
            scale, spread, seen = float(scales[i][s]), float(spreads[i][s]), float(in_view[i][s])
            if not (np.all(np.isfinite(centroid)) and np.isfinite(scale) and scale > 0 and seen > 0):
                continue
            rows, cols = _placed(obj, centroid, scale)
            if len(rows):
                placed.append((int(rows.max()), obj.class_id, rows, cols, spread, seen))
        left = np.ones((h, w), dtype=np.float32)  # the chance that nothing nearer covers the pixel
        # near to far: the reverse of paint's order, so that ties resolve as paint's overwrites do
        for _, class_id, rows, cols, spread, seen in sorted(placed, key=lambda p: (p[0], p[1]), reverse=True):
            margin = int(np.ceil(3 * spread)) if spread > 0.05 else 0
            top, lft = max(int(rows.min()) - margin, 0), max(int(cols.min()) - margin, 0)
            bottom, right = min(int(rows.max()) + margin, h - 1), min(int(cols.max()) + margin, w - 1)
            if top > bottom or lft > right:
                continue  # wholly outside the image
            # the silhouette on a canvas of its box and margin (off-image pixels included, so
            # that the smoothing sees the object's part beyond the border)
            r0, c0 = int(rows.min()) - margin, int(cols.min()) - margin
            canvas = np.zeros((int(rows.max()) + margin - r0 + 1, int(cols.max()) + margin - c0 + 1), np.float32)
            canvas[rows - r0, cols - c0] = 1.0
            if margin:
                # OpenCV's separable Gaussian (zeros beyond the canvas), a tenth of scipy's time
                canvas = cv2.GaussianBlur(canvas, (2 * margin + 1, 2 * margin + 1), spread,
                                          borderType=cv2.BORDER_CONSTANT)
            p = seen * canvas[top - r0 : bottom - r0 + 1, lft - c0 : right - c0 + 1]
            window = (slice(top, bottom + 1), slice(lft, right + 1))
            visible = p * left[window]
            best, painted = probability[s][window], classes[s][window]  # views: written in place
            better = visible > best
            best[better] = visible[better]
            painted[better] = class_id
            left[window] *= 1 - p
    return probability, classes


def extrapolate(masks, frames=None, config: MotionConfig | None = None) -> np.ndarray:
    """The masks of the next 11 frames (see the module docstring)."""
    masks = _check_inputs(masks, frames, "extrapolate")
    return paint(moving_objects(masks, frames, config), masks.shape[1:])


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
