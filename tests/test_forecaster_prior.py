"""The mask forecaster learns where its prior is wrong (issue #22, item 6).

Hand-made videos: one square per video moving right at one pixel a frame, and a prior
that is the truth 3 px ahead (a motion prior that overshoots). Trained by the verb
(`futureseg train-forecaster`, flips and all), a forecaster whose core sees the prior
(`prior_input`) must pull its forecast back onto the truth, and much faster than the
design before it, whose core saw only the input masks. An untrained one
still predicts exactly its prior, and a model file of the old design still loads and
forecasts as before."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from futureseg import cli
from futureseg.core import data
from futureseg.core.io import save_array
from futureseg.core.training import load_checkpoint, save_checkpoint
from futureseg.models import forecasters

H, W = 32, 48
OVERSHOOT = 3  # px the prior is ahead of the truth, along the motion
# the prior's sidecar settings: the trainer checks that every prior carries the same ones
PRIOR_SETTINGS = {"made_by": "test_forecaster_prior", "overshoot": OVERSHOOT}
CLASSES = (1,)  # one class: what the core must learn is where, not which
SIMVP = {"embed_dim": 4, "hid_S": 8, "hid_T": 16, "N_S": 2, "N_T": 2}
TRAIN_VIDEOS, VAL_VIDEOS, BATCH, EPOCHS = 16, 16, 4, 12  # 48 steps: both designs in 44 s on one busy core


def square_videos(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 22, H, W): one square per video, of a class of CLASSES and a random size,
    moving right by 1 px and up, down or not by 1 px a frame, inside the frame (with room for
    the overshoot) through all 22 frames."""
    rng = np.random.default_rng(seed)
    videos = np.zeros((n, data.N_FRAMES, H, W), np.uint8)
    for v in range(n):
        side, cls, vy = int(rng.integers(6, 9)), int(rng.choice(CLASSES)), int(rng.integers(-1, 2))
        travel = data.N_FRAMES - 1
        x0 = int(rng.integers(0, W - side - travel - OVERSHOOT + 1))
        y0 = int(rng.integers(travel if vy < 0 else 0, H - side - (travel if vy > 0 else 0) + 1))
        for t in range(data.N_FRAMES):
            y, x = y0 + vy * t, x0 + t
            videos[v, t, y : y + side, x : x + side] = cls
    return videos


def overshooting_prior(videos: np.ndarray) -> np.ndarray:
    """Masks of frames 11…21, each the truth moved OVERSHOOT px right (further along the motion)."""
    future = videos[:, data.N_INPUT :]
    prior = np.zeros_like(future)
    prior[..., OVERSHOOT:] = future[..., :-OVERSHOOT]
    return prior


def write_split(root, split: str, videos: np.ndarray, first_id: int) -> list[int]:
    ids = list(range(first_id, first_id + len(videos)))
    for video_id, masks in zip(ids, videos):
        folder = root / split / f"video_{video_id}"
        folder.mkdir(parents=True)
        np.save(folder / "mask.npy", masks)
        # the trainer reads the frame size from frame 0; the frames are never read otherwise
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "image_0.png")
    return ids


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """A Dataset_Student of square videos (train, val), val's masks 0…10 as the forecaster's
    validation input, and the overshooting priors of both splits."""
    folder = tmp_path_factory.mktemp("squares")
    train, val = square_videos(TRAIN_VIDEOS, seed=1), square_videos(VAL_VIDEOS, seed=2)
    train_ids = write_split(folder / "dataset", "train", train, first_id=0)
    val_ids = write_split(folder / "dataset", "val", val, first_id=1000)
    save_array(folder / "val_inputs.npy", val[:, : data.N_INPUT], val_ids, split="val")
    save_array(folder / "prior_train.npy", overshooting_prior(train), train_ids, motion=PRIOR_SETTINGS)
    save_array(folder / "prior_val.npy", overshooting_prior(val), val_ids, motion=PRIOR_SETTINGS)
    return folder


def train(folder, name: str, prior_input: bool, lr: float = 0.01, patience: int = 0) -> dict:
    """Train by the verb; the last epoch's metrics row."""
    torch_threads = torch.get_num_threads()
    try:
        code = cli.main([str(a) for a in [
            "train-forecaster", "--root", folder / "dataset", "--label-splits", "train",
            "--val-pseudo", folder / "val_inputs.npy", "--priors", folder / "prior_train.npy",
            "--val-prior", folder / "prior_val.npy", "--out", folder / f"{name}.pt",
            "--metrics", folder / f"{name}.csv", "--checkpoints", folder / f"{name}_ck",
            "--model", "simvp", "--prior", "motion", "--model-config", json.dumps({**SIMVP, "prior_input": prior_input}),
            "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", lr, "--weight-decay", 0.01,
            "--soft-iou-weight", 0, "--background-weight", 0.2, "--patience", patience, "--checkpoint-every", 1000, "--threads", 1]])
    finally:
        torch.set_num_threads(torch_threads)
    assert code == 0
    with open(folder / f"{name}.csv", newline="") as f:
        return {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if v}


