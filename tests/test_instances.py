import numpy as np
import pytest

from futureseg.core.instances import instances_to_mask, label_components, mask_to_instances, object_vote

def semantic_mask() -> np.ndarray:
    """12×16 mask: class 3 in two pieces, class 5 in three (one a single pixel, one a
    1-pixel-wide line), class 7 an L shape touching class 3, class 9 two pieces that
    touch only at a corner (one component under 8-connectivity)."""
    m = np.zeros((12, 16), dtype=np.uint8)
    m[0:3, 0:4] = 3
    m[8:12, 12:16] = 3
    m[5, 5] = 5
    m[0:6, 10] = 5
    m[10, 0:3] = 5
    m[3:6, 0:2] = 7
    m[5, 2:4] = 7
    m[7, 6] = 9
    m[8, 7] = 9
    return m


def test_round_trip_reproduces_the_mask():
    mask = semantic_mask()
    inst = mask_to_instances(mask, min_pixels=0)
    assert inst["boxes"].dtype == np.float32 and inst["labels"].dtype == np.int64 and inst["masks"].dtype == np.uint8
    assert inst["labels"].tolist() == [3, 3, 5, 5, 5, 7, 9]
    assert inst["masks"].shape == (7, 12, 16)
    back = instances_to_mask(inst["masks"], inst["labels"], np.ones(7), score_threshold=0.5)
    np.testing.assert_array_equal(back, mask)


def test_boxes_are_pixel_edges_and_tight():
    inst = mask_to_instances(semantic_mask())
    boxes = {(int(label), tuple(box)) for label, box in zip(inst["labels"], inst["boxes"].tolist())}
    assert (3, (0, 0, 4, 3)) in boxes  # rows 0-2, columns 0-3
    assert (5, (5, 5, 6, 6)) in boxes  # the single pixel: width and height 1
    assert (5, (10, 0, 11, 6)) in boxes  # the vertical line: width 1, not degenerate
    assert (9, (6, 7, 8, 9)) in boxes  # corner-touching pixels form one instance
    for box, piece in zip(inst["boxes"].astype(int), inst["masks"]):
        rows, cols = np.nonzero(piece)
        assert (box[0], box[1], box[2], box[3]) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_small_fragments_are_dropped():
    inst = mask_to_instances(semantic_mask(), min_pixels=4)
    # class 5 keeps only its 6-pixel line; class 9 (2 pixels) disappears
    assert inst["labels"].tolist() == [3, 3, 5, 7]
    assert [int(m.sum()) for m in inst["masks"]] == [12, 16, 6, 8]


def test_empty_mask_gives_no_instances():
    inst = mask_to_instances(np.zeros((5, 7), dtype=np.int64))
    assert inst["boxes"].shape == (0, 4) and inst["labels"].shape == (0,) and inst["masks"].shape == (0, 5, 7)
    assert instances_to_mask(inst["masks"], inst["labels"], np.zeros(0)).shape == (5, 7)


def test_components_are_8_connected_and_numbered_in_row_major_order():
    binary = np.array([[0, 1, 0, 0],
                       [0, 0, 1, 0],
                       [1, 0, 0, 0],
                       [1, 0, 1, 1]], dtype=bool)
    labels, n = label_components(binary)
    assert n == 3 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, [[0, 1, 0, 0], [0, 0, 1, 0], [2, 0, 0, 0], [2, 0, 3, 3]])


def test_highest_score_wins_where_instances_overlap():
    masks = np.zeros((3, 4, 4), dtype=np.float32)
    masks[0, :, :3] = 0.9  # label 1, score 0.6
    masks[1, :, 1:] = 0.8  # label 2, score 0.9: covers label 1 where they overlap
    masks[2] = 1.0  # label 3, score 0.3: under the threshold, never painted
    out = instances_to_mask(masks, np.array([1, 2, 3]), np.array([0.6, 0.9, 0.3]), score_threshold=0.5)
    np.testing.assert_array_equal(out, np.array([[1, 2, 2, 2]] * 4, dtype=np.uint8))
    # the order of the inputs does not matter, only the scores
    flipped = instances_to_mask(masks[::-1], np.array([3, 2, 1]), np.array([0.3, 0.9, 0.6]), score_threshold=0.5)
    np.testing.assert_array_equal(flipped, out)
    # lower threshold: label 3 is painted first (lowest score) and shows where nothing covers it
    low = instances_to_mask(masks, np.array([1, 2, 3]), np.array([0.6, 0.9, 0.3]), score_threshold=0.2)
    np.testing.assert_array_equal(low, out)
    masks[0, 0, 0] = masks[1, 0, 0] = 0.0
    low = instances_to_mask(masks, np.array([1, 2, 3]), np.array([0.6, 0.9, 0.3]), score_threshold=0.2)
    assert low[0, 0] == 3


