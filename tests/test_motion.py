"""futureseg.core.motion on hand-made masks: where each object lands, bounces, leaves, and in
what order objects are painted; the track vote; the config's checks."""

import numpy as np
import pytest

from futureseg.core.errors import ConfigError
from futureseg.core.motion import HORIZON, MotionConfig, config_from, extrapolate, track_vote

H, W = 32, 48
CENTROIDS = MotionConfig(flow="none")  # centroid velocities: no frames needed


def square(mask, top, left, size, class_id):
    """Paint a size×size square (clipped at the borders) into a (H, W) mask."""
    mask[max(top, 0) : max(top + size, 0), max(left, 0) : max(left + size, 0)] = class_id
    return mask


def sequence(*objects, frames=11):
    """(frames, H, W) masks of squares (class, top(t), left(t), size), t = 0…frames-1; an
    object whose top is None in a frame is absent from it."""
    masks = np.zeros((frames, H, W), np.uint8)
    for class_id, top, left, size in objects:
        for t in range(frames):
            if top(t) is not None:
                square(masks[t], top(t), left(t), size, class_id)
    return masks


def where(mask, class_id):
    rows, cols = np.nonzero(mask == class_id)
    return (rows.min(), cols.min(), rows.max(), cols.max()) if len(rows) else None


def test_a_video_with_no_objects_stays_background():
    out = extrapolate(np.zeros((11, H, W), np.uint8), None, CENTROIDS)
    assert out.shape == (HORIZON, H, W) and out.dtype == np.uint8 and not out.any()


def test_an_object_moving_2px_a_frame_lands_where_constant_velocity_puts_it():
    masks = sequence((7, lambda t: 10, lambda t: 2 + 2 * t, 4))
    out = extrapolate(masks, None, CENTROIDS)
    for s in range(HORIZON):
        t = 11 + s
        assert where(out[s], 7) == (10, 2 + 2 * t, 13, 5 + 2 * t), t
    # frame 21 touches the right border exactly: no bounce yet
    assert where(out[-1], 7) == (10, 44, 13, 47)


def test_an_object_bounces_off_the_border():
    masks = sequence((3, lambda t: 5, lambda t: 2 + 3 * t, 4))
    out = extrapolate(masks, None, CENTROIDS)
    # unbounded its left column at frame 21 would be 65; the wall is at 44 (47 - 3)
    assert where(out[-1], 3) == (5, 23, 8, 26)
    assert all(where(frame, 3) is not None for frame in out)  # never leaves


def test_without_bounces_an_object_leaves_the_frame():
    masks = sequence((3, lambda t: 5, lambda t: 2 + 3 * t, 4))
    out = extrapolate(masks, None, MotionConfig(flow="none", bounce=False))
    assert where(out[15 - 11], 3) == (5, 47, 8, 47)  # one column left in frame 15
    assert where(out[-1], 3) is None and not out[-1].any()


def test_an_object_seen_in_one_input_frame_only():
    # entering at frame 10 (no track: it stays where it is); one seen only in frame 3 is gone
    masks = sequence((9, lambda t: 20 if t == 10 else None, lambda t: 30, 3),
                     (4, lambda t: 2 if t == 3 else None, lambda t: 2, 3))
    out = extrapolate(masks, None, CENTROIDS)
    for frame in out:
        assert where(frame, 9) == (20, 30, 22, 32)
        assert where(frame, 4) is None


def test_two_components_of_one_class_move_each_by_its_own_motion():
    masks = sequence((5, lambda t: 4, lambda t: 2, 3),  # still
                     (5, lambda t: 20, lambda t: 10 + t, 3))  # 1 px a frame to the right
    out = extrapolate(masks, None, CENTROIDS)
    pixels = out[-1] == 5
    assert pixels[4:7, 2:5].all()
    assert pixels[20:23, 31:34].all()
    assert pixels.sum() == 18


