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
    save_checkpoint(path, {"kind": "dynamics", "format": dynamics.FORMAT, "model_config": dataclasses.asdict(model.config),
                           "fingerprint": "0", "motion": dataclasses.asdict(motion_config), "model": model.state_dict()})


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
    # every interaction, with the exits and the spread the default paints by (an untrained
    # model sees every object in view at a spread of a tenth of a pixel)
    models = [untrained(), untrained(interaction="attention"), untrained(layers=0, exits=False, spread=False)]
    for model, masks in zip(models * 2, videos):
        frames = report_figures.palette()[masks[:11]] if with_frames else None
        expected = motion.extrapolate(masks[:11], frames, config)
        np.testing.assert_array_equal(dynamics.forecast(model, masks[:11], frames, config), expected)
    assert not dynamics.forecast(model, np.zeros((11, H, W), np.uint8), None, CENTROIDS).any()


def test_a_model_pushing_objects_out_of_the_image_drops_them():
    model = untrained()
    with torch.no_grad():
        model.head[-1].bias.view(11, dynamics.OUTPUTS - 1)[:, 1] = 100.0  # 100 units (200 px) to the right
    masks = sequence((5, lambda t: 10, lambda t: 20 + t, 6), frames=11)
    assert not dynamics.forecast(model, masks, None, CENTROIDS).any()


def test_dynamics_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="dynamics.layers"):
        dynamics.DynamicsConfig(size=(H, W), layers=-1)
    with pytest.raises(ConfigError, match="dynamics.width .* multiple of dynamics.heads"):
        dynamics.DynamicsConfig(size=(H, W), width=10, heads=4, interaction="attention")
    with pytest.raises(ConfigError, match="dynamics.interaction must be one of attention, pairwise"):
        dynamics.DynamicsConfig(size=(H, W), interaction="telepathy")
    with pytest.raises(ConfigError, match="dynamics.spread must be true or false"):
        dynamics.DynamicsConfig(size=(H, W), spread="yes")


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


# ---------------------------------------------------------------- issue 30: exits, spread, pieces, targets


def test_an_object_predicted_to_leave_is_not_painted_and_never_wraps():
    masks = sequence((5, lambda t: 10, lambda t: 36 + t, 6), (9, lambda t: 20, lambda t: 10, 5), frames=11)
    model = untrained()
    with torch.no_grad():
        bias = model.head[-1].bias.view(11, dynamics.OUTPUTS - 1)
        bias[6:, dynamics.PRESENCE] = -10.0  # every object out of view from frame 17 on
    out = dynamics.forecast(model, masks, None, CENTROIDS)
    assert (out[:6] == 9).any() and (out[:6] == 5).any()
    assert not out[6:].any()
    # without exits the same weights paint them: the presence read-out is not used
    blind = untrained(exits=False)
    blind.load_state_dict(model.state_dict())
    assert (dynamics.forecast(blind, masks, None, CENTROIDS)[6:] == 9).any()


def test_an_object_entering_from_an_edge_moves_as_the_rule_and_its_cut_targets_are_masked():
    from futureseg.forecast.train_dynamics import targets

    # entering from the left at 2 px a frame: cut by the border until frame 3, whole after
    masks = sequence((5, lambda t: 10, lambda t: 2 * t - 6, 6), frames=22)
    np.testing.assert_array_equal(dynamics.forecast(untrained(), masks[:11], None, CENTROIDS),
                                  motion.extrapolate(masks[:11], None, CENTROIDS))
    # leaving on the right at 3 px a frame: from frame 17 its box is at the border
    leaving = sequence((5, lambda t: 10, lambda t: 3 * t - 9, 6), frames=22)
    classes, states = motion.object_tracks(leaving)
    config = dynamics.DynamicsConfig(size=(H, W))
    x, base, present = dynamics.inputs(classes, states, 10, (H, W), config, 3, True)
    assert x.shape == (1, config.n_features)
    residual, log_scale, seen, whole, in_view = targets(states, 10, present, base, config.unit, (H, W))
    right, there = states[0, 11:, motion.STATE["right"]], states[0, 11:, motion.STATE["present"]] > 0
    assert (there & (right == W - 1)).sum() >= 2  # cut by the border for a few frames, then gone
    np.testing.assert_array_equal(seen[0], there & (right < W - 1))  # cut frames masked, not pulled inward
    assert not seen[0, -1] and seen[0, 0]
    np.testing.assert_array_equal(in_view[0], states[0, 11:, motion.STATE["present"]])
    assert whole[0].sum() == seen[0].sum()  # whole at frame 10: its scale targets are those frames


