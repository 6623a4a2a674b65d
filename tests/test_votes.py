"""The votes of `segment --object-vote` and `pseudo-label --object-vote --track-vote`: the
verbs write the segmenter's masks with core.instances.object_vote applied per frame, then
core.motion.track_vote over each video's frames. A tiny U-Net (one epoch) runs the verbs
end to end; it paints nearly one class everywhere, so a stand-in segmenter that reads the
class ids out of the frames' red channel shows on hand-made masks what the votes change."""

import numpy as np
import pytest
import torch

from futureseg import cli
from futureseg.core.instances import object_vote
from futureseg.core.io import load_array, save_array
from futureseg.core.motion import track_vote
from futureseg.models import segmenters


def ok(*argv) -> None:
    threads = torch.get_num_threads()
    try:
        assert cli.main([str(a) for a in argv]) == 0, argv
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def segmenter(tiny_dataset, tmp_path_factory):
    """A tiny U-Net (one epoch) and the val frame cache."""
    f = tmp_path_factory.mktemp("votes")
    ok("mean-std", "--root", tiny_dataset, "--out", f / "ms.json", "--splits", "train")
    ok("make-seg-frames", "--root", tiny_dataset, "--out", f / "segf", "--no-generated", "--frameskip", "2",
       "--blur-prob", "0", "--blur-sigma", "0.5,2", "--seed", "0")
    ok("cache-frames", "--root", tiny_dataset, "--split", "val", "--out", f / "val.npy")
    ok("train-segmenter", "--model", "unet", "--root", tiny_dataset, "--seg-frames", f / "segf",
       "--mean-std", f / "ms.json", "--out", f / "seg.pt", "--metrics", f / "m.csv", "--checkpoints", f / "ck",
       "--epochs", "1", "--batch-size", "8", "--lr", "0.003", "--weight-decay", "0.01", "--soft-iou-weight", "0",
       "--background-weight", "1.0", "--base-channels", "4", "--depth", "2", "--threads", "1")
    return f


def test_segment_object_vote_repaints_each_mask(segmenter, tiny_dataset, tmp_path):
    for name, flags in (("plain", []), ("voted", ["--object-vote"])):
        ok("segment", "--model", segmenter / "seg.pt", "--root", tiny_dataset, "--threads", "1",
           "--out-val-oracle", tmp_path / f"oracle_{name}.npy", "--out-val-frame10", tmp_path / f"frame10_{name}.npy",
           *flags)
    for output in ("oracle", "frame10"):
        plain, plain_meta = load_array(tmp_path / f"{output}_plain.npy")
        voted, voted_meta = load_array(tmp_path / f"{output}_voted.npy")
        assert voted.dtype == np.uint8 and voted.shape == plain.shape
        np.testing.assert_array_equal(voted, object_vote(plain))
        assert plain_meta["object_vote"] is False and voted_meta["object_vote"] is True
        assert voted_meta["ids"] == plain_meta["ids"]
        np.testing.assert_array_equal(voted == 0, plain == 0)  # the foreground stays where it was


def test_pseudo_label_votes_per_frame_then_per_track(segmenter, tmp_path):
    outputs = {}
    for name, flags in (("plain", []), ("object", ["--object-vote"]), ("track", ["--track-vote"]),
                        ("both", ["--object-vote", "--track-vote"])):
        # batch 8 < 11 frames: one video per forward pass, so the votes see whole videos batch by batch
        ok("pseudo-label", "--model", segmenter / "seg.pt", "--cache", segmenter / "val.npy",
           "--out", tmp_path / f"{name}.npy", "--frames", "11", "--batch-size", "8", "--threads", "1", *flags)
        outputs[name] = load_array(tmp_path / f"{name}.npy")
    plain = outputs["plain"][0]
    assert plain.dtype == np.uint8 and plain.shape[1] == 11
    expected = {
        "object": object_vote(plain),
        "track": np.stack([track_vote(video) for video in plain]),
        "both": np.stack([track_vote(video) for video in object_vote(plain)]),
    }
    for name, masks in expected.items():
        np.testing.assert_array_equal(outputs[name][0], masks, err_msg=name)
        assert outputs[name][1]["ids"] == outputs["plain"][1]["ids"]
    flags = {name: (meta["object_vote"], meta["track_vote"]) for name, (_, meta) in outputs.items()}
    assert flags == {"plain": (False, False), "object": (True, False), "track": (False, True), "both": (True, True)}
    # after the votes, every object of a frame has one class
    for frame in outputs["both"][0].reshape(-1, *plain.shape[2:]):
        np.testing.assert_array_equal(object_vote(frame), frame)


# ---------------------------------------------------------------- hand-made masks


class RedChannelSegmenter:
    """Stands in for a trained segmenter: the class id of a pixel is its red value."""

    name = "unet"

    def to(self, device):
        return self

    def masks(self, frames, device, batch_size=16):
        return np.array(np.asarray(frames)[..., 0], dtype=np.uint8)

    def sequence_masks(self, clips, device, batch_size=16):
        return self.masks(clips, device, batch_size)  # per frame, as a per-frame Segmenter's


