"""Video-segmentation metrics beside the competition IoU (DESIGN.md §3e): DAVIS 2017's
boundary F-measure and J&F, and DAVIS 2016's temporal stability T.

J is our macro IoU (the competition metric). F is DAVIS 2017's `f_measure`
(davisvideochallenge/davis2017-evaluation, davis2017/metrics.py), on the binary mask of
one class in one video's frame 21:
  boundaries  `seg2bmap`: a pixel is boundary where it differs from its right, bottom or
              bottom-right neighbour (neighbours outside the frame are not compared)
  tolerance   bound_pix = ceil(0.008 × the frame's diagonal) pixels; each boundary is
              dilated with a disk of that radius
  precision   predicted boundary pixels within the truth's dilated boundary / predicted
              boundary pixels; recall the other way round; F = 2PR / (P + R)
  empty       no boundary on either side: F = 1; on one side only: F = 0
F is computed for every (video, class) pair whose class is in that video's true or
predicted frame 21, the background included (it is one of the 49 classes J averages),
and averaged over the pairs. J&F = (J + F) / 2, DAVIS's headline figure.

T is DAVIS 2016's temporal stability (davisvideochallenge/davis, python/lib/davis/measures/
t_stability.py and its C++ helper cpp/polycont/python.cpp), on the binary masks of one class
in two consecutive frames of one video (`t_stability`):
  contour     one outline of the mask along its pixels' corners, as DAVIS's
              (cv2.findContours on the grid of pixel corners): the longest (most boundary
              pixels; DAVIS: most polygon vertices), simplified by Douglas-Peucker with a
              tolerance of 1.5 pixels (DAVIS's 3 on its half-pixel grid) and resampled so
              that no two consecutive points are more than 3 pixels apart (each longer edge
              split into equal parts; the closing edge too). An outline of fewer than 3
              vertices (a dot, a line of pixels, a 2×2 block) counts as no contour, as DAVIS
              drops its polygons of 3 points or fewer. A class in several pieces is
              judged by its longest outline alone, as DAVIS's objects are.
  descriptor  shape context of each point: the other points (itself included, as DAVIS)
              binned by direction into 12 sectors of 30 degrees (absolute angles: not
              rotation invariant) and by distance into 5 bins whose log-spaced edges are
              1/8, 1/4, 1/2, 1 and 2 times the contour's mean pairwise distance (the mean
              over all n² pairs, the zero diagonal included, as DAVIS); points 2 mean
              distances away or more are not counted. Distances relative to each other and
              to their mean make it translation and scale invariant.
  cost        chi-square between the two points' histograms, each normalised to sum 1:
              0.5 Σ (a - b)² / (a + b), between 0 and 1
  matching    dynamic time warping over the whole cost matrix (no band, as DAVIS's
              Dijkstra): the cheapest monotone path from the first pair of points to the
              last (steps right, down, diagonal); the path's cheapest pair then becomes the
              last pair (both contours rotated to start just after it) and the warping is
              done again, so the result does not hang on where each outline starts; of the
              matched pairs, each point of frame t keeps its cheapest pair, then each point
              of frame t+1 its cheapest
  value       5 × the mean cost of the kept pairs (DAVIS's loader multiplies by its
              "magic_number" 5, so figures compare with DAVIS 2016's tables): 0 = the outline
              keeps its shape, higher = less stable. NaN where either mask has no contour
              (DAVIS's NaN pairs).
`temporal_stability` gives one video's T: per object class (the background left out), the
mean over its pairs of consecutive frames, then the mean over its classes; see there for
what is averaged and why. `split_temporal_stability`, scores.json's figure, averages over
every (video, object class) sequence of a split. About 5-8 ms per video-frame pair (all its
classes) at 80×120 with 4 to 5 objects, some 20 points an outline.
"""

from __future__ import annotations

import numpy as np

from futureseg.core.errors import FuturesegError

BOUND_TH = 0.008  # DAVIS's bound_th: the tolerance as a fraction of the frame's diagonal


def seg2bmap(masks) -> np.ndarray:
    """Boundary maps (..., H, W) of binary masks (..., H, W), as DAVIS's `_seg2bmap`: its
    last row compares only with the right neighbour, its last column only with the one
    below, and the bottom-right pixel is never boundary."""
    masks = np.asarray(masks, dtype=bool)
    bmap = np.zeros_like(masks)
    bmap[..., :, :-1] |= masks[..., :, :-1] != masks[..., :, 1:]
    bmap[..., :-1, :] |= masks[..., :-1, :] != masks[..., 1:, :]
    bmap[..., :-1, :-1] |= masks[..., :-1, :-1] != masks[..., 1:, 1:]
    return bmap