def test_two_objects_colliding_see_each_other_through_pairwise_messages():
    config = dynamics.DynamicsConfig(size=(H, W), width=16, layers=1)
    torch.manual_seed(0)
    model = dynamics.Dynamics(config)
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)  # a read-out that shows the features
    head_on = sequence((5, lambda t: 10, lambda t: 2 * t, 6), (12, lambda t: 10, lambda t: 40 - 2 * t, 6), frames=11)
    alone = sequence((5, lambda t: 10, lambda t: 2 * t, 6), frames=11)

    def first_object_output(masks):
        classes, states = motion.object_tracks(masks)
        x, _, _ = dynamics.inputs(classes, states, 10, (H, W), config, 3, True)
        with torch.no_grad():
            return model(torch.from_numpy(x)[None], torch.ones(1, len(x), dtype=torch.bool))[0, 0]

    # the same object, with and without another coming at it; one object alone runs too
    assert not torch.allclose(first_object_output(head_on), first_object_output(alone))
    assert dynamics.forecast(model, alone, None, CENTROIDS).shape == (11, H, W)


def test_a_speck_of_a_class_moves_with_its_object():
    # class 5: a 6×6 square sliding right at 2 px a frame, and a one-pixel speck of class 5
    # standing at column 1 (a segmenter's stray pixel)
    masks = sequence((5, lambda t: 12, lambda t: 10 + 2 * t, 6), frames=11)
    masks[:, 2, 1] = 5
    model = untrained()
    with torch.no_grad():
        model.head[-1].bias.view(11, dynamics.OUTPUTS - 1)[:, 0] = 2.0 / model.config.unit * 0  # no row shift
        model.head[-1].bias.view(11, dynamics.OUTPUTS - 1)[:, 1] = 4.0 / model.config.unit  # 4 px right
    out = dynamics.forecast(model, masks, None, CENTROIDS)
    speck = np.argwhere(out[0] == 5)
    square_pixels = speck[speck[:, 0] > 5]
    speck_pixels = speck[speck[:, 0] <= 5]
    assert len(speck_pixels) == 1 and len(square_pixels) == 36
    # both pieces are displaced alike from where they were in frame 10
    square_shift = square_pixels[:, 1].min() - 30
    assert abs((speck_pixels[0, 1] - 1) - square_shift) <= 1, (speck_pixels, square_shift)


def test_a_spread_of_zero_paints_the_means_and_a_spread_smears_the_silhouette():
    masks = sequence((5, lambda t: 10, lambda t: 2 * t, 6), (9, lambda t: 14, lambda t: 30 - t, 6), frames=11)
    objects = motion.moving_objects(masks, None, CENTROIDS)
    k = len(objects)
    means = motion.paint(objects, (H, W))
    probability, classes = motion.paint_probable(objects, (H, W), [o.future for o in objects], [np.ones(11)] * k,
                                                 [np.zeros(11)] * k, [np.ones(11)] * k)
    assert set(np.unique(probability)) <= {0.0, 1.0}
    for threshold in (0.0, 0.5, 0.99):
        np.testing.assert_array_equal(np.where(probability > threshold, classes, 0), means)
    smeared, _ = motion.paint_probable(objects, (H, W), [o.future for o in objects], [np.ones(11)] * k,
                                       [np.full(11, 2.0)] * k, [np.ones(11)] * k)
    assert ((smeared > 0) & (smeared < 1)).any() and (smeared > 0).sum() > (probability > 0).sum()


def test_an_old_dynamics_model_file_is_refused_in_one_line(tmp_path):
    from futureseg.core.errors import FuturesegError

    model = untrained()
    save_checkpoint(tmp_path / "old.pt", {"kind": "dynamics", "model_config": {"size": [H, W], "history": 6,
                                                                             "width": 64, "layers": 0, "heads": 4},
                                          "fingerprint": "0", "motion": {}, "model": model.state_dict()})
    with pytest.raises(FuturesegError, match=r"old.pt: a dynamics model of an older futureseg .* retrain it"):
        dynamics.load(tmp_path / "old.pt")


