"""The recurrent segmenter for sequences (`segmenter.temporal`, models/temporal_segmenter.py):
its shapes and state, its temporal-consistency losses, its trainer, pseudo_label with it, the
config's checks and what a change of it reruns. Tiny: 32×48 frames, a few videos and steps."""
import argparse
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.models import segmenters
from futureseg.models import temporal_segmenter as ts
from futureseg.segment import train_segmenter

UNET = {"base_channels": 4, "depth": 3}


def tiny(cell="convgru", pixel_model="unet", seed=0):
    torch.manual_seed(seed)
    pixel = UNET if pixel_model == "unet" else {"width": 8}
    return ts.TemporalSegmenter(ts.TemporalSegmenterConfig(pixel_model=pixel_model, pixel_config=pixel, cell=cell)).eval()


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
@pytest.mark.parametrize("pixel_model", ["unet", "enet"])
def test_shapes_frames_and_sequences(cell, pixel_model, one_torch_thread):
    model = tiny(cell, pixel_model)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 48)).shape == (2, 49, 32, 48)
        assert model(torch.rand(2, 4, 3, 30, 45)).shape == (2, 4, 49, 30, 45)  # any size, as the pixel models
    with pytest.raises(ValueError, match="expected frames"):
        model(torch.rand(3, 32, 48))


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
def test_one_frame_is_one_step_from_the_zero_state(cell, one_torch_thread):
    model = tiny(cell)
    clip = torch.rand(2, 3, 3, 32, 48)
    with torch.no_grad():
        single = model(clip[:, 0])
        assert torch.equal(single, model(clip[:, :1])[:, 0])  # a sequence of one frame
        # causal: frame 0 of a longer sequence is the same step from the same zero state
        assert torch.allclose(single, model(clip)[:, 0], atol=1e-5)


def test_the_state_carries_frame_t_minus_1_into_frame_t(one_torch_thread):
    model = tiny()
    clip = torch.rand(1, 3, 3, 32, 48)
    changed = clip.clone()
    changed[:, 0] = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        a, b = model(clip), model(changed)
        assert torch.equal(a, model(clip))  # deterministic: any difference below is the state's
        # untrained, the U-Net's skips carry most of the logits and the bottleneck's share is
        # small, but frame 1's logits move with frame 0 through the state alone
        assert (a[:, 1] - b[:, 1]).abs().max() > 0
        assert torch.equal(model(clip[:, 1]), model(changed[:, 1]))  # alone, frame 1 is the same


def onehot(masks):
    return torch.nn.functional.one_hot(masks, 49).permute(0, 1, 4, 2, 3).float()


def test_smoothing_loss():
    probs = torch.rand(2, 1, 49, 8, 12).softmax(2).expand(2, 3, 49, 8, 12)
    assert float(ts.smoothing_loss(probs)) == 0.0
    masks = torch.zeros(1, 2, 8, 12, dtype=torch.long)
    masks[0, 1, :4] = 5  # half the pixels change class
    assert float(ts.smoothing_loss(onehot(masks))) == pytest.approx(0.5)


def test_change_loss_is_zero_when_predictions_change_as_the_truth():
    masks = torch.zeros(1, 3, 8, 12, dtype=torch.long)
    masks[0, 1, 2:4, 3:6] = 7
    masks[0, 2, 2:4, 4:7] = 7
    y = onehot(masks)
    assert float(ts.change_loss(y, y)) == 0.0
    # a prediction that changes where the truth does, by the same amounts, not equal to it
    shifted = y.clone()
    shifted[:, :, [0, 7]] = shifted[:, :, [7, 0]]  # classes 0 and 7 swapped in every frame
    assert float(ts.change_loss(shifted, y)) == pytest.approx(0.0)
    frozen = y[:, :1].expand_as(y)  # a prediction that never changes
    assert float(ts.change_loss(frozen, y)) > 0
    assert float(ts.change_loss(torch.full_like(y, 1 / 49), y)) > 0


def test_warp_loss_with_zero_flow_is_the_plain_consistency_term():
    probs = torch.rand(2, 3, 49, 8, 12).softmax(2)
    zero = torch.zeros(2, 2, 8, 12, 2)
    valid = torch.ones(2, 2, 8, 12)
    assert float(ts.warp_loss(probs, zero, valid)) == pytest.approx(float(ts.smoothing_loss(probs)), rel=1e-5)
    assert float(ts.warp_loss(probs, zero, torch.zeros_like(valid))) == 0.0  # nothing valid, nothing compared


def test_warp_loss_follows_the_motion():
    masks = torch.zeros(1, 2, 16, 24, dtype=torch.long)
    masks[0, 0, 4:10, 4:10] = 3
    masks[0, 1, 4:10, 6:12] = 3  # moved 2 pixels right
    y = onehot(masks)
    flow = torch.zeros(1, 1, 16, 24, 2)
    flow[..., 0] = -2.0  # each pixel of frame 1 came from 2 pixels to its left
    valid = torch.ones(1, 1, 16, 24)
    valid[..., :2] = 0  # entered from outside the frame
    assert float(ts.warp_loss(y, flow, valid)) == pytest.approx(0.0, abs=1e-6)
    assert float(ts.warp_loss(y, torch.zeros_like(flow), valid)) > 0  # without the flow it counts the move