def test_mask_threshold_applies_to_probabilities():
    probs = np.array([[[0.2, 0.5, 0.7]]], dtype=np.float32)
    out = instances_to_mask(probs, np.array([4]), np.array([1.0]), score_threshold=0.5, mask_threshold=0.5)
    assert out.tolist() == [[0, 4, 4]]
    assert out.dtype == np.uint8


# ---------------------------------------------------------------- object_vote


def test_an_object_painted_in_two_classes_becomes_its_majority_class():
    mask = np.zeros((6, 8), dtype=np.int64)
    mask[1:5, 1:5] = 17  # 16 pixels, 5 of them painted 33 (shape wrong on part of the object)
    mask[1, 1:5] = 33
    mask[2, 1] = 33
    out = object_vote(mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[1:5, 1:5] = 17
    np.testing.assert_array_equal(out, expected)


def test_separate_objects_keep_their_own_classes_and_the_background_stays():
    mask = np.zeros((7, 12), dtype=np.uint8)
    mask[0:3, 0:3] = 5
    mask[0, 0] = 21  # outvoted inside the first object (same colour, brown; another shape)
    mask[4:7, 8:12] = 40  # a second object, not touching the first
    mask[6, 11] = 24  # yellow like 40
    mask[5, 4] = 9  # a single pixel, its own object
    out = object_vote(mask)
    assert out[0:3, 0:3].tolist() == [[5] * 3] * 3
    assert (out[4:7, 8:12] == 40).all() and out[5, 4] == 9
    background = mask == 0
    assert (out[background] == 0).all() and (out[~background] != 0).all()


def test_corner_touching_pixels_are_one_object_and_ties_go_to_the_lowest_class():
    mask = np.array([[12, 0, 0],
                     [0, 28, 0],
                     [0, 0, 0]], dtype=np.int32)  # 12 and 28: both green
    np.testing.assert_array_equal(object_vote(mask), [[12, 0, 0], [0, 12, 0], [0, 0, 0]])


def test_touching_objects_of_different_colours_keep_their_classes():
    mask = np.zeros((5, 10), dtype=np.uint8)
    mask[1:4, 1:5] = 2  # metal red cube
    mask[1:4, 5:9] = 19  # metal blue sphere, touching it
    mask[1, 1:3] = 18  # part of the cube called a red sphere: outvoted within the red pixels
    expected = mask.copy()
    expected[1, 1:3] = 2
    np.testing.assert_array_equal(object_vote(mask), expected)


def test_empty_masks_and_stacks_of_frames():
    empty = np.zeros((4, 5), dtype=np.int64)
    out = object_vote(empty)
    assert out.dtype == np.uint8 and out.shape == (4, 5) and not out.any()
    frames = np.zeros((2, 3, 4, 5), dtype=np.uint8)
    frames[0, 1, 1:3, 1:4] = [[3, 3, 19], [3, 19, 19]]  # 3 and 19: blue
    frames[1, 2, 0:2, 0:2] = [[6, 6], [6, 22]]  # 6 and 22: brown
    voted = object_vote(frames)
    assert voted.shape == frames.shape
    for index in np.ndindex(2, 3):  # each frame voted on its own
        np.testing.assert_array_equal(voted[index], object_vote(frames[index]))
    assert (voted[0, 1, 1:3, 1:4] == 3).all() and (voted[1, 2, 0:2, 0:2] == 6).all()
    assert object_vote(np.zeros((0, 4, 5), dtype=np.uint8)).shape == (0, 4, 5)


def test_object_vote_refuses_what_is_not_a_mask():
    with pytest.raises(ValueError, match="integer"):
        object_vote(np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="0…255"):
        object_vote(np.full((3, 3), 300))
    with pytest.raises(ValueError, match="shape"):
        object_vote(np.zeros(3, dtype=np.uint8))