def test_tracks_average_the_flow_pairs_of_the_rule_and_training_checks_them(friction, tmp_path, capsys):
    from futureseg.data.synth import render_video

    frames, masks, _ = render_video(3, 0, 48, 72)
    config = motion.MotionConfig(flow="dis", flow_pairs=2)
    classes, states = motion.object_tracks(masks[:11], frames[:11], (10,), "dis", flow_pairs=2)
    for obj in motion.moving_objects(masks[:11], frames[:11], config):
        row = int(np.searchsorted(classes, obj.class_id))
        np.testing.assert_allclose(states[row, 10, motion.STATE["flow_row"] :], obj.velocity, atol=1e-4)
    folder, root, argv = friction
    base = list(argv)
    base[base.index("--motion-config") + 1] = json.dumps({"flow": "none", "flow_pairs": 2})
    out = tmp_path / "m.pt"
    base[base.index("--out") + 1] = out
    # flow none: the pairs are not used, so a tracks file of none is fine; with flow, checked
    tracks = Tracks(folder / "tracks.npz")
    meta = dict(tracks.meta, flow="dis", flow_pairs=1)
    from futureseg.forecast.tracks import write

    write(tmp_path / "dis.npz", tracks.ids, [tracks.video(i)[0] for i in range(len(tracks))],
          [tracks.video(i)[1] for i in range(len(tracks))], meta)
    base[base.index("--tracks") + 1] = tmp_path / "dis.npz"
    base[base.index("--motion-config") + 1] = json.dumps({"flow": "dis", "flow_pairs": 2})
    assert run_cli(*base, "--val-frames", tmp_path / "none.npy") == 2
    err = capsys.readouterr().err
    assert "dis.npz: tracks with flow averaged over 1 frame pair(s)" in err and "--flow-pairs 2" in err
    assert not out.exists()


def reference_tracks(masks, frames, ends, flow_pairs):
    """object_tracks the plain way: each class's pixels of each frame found one by one, each
    window end's pairs' flow computed anew (route motion's `_backward_flow`)."""
    classes = np.unique(masks)[1:]
    states = np.zeros((len(classes), len(masks), len(motion.STATE_FIELDS)), np.float32)
    states[..., motion.STATE["flow_row"] :] = np.nan
    for k, c in enumerate(classes):
        for t, mask in enumerate(masks):
            rows, cols = np.nonzero(mask == c)
            if len(rows):
                states[k, t, : motion.STATE["right"] + 1] = (1, rows.mean(), cols.mean(), len(rows), rows.min(),
                                                            cols.min(), rows.max(), cols.max())
        for t in ends:
            if not (masks[t] == c).any():
                continue
            estimates = []
            for u in range(t, max(t - flow_pairs, 0), -1):
                flow = motion._backward_flow(frames[u], frames[u - 1], "dis").reshape(-1, 2)
                pixels = np.flatnonzero(masks[u] == c)
                if len(pixels):
                    dx, dy = np.median(flow[pixels], axis=0)
                    estimates.append((-dy, -dx))
            states[k, t, motion.STATE["flow_row"] :] = np.mean(np.asarray(estimates, np.float64), axis=0)
    return classes, states


@pytest.mark.parametrize("flow_pairs", [1, 3])
def test_tracks_reuse_each_pair_flow_and_equal_the_plain_computation(flow_pairs):
    from futureseg.data.synth import render_video

    # a video whose objects enter, leave and hide: the window ends share pairs (3 pairs:
    # frame 6←5 serves the ends 6, 7 and 8), each computed once, with the same bytes
    for video in (3, 7):
        frames, masks, _ = render_video(video, 0, 48, 72)
        ends = range(motion.FIRST_WINDOW_END, 11)
        classes, states = motion.object_tracks(masks, frames, ends, "dis", flow_pairs)
        expected_classes, expected = reference_tracks(masks, frames, ends, flow_pairs)
        np.testing.assert_array_equal(classes, expected_classes)
        np.testing.assert_array_equal(states, expected)
    # frames over 256 pixels wide take 16-bit row and column images; class ids past 255 are refused
    wide = np.zeros((3, 20, 300), np.int64)
    wide[:, 2:9, 280:299], wide[1, 15:, :4] = 7, 255
    classes, states = motion.object_tracks(wide)
    np.testing.assert_array_equal(classes, [7, 255])
    np.testing.assert_array_equal(states, reference_tracks(wide, None, (), 1)[1])
    wide[0, 0, 0] = 256
    with pytest.raises(ValueError, match="0…255"):
        motion.object_tracks(wide)


def test_the_model_file_holds_the_best_epoch_by_val_iou(friction):
    folder, _, _ = friction
    rows = [dict(zip(*(line.split(",") for line in pair)))
            for pair in [((folder / "metrics.csv").read_text().splitlines()[0], line)
                         for line in (folder / "metrics.csv").read_text().splitlines()[1:]]]
    epochs = [r for r in rows if r.get("val_iou")]
    best = max(epochs, key=lambda r: float(r["val_iou"]))
    state = torch.load(folder / "model.pt", weights_only=True)
    assert state["step"] == int(best["step"]) and state["val_metrics"]["val_iou"] == pytest.approx(float(best["val_iou"]))
    assert state["last_step"] == int(epochs[-1]["step"])
    # its painter's threshold is the one that epoch chose on val
    assert float(state["model"]["paint_threshold"]) == pytest.approx(float(best["val_threshold"]))
