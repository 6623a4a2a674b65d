"""Route dynamics on hand-made masks: object tracks, the painter's scale, the untrained model
equal to route motion, a trained model learning friction the rule does not know, the
placement oracle, the edge cases and the refusals."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from futureseg.core import data, motion
from futureseg.core.errors import ConfigError
from futureseg.core.io import load_array, save_array
from futureseg.core.training import save_checkpoint
from futureseg.evaluate import report_figures
from futureseg.forecast.dynamics import placement_oracle
from futureseg.forecast.tracks import Tracks
from futureseg.models import dynamics

from test_motion import sequence, square
from test_routes import ok, run_cli

H, W = 32, 48
CENTROIDS = motion.MotionConfig(flow="none")


def untrained(size=(H, W), **settings):
    torch.manual_seed(0)
    return dynamics.Dynamics(dynamics.DynamicsConfig(size=size, **settings))


def save_model_file(path, model, motion_config=CENTROIDS):
    """A model file as train-dynamics writes one, of a model never trained."""
    save_checkpoint(path, {"kind": "dynamics", "model_config": dataclasses.asdict(model.config), "fingerprint": "0",
                           "motion": dataclasses.asdict(motion_config), "model": model.state_dict()})


def write_split(root, split, masks, first_id):
    """A split of the Dataset_Student layout whose videos have the given (N, 22, H, W) masks;
    frames are the masks colourised (valid PNGs of the right size)."""
    table = report_figures.palette()
    for k, mask in enumerate(masks):
        folder = root / split / f"video_{first_id + k:05d}"
        folder.mkdir(parents=True)
        for index in range(data.N_FRAMES):
            Image.fromarray(table[mask[index]]).save(folder / f"image_{index}.png")
        np.save(folder / "mask.npy", mask.astype(np.uint8))


def friction_videos(n, seed):
    """(n, 22, H, W): one or two 6×6 squares per video sliding and slowing down (15% a frame),
    so route motion's constant velocity from frames 8…10 overshoots frame 21."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, data.N_FRAMES, H, W), np.uint8)
    t = np.arange(data.N_FRAMES)
    for v in range(n):
        for k in range(rng.integers(1, 3)):
            speed = rng.uniform(2.0, 3.0) * rng.choice([-1, 1])
            travel = speed * (1 - 0.85**t) / 0.15
            left = (2 if speed > 0 else W - 8) + travel
            top = rng.uniform(2, H - 8) + 0.2 * travel * rng.choice([-1, 1]) * 0.5
            top = np.clip(top, 0, H - 6)
            for f in range(data.N_FRAMES):
                square(masks[v, f], int(round(top[f])), int(round(left[f])), 6, 5 + 7 * k)
    return masks


# ---------------------------------------------------------------- tracks


def test_object_tracks_states_of_hand_made_squares():
    masks = sequence((5, lambda t: 4, lambda t: 2 * t, 4), (9, lambda t: 20 if t < 3 else None, lambda t: 30, 3),
                     frames=5)
    classes, states = motion.object_tracks(masks)
    s = motion.STATE
    assert list(classes) == [5, 9] and states.shape == (2, 5, len(motion.STATE_FIELDS))
    np.testing.assert_allclose(states[0, :, s["col"]], 2 * np.arange(5) + 1.5)
    assert np.all(states[0, :, s["row"]] == 5.5) and np.all(states[0, :, s["area"]] == 16)
    assert tuple(states[0, 2, s["top"] : s["right"] + 1]) == (4, 4, 7, 7)
    assert list(states[1, :, s["present"]]) == [1, 1, 1, 0, 0] and not states[1, 3:, : s["right"] + 1].any()
    assert np.isnan(states[..., s["flow_row"] :]).all()  # no frames: no flow
    # slope over the last 3 frames of a track; 0 for an object seen once
    velocity = motion.track_velocity(states, 2, 3)
    np.testing.assert_allclose(velocity, [[0, 2], [0, 0]])
    empty_classes, empty = motion.object_tracks(np.zeros((4, H, W), np.uint8))
    assert empty_classes.shape == (0,) and empty.shape == (0, 4, len(motion.STATE_FIELDS))


def test_track_velocity_takes_the_flow_and_counts_only_the_last_run():
    masks = sequence((5, lambda t: None if t == 2 else 4, lambda t: 3 * t, 4), frames=6)
    _, states = motion.object_tracks(masks)
    # present at 3, 4, 5 in a row: the slope over those; at 3 only frame 3 (2 is a gap)
    np.testing.assert_allclose(motion.track_velocity(states, 5, 3), [[0, 3]])
    np.testing.assert_allclose(motion.track_velocity(states, 3, 3), [[0, 0]])
    states[0, 5, motion.STATE["flow_row"] :] = (1.5, -2)
    np.testing.assert_allclose(motion.track_velocity(states, 5, 3), [[1.5, -2]])