def bound_pix(size) -> int:
    """DAVIS's tolerance in pixels for frames of `size` (H, W)."""
    return int(np.ceil(BOUND_TH * np.hypot(*size)))


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk, DAVIS's structuring element: offsets with y² + x² ≤ r².
    Not cv2's MORPH_ELLIPSE, which is wider from radius 2 on (80×120 frames already use 2)."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (y * y + x * x <= radius * radius).astype(np.uint8)


def f_measure(predicted, truth, name: str = "predicted masks") -> np.ndarray:
    """DAVIS's boundary F of each pair of binary masks (K, H, W) (or one pair (H, W)).
    `name` names the predicted masks' file in the error for frames of another size."""
    import cv2

    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.ndim < 2:
        raise FuturesegError(f"{name}: masks of shape {predicted.shape}, the truth's are {truth.shape}: "
                             "boundary F compares frames of one size")
    height, width = truth.shape[-2:]
    kernel = disk(bound_pix((height, width)))
    pred_b = seg2bmap(predicted).reshape(-1, height, width)
    true_b = seg2bmap(truth).reshape(-1, height, width)

    def dilated(bmaps):
        # cv2 dilates one 2-D map at a time (its numpy wrapper takes at most 128 channels);
        # 10x faster than scipy.ndimage's 3-D binary_dilation here
        return np.array([cv2.dilate(b.view(np.uint8), kernel) for b in bmaps], dtype=bool).reshape(bmaps.shape)

    n_pred = pred_b.sum((1, 2))
    n_true = true_b.sum((1, 2))
    matched_pred = (pred_b & dilated(true_b)).sum((1, 2))
    matched_true = (true_b & dilated(pred_b)).sum((1, 2))
    # an empty boundary reads precision (recall) 1, so both empty gives F = 1 and one empty
    # gives F = 0 (the other side's recall (precision) is then 0): DAVIS's four cases
    precision = np.divide(matched_pred, n_pred, out=np.ones(len(n_pred)), where=n_pred > 0)
    recall = np.divide(matched_true, n_true, out=np.ones(len(n_true)), where=n_true > 0)
    total = precision + recall
    f = np.divide(2 * precision * recall, total, out=np.zeros(len(total)), where=total > 0)
    return f.reshape(truth.shape[:-2])


def class_pairs(predicted, truth) -> tuple[np.ndarray, np.ndarray]:
    """(video index, class id) of every class in each video's true or predicted mask
    (N, H, W)."""
    n = len(truth)
    present = np.zeros((n, int(max(predicted.max(initial=0), truth.max(initial=0))) + 1), dtype=bool)
    rows = np.arange(n)[:, None]
    present[rows, truth.reshape(n, -1)] = True
    present[rows, predicted.reshape(n, -1)] = True
    return np.nonzero(present)