def test_clip_flows_of_a_shifted_frame():
    rng = np.random.default_rng(0)
    base = (rng.random((40, 60)) * 255).astype(np.uint8)
    base = np.repeat(np.kron(base, np.ones((2, 2), np.uint8))[..., None], 3, -1)  # 80x120, blocky texture
    frames = np.stack([base[:48, :72], base[:48, 3:75]])  # the view moved 3 columns right: content moves left
    flow, valid = ts.clip_flows(frames)
    assert flow.shape == (1, 48, 72, 2) and valid.shape == (1, 48, 72) and flow.dtype == np.float32
    inner = valid[0].astype(bool)
    assert inner.mean() > 0.5
    assert np.median(flow[0][inner][:, 0]) == pytest.approx(3.0, abs=0.5)  # frame-1 pixel came from x + 3


# ---------------------------------------------------------------- training and pseudo-labels

def trainer_args(root, tmp_path, *extra):
    parser = argparse.ArgumentParser()
    train_segmenter.add_arguments(parser)
    argv = ["--root", root, "--out", tmp_path / "model.pt", "--metrics", tmp_path / "metrics.csv",
            "--checkpoints", tmp_path / "ckpt", "--model", "unet", "--base-channels", 4, "--depth", 3,
            "--epochs", 12, "--batch-size", 6, "--lr", 0.01, "--weight-decay", 0.0, "--soft-iou-weight", 0.0,
            "--background-weight", 0.2, "--temporal", "convgru", "--clip-frames", 3, "--change-weight", 0.1,
            "--smoothing-weight", 0.1, "--warp-weight", 0.1, "--threads", 1, *extra]
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A recurrent U-Net trained 12 epochs (2 clips of 3 frames a step: 24 steps) with every loss on."""
    folder = tmp_path_factory.mktemp("temporal")
    previous = torch.get_num_threads()
    scores = train_segmenter.train_temporal(trainer_args(tiny_dataset, folder))
    torch.set_num_threads(previous)
    return folder, scores


def test_the_trainer_loss_falls_and_validates_on_sequences(trained):
    folder, scores = trained
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert len(losses) >= 2 and losses[-1] < 0.9 * losses[0] and losses[-1] == min(losses), losses
    assert {"train_change", "train_smoothing", "train_warp"} <= set(rows[0])
    assert set(scores) >= {"val_iou", "val_temporal_iou", "val_true_temporal_iou", "val_oracle_iou"}
    assert 0 <= scores["val_iou"] <= 1 and 0 < scores["val_true_temporal_iou"] <= 1
    segmenter, state = segmenters.load(folder / "model.pt", temporal="convgru")
    assert segmenter.name == "unet" and segmenter.temporal == "convgru" and state["temporal"] == "convgru"


def test_the_trainer_refuses_what_it_cannot_train(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="--clip-frames: the recurrent segmenter needs it"):
        train_segmenter.train_temporal(_without(trainer_args(tiny_dataset, tmp_path), "clip_frames"))
    with pytest.raises(ConfigError, match="wraps unet or enet, not maskrcnn"):
        train_segmenter.train_temporal(trainer_args(tiny_dataset, tmp_path, "--model", "maskrcnn"))
    with pytest.raises(ConfigError, match="--clip-frames: must lie in 1…22"):
        train_segmenter.train_temporal(trainer_args(tiny_dataset, tmp_path, "--clip-frames", 23))
    assert not (tmp_path / "model.pt").exists()


def _without(args, name):
    setattr(args, name, None)
    return args


def run_pseudo_label(*argv):
    return subprocess.run([sys.executable, "-m", "futureseg", "pseudo-label", *map(str, argv)],
                          capture_output=True, text=True)


def test_pseudo_label_with_a_recurrent_model_end_to_end(trained, tiny_dataset, tmp_path):
    from futureseg.data.cache_frames import cache_split
    from futureseg.evaluate.score import pseudo_label_scores

    folder, _ = trained
    cache = tmp_path / "val.npy"
    cache_split(tiny_dataset, "val", cache)
    out = tmp_path / "pseudo.npy"
    done = run_pseudo_label("--model", folder / "model.pt", "--cache", cache, "--out", out, "--frames", 11,
                            "--object-vote", "--track-vote", "--temporal", "convgru", "--threads", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    masks = np.load(out)
    assert masks.shape == (2, 11, 32, 48) and masks.dtype == np.uint8
    scores = pseudo_label_scores(tiny_dataset, out)
    assert 0 <= scores["iou"] <= 1 and 0 <= scores["temporal_iou"] <= 1
    # the masks are the sequence's: without the votes, exactly the recurrent model's argmax
    raw = tmp_path / "raw.npy"
    assert run_pseudo_label("--model", folder / "model.pt", "--cache", cache, "--out", raw, "--frames", 11,
                            "--threads", 1).returncode == 0
    segmenter, _ = segmenters.load(folder / "model.pt")
    frames = np.load(cache)[:, :11]
    assert np.array_equal(np.load(raw), segmenter.sequence_masks(frames, torch.device("cpu"), 64))
    # a sequence of one frame works
    one = tmp_path / "one.npy"
    assert run_pseudo_label("--model", folder / "model.pt", "--cache", cache, "--out", one, "--frames", 1,
                            "--temporal", "convgru").returncode == 0
    assert np.load(one).shape == (2, 1, 32, 48)


def test_a_model_file_of_another_kind_is_refused_in_one_line(trained, tiny_dataset, tmp_path):
    from futureseg.data.cache_frames import cache_split

    folder, _ = trained
    cache = tmp_path / "val.npy"
    cache_split(tiny_dataset, "val", cache)
    per_frame = tmp_path / "unet.pt"
    net = segmenters.build("unet", UNET).net
    torch.save({"segmenter": "unet", "model_config": UNET, "model": net.state_dict(), "fingerprint": "x"}, per_frame)
    for model, expected, kind in ((per_frame, "convgru", "per-frame unet"), (folder / "model.pt", "none", "recurrent convgru unet"),
                                  (folder / "model.pt", "convlstm", "recurrent convgru unet")):
        out = tmp_path / "refused.npy"
        done = run_pseudo_label("--model", model, "--cache", cache, "--out", out, "--frames", 11, "--temporal", expected)
        assert done.returncode != 0
        lines = [line for line in done.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and str(model) in lines[0] and kind in lines[0], done.stderr
        assert not out.exists()
    # a recurrent file whose "segmenter" entry says another pixel model is refused too
    state = torch.load(folder / "model.pt", weights_only=True)
    state["segmenter"] = "enet"
    relabelled = tmp_path / "relabelled.pt"
    torch.save(state, relabelled)
    with pytest.raises(FuturesegError, match="relabelled.pt: not a recurrent convgru enet model file"):
        segmenters.load(relabelled)


def test_a_per_frame_model_segments_sequences_frame_by_frame(tiny_dataset):
    # temporal: none keeps pseudo_label's masks: sequence_masks is masks of the frames
    segmenter = segmenters.build("unet", UNET)
    clips = np.stack([data.read_frames(v, range(4)) for v in data.list_videos(tiny_dataset, "val")])
    cpu = torch.device("cpu")
    expected = segmenter.masks(clips.reshape(-1, 32, 48, 3), cpu, 5).reshape(2, 4, 32, 48)
    assert np.array_equal(segmenter.sequence_masks(clips, cpu, 5), expected)


# ---------------------------------------------------------------- config and staleness

def test_the_schema_refuses_an_unknown_temporal_value():
    from snakemake.utils import validate

    from pipeline_helpers import REPO, merged

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(merged(config, {"segmenter": {"temporal": "convlstm"}}), str(REPO / "workflow/schemas/config.schema.yaml"))
    for bad in ({"temporal": "lstm"}, {"recurrent": {"warp_weight": -1}}, {"recurrent": {"filter_size": 4}},
                {"recurrent": {"flow": "dis"}}):
        with pytest.raises(Exception, match="temporal|warp_weight|filter_size|flow"):
            validate(merged(config, {"segmenter": bad}), str(REPO / "workflow/schemas/config.schema.yaml"))


def test_a_recurrent_maskrcnn_is_refused_before_anything_runs(tmp_path):
    from pipeline_helpers import merged, snakemake, tiny_config, write_config

    write_config(tmp_path, merged(tiny_config(), {"segmenter": {"model": "maskrcnn", "temporal": "convgru"}}))
    done = snakemake(tmp_path, "--dry-run", check=False)
    assert done.returncode != 0
    assert "segmenter.temporal: convgru makes a U-Net or ENet recurrent" in done.stdout + done.stderr


def test_changing_temporal_reruns_the_segmenter_and_pseudo_labels_never_the_predictor(tiny_chain):
    """Dry runs on the session's finished tiny chain (conftest.py): segmenter.temporal (and,
    only when it is on, the recurrent settings) reruns train_segmenter, pseudo_label and what
    follows, never train_predictor; the recurrent settings under temporal: none rerun nothing."""
    from pipeline_helpers import planned_jobs, snakemake

    jobs = planned_jobs(tiny_chain, override={"segmenter": {"temporal": "convgru"}})
    assert {"train_segmenter", "pseudo_label"} <= set(jobs) and "train_predictor" not in jobs, jobs
    assert planned_jobs(tiny_chain, override={"segmenter": {"recurrent": {"warp_weight": 1.0}}}) == {}
    on = {"segmenter": {"temporal": "convlstm", "recurrent": {"warp_weight": 1.0}}}
    shell = snakemake(tiny_chain, "--dry-run", "--printshellcmds", override=on).stdout
    train = [line for line in shell.splitlines() if "futureseg train-segmenter" in line]
    pseudo = [line for line in shell.splitlines() if "futureseg pseudo-label" in line]
    assert train and all("--temporal convlstm" in line and "--warp-weight 1.0" in line for line in train)
    assert pseudo and all("--temporal convlstm" in line for line in pseudo)