def test_tracks_verb_writes_every_video_and_flow_needs_frames(tmp_path, capsys):
    masks = friction_videos(3, seed=0)
    write_split(tmp_path / "ds", "train", masks, 0)
    out = tmp_path / "tracks.npz"
    assert run_cli("tracks", "--root", tmp_path / "ds", "--split", "train", "--out", out) == 2
    assert "--frames" in capsys.readouterr().err and not out.exists()
    ok("tracks", "--root", tmp_path / "ds", "--split", "train", "--flow", "none", "--out", out)
    tracks = Tracks(out)
    assert list(tracks.ids) == [0, 1, 2] and tracks.size == (H, W) and tracks.n_frames == data.N_FRAMES
    for i in range(3):
        classes, states = tracks.video(i)
        expected = motion.object_tracks(masks[i])
        np.testing.assert_array_equal(classes, expected[0])
        np.testing.assert_array_equal(states, expected[1])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="bad.npz: not a tracks file"):
        Tracks(tmp_path / "bad.npz")


# ---------------------------------------------------------------- painting and the model


def test_paint_scales_about_the_centroid_and_drops_what_leaves_the_image():
    masks = sequence((5, lambda t: 10, lambda t: 10, 6), frames=1)
    [obj] = motion.moving_objects(masks, None, CENTROIDS)
    centre = obj.centroid
    double = motion.paint([obj], (H, W), [np.tile(centre, (11, 1))], [np.full(11, 2.0)])
    assert (double[0] == 5).sum() == 144
    rows, cols = np.nonzero(double[0] == 5)
    np.testing.assert_allclose([rows.mean(), cols.mean()], centre, atol=0.5)
    # moved 40 px right: its pixels past the border are dropped, none wrap to the left
    far = motion.paint([obj], (H, W), [np.tile(centre + (0, 34), (11, 1))], [np.ones(11)])
    assert (far[0] == 5).sum() == 6 * 4 and not far[0][:, : W // 2].any()
    gone = motion.paint([obj], (H, W), [np.tile(centre + (0, 400), (11, 1))], [np.ones(11)])
    unknown = motion.paint([obj], (H, W), [np.full((11, 2), np.nan)], [np.ones(11)])
    assert not gone.any() and not unknown.any()


@pytest.mark.parametrize("with_frames", [False, True])
def test_an_untrained_model_moves_objects_exactly_as_route_motion(with_frames):
    videos = friction_videos(4, seed=1)
    # a collision head-on, an object leaving, one seen in frame 10 only
    videos[0] = sequence((5, lambda t: 10, lambda t: 2 * t, 6), (12, lambda t: 10, lambda t: 40 - 2 * t, 6), frames=22)
    videos[1] = sequence((5, lambda t: 12, lambda t: 30 + 2 * t, 6), (9, lambda t: 3 if t >= 10 else None,
                                                                          lambda t: 3, 5), frames=22)
    config = motion.MotionConfig(flow="dis") if with_frames else CENTROIDS
    model = untrained()
    for masks in videos:
        frames = report_figures.palette()[masks[:11]] if with_frames else None
        expected = motion.extrapolate(masks[:11], frames, config)
        np.testing.assert_array_equal(dynamics.forecast(model, masks[:11], frames, config), expected)
    assert not dynamics.forecast(model, np.zeros((11, H, W), np.uint8), None, CENTROIDS).any()


def test_a_model_pushing_objects_out_of_the_image_drops_them():
    model = untrained()
    with torch.no_grad():
        model.head[-1].bias.view(11, 3)[:, 1] = 100.0  # 100 units (200 px) to the right
    masks = sequence((5, lambda t: 10, lambda t: 20 + t, 6), frames=11)
    assert not dynamics.forecast(model, masks, None, CENTROIDS).any()


def test_dynamics_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="dynamics.layers"):
        dynamics.DynamicsConfig(size=(H, W), layers=-1)
    with pytest.raises(ConfigError, match="dynamics.width .* multiple of dynamics.heads"):
        dynamics.DynamicsConfig(size=(H, W), width=10, heads=4)


def test_placement_oracle_puts_each_object_at_its_true_place_and_skips_late_entries():
    masks = sequence((5, lambda t: 10, lambda t: 2 * t, 6), (9, lambda t: 3 if t >= 15 else None, lambda t: 40, 5),
                     frames=22)
    out = placement_oracle(masks)
    np.testing.assert_array_equal(out[-1] == 5, masks[21] == 5)
    assert not (out == 9).any()  # it entered after frame 10: nothing to move


# ---------------------------------------------------------------- training and the route


@pytest.fixture(scope="module")
def friction(tmp_path_factory):
    """A dataset of sliding, slowing squares: train (tracks), val; a model trained on it."""
    folder = tmp_path_factory.mktemp("friction")
    root = folder / "ds"
    write_split(root, "train", friction_videos(24, seed=2), 0)
    write_split(root, "val", friction_videos(8, seed=3), 1000)
    ok("tracks", "--root", root, "--split", "train", "--flow", "none", "--out", folder / "tracks.npz")
    argv = ["train-dynamics", "--tracks", folder / "tracks.npz", "--val-root", root,
            "--motion-config", json.dumps({"flow": "none"}), "--width", 32, "--layers", 1, "--heads", 2,
            "--epochs", 8, "--batch-size", 16, "--lr", 0.005, "--weight-decay", 0.0, "--threads", 1,
            "--out", folder / "model.pt", "--metrics", folder / "metrics.csv", "--checkpoints", folder / "ck"]
    ok(*argv)
    return folder, root, argv


