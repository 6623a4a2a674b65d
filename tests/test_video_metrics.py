"""DAVIS 2017's boundary F and J&F (DESIGN.md §3e): boundaries, tolerance and empty-mask
rules as DAVIS's f_measure has them, checked on cases counted by hand, and their place in
every entry of scores.json."""

import json

import numpy as np
import pytest

from futureseg.core.errors import FuturesegError
from futureseg.core.io import save_array
from futureseg.evaluate import score, video_metrics

from test_score import full_masks, jaccard, write_val_split


def square(dy: int = 0, dx: int = 0) -> np.ndarray:
    """A 10×10 frame (tolerance ceil(0.008 × 14.1) = 1 px: a disk of radius 1 is the plus
    sign) with a 3×3 square of class 1 at rows 2…4, columns 2…4, moved by (dy, dx)."""
    frame = np.zeros((10, 10), np.uint8)
    frame[2 + dy : 5 + dy, 2 + dx : 5 + dx] = 1
    return frame


def test_boundaries_are_the_pixels_differing_from_right_bottom_or_bottom_right():
    # the square's boundary is the ring of rows 1…4 × columns 1…4: its own last row and
    # column, and the pixels above and left of it (offset half a pixel towards the origin)
    ring = np.zeros((10, 10), bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False
    assert np.array_equal(video_metrics.seg2bmap(square()), ring)
    # DAVIS's edges: the last row compares only with the right neighbour, the last column
    # only with the one below, the bottom-right pixel never
    corner = np.zeros((3, 3), bool)
    corner[2, 2] = True
    assert video_metrics.seg2bmap(corner).astype(int).tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 0]]
    # a class filling the frame has no boundary
    assert not video_metrics.seg2bmap(np.ones((4, 5), bool)).any()


def test_tolerance_and_disk_are_davis():
    # ceil(0.008 × diagonal): 80×120 → ceil(1.15) = 2, 160×240 → ceil(2.31) = 3
    assert [video_metrics.bound_pix(s) for s in ((10, 10), (80, 120), (160, 240))] == [1, 2, 3]
    # skimage's disk(2), narrower than cv2's 5×5 ellipse (whose rows 1 and 3 are full)
    assert video_metrics.disk(2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                              [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]


def test_boundary_f_of_a_square_moved_by_one_pixel():
    truth = square()
    # moved right by 1: every pixel of either ring has the other ring within the plus
    # sign (itself or a 4-neighbour), so P = R = 1
    assert video_metrics.f_measure(square(0, 1) == 1, truth == 1) == pytest.approx(1.0)
    # moved diagonally by 1: the predicted ring (rows 2…5 × columns 2…5) has 12 pixels, 11
    # of them within 1 of the true ring; its corner (5, 5) is not (its 4-neighbours (4, 5),
    # (5, 4) are outside rows 1…4 × columns 1…4): P = 11/12; the true ring's corner (1, 1)
    # likewise: R = 11/12; F = 2PR / (P + R) = 11/12
    assert video_metrics.f_measure(square(1, 1) == 1, truth == 1) == pytest.approx(11 / 12)
    # moved right by 2: of the predicted ring (columns 3…6), column 6's 4 pixels are 2 away:
    # P = R = 8/12, F = 2/3
    assert video_metrics.f_measure(square(0, 2) == 1, truth == 1) == pytest.approx(2 / 3)
    # per (video, class) pair: the background's boundary is the square's, so both read 11/12
    pairs = video_metrics.boundary_f_pairs(np.stack([square(1, 1), truth]), np.stack([truth, truth]))
    assert pairs == pytest.approx([11 / 12, 11 / 12, 1.0, 1.0])


def test_empty_boundaries_read_as_davis_does():
    empty, blob = np.zeros((10, 10), bool), square() == 1
    assert video_metrics.f_measure(empty, empty) == 1.0  # nothing to find, nothing found
    assert video_metrics.f_measure(empty, blob) == 0.0  # the class missed
    assert video_metrics.f_measure(blob, empty) == 0.0  # a class that is not there
    # a class filling both frames: no boundary on either side, F = 1
    assert video_metrics.f_measure(~empty, ~empty) == 1.0
    # a class in neither the truth nor the prediction of a video is no pair of it
    videos, classes = video_metrics.class_pairs(np.stack([square(), np.full((10, 10), 7)]), np.stack([square(), square()]))
    assert list(zip(videos.tolist(), classes.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 7)]


def test_frames_of_another_size_are_refused_by_name():
    with pytest.raises(FuturesegError, match=r"routes/motion\.npy: masks of shape \(10, 12\), the truth's are \(10, 10\)"):
        video_metrics.f_measure(np.zeros((10, 12)), np.zeros((10, 10)), "routes/motion.npy")
    with pytest.raises(FuturesegError, match=r"masks_val\.npy: masks of shape \(1, 10, 12\)"):
        video_metrics.boundary_f_pairs(np.zeros((1, 10, 12), np.uint8), square()[None], "masks_val.npy")


def test_score_writes_boundary_f_and_j_and_f_in_every_entry(tmp_path):
    """One 10×10 video, every route and reference: route `shifted` is the square moved
    diagonally by one pixel (F = 11/12 for the square and the background alike), the rest
    the truth (F = 1)."""
    truth = square()[None]
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(truth))
    shifted = square(1, 1)[None]
    save_array(tmp_path / "shifted.npy", shifted, ids)
    save_array(tmp_path / "truth.npy", truth, ids)
    same = tmp_path / "truth.npy"
    scores = score.run(root, None, tmp_path / "scores.json", routes={"shifted": tmp_path / "shifted.npy", "same": same},
                       oracle=same, motion_truth=same, dynamics_truth=same, placement_oracle=same,
                       segmented_copy_last=same, table=tmp_path / "scores.html")
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    entries = {**scores["routes"], **{m: scores[m] for m in ("pipeline", *score.REFERENCES)}}
    assert set(entries) == {"shifted", "same", "pipeline", *score.REFERENCES}
    for name, entry in entries.items():
        assert entry["j_and_f"] == pytest.approx((entry["iou"] + entry["boundary_f"]) / 2), name
    shifted_entry = scores["routes"]["shifted"]
    assert shifted_entry["iou"] == pytest.approx(jaccard(shifted, truth, "macro"))
    assert shifted_entry["boundary_f"] == pytest.approx(11 / 12)
    for name in ("same", "pipeline", *score.REFERENCES):
        assert entries[name]["boundary_f"] == 1.0 and entries[name]["j_and_f"] == pytest.approx(1.0), name
    page = (tmp_path / "scores.html").read_text()
    assert "<th>boundary F</th><th>J&amp;F</th>" in page
    assert f"<td>{shifted_entry['iou']:.4f}</td><td>{11 / 12:.4f}</td><td>{shifted_entry['j_and_f']:.4f}</td>" in page