@pytest.fixture
def red_channel(monkeypatch):
    monkeypatch.setattr(segmenters, "load", lambda path, score_threshold=None, temporal=None: (RedChannelSegmenter(), {}))


def noisy_video(t: int = 4) -> np.ndarray:
    """(T, 12, 16) masks: object A (class 17, 3×4) moves right a pixel per frame, its top
    row painted 33 (shape wrong), and in frame 2 two rows of 33: a majority there; object B
    (class 40, 3×3) stands still, one pixel of it painted 8."""
    masks = np.zeros((t, 12, 16), dtype=np.uint8)
    for k in range(t):
        masks[k, 1:4, 1 + k : 5 + k] = 17
        masks[k, 1 : 3 if k == 2 else 2, 1 + k : 5 + k] = 33
        masks[k, 7:10, 10:13] = 40
        masks[k, 8, 11] = 8
    return masks


def as_frames(masks: np.ndarray) -> np.ndarray:
    frames = np.zeros((*masks.shape, 3), dtype=np.uint8)
    frames[..., 0] = masks
    frames[..., 1] = 128  # the other channels carry nothing
    return frames


def clean_video(t: int = 4) -> np.ndarray:
    masks = np.zeros((t, 12, 16), dtype=np.uint8)
    for k in range(t):
        masks[k, 1:4, 1 + k : 5 + k] = 17
        masks[k, 7:10, 10:13] = 40
    return masks


def test_pseudo_label_votes_on_hand_made_masks(red_channel, tmp_path):
    videos = np.stack([noisy_video(), noisy_video()[:, :, ::-1]])  # the second mirrored
    save_array(tmp_path / "cache.npy", as_frames(videos), [7, 9], split="val")
    results = {}
    for name, flags in (("plain", []), ("object", ["--object-vote"]), ("both", ["--object-vote", "--track-vote"]),
                        ("track", ["--track-vote"])):
        ok("pseudo-label", "--model", "any.pt", "--cache", tmp_path / "cache.npy", "--out", tmp_path / f"{name}.npy",
           "--frames", "4", "--batch-size", "4", *flags)
        results[name], meta = load_array(tmp_path / f"{name}.npy")
        assert meta["ids"] == [7, 9]
    np.testing.assert_array_equal(results["plain"], videos)
    # the object vote: one class per object and frame, so frame 2's object A is 33 (its majority there)
    object_voted = clean_video()
    object_voted[2][object_voted[2] == 17] = 33
    np.testing.assert_array_equal(results["object"], np.stack([object_voted, object_voted[:, :, ::-1]]))
    # then the track vote: A is 17 in 3 frames of 4, so 17 throughout
    np.testing.assert_array_equal(results["both"], np.stack([clean_video(), clean_video()[:, :, ::-1]]))
    # the track vote alone votes over each class's components (core.motion.track_vote)
    np.testing.assert_array_equal(results["track"], np.stack([track_vote(v) for v in videos]))


def test_segment_object_vote_on_hand_made_masks(red_channel, tmp_path):
    masks = noisy_video()  # four "videos", one predicted frame 21 each
    save_array(tmp_path / "frames_val.npy", as_frames(masks)[:, None], [1, 2, 3, 4], frame_indices=[21])
    for name, flags in (("plain", []), ("voted", ["--object-vote"])):
        ok("segment", "--model", "any.pt", "--val-frames", tmp_path / "frames_val.npy",
           "--out-val", tmp_path / f"{name}.npy", *flags)
    np.testing.assert_array_equal(load_array(tmp_path / "plain.npy")[0], masks)
    expected = clean_video()
    expected[2][expected[2] == 17] = 33
    voted, meta = load_array(tmp_path / "voted.npy")
    np.testing.assert_array_equal(voted, expected)
    assert meta["object_vote"] is True and meta["frame_index"] == 21


def test_pseudo_labels_vote_the_input_frames_as_the_route_does():
    """Frames 0…10 of a 22-frame video are voted over themselves (val's and hidden's inputs
    have no more frames); frames 11…21 over the whole video."""
    from futureseg.segment.pseudo_label import vote

    masks = np.zeros((22, 16, 16), np.uint8)
    # one object, standing still: class 5 in 6 of the input frames, 7 in the other 5 and in
    # every later frame, so the whole video's majority (16 frames) is 7, the inputs' (6) is 5
    masks[:, 4:9, 4:9] = 7
    masks[:6, 4:9, 4:9] = 5
    voted = vote(masks)
    assert (voted[:11, 4:9, 4:9] == 5).all()
    assert (voted[11:, 4:9, 4:9] == 7).all()
    np.testing.assert_array_equal(vote(masks[:11]), track_vote(masks[:11]))
