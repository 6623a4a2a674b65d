"""DAVIS 2016's temporal stability T (DESIGN.md §3e, video_metrics.py): contour points,
shape contexts and chi-square costs counted by hand, the warping checked against a plain
dynamic programme, and T's invariances and edge cases on small mask sequences."""

import json

import numpy as np
import pytest

from futureseg.core import data
from futureseg.core.errors import FuturesegError
from futureseg.core.io import save_array
from futureseg.evaluate import score, video_metrics

from test_score import write_val_split


def frame(*boxes, size=(40, 40)) -> np.ndarray:
    """A class-id mask with boxes (class, row0, row1, col0, col1) painted in order."""
    mask = np.zeros(size, np.uint8)
    for class_id, r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = class_id
    return mask


def disc(radius: float, centre=(20, 20), size=(40, 40)) -> np.ndarray:
    y, x = np.ogrid[: size[0], : size[1]]
    return ((y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2).astype(np.uint8)


SQUARE = frame((1, 10, 20, 10, 20))  # 10×10 pixels: an outline 10 long a side on the corner grid


def test_contour_points_run_along_the_pixels_corners_at_most_3_pixels_apart():
    # the square's corners are (10, 10) and (20, 20) on the corner grid; each 10-pixel side
    # is cut into ceil(10 / 3) = 4 parts of 2.5: 16 points (x, y) from the top left, down the
    # left side, along the bottom, up the right side and back along the top
    points = video_metrics.contour_points(SQUARE == 1)
    side = [10, 12.5, 15, 17.5]
    expected = ([[10, y] for y in side] + [[x, 20] for x in side] + [[20, 30 - y] for y in side]
                + [[30 - x, 10] for x in side])
    assert points.tolist() == expected
    # a 2-pixel-wide bar is an outline on the corner grid (not a line, as on pixel centres)
    assert len(video_metrics.contour_points(frame((1, 14, 16, 5, 35)) == 1)) > 4
    # no contour: an empty mask, a single pixel, a 2×2 block (its diagonal is within the
    # 1.5-pixel tolerance: a line), a 1-pixel-wide line
    for mask in (np.zeros((10, 10)), frame((1, 5, 6, 5, 6)), frame((1, 5, 7, 5, 7)), frame((1, 5, 6, 2, 30))):
        assert video_metrics.contour_points(mask == 1) is None
    # the longest outline of the mask: the big box, not the small one
    two = frame((1, 2, 5, 2, 5), (1, 10, 30, 10, 30)) == 1
    assert video_metrics.contour_points(two)[:, 0].min() == 10


def test_shape_context_and_chi_square_of_a_unit_square_by_hand():
    # points (0,0), (1,0), (1,1), (0,1): distances 0 (itself), 1, 1, √2; the mean over the 16
    # pairs is (8 + 4√2) / 16 = 0.854, so 1 and √2 read 1.17 and 1.66 mean distances: the
    # last radial bin [1, 2); itself (0) the first. Directions from (0,0): itself 0°, (1,0)
    # 0°, (1,1) 45° (sector 1 of 30°), (0,1) 90° (sector 3). Four bins of 1/4 each.
    points = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    histograms = video_metrics.shape_context(points).reshape(4, 5, 12)  # (point, radius, sector)
    assert histograms.sum((1, 2)) == pytest.approx(1.0)
    nonzero = {(r, s): histograms[0, r, s] for r, s in zip(*np.nonzero(histograms[0]))}
    assert nonzero == pytest.approx({(0, 0): 0.25, (4, 0): 0.25, (4, 1): 0.25, (4, 3): 0.25})
    # from (1,0): itself, (0,0) at 180° (sector 6), (1,1) at 90°, (0,1) at 135° (sector 4):
    # two of (0,0)'s four bins shared, four bins of 1/4 on one side only: 0.5 × 4 × (1/4)² / (1/4)
    costs = video_metrics.chi2_costs(*(video_metrics.shape_context(points),) * 2)
    assert costs[0, 1] == pytest.approx(0.5)
    # from (1,1): only the bin of itself is shared with (0,0): 0.5 × 6 × 1/4
    assert costs[0, 2] == pytest.approx(0.75)
    assert np.diag(costs) == pytest.approx(0.0)


def test_warping_path_is_the_cheapest_monotone_path():
    rng = np.random.default_rng(0)
    for _ in range(100):
        costs = rng.random(rng.integers(1, 8, 2))
        n, m = costs.shape
        best = np.full((n + 1, m + 1), np.inf)  # a plain dynamic programme, one border row
        best[0, 0] = 0
        for i in range(n):
            for j in range(m):
                best[i + 1, j + 1] = costs[i, j] + min(best[i, j + 1], best[i + 1, j], best[i, j])
        best[0, 0] = np.inf
        rows, cols = video_metrics.dtw_path(costs)
        steps = np.stack([np.diff(rows), np.diff(cols)], 1).tolist()
        assert (rows[0], cols[0], rows[-1], cols[-1]) == (0, 0, n - 1, m - 1)
        assert all(step in ([0, 1], [1, 0], [1, 1]) for step in steps)
        assert costs[rows, cols].sum() == pytest.approx(best[n, m])


def test_matching_does_not_hang_on_where_each_outline_starts():
    # the same outline, started 5 points later: without the realignment at the cheapest pair
    # the warping would have to pair the two different first points
    descriptors = video_metrics.contour_descriptor(disc(8) == 1)
    assert video_metrics.match_cost(descriptors, np.roll(descriptors, 5, axis=0)) == pytest.approx(0.0, abs=1e-12)
    assert video_metrics.match_cost(descriptors, descriptors) == 0.0


def test_static_and_translated_shapes_are_perfectly_stable():
    L = frame((2, 5, 25, 5, 10), (2, 20, 25, 5, 20))  # an L: not symmetric
    assert video_metrics.temporal_stability(np.stack([SQUARE, SQUARE, SQUARE])) == 0.0
    # shape contexts are relative positions: an outline moved by a few pixels keeps them all
    moved = [np.roll(SQUARE, (k, 2 * k), axis=(0, 1)) | np.roll(L, (3 * k, k), axis=(0, 1)) for k in range(4)]
    assert video_metrics.stability_per_class(moved) == {1: 0.0, 2: 0.0}
    assert video_metrics.t_stability(L == 2, np.roll(L, (7, 9), axis=(0, 1)) == 2) == 0.0


def test_a_shape_that_changes_is_less_stable_than_one_slightly_deformed():
    square = SQUARE == 1
    slightly = frame((1, 10, 20, 10, 21)) == 1  # one column wider
    bar = frame((1, 13, 16, 2, 38)) == 1  # a 3×36 bar
    circle = disc(6, (15, 15)) == 1
    t_slight, t_bar, t_circle = (video_metrics.t_stability(square, other) for other in (slightly, bar, circle))
    assert 0 < t_slight < t_circle < t_bar
    # T is 5 × a mean of chi-square costs, each between 0 and 1
    assert t_bar <= 5.0
    # a video's T: the mean over the class's pairs (square → slightly → square: both pairs
    # cost about t_slight; the chi-square is symmetric but the one-to-one pairs need not be)
    sequence = np.stack([square, slightly, square]).astype(np.uint8)
    pair_back = video_metrics.t_stability(slightly, square)
    assert video_metrics.temporal_stability(sequence) == pytest.approx((t_slight + pair_back) / 2)


def test_averages_per_class_then_over_classes_and_over_video_class_pairs_for_a_split():
    square, bar = SQUARE, frame((2, 30, 33, 2, 38))
    box = frame((2, 25, 35, 2, 12))
    t_box_bar = video_metrics.t_stability(box == 2, bar == 2)
    # class 1 static (T 0) over 3 frames; class 2 box → bar → bar: pairs t_box_bar and 0
    video = np.stack([square | box, square | bar, square | bar])
    assert video_metrics.stability_per_class(video) == pytest.approx({1: 0.0, 2: t_box_bar / 2})
    assert video_metrics.temporal_stability(video) == pytest.approx(t_box_bar / 4)
    # a split: one video of class 1 alone (T 0) beside it: the mean over the 3 (video, class)
    # sequences, t_box_bar / 6, not that of the videos' T (t_box_bar / 8)
    split = np.stack([np.stack([square] * 3), video])
    assert video_metrics.split_temporal_stability(split) == pytest.approx(t_box_bar / 6)


def test_one_frame_empty_masks_and_the_background():
    # one frame: no pair of consecutive frames, no T
    assert video_metrics.temporal_stability(SQUARE[None]) is None
    assert video_metrics.stability_per_class(SQUARE[None]) == {}
    # an empty mask has no contour: its pairs are skipped (DAVIS's NaN)
    empty = np.zeros_like(SQUARE)
    assert np.isnan(video_metrics.t_stability(empty == 1, SQUARE == 1))
    assert video_metrics.temporal_stability(np.stack([empty, empty])) is None
    # class 2 is in frames 0 and 2 only: no pair of consecutive frames, left out; class 1 is
    # in frames 1 and 2 only: one pair, T 0
    blob = frame((2, 25, 35, 25, 35))
    sequence = np.stack([blob, SQUARE, SQUARE | blob])
    assert video_metrics.stability_per_class(sequence) == {1: 0.0}
    # the background (class 0) is no class of T: its outline is mostly the frame's border
    changing = np.stack([SQUARE, frame((1, 13, 16, 2, 38))])
    assert list(video_metrics.stability_per_class(changing)) == [1]
    assert video_metrics.split_temporal_stability(np.zeros((2, 3, 8, 8), np.uint8)) is None


def test_frames_of_different_sizes_are_refused_naming_the_sizes():
    with pytest.raises(FuturesegError, match=r"routes/motion\.npy: frame 1 is 40×41, frame 0 is 40×40"):
        video_metrics.temporal_stability([SQUARE, np.zeros((40, 41), np.uint8)], "routes/motion.npy")
    with pytest.raises(FuturesegError, match=r"masks of shape \(40, 40\): .* needs one video's \(T, H, W\)"):
        video_metrics.temporal_stability(SQUARE)  # one frame, not a sequence of one
    with pytest.raises(FuturesegError, match=r"sequence_val\.npy, row 0: masks of shape \(1, 5, 40, 40\)"):
        video_metrics.split_temporal_stability(np.zeros((2, 1, 5, 40, 40)), "sequence_val.npy")


def test_score_writes_the_temporal_stability_of_every_sequence_beside_its_temporal_iou(tmp_path):
    """One 40×40 val video: a 10×10 square (class 1) sliding right a pixel a frame and a
    box (class 2) that stays put, so the truth's T is 0 in frames 0…10 and 11…21 alike.
    Route `wobble` (and the pseudo-labels of frames 0…10) widen the square by one column
    every other frame: 5 pairs square → wide and 5 wide → square, the box 0: T is half the
    square's mean; route `steady` is the truth: 0."""
    box = frame((2, 28, 36, 4, 12))
    square = [frame((1, 10, 20, 2 + k, 12 + k)) | box for k in range(data.N_FRAMES)]
    wide = [frame((1, 10, 20, 2 + k, 13 + k)) | box for k in range(data.N_FRAMES)]
    truth = np.stack(square)[None]
    wobble = np.stack([wide[k] if k % 2 else square[k] for k in range(data.N_FRAMES)])[None]
    root = tmp_path / "dataset"
    ids = write_val_split(root, truth)
    for name, masks in (("truth", truth), ("wobble", wobble)):
        save_array(tmp_path / f"{name}_21.npy", masks[:, data.TARGET_FRAME], ids)
        save_array(tmp_path / f"{name}_seq.npy", masks[:, data.N_INPUT :], ids)
    save_array(tmp_path / "pseudo.npy", wobble[:, : data.N_INPUT], ids, frame_indices=list(range(data.N_INPUT)))
    scores = score.run(root, None, tmp_path / "scores.json",
                       routes={"wobble": tmp_path / "wobble_21.npy", "steady": tmp_path / "truth_21.npy"},
                       sequences={"wobble": tmp_path / "wobble_seq.npy", "steady": tmp_path / "truth_seq.npy"},
                       pseudo_labels=tmp_path / "pseudo.npy", table=tmp_path / "scores.html")
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    there, back = (video_metrics.t_stability(a == 1, b == 1) for a, b in ((square[0], wide[1]), (wide[1], square[2])))
    assert 0 < there and 0 < back
    expected = (5 * there + 5 * back) / 10 / 2
    assert scores["temporal_stability"] == pytest.approx({"wobble": expected, "steady": 0.0, "true_masks": 0.0})
    assert set(scores["temporal_stability"]) == set(scores["temporal_iou"])
    pseudo = scores["pseudo_labels"]
    assert (pseudo["temporal_stability"], pseudo["true_temporal_stability"]) == pytest.approx((expected, 0.0))
    page = (tmp_path / "scores.html").read_text()
    assert f"<th scope=\"row\">wobble</th><td>{scores['temporal_iou']['wobble']:.4f}</td><td>{expected:.4f}</td>" in page
    assert f"temporal stability T {expected:.4f} (the true masks': 0.0000)" in page