def test_a_forecaster_that_sees_its_prior_learns_to_correct_it(squares):
    seeing = train(squares, "seeing", prior_input=True)
    blind = train(squares, "blind", prior_input=False)
    prior_iou = seeing["val_prior_iou"]
    assert blind["val_prior_iou"] == prior_iou
    # measured: prior 0.698, seeing 0.963, blind 0.808. The blind core learns too (here the
    # truth follows from the input masks: constant motion), but the one that sees where the
    # prior is wrong gets there in far fewer steps
    assert seeing["val_iou"] > prior_iou + 0.15, (seeing, prior_iou)
    assert seeing["val_iou"] > blind["val_iou"] + 0.08, (seeing, blind)


def test_with_patience_a_forecaster_that_cannot_beat_its_prior_stops_and_exports_its_prior(squares):
    # a learning rate too small to move it: val IoU stays the prior's, so training stops after
    # `patience` epochs of the 12 and the model file is the untrained one, which forecasts the prior
    last_row = train(squares, "stuck", prior_input=True, lr=1e-9, patience=2)
    assert last_row["step"] == 2 * TRAIN_VIDEOS / BATCH, last_row
    model = load_checkpoint(squares / "stuck.pt")
    assert model["step"] == 0 and model["last_step"] == last_row["step"]
    assert model["val_metrics"]["val_iou"] == model["val_metrics"]["val_prior_iou"]
    assert model["val_metrics"]["val_prior_iou"] == pytest.approx(last_row["val_prior_iou"], abs=1e-6)  # CSV: 6 digits


def test_an_untrained_forecaster_that_sees_its_prior_predicts_it():
    torch.manual_seed(0)
    masks, prior = torch.randint(0, 49, (2, 11, H, W)), torch.randint(0, 49, (2, 11, H, W))
    for core, settings in (("simvp", SIMVP), ("convlstm", {"embed_dim": 4, "num_hidden": [4], "filter_size": 3})):
        model = forecasters.build(core, (H, W), {**settings, "prior": "motion", "prior_input": True}).eval()
        assert model.core.config.in_shape == (11, 8, H, W), "two embeddings per time step"
        with torch.no_grad():
            assert torch.equal(model(masks, prior).argmax(2), prior), core


def test_small_deltas_survive_bf16_autocast_beside_the_prior():
    """bf16 holds nothing between 8 and 8 + 1/16: the delta and the prior's logit add in fp32."""
    torch.manual_seed(0)
    masks, prior = torch.randint(0, 49, (1, 11, H, W)), torch.randint(0, 49, (1, 11, H, W))
    model = forecasters.build("simvp", (H, W), {**SIMVP, "prior": "motion"}).eval()
    with torch.no_grad():
        model.read_out.bias.fill_(0.02)  # the read-out's zero weights: every delta is its bias
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(masks, prior)
    assert logits.dtype == torch.float32
    on_prior = logits.gather(2, prior.unsqueeze(2))
    assert torch.allclose(on_prior, torch.full_like(on_prior, 8.02)), on_prior.unique()


def test_the_core_sees_the_prior_only_with_prior_input():
    torch.manual_seed(0)
    masks = torch.randint(0, 49, (1, 11, H, W))
    prior, other_prior = torch.randint(0, 49, (2, 1, 11, H, W))
    for prior_input in (False, True):
        # residual_scale 0: the logits are the core's read-out alone
        settings = {**SIMVP, "prior": "motion", "prior_input": prior_input, "residual_scale": 0.0}
        model = forecasters.build("simvp", (H, W), settings).eval()
        with torch.no_grad():
            model.read_out.weight.normal_()  # away from zero, so the core's output shows
            deltas = [model(masks, p) for p in (prior, other_prior)]
        assert torch.equal(*deltas) != prior_input, prior_input


def test_a_model_file_without_prior_input_loads_as_the_old_design(tmp_path):
    # a file written before prior_input existed has no such key: it must rebuild the core of
    # input masks alone and give the outputs it gave
    torch.manual_seed(1)
    model = forecasters.build("simvp", (H, W), {**SIMVP, "prior": "motion"}).eval()
    with torch.no_grad():
        model.read_out.weight.normal_(std=10.0)
    config = forecasters.model_config(model)
    assert config.pop("prior_input") is False
    save_checkpoint(tmp_path / "old.pt", {"kind": "mask_forecaster", "model_config": config,
                                          "model": model.state_dict(), "fingerprint": "x"})
    loaded, _ = forecasters.load(tmp_path / "old.pt")
    assert loaded.config.prior_input is False and loaded.core.config.in_shape == (11, SIMVP["embed_dim"], H, W)
    masks, prior = torch.randint(0, 49, (2, 2, 11, H, W))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(masks, prior), model(masks, prior), rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "old.pt")["model_config"].get("prior_input") is None


def test_prior_input_must_be_a_boolean():
    from futureseg.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"forecaster\.prior_input"):
        forecasters.build("simvp", (H, W), {**SIMVP, "prior_input": "yes"})