def boundary_f_pairs(predicted, truth, name: str = "predicted masks") -> np.ndarray:
    """Boundary F of every (video, class) pair of class-id masks (N, H, W): per class in
    the video's truth or prediction, that class's binary masks compared."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape or truth.ndim != 3:
        raise FuturesegError(f"{name}: masks of shape {predicted.shape}, the truth's are {truth.shape}: "
                             "boundary F compares (N, H, W) masks of one size")
    videos, classes = class_pairs(predicted, truth)
    selector = classes[:, None, None]
    return f_measure(predicted[videos] == selector, truth[videos] == selector, name)


def j_and_f(j: float, f_values) -> dict:
    """{"boundary_f": the mean of the (video, class) pairs' F, "j_and_f": (J + F) / 2}."""
    f_values = np.asarray(f_values, dtype=float)
    if f_values.size == 0:
        raise FuturesegError("boundary F: no (video, class) pair to average (no val video scored)")
    boundary_f = float(f_values.mean())
    return {"boundary_f": boundary_f, "j_and_f": (float(j) + boundary_f) / 2}


# DAVIS 2016's temporal stability T (see the module's docstring)
CONTOUR_TOLERANCE = 1.5  # Douglas-Peucker tolerance in pixels (DAVIS: 3 on its half-pixel grid)
CONTOUR_STEP = 3.0  # the longest gap between consecutive contour points, pixels (DAVIS's cont_th_up)
SC_ANGLES = 12  # angular bins of the shape context (DAVIS's nbins_theta)
SC_RADII = np.logspace(np.log10(1 / 8), np.log10(2), 5)  # radial bin edges × the mean distance
T_SCALE = 5.0  # DAVIS's loader multiplies every pair's cost by this "magic_number"
EPS = 2.2204e-16  # DAVIS's (MATLAB's) eps in the histogram normalisation and the chi-square


def contour_points(mask) -> np.ndarray | None:
    """(n, 2) points (x, y), at most CONTOUR_STEP apart, along the longest outline of a
    binary mask (H, W), simplified with CONTOUR_TOLERANCE; None where the mask has no
    outline of 3 vertices or more."""
    import cv2

    # DAVIS traces the pixels' corners, not their centres (on which an object 2 pixels wide
    # would be a line): the grid of corners (H + 1, W + 1), a corner inside where any of its
    # 4 pixels is, traced by cv2 (a 1-pixel gap between two parts of the mask closes)
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    corners = padded[:-1, :-1] | padded[:-1, 1:] | padded[1:, :-1] | padded[1:, 1:]
    contours, _ = cv2.findContours(corners.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    # the longest first (len: its boundary pixels); a shorter one only where a longer one
    # simplifies to a dot or a line
    for contour in sorted(contours, key=len, reverse=True):
        vertices = cv2.approxPolyDP(contour, CONTOUR_TOLERANCE, True).reshape(-1, 2).astype(float)
        if len(vertices) >= 3:
            break
    else:
        return None
    edges = np.roll(vertices, -1, axis=0) - vertices  # every edge, the closing one included
    parts = np.maximum(np.ceil(np.hypot(*edges.T) / CONTOUR_STEP), 1).astype(int)
    edge = np.repeat(np.arange(len(vertices)), parts)
    # the position of each new point along its edge: 0, 1/parts, …, (parts - 1)/parts
    step = (np.arange(len(edge)) - np.repeat(np.cumsum(parts) - parts, parts)) / parts[edge]
    return vertices[edge] + step[:, None] * edges[edge]


def shape_context(points) -> np.ndarray:
    """(n, 60) shape-context histograms of contour points (n, 2), each normalised to sum 1:
    12 directions × 5 log-spaced distances relative to the mean pairwise distance."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    offsets = points[None, :, :] - points[:, None, :]  # [i, j]: from point i to point j
    distance = np.hypot(offsets[..., 0], offsets[..., 1])
    radial = np.searchsorted(SC_RADII, distance / distance.mean(), side="right")  # 5 = beyond the last edge
    angle = np.mod(np.arctan2(offsets[..., 1], offsets[..., 0]), 2 * np.pi)
    sector = np.minimum((angle / (2 * np.pi / SC_ANGLES)).astype(int), SC_ANGLES - 1)
    kept = radial < len(SC_RADII)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, n))
    bins = (rows * len(SC_RADII) + radial) * SC_ANGLES + sector
    histograms = np.bincount(bins[kept], minlength=n * len(SC_RADII) * SC_ANGLES).reshape(n, -1).astype(float)
    return histograms / (histograms.sum(1, keepdims=True) + EPS)


def chi2_costs(a, b) -> np.ndarray:
    """(n, m) chi-square costs 0.5 Σ (a - b)² / (a + b) between normalised histograms."""
    a, b = a[:, None, :], b[None, :, :]
    return 0.5 * ((a - b) ** 2 / (a + b + EPS)).sum(-1)


def dtw_path(costs) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest path from (0, 0) to (n - 1, m - 1) through a cost matrix, stepping
    right, down or diagonally, its cost the sum of the cells it visits: (rows, columns).

    Row by row: D[i, j] = c[i, j] + min(D[i-1, j], D[i-1, j-1], D[i, j-1]); the last term
    makes a row a running minimum, D[i, j] = S[j] + min_{k ≤ j} (m[k] - S[k-1]) with S the
    row's prefix sums and m[k] = min(D[i-1, k], D[i-1, k-1]), one np.minimum.accumulate."""
    n, m = costs.shape
    total = np.empty((n, m))
    total[0] = np.cumsum(costs[0])
    from_above = np.empty(m)
    for i in range(1, n):
        above = total[i - 1]
        from_above[0] = above[0]
        np.minimum(above[1:], above[:-1], out=from_above[1:])
        prefix = np.cumsum(costs[i])
        total[i] = prefix + np.minimum.accumulate(from_above - (prefix - costs[i]))
    table = total.tolist()
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i or j:
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)] if i and j else [(i - 1, j)] if i else [(i, j - 1)]
        i, j = min(steps, key=lambda cell: table[cell[0]][cell[1]])
        path.append((i, j))
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def _cheapest_per(keys, costs, candidates) -> np.ndarray:
    """Of the candidate pairs (indices), the cheapest for each key (the first on a tie)."""
    order = candidates[np.lexsort((costs[candidates], keys[candidates]))]
    _, first = np.unique(keys[order], return_index=True)
    return order[first]