def test_training_learns_the_friction_the_rule_does_not_know(friction):
    folder, _, _ = friction
    rows = (folder / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert {"train_position", "train_log_scale", "val_iou", "val_rule_iou"} <= set(header)
    assert float(last["val_iou"]) > float(last["val_rule_iou"]) + 0.1, last


def test_route_dynamics_verb_shards_and_refusals(friction, tmp_path, capsys):
    folder, root, _ = friction
    model = folder / "model.pt"
    ok("dynamics", "--model", model, "--root", root, "--split", "val", "--out", tmp_path / "all.npy",
       "--out-sequence", tmp_path / "seq.npy")
    whole, meta = load_array(tmp_path / "all.npy")
    sequence_masks, _ = load_array(tmp_path / "seq.npy")
    assert meta["ids"] == list(range(1000, 1008)) and np.array_equal(sequence_masks[:, -1], whole)
    parts = []
    for i in range(2):
        ok("dynamics", "--model", model, "--root", root, "--split", "val", "--shard", f"{i}/2",
           "--out", tmp_path / f"part{i}.npy")
        parts.append(load_array(tmp_path / f"part{i}.npy")[0])
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # the model's own forecast, video by video
    truth, _ = data.read_split_masks(root, "val")
    loaded, _ = dynamics.load(model)
    np.testing.assert_array_equal(whole[0], dynamics.forecast(loaded, truth[0, :11], None, CENTROIDS)[-1])
    # refusals: nothing written, the file or flag named
    out = tmp_path / "refused.npy"
    assert run_cli("dynamics", "--model", folder / "tracks.npz", "--root", root, "--split", "val", "--out", out) == 2
    assert "tracks.npz" in capsys.readouterr().err and not out.exists()
    assert run_cli("dynamics", "--placement-oracle", "--model", model, "--root", root, "--split", "val",
                   "--out", out) == 2
    assert "--placement-oracle reads the true masks alone" in capsys.readouterr().err
    save_checkpoint(tmp_path / "other.pt", {"kind": "forecaster", "model_config": {}, "model": {}, "fingerprint": "0"})
    assert run_cli("dynamics", "--model", tmp_path / "other.pt", "--root", root, "--split", "val", "--out", out) == 2
    assert "other.pt: not a dynamics model (kind 'forecaster')" in capsys.readouterr().err
    small = untrained(size=(16, 24))
    save_model_file(tmp_path / "small.pt", small)
    assert run_cli("dynamics", "--model", tmp_path / "small.pt", "--root", root, "--split", "val", "--out", out) == 2
    assert "was trained on (16, 24)" in capsys.readouterr().err and not out.exists()


def test_untrained_model_file_through_the_verb_equals_route_motion(friction, tmp_path):
    _, root, _ = friction
    save_model_file(tmp_path / "untrained.pt", untrained())
    ok("dynamics", "--model", tmp_path / "untrained.pt", "--root", root, "--split", "val",
       "--out-sequence", tmp_path / "dynamics.npy")
    ok("extrapolate", "--root", root, "--split", "val", "--motion-config", json.dumps({"flow": "none"}),
       "--out-sequence", tmp_path / "motion.npy")
    np.testing.assert_array_equal(load_array(tmp_path / "dynamics.npy")[0], load_array(tmp_path / "motion.npy")[0])


def test_a_rerun_resumes_the_finished_checkpoint_to_the_same_model(friction, tmp_path):
    folder, _, argv = friction
    first = torch.load(folder / "model.pt", weights_only=True)["model"]
    again = tmp_path / "again.pt"
    ok(*[again if a == folder / "model.pt" else a for a in argv])
    second = torch.load(again, weights_only=True)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_train_dynamics_refuses_input_only_tracks_and_flow_mismatch(friction, tmp_path, capsys):
    folder, root, argv = friction
    masks = friction_videos(2, seed=5)
    save_array(tmp_path / "pseudo.npy", masks[:, :11], [7, 8])
    ok("tracks", "--masks", tmp_path / "pseudo.npy", "--flow", "none", "--out", tmp_path / "short.npz")
    out = tmp_path / "m.pt"
    base = [a for a in argv]
    base[base.index("--out") + 1] = out
    base[base.index("--tracks") + 1] = tmp_path / "short.npz"
    assert run_cli(*base) == 2
    assert "short.npz: tracks of 11 frames" in capsys.readouterr().err and not out.exists()
    base[base.index("--tracks") + 1] = folder / "tracks.npz"
    base[base.index("--motion-config") + 1] = json.dumps({"flow": "dis"})
    assert run_cli(*base, "--val-frames", tmp_path / "none.npy") == 2
    assert "tracks with flow 'none'" in capsys.readouterr().err and not out.exists()
