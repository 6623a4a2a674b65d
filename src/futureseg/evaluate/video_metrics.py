"""Video-segmentation metrics beside the competition IoU (DESIGN.md §3e): DAVIS 2017's
boundary F-measure and J&F.

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

DAVIS 2016's temporal stability T (shape-context matching of consecutive contours) is not
computed: DAVIS 2017's evaluation dropped it, and the temporal IoU of the forecast sequence
beside the truth's (score.temporal_iou) stands in for it.
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