def test_an_object_missing_from_some_frames_is_still_tracked_over_the_frames_it_has():
    masks = sequence((6, lambda t: None if t in (3, 4) else 8, lambda t: 1 + t, 3))
    assert where(extrapolate(masks, None, CENTROIDS)[-1], 6) == (8, 22, 10, 24)


def test_links_ignore_the_class_so_a_piece_relabelled_by_the_segmenter_keeps_its_track():
    masks = sequence((11, lambda t: 8, lambda t: 1 + 2 * t, 4))
    masks[10][masks[10] == 11] = 12  # the segmenter calls it another class in frame 10
    assert where(extrapolate(masks, None, CENTROIDS)[-1], 12) == (8, 43, 11, 46)


def test_near_objects_are_painted_over_far_ones():
    # A (far: higher in the image) moves right, B (near: lower) moves left; they cross
    masks = sequence((1, lambda t: 8, lambda t: 2 + t, 6), (2, lambda t: 11, lambda t: 30 - t, 6))
    out = extrapolate(masks, None, CENTROIDS)
    frame = out[16 - 11]  # A at columns 18…23, B at 14…19: both cover rows 11…13, columns 18…19
    assert (frame[11:14, 18:20] == 2).all()
    assert (frame[8:11, 18:24] == 1).all() and (frame[14:17, 14:20] == 2).all()


def test_flow_of_the_frames_gives_the_velocity():
    # the masks say the object stands still (every frame at its frame-10 place), the frames
    # show its texture moving 1 px a frame to the right: flow, not the centroids, decides
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    masks = sequence((13, lambda t: 10, lambda t: 14, 8))
    frames = np.full((11, H, W, 3), 90, np.uint8)
    for t in range(11):
        frames[t, 10:18, 4 + t : 12 + t] = texture
    assert where(extrapolate(masks, frames, CENTROIDS)[-1], 13) == (10, 14, 17, 21)
    top, left, bottom, right = where(extrapolate(masks, frames, MotionConfig(flow="dis"))[-1], 13)
    assert abs(top - 10) <= 1 and abs(left - 25) <= 1 and (bottom - top, right - left) == (7, 7)


def test_the_same_input_gives_the_same_bytes():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (11, H, W, 3), dtype=np.uint8)
    masks = sequence((1, lambda t: 3, lambda t: t, 5), (2, lambda t: 20, lambda t: 40 - t, 4))
    first = extrapolate(masks, frames, MotionConfig())
    assert np.array_equal(first, extrapolate(masks, frames, MotionConfig()))


def test_bad_inputs_and_settings_are_refused():
    with pytest.raises(ValueError, match="masks"):
        extrapolate(np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="frames"):
        extrapolate(np.zeros((11, H, W), np.uint8), np.zeros((11, H, W), np.uint8))
    with pytest.raises(ConfigError, match=r"motion\.flow"):
        MotionConfig(flow="magic")
    with pytest.raises(ConfigError, match=r"motion\.velocity_frames"):
        MotionConfig(velocity_frames=0)
    with pytest.raises(ConfigError, match=r"motion\.bounce"):
        MotionConfig(bounce="yes")
    with pytest.raises(ConfigError, match="unknown setting.*friction"):
        config_from({"friction": 0.1})


def test_track_vote_gives_each_object_the_class_of_most_of_its_track():
    masks = sequence((5, lambda t: 4, lambda t: 2 + t, 4), (9, lambda t: 20, lambda t: 30, 5))
    noisy = masks.copy()
    noisy[2][noisy[2] == 5] = 6  # two frames of object 5 called 6
    noisy[7][noisy[7] == 5] = 6
    noisy[7, 20:22, 30:35] = 10  # and part of object 9 called 10 in one frame
    voted = track_vote(noisy)
    np.testing.assert_array_equal(voted, masks)


def test_track_vote_does_not_merge_two_objects():
    masks = sequence((5, lambda t: 4, lambda t: 2, 4), (7, lambda t: 4, lambda t: 20, 4))
    np.testing.assert_array_equal(track_vote(masks), masks)
    assert not track_vote(np.zeros((3, H, W), np.uint8)).any()