def match_cost(first, second) -> float:
    """DAVIS's per-point matching cost of two contours' shape contexts (n, 60), (m, 60)
    (the module's docstring: warping, realigned at its cheapest pair, one-to-one pairs)."""
    costs = chi2_costs(first, second)
    rows, cols = dtw_path(costs)
    # DAVIS's Dijkstra scans its path from the last pair back, the first pair left out, and
    # keeps the first cheapest: there both contours are cut, that pair becoming the last
    along = costs[rows, cols][:0:-1]
    anchor = len(rows) - 1 - int(np.argmin(along))
    shift_r, shift_c = rows[anchor] + 1, cols[anchor] + 1
    rolled = np.roll(np.roll(costs, -shift_r, axis=0), -shift_c, axis=1)
    rows, cols = dtw_path(rolled)
    rows, cols = (rows + shift_r) % len(first), (cols + shift_c) % len(second)
    pair_costs = costs[rows, cols]
    kept = _cheapest_per(rows, pair_costs, np.arange(len(rows)))
    kept = _cheapest_per(cols, pair_costs, kept)
    return float(pair_costs[kept].mean())


def contour_descriptor(mask) -> np.ndarray | None:
    """The shape contexts of a binary mask's contour points, None where it has no contour."""
    points = contour_points(mask)
    return None if points is None else shape_context(points)


def t_stability(mask_t, mask_next) -> float:
    """DAVIS 2016's temporal (in)stability of one pair of binary masks (H, W) of consecutive
    frames: 5 × the mean matching cost per contour point; 0 for an outline that keeps its
    shape (wherever it moves), NaN where either mask has no contour."""
    first, second = contour_descriptor(mask_t), contour_descriptor(mask_next)
    if first is None or second is None:
        return float("nan")
    return T_SCALE * match_cost(first, second)


def _check_sequence(masks, name: str) -> np.ndarray:
    """One video's masks (T, H, W) as one array; a list of frames of different sizes, or
    anything but T frames of H × W, refused by `name`."""
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise FuturesegError(f"{name}: masks of shape {masks.shape}: temporal stability needs one video's "
                             "(T, H, W) mask sequence")
    sizes = ["×".join(map(str, np.shape(frame))) for frame in masks]
    for k, size in enumerate(sizes):
        if np.ndim(masks[k]) != 2 or size != sizes[0]:
            raise FuturesegError(f"{name}: frame {k} is {size}, frame 0 is {sizes[0]}: temporal stability "
                                 "compares frames (H, W) of one size")
    return np.asarray(masks)


def stability_per_class(masks, name: str = "mask sequence") -> dict[int, float]:
    """{class id: its T in one video's class-id mask sequence (T, H, W)}: the mean of
    `t_stability` over the pairs of consecutive frames whose masks both have a contour of
    the class. Only object classes (1…48): the background's longest outline is mostly the
    frame's border, which never moves. A class with no such pair is left out."""
    masks = _check_sequence(masks, name)
    out = {}
    if len(masks) < 2:
        return out
    for class_id in np.unique(masks).tolist():
        if class_id == 0:
            continue
        descriptors = [contour_descriptor(frame == class_id) for frame in masks]
        values = [T_SCALE * match_cost(a, b) for a, b in zip(descriptors, descriptors[1:])
                  if a is not None and b is not None]
        if values:
            out[int(class_id)] = float(np.mean(values))
    return out


def temporal_stability(masks, name: str = "mask sequence") -> float | None:
    """DAVIS 2016's temporal stability T of one video's class-id mask sequence (T, H, W):
    the mean over its object classes of each class's T (`stability_per_class`); lower is
    more stable, 0 = every outline keeps its shape.

    Averaged per class, then over classes (not over all (class, frame pair) values): a
    class's binary sequence is what DAVIS 2016 scores as one sequence (one object), and it
    averages per sequence, then over sequences; an object seen in few frames then weighs as
    much as one seen in all. Empty masks are skipped (DAVIS's NaN pairs). None where no
    pair can be scored: a sequence of one frame (no pair) or one with no object whose
    outline is in two consecutive frames. Frames of different sizes are refused, naming
    them (`name` names the sequence in the error)."""
    values = list(stability_per_class(masks, name).values())
    return float(np.mean(values)) if values else None


def split_temporal_stability(sequences, name: str = "mask sequences") -> float | None:
    """T of a split's sequences (N, T, H, W): the mean over every (video, object class)
    sequence's T (as boundary F averages its (video, class) pairs, and DAVIS its sequences);
    None where there is none."""
    values = [value for k, video in enumerate(sequences)
              for value in stability_per_class(video, f"{name}, row {k}").values()]
    return float(np.mean(values)) if values else None
