"""The three routes of DESIGN.md §3b (frames, masks, direct): the dense models (U-Net, mask
forecaster), their shared loss/metric and training loop, the verbs of the masks and direct
routes, and score/submission choosing between routes. Everything on the tiny dataset with
4-8 channel models, so the whole file runs in about a minute on two cores."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional.classification import multiclass_jaccard_index

from futureseg import cli
from futureseg.core import data
from futureseg.evaluate import score
from futureseg.core.dense import dense_losses, macro_iou
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import load_array, save_array
from futureseg.models import forecasters, segmenters
from futureseg.models.mask_forecaster import MaskForecaster, MaskForecasterConfig
from futureseg.models.unet import UNet, UNetConfig
from futureseg.core.training import adamw_one_cycle, epoch_order, load_checkpoint, plan_steps, save_checkpoint

from conftest import TINY_COUNTS, TINY_SIZE
from test_score import full_masks, write_val_split

H, W = TINY_SIZE
SIMVP_CONFIG = {"embed_dim": 4, "hid_S": 4, "hid_T": 8, "N_S": 2, "N_T": 2}
CONVLSTM_CONFIG = {"embed_dim": 4, "patch_size": 4, "num_hidden": [4], "filter_size": 3}
# forecaster training: 3 train + 2 unlabeled sequences, batch 2 → 3 steps per epoch
FC_EPOCHS, FC_FINETUNE, FC_BATCH = 2, 1, 2
FC_STEPS_PER_EPOCH = -(-(TINY_COUNTS["train"] + TINY_COUNTS["unlabeled"]) // FC_BATCH)


def run_cli(*argv) -> int:
    """`futureseg VERB ...` in this process, torch's thread count restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def ok(*argv) -> None:
    assert run_cli(*argv) == 0, argv


def forecaster_argv(ds: Path, folder: Path, out: Path, checkpoints: Path, metrics: Path) -> list[str]:
    return [
        "train-forecaster", "--root", ds, "--pseudo", folder / "pseudo" / "unlabeled.npy",
        "--val-pseudo", folder / "pseudo" / "val.npy", "--out", out, "--metrics", metrics,
        "--checkpoints", checkpoints, "--model", "simvp", "--prior", "copy_last", "--model-config", json.dumps(SIMVP_CONFIG),
        "--epochs", FC_EPOCHS, "--iou-finetune-epochs", FC_FINETUNE, "--batch-size", FC_BATCH,
        "--lr", "0.003", "--weight-decay", "0.01", "--soft-iou-weight", "1.0", "--background-weight", "1.0",
        "--patience", "0", "--threads", "1", "--checkpoint-every", "1",
    ]


def direct_argv(ds: Path, folder: Path, out_name: str, *pseudo) -> list[str]:
    return [
        "train-direct", "--root", ds, "--cache", folder / "cache" / "train.npy", *pseudo,
        "--val-cache", folder / "cache" / "val.npy", "--mean-std", folder / "ms.json",
        "--out", folder / f"{out_name}.pt", "--metrics", folder / f"{out_name}.csv",
        "--checkpoints", folder / f"{out_name}_ck", "--base-channels", "4", "--depth", "2",
        "--epochs", "2", "--batch-size", "2", "--lr", "0.003", "--weight-decay", "0.01", "--soft-iou-weight", "0",
        "--background-weight", "1.0", "--patience", "0", "--threads", "1",
    ]


@pytest.fixture(scope="module")
def routes(tiny_dataset, tmp_path_factory):
    """Every artefact of the masks and direct routes, built once by the verbs: statistics,
    frame caches, a tiny U-Net segmenter, pseudo-labels, a mask forecaster, a direct U-Net."""
    ds = tiny_dataset
    f = tmp_path_factory.mktemp("routes")
    ok("mean-std", "--root", ds, "--out", f / "ms.json", "--splits", "train")
    ok("make-seg-frames", "--root", ds, "--out", f / "segf", "--no-generated", "--frameskip", "1",
       "--blur-prob", "0.3", "--blur-sigma", "0.5,2", "--seed", "0")
    for split in ("train", "val", "unlabeled", "hidden"):
        ok("cache-frames", "--root", ds, "--split", split, "--out", f / "cache" / f"{split}.npy")
    ok("train-segmenter", "--model", "unet", "--root", ds, "--seg-frames", f / "segf", "--mean-std", f / "ms.json",
       "--out", f / "seg.pt", "--metrics", f / "m.csv", "--checkpoints", f / "ck", "--epochs", "2",
       "--batch-size", "8", "--lr", "0.003", "--weight-decay", "0.01", "--soft-iou-weight", "0",
       "--background-weight", "1.0", "--base-channels", "4", "--depth", "2", "--threads", "1")
    for split, frames in (("unlabeled", 22), ("val", 11), ("hidden", 11)):
        ok("pseudo-label", "--model", f / "seg.pt", "--cache", f / "cache" / f"{split}.npy",
           "--out", f / "pseudo" / f"{split}.npy", "--frames", frames, "--threads", "1")
    ok(*forecaster_argv(ds, f, f / "fc.pt", f / "fck", f / "fm.csv"))
    ok(*direct_argv(ds, f, "d", "--pseudo-cache", f / "cache" / "unlabeled.npy",
                    "--pseudo", f / "pseudo" / "unlabeled.npy"))
    return f


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("size", [(31, 45), (32, 48), (7, 5)])
@pytest.mark.parametrize("depth", [1, 3])
def test_unet_logits_have_the_input_size(size, depth):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=depth)).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, *size))
    assert logits.shape == (2, 49, *size)
    assert torch.isfinite(logits).all()


def test_unet_on_stacked_frames_repeats_the_statistics():
    config = UNetConfig(in_channels=33, base_channels=4, depth=2, image_mean=(0.1, 0.2, 0.3),
                        image_std=(0.5, 0.5, 0.5), key="direct")
    model = UNet(config)
    assert model.mean.shape == (1, 33, 1, 1) and model.mean.flatten()[3:6].tolist() == pytest.approx([0.1, 0.2, 0.3])
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 33, 32, 48)).shape == (1, 49, 32, 48)


@pytest.mark.parametrize("key, kwargs, named", [
    ("segmenter.unet", {"depth": 0}, "segmenter.unet.depth"),
    ("direct", {"base_channels": -1}, "direct.base_channels"),
    ("segmenter.unet", {"in_channels": True}, "segmenter.unet.in_channels"),
    ("segmenter.unet", {"num_classes": 1}, "segmenter.unet.num_classes"),
    ("direct", {"in_channels": 4}, "direct: image_mean/image_std"),
    ("segmenter.unet", {"image_std": (0.2, 0.0, 0.2)}, "segmenter.unet.image_std"),
])
def test_unet_config_errors_name_the_key(key, kwargs, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        UNetConfig(key=key, **kwargs)


@pytest.mark.parametrize("name, settings", [("simvp", SIMVP_CONFIG), ("convlstm", CONVLSTM_CONFIG)])
def test_untrained_mask_forecaster_copies_the_last_mask(name, settings):
    torch.manual_seed(0)
    model = forecasters.build(name, (H, W), settings).eval()
    masks = torch.randint(0, 49, (2, 11, H, W))
    with torch.no_grad():
        logits = model(masks)
    assert logits.shape == (2, 11, 49, H, W)
    predicted = logits.argmax(2)
    for frame in range(11):
        assert torch.equal(predicted[:, frame], masks[:, -1]), frame


@pytest.mark.parametrize("name, settings", [("simvp", SIMVP_CONFIG), ("convlstm", CONVLSTM_CONFIG)])
def test_forecaster_model_file_roundtrip_gives_identical_outputs(name, settings, tmp_path):
    torch.manual_seed(1)
    model = forecasters.build(name, (H, W), settings).eval()
    with torch.no_grad():  # a read-out away from zero, so the core's output shows in the logits
        model.read_out.weight.normal_(std=10.0)
        model.read_out.bias.normal_(std=10.0)
    config = forecasters.model_config(model)
    assert json.loads(json.dumps(config)) == config, "plain values only"
    assert config["size"] == [H, W] and config["core"] == name and config["embed_dim"] == 4
    save_checkpoint(tmp_path / "fc.pt", {"kind": "mask_forecaster", "model_config": config,
                                         "model": model.state_dict(), "fingerprint": "x"})
    loaded, state = forecasters.load(tmp_path / "fc.pt")
    masks = torch.randint(0, 49, (2, 11, H, W))
    with torch.no_grad():
        expected, got = model(masks), loaded.eval()(masks)
    assert not torch.equal(expected.argmax(2), masks[:, -1:].expand(-1, 11, -1, -1)), "the core matters"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_forecaster_load_refuses_other_model_files(tmp_path):
    save_checkpoint(tmp_path / "other.pt", {"kind": "direct", "model": {}, "fingerprint": "x"})
    with pytest.raises(FuturesegError, match="other.pt.*not a mask forecaster"):
        forecasters.load(tmp_path / "other.pt")


def test_forecaster_config_errors_name_the_forecaster_section():
    with pytest.raises(ConfigError, match=r"forecaster\.simvp\.nonsense"):
        forecasters.build("simvp", (H, W), {"nonsense": 1})
    with pytest.raises(ConfigError, match=r"forecaster\.embed_dim"):
        forecasters.build("simvp", (H, W), {"embed_dim": 0})
    with pytest.raises(ConfigError, match=r"forecaster\.model"):
        MaskForecaster(MaskForecasterConfig(size=(H, W), core="unet"))


# ---------------------------------------------------------------- dense loss and metric


def test_macro_iou_equals_torchmetrics():
    rng = np.random.default_rng(0)
    classes = np.array([0, 0, 0, 2, 5, 17, 48])
    target = classes[rng.integers(0, len(classes), (4, 9, 13))]
    predicted = np.where(rng.random(target.shape) < 0.6, target, classes[rng.integers(0, len(classes), target.shape)])
    metric = MulticlassJaccardIndex(49)
    metric.update(torch.from_numpy(predicted), torch.from_numpy(target))
    expected = float(metric.compute())
    assert macro_iou(predicted.astype(np.uint8), target.astype(np.uint8)) == pytest.approx(expected, abs=1e-6)
    assert 0.2 < expected < 0.9  # neither trivially 0 nor 1
    assert macro_iou(target, target) == 1.0


def test_dense_losses_soft_iou_term():
    torch.manual_seed(0)
    logits = torch.randn(2, 49, 6, 7, requires_grad=True)
    target = torch.randint(0, 5, (2, 6, 7))
    plain = dense_losses(logits, target)
    assert set(plain) == {"loss", "ce"} and torch.equal(plain["loss"], plain["ce"])
    torch.testing.assert_close(plain["ce"], torch.nn.functional.cross_entropy(logits, target))

    losses = dense_losses(logits, target, soft_iou_weight=0.5)
    assert set(losses) == {"loss", "ce", "soft_iou"}
    soft_iou = float(losses["soft_iou"].detach())
    assert 0 <= soft_iou <= 1 and soft_iou > 0.5  # random logits: a poor IoU
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.5 * losses["soft_iou"])
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    # by hand: 1 - mean over present classes of sum(p t) / sum(p + t - p t)
    p = logits.detach().softmax(1)
    t = torch.nn.functional.one_hot(target, 49).permute(0, 3, 1, 2).float()
    present = [c for c in range(49) if t[:, c].sum() > 0]
    by_hand = 1 - np.mean([float((p[:, c] * t[:, c]).sum() / (p[:, c] + t[:, c] - p[:, c] * t[:, c]).sum())
                           for c in present])
    assert soft_iou == pytest.approx(by_hand, abs=1e-5)

    perfect = 100.0 * torch.nn.functional.one_hot(target, 49).permute(0, 3, 1, 2).float()
    best = dense_losses(perfect, target, soft_iou_weight=1.0)
    assert float(best["soft_iou"]) < 1e-4 and float(best["ce"]) < 1e-4


# ---------------------------------------------------------------- training loop pieces


def test_plan_steps():
    assert plan_steps(5, 2, 3) == (3, 9)
    assert plan_steps(4, 2, 3) == (2, 6)
    assert plan_steps(5, 2, 3, max_steps=4) == (3, 4)
    assert plan_steps(5, 2, 3, max_steps=100) == (3, 9)
    assert plan_steps(1, 8, 2) == (1, 2)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    batches = epoch_order(7, 3, seed=4, epoch=1)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert batches == epoch_order(7, 3, seed=4, epoch=1)
    assert batches != epoch_order(7, 3, seed=4, epoch=2)
    assert batches != epoch_order(7, 3, seed=5, epoch=1)
    assert all(isinstance(i, int) for b in batches for i in b)


def test_adamw_one_cycle_peaks_at_lr_and_spans_the_run():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = adamw_one_cycle(model, lr=0.01, weight_decay=0.05, total_steps=20)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(0.01) and rates[0] < 0.001 and rates[-1] < 1e-4
    _, zero = adamw_one_cycle(model, lr=0.01, weight_decay=0.0, total_steps=0)  # a run of no steps builds
    assert zero.total_steps == 1


# ---------------------------------------------------------------- segmenter, pseudo-labels


def test_unet_segmenter_model_file_and_segment(routes, tiny_dataset, tmp_path):
    state = load_checkpoint(routes / "seg.pt")
    assert state["segmenter"] == "unet" and state["model_config"]["base_channels"] == 4
    assert "backend" not in state
    with open(routes / "m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 <= float(r["val_oracle_iou"]) <= 1 for r in rows)

    ok("segment", "--model", routes / "seg.pt", "--root", tiny_dataset, "--out-val-oracle", tmp_path / "oracle.npy",
       "--out-val-frame10", tmp_path / "frame10.npy", "--threads", "1")
    val_ids = [v.id for v in data.list_videos(tiny_dataset, "val")]
    for name, frame in (("oracle", 21), ("frame10", 10)):
        masks, meta = load_array(tmp_path / f"{name}.npy")
        assert masks.dtype == np.uint8 and masks.shape == (2, H, W)
        assert meta["ids"] == val_ids and meta["frame_index"] == frame
        assert masks.max() < 49

    # the Segmenter is the U-Net's argmax, and pseudo-label of val frame 10 is segment's frame 10
    segmenter, _ = segmenters.load(routes / "seg.pt")
    assert segmenter.name == "unet" and isinstance(segmenter.net, UNet)
    frames = np.stack([data.read_frames(v, [10])[0] for v in data.list_videos(tiny_dataset, "val")])
    with torch.no_grad():
        direct = segmenter.net.eval()(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).argmax(1)
    np.testing.assert_array_equal(segmenter.masks(frames, torch.device("cpu"), 1), direct.numpy())
    frame10, _ = load_array(tmp_path / "frame10.npy")
    np.testing.assert_array_equal(frame10, direct.numpy())
    pseudo_val, _ = load_array(routes / "pseudo" / "val.npy")
    np.testing.assert_array_equal(pseudo_val[:, 10], frame10)


def test_segmenter_registry_errors(routes):
    with pytest.raises(ConfigError, match=r"segmenter\.model: 'segformer'"):
        segmenters.build("segformer", {})
    with pytest.raises(FuturesegError, match=r"fc\.pt: not a segmenter model"):
        segmenters.load(routes / "fc.pt")


@pytest.mark.parametrize("split, frames", [("unlabeled", 22), ("val", 11), ("hidden", 11)])
def test_pseudo_labels_are_uint8_mask_caches_with_the_caches_ids(routes, split, frames):
    masks, meta = load_array(routes / "pseudo" / f"{split}.npy")
    _, cache_meta = load_array(routes / "cache" / f"{split}.npy")
    assert masks.dtype == np.uint8 and masks.shape == (TINY_COUNTS[split], frames, H, W)
    assert meta["ids"] == cache_meta["ids"]
    assert meta["frame_indices"] == list(range(frames)) and meta["split"] == split
    assert masks.max() < 49


def test_pseudo_label_refuses_more_frames_than_the_cache_holds(routes, tmp_path, capsys):
    assert run_cli("pseudo-label", "--model", routes / "seg.pt", "--cache", routes / "cache" / "hidden.npy",
                   "--out", tmp_path / "x.npy", "--frames", "22") == 2
    err = capsys.readouterr().err
    assert "hidden.npy" in err and "22" in err
    assert not (tmp_path / "x.npy").exists()


# ---------------------------------------------------------------- masks route: train, resume, forecast


def test_forecaster_model_file_and_metrics(routes):
    state = load_checkpoint(routes / "fc.pt")
    assert state["kind"] == "mask_forecaster" and state["step"] == (FC_EPOCHS + FC_FINETUNE) * FC_STEPS_PER_EPOCH
    assert state["model_config"]["size"] == [H, W] and state["model_config"]["core"] == "simvp"
    with open(routes / "fm.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [FC_STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the soft-IoU term only in the fine-tune epoch
    assert [bool(r.get("train_soft_iou")) for r in rows] == [False, False, True]
    assert all(0 <= float(r["val_iou"]) <= 1 for r in rows)


def test_sigterm_stops_the_forecaster_and_the_rerun_resumes_to_the_same_weights(routes, tiny_dataset, tmp_path):
    argv = [str(a) for a in forecaster_argv(tiny_dataset, routes, tmp_path / "fc.pt", tmp_path / "ck",
                                            tmp_path / "fm.csv")]
    command = [sys.executable, "-m", "futureseg", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ck").glob("*/last.pt")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "SIGTERM" in stderr and "rerun to resume" in stderr
    assert not (tmp_path / "fc.pt").exists()
    [checkpoint] = (tmp_path / "ck").glob("*/last.pt")
    total = (FC_EPOCHS + FC_FINETUNE) * FC_STEPS_PER_EPOCH
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert 1 <= stopped_at < total

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"at step {stopped_at} of {total}" in rerun.stderr
    resumed = load_checkpoint(tmp_path / "fc.pt")
    reference = load_checkpoint(routes / "fc.pt")
    assert resumed["fingerprint"] == reference["fingerprint"] and resumed["step"] == total
    assert resumed["model"].keys() == reference["model"].keys()
    for key in reference["model"]:
        torch.testing.assert_close(resumed["model"][key], reference["model"][key], rtol=0, atol=0, msg=key)
    with open(tmp_path / "fm.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [FC_STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    with open(routes / "fm.csv", newline="") as f:
        reference_rows = list(csv.DictReader(f))
    assert [r["val_iou"] for r in rows] == [r["val_iou"] for r in reference_rows]


def test_forecast_shards_concatenate_to_the_whole_and_the_sequence_ends_in_frame_21(routes, tmp_path):
    model, masks = routes / "fc.pt", routes / "pseudo" / "hidden.npy"
    ok("forecast", "--model", model, "--masks", masks, "--out", tmp_path / "whole.npy",
       "--out-sequence", tmp_path / "whole_seq.npy", "--threads", "1")
    whole, meta = load_array(tmp_path / "whole.npy")
    sequence, seq_meta = load_array(tmp_path / "whole_seq.npy")
    _, hidden_meta = load_array(masks)
    assert whole.dtype == np.uint8 and whole.shape == (2, H, W)
    assert sequence.dtype == np.uint8 and sequence.shape == (2, 11, H, W)
    assert meta["ids"] == seq_meta["ids"] == hidden_meta["ids"]
    assert meta["frame_index"] == 21 and seq_meta["frame_indices"] == list(range(11, 22))
    np.testing.assert_array_equal(sequence[:, -1], whole)

    parts, part_ids = [], []
    for i in (0, 1):
        ok("forecast", "--model", model, "--masks", masks, "--out", tmp_path / f"s{i}.npy",
           "--out-sequence", tmp_path / f"s{i}_seq.npy", "--shard", f"{i}/2", "--threads", "1")
        part, part_meta = load_array(tmp_path / f"s{i}.npy")
        part_seq, _ = load_array(tmp_path / f"s{i}_seq.npy")
        np.testing.assert_array_equal(part_seq[:, -1], part)
        assert part_meta["shard"] == [i, 2]
        parts.append(part)
        part_ids += part_meta["ids"]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert part_ids == meta["ids"]


def test_forecast_equals_the_model_on_the_pseudo_labels(routes, tmp_path):
    ok("forecast", "--model", routes / "fc.pt", "--masks", routes / "pseudo" / "val.npy",
       "--out", tmp_path / "val.npy", "--threads", "1")
    got, _ = load_array(tmp_path / "val.npy")
    model, _ = forecasters.load(routes / "fc.pt")
    inputs, _ = load_array(routes / "pseudo" / "val.npy")
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(inputs.astype(np.int64)))[:, -1].argmax(1)
    np.testing.assert_array_equal(got, expected.numpy())


def test_forecast_on_masks_of_the_wrong_size_names_the_file(routes, tmp_path, capsys):
    small = tmp_path / "small_masks.npy"
    save_array(small, np.zeros((2, 11, 16, 24), np.uint8), [1, 2], frame_indices=list(range(11)))
    assert run_cli("forecast", "--model", routes / "fc.pt", "--masks", small, "--out", tmp_path / "o.npy") == 2
    err = capsys.readouterr().err
    assert "small_masks.npy" in err and "16x24" in err and "32x48" in err
    assert not (tmp_path / "o.npy").exists()


def test_train_forecaster_with_val_pseudo_of_other_videos_names_the_file(routes, tiny_dataset, tmp_path, capsys):
    masks, meta = load_array(routes / "pseudo" / "val.npy")
    wrong = tmp_path / "wrong_val.npy"
    save_array(wrong, masks, [i + 1 for i in meta["ids"]], frame_indices=meta["frame_indices"])
    argv = forecaster_argv(tiny_dataset, routes, tmp_path / "fc.pt", tmp_path / "ck", tmp_path / "fm.csv")
    argv[argv.index("--val-pseudo") + 1] = wrong
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert "wrong_val.npy" in err and "val" in err
    assert not (tmp_path / "fc.pt").exists()


# ---------------------------------------------------------------- direct route


def test_predict_direct_masks_have_the_caches_ids(routes, tmp_path):
    state = load_checkpoint(routes / "d.pt")
    assert state["kind"] == "direct" and state["model_config"]["in_channels"] == 33
    assert state["settings"]["training_videos"] == [TINY_COUNTS["train"], TINY_COUNTS["unlabeled"]]
    ok("predict-direct", "--model", routes / "d.pt", "--cache", routes / "cache" / "hidden.npy",
       "--out", tmp_path / "dh.npy", "--threads", "1")
    masks, meta = load_array(tmp_path / "dh.npy")
    _, cache_meta = load_array(routes / "cache" / "hidden.npy")
    assert masks.dtype == np.uint8 and masks.shape == (TINY_COUNTS["hidden"], H, W)
    assert meta["ids"] == cache_meta["ids"] and meta["frame_index"] == 21 and meta["split"] == "hidden"
    assert masks.max() < 49


def test_predict_direct_refuses_a_forecaster_model(routes, tmp_path, capsys):
    assert run_cli("predict-direct", "--model", routes / "fc.pt", "--cache", routes / "cache" / "hidden.npy",
                   "--out", tmp_path / "dh.npy") == 2
    assert "fc.pt" in capsys.readouterr().err


def test_train_direct_without_pseudo_labels(routes, tiny_dataset, tmp_path):
    argv = direct_argv(tiny_dataset, routes, "plain")
    argv[argv.index("--out") + 1] = tmp_path / "plain.pt"
    argv[argv.index("--metrics") + 1] = tmp_path / "plain.csv"
    argv[argv.index("--checkpoints") + 1] = tmp_path / "ck"
    ok(*argv)
    state = load_checkpoint(tmp_path / "plain.pt")
    assert state["settings"]["training_videos"] == [TINY_COUNTS["train"]] and state["settings"]["pseudo"] is None
    assert state["step"] == 2 * 2  # 3 videos, batch 2: 2 steps per epoch
    with open(tmp_path / "plain.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4]


@pytest.mark.parametrize("given", ["--pseudo", "--pseudo-cache"])
def test_train_direct_pseudo_flags_go_together(routes, tiny_dataset, tmp_path, capsys, given):
    path = routes / ("pseudo" if given == "--pseudo" else "cache") / "unlabeled.npy"
    argv = direct_argv(tiny_dataset, routes, "x", given, path)
    argv[argv.index("--out") + 1] = tmp_path / "x.pt"
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert "--pseudo" in err and "--pseudo-cache" in err
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------- score with routes, submission


@pytest.fixture
def route_case(tmp_path):
    """4 val videos of random masks; routes `masks` (90% right) and `direct` (40% right),
    the segmenter's frame 10, and mask sequences of frames 11…21."""
    rng = np.random.default_rng(3)
    n, h, w = 4, 10, 14
    classes = np.array([0, 0, 0, 4, 9, 21, 33])
    frame21 = classes[rng.integers(0, len(classes), (n, h, w))].astype(np.uint8)
    frame10 = classes[rng.integers(0, len(classes), (n, h, w))].astype(np.uint8)
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(frame21, frame10))

    def noisy(p):
        return np.where(rng.random((n, h, w)) < p, frame21, classes[rng.integers(0, len(classes), (n, h, w))]).astype(np.uint8)

    guesses = {"masks": noisy(0.9), "direct": noisy(0.4), "frame10": noisy(0.2)}
    for name, guess in guesses.items():
        save_array(tmp_path / f"{name}_val.npy", guess, ids)
    still = np.repeat(guesses["masks"][:, None], 11, axis=1)  # nothing moves
    save_array(tmp_path / "masks_seq.npy", still, ids)
    return root, tmp_path, frame21, frame10, guesses


def jaccard(pred, target) -> float:
    return float(multiclass_jaccard_index(torch.as_tensor(pred).long(), torch.as_tensor(target).long(), 49))


def score_routes(root, folder, *extra) -> tuple[int, dict]:
    code = run_cli("score", "--root", root, "--route", f"masks={folder / 'masks_val.npy'}",
                   "--route", f"direct={folder / 'direct_val.npy'}", "--out", folder / "scores.json", *extra)
    scores = json.loads((folder / "scores.json").read_text()) if code == 0 else None
    return code, scores


def test_score_submits_the_best_route(route_case):
    root, folder, frame21, frame10, guesses = route_case
    code, scores = score_routes(root, folder, "--submit", "best", "--segmented-copy-last", folder / "frame10_val.npy",
                                "--table", folder / "scores.html")
    assert code == 0
    iou_masks, iou_direct = jaccard(guesses["masks"], frame21), jaccard(guesses["direct"], frame21)
    assert iou_masks > iou_direct + 0.1
    assert set(scores["routes"]) == {"masks", "direct"}
    assert scores["routes"]["masks"]["iou"] == pytest.approx(iou_masks, abs=1e-6)
    assert scores["routes"]["direct"]["iou"] == pytest.approx(iou_direct, abs=1e-6)
    assert scores["submitted_route"] == "masks" and scores["submit"] == "best"
    assert scores["pipeline"] == scores["routes"]["masks"]
    assert scores["segmented_copy_last"]["iou"] == pytest.approx(jaccard(guesses["frame10"], frame21), abs=1e-6)
    assert scores["copy_last"]["iou"] == pytest.approx(jaccard(frame10, frame21), abs=1e-6)

    html = (folder / "scores.html").read_text()
    for label in ("route masks", "route direct", "segmented copy-last", "copy-last (true mask of frame 10)"):
        assert label in html, label
    assert html.count("submitted") == 2  # one row marked in each table: the IoU and the factors
    assert f"{iou_masks:.4f}" in html and f"{iou_direct:.4f}" in html


def test_score_submits_the_named_route(route_case):
    root, folder, frame21, _, guesses = route_case
    code, scores = score_routes(root, folder, "--submit", "direct")
    assert code == 0
    assert scores["submitted_route"] == "direct" and scores["submit"] == "direct"
    assert scores["pipeline"]["iou"] == pytest.approx(jaccard(guesses["direct"], frame21), abs=1e-6)
    assert scores["pipeline"] == scores["routes"]["direct"]


def test_score_refuses_to_submit_a_route_not_scored(route_case, capsys):
    root, folder, *_ = route_case
    code, _ = score_routes(root, folder, "--submit", "frames")
    assert code == 2
    assert "eval.submit" in capsys.readouterr().err
    assert not (folder / "scores.json").exists()
    with pytest.raises(ConfigError, match=r"eval\.submit.*'frames'"):
        score.pick_route({"masks": {"iou": 0.5}}, {"masks": "m.npy"}, "frames")


def test_pick_route_best_breaks_ties_by_order():
    result = {"a": {"iou": 0.5}, "b": {"iou": 0.7}, "c": {"iou": 0.7}}
    assert score.pick_route(result, ["a", "b", "c"], "best") == "b"
    assert score.pick_route(result, ["c", "b", "a"], "best") == "c"
    assert score.pick_route(result, ["a", "b"], "a") == "a"


def test_temporal_iou(route_case):
    root, folder, frame21, frame10, _ = route_case
    code, scores = score_routes(root, folder, "--sequence", f"masks={folder / 'masks_seq.npy'}",
                                "--table", folder / "scores.html")
    assert code == 0
    assert scores["temporal_iou"]["masks"] == pytest.approx(1.0)
    # true masks 11…21: frames 11…20 are frame 10's mask, then frame 21: 9 identical pairs and one
    by_hand = (9 * 1.0 + jaccard(frame21, frame10)) / 10
    assert scores["temporal_iou"]["true_masks"] == pytest.approx(by_hand, abs=1e-6)
    assert by_hand < 0.95
    assert "Temporal IoU" in (folder / "scores.html").read_text()

    moving = np.stack([frame10, frame21, frame10], axis=1)
    assert score.temporal_iou(moving) == pytest.approx((jaccard(frame21, frame10) + jaccard(frame10, frame21)) / 2)
    with pytest.raises(FuturesegError, match="K >= 2"):
        score.temporal_iou(frame10[:, None])


def test_score_sequence_of_other_videos_names_the_file(route_case, capsys):
    root, folder, *_ = route_case
    seq, meta = load_array(folder / "masks_seq.npy")
    save_array(folder / "other_seq.npy", seq, [i + 100 for i in meta["ids"]])
    code, _ = score_routes(root, folder, "--sequence", f"masks={folder / 'other_seq.npy'}")
    assert code == 2
    assert "other_seq.npy" in capsys.readouterr().err


@pytest.fixture
def hidden_routes(tmp_path):
    """Hidden masks of two routes, rows in descending id order, and a scores.json."""
    rng = np.random.default_rng(5)
    ids = [30, 10, 20]
    for name in ("masks", "direct"):
        save_array(tmp_path / f"{name}_hidden.npy", rng.integers(0, 49, (3, 8, 12)).astype(np.uint8), ids)
    (tmp_path / "scores.json").write_text(json.dumps({"submitted_route": "direct", "routes": {}}))
    return tmp_path, ids


def test_submission_takes_the_submitted_routes_masks(hidden_routes):
    folder, ids = hidden_routes
    ok("submission", "--route", f"masks={folder / 'masks_hidden.npy'}", "--route",
       f"direct={folder / 'direct_hidden.npy'}", "--scores", folder / "scores.json", "--out", folder / "sub.pt")
    tensor = torch.load(folder / "sub.pt", weights_only=True)
    masks, _ = load_array(folder / "direct_hidden.npy")
    order = np.argsort(ids)
    assert tensor.dtype == torch.uint8
    np.testing.assert_array_equal(tensor.numpy(), masks[order])
    other, _ = load_array(folder / "masks_hidden.npy")
    assert not np.array_equal(tensor.numpy(), other[order])
    assert json.loads((folder / "sub.json").read_text())["ids"] == sorted(ids)


def test_submission_needs_the_submitted_route_in_scores(hidden_routes, capsys):
    folder, _ = hidden_routes
    bad = folder / "old_scores.json"
    bad.write_text(json.dumps({"pipeline": {"iou": 0.3}}))
    routes = ["--route", f"masks={folder / 'masks_hidden.npy'}"]
    assert run_cli("submission", *routes, "--scores", bad, "--out", folder / "sub.pt") == 2
    err = capsys.readouterr().err
    assert "old_scores.json" in err and "submitted_route" in err
    # a submitted route without hidden masks among --route
    assert run_cli("submission", *routes, "--scores", folder / "scores.json", "--out", folder / "sub.pt") == 2
    err = capsys.readouterr().err
    assert "scores.json" in err and "'direct'" in err
    # --route without --scores
    assert run_cli("submission", *routes, "--out", folder / "sub.pt") == 2
    assert "--scores" in capsys.readouterr().err
    assert not (folder / "sub.pt").exists()


# ---------------------------------------------------------------- route motion, the motion prior


MOTION = {"velocity_frames": 3, "flow": "dis", "flow_pairs": 1, "bounce": True, "max_jump": 8.0}


@pytest.fixture(scope="module")
def motion(routes, tiny_dataset):
    """Route motion's val sequence and the motion priors of the forecaster's training videos
    (train's true masks, unlabeled's pseudo-labels), by the verb, as the rules run it."""
    f, settings = routes, json.dumps(MOTION)
    ok("extrapolate", "--masks", f / "pseudo" / "val.npy", "--frames", f / "cache" / "val.npy",
       "--motion-config", settings, "--out", f / "motion_val.npy", "--out-sequence", f / "motion_seq_val.npy")
    ok("extrapolate", "--root", tiny_dataset, "--split", "train", "--frames", f / "cache" / "train.npy",
       "--motion-config", settings, "--out-sequence", f / "motion_seq_train.npy")
    ok("extrapolate", "--masks", f / "pseudo" / "unlabeled.npy", "--frames", f / "cache" / "unlabeled.npy",
       "--motion-config", settings, "--out-sequence", f / "motion_seq_unlabeled.npy")
    return f


def test_extrapolate_writes_the_motion_of_every_video_with_its_ids_and_settings(motion):
    from futureseg.core.motion import MotionConfig, extrapolate

    masks, meta = load_array(motion / "pseudo" / "val.npy")
    frames, _ = load_array(motion / "cache" / "val.npy")
    last, last_meta = load_array(motion / "motion_val.npy")
    sequence, seq_meta = load_array(motion / "motion_seq_val.npy")
    assert last.dtype == sequence.dtype == np.uint8 and sequence.shape == (len(masks), 11, H, W)
    assert last_meta["ids"] == seq_meta["ids"] == meta["ids"] and seq_meta["motion"] == MOTION
    assert seq_meta["frame_indices"] == list(range(11, 22)) and last_meta["frame_index"] == 21
    for row in range(len(masks)):
        expected = extrapolate(masks[row, :11], frames[row, :11], MotionConfig(**MOTION))
        np.testing.assert_array_equal(sequence[row], expected)
    np.testing.assert_array_equal(sequence[:, -1], last)


def test_extrapolate_on_true_masks_reads_the_split(motion, tiny_dataset):
    from futureseg.core.motion import MotionConfig, extrapolate

    truth, ids = data.read_split_masks(tiny_dataset, "train")
    frames, _ = load_array(motion / "cache" / "train.npy")
    sequence, meta = load_array(motion / "motion_seq_train.npy")
    assert meta["ids"] == ids
    np.testing.assert_array_equal(sequence[0], extrapolate(truth[0, :11], frames[0, :11], MotionConfig(**MOTION)))


def test_extrapolate_shards_concatenate_to_the_whole(motion, tmp_path):
    whole, _ = load_array(motion / "motion_seq_val.npy")
    parts = []
    for i in (0, 1):
        ok("extrapolate", "--masks", motion / "pseudo" / "val.npy", "--frames", motion / "cache" / "val.npy",
           "--motion-config", json.dumps(MOTION), "--shard", f"{i}/2", "--out-sequence", tmp_path / f"s{i}.npy")
        parts.append(load_array(tmp_path / f"s{i}.npy")[0])
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("case, named", [
    ("flow without frames", "--frames"),
    ("frames of other videos", "other_frames.npy"),
    ("bad setting", "motion.flow_pairs"),
    ("unknown setting", "unknown setting"),
])
def test_extrapolate_refuses_bad_input_and_writes_nothing(motion, tmp_path, capsys, case, named):
    frames, meta = load_array(motion / "cache" / "val.npy")
    other = tmp_path / "other_frames.npy"
    save_array(other, frames, [i + 100 for i in meta["ids"]], split="val")
    argv = {"flow without frames": [],
            "frames of other videos": ["--frames", other],
            "bad setting": ["--frames", other, "--motion-config", '{"flow_pairs": 0}'],
            "unknown setting": ["--motion-config", '{"friction": 0.1}']}[case]
    out = tmp_path / "out.npy"
    assert run_cli("extrapolate", "--masks", motion / "pseudo" / "val.npy", *argv, "--out", out) == 2
    assert named in capsys.readouterr().err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_an_untrained_forecaster_on_the_motion_prior_predicts_route_motion():
    torch.manual_seed(0)
    model = forecasters.build("simvp", (H, W), {**SIMVP_CONFIG, "prior": "motion"}).eval()
    masks = torch.randint(0, 49, (2, 11, H, W))
    prior = torch.randint(0, 49, (2, 11, H, W))
    with torch.no_grad():
        assert torch.equal(model(masks, prior).argmax(2), prior)
        with pytest.raises(ValueError, match="prior"):
            model(masks)


def motion_forecaster_argv(motion, tiny_dataset, out, *extra):
    argv = forecaster_argv(tiny_dataset, motion, out, out.parent / f"{out.stem}_ck", out.parent / f"{out.stem}.csv")
    argv[argv.index("--prior") + 1] = "motion"
    return [*argv, "--priors", motion / "motion_seq_train.npy", motion / "motion_seq_unlabeled.npy",
            "--val-prior", motion / "motion_seq_val.npy", *extra]


def test_the_forecaster_starts_from_route_motion_and_records_its_settings(motion, tiny_dataset, tmp_path):
    # one step at a negligible rate: the forecast is still exactly its prior, route motion
    ok(*motion_forecaster_argv(motion, tiny_dataset, tmp_path / "fc.pt", "--max-steps", "1"), "--lr", "1e-12")
    state = load_checkpoint(tmp_path / "fc.pt")
    assert state["model_config"]["prior"] == "motion" and state["motion"] == MOTION
    with open(tmp_path / "fc.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    assert float(row["val_iou"]) == pytest.approx(float(row["val_prior_iou"]))
    ok("forecast", "--model", tmp_path / "fc.pt", "--masks", motion / "pseudo" / "val.npy",
       "--prior", motion / "motion_seq_val.npy", "--out", tmp_path / "val.npy", "--out-sequence", tmp_path / "seq.npy")
    np.testing.assert_array_equal(load_array(tmp_path / "seq.npy")[0], load_array(motion / "motion_seq_val.npy")[0])
    np.testing.assert_array_equal(load_array(tmp_path / "val.npy")[0], load_array(motion / "motion_val.npy")[0])


def test_the_forecaster_on_the_motion_prior_trains_and_forecasts(motion, tiny_dataset, tmp_path, capsys):
    ok(*motion_forecaster_argv(motion, tiny_dataset, tmp_path / "fc.pt"))
    with open(tmp_path / "fc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FC_EPOCHS + FC_FINETUNE and all(0 <= float(r["val_iou"]) <= 1 for r in rows)
    # forecast without the prior, or with a prior of other motion settings, is refused by name
    masks = motion / "pseudo" / "val.npy"
    assert run_cli("forecast", "--model", tmp_path / "fc.pt", "--masks", masks, "--out", tmp_path / "o.npy") == 2
    assert "--prior" in capsys.readouterr().err
    sequence, meta = load_array(motion / "motion_seq_val.npy")
    other = tmp_path / "other_prior.npy"
    save_array(other, sequence, meta.pop("ids"), **{**meta, "motion": {**MOTION, "flow": "none"}})
    assert run_cli("forecast", "--model", tmp_path / "fc.pt", "--masks", masks, "--prior", other,
                   "--out", tmp_path / "o.npy") == 2
    assert "other_prior.npy" in capsys.readouterr().err and not (tmp_path / "o.npy").exists()


def test_train_forecaster_needs_a_prior_per_training_source(motion, tiny_dataset, tmp_path, capsys):
    argv = motion_forecaster_argv(motion, tiny_dataset, tmp_path / "fc.pt")
    argv.remove(motion / "motion_seq_unlabeled.npy")
    assert run_cli(*argv) == 2
    assert "--priors" in capsys.readouterr().err and not (tmp_path / "fc.pt").exists()


def test_new_pseudo_labels_under_the_same_path_train_afresh(routes, tiny_dataset, tmp_path, caplog):
    # a retrained segmenter (or another object_class) rewrites pseudo/unlabeled.npy in place:
    # the forecaster's and the direct U-Net's finished checkpoints of the old labels must not
    # be resumed and re-exported as if trained on the new ones
    import logging
    import shutil

    from futureseg.core.io import load_array, save_array

    folder = tmp_path / "f"
    shutil.copytree(routes / "pseudo", folder / "pseudo")
    shutil.copytree(routes / "cache", folder / "cache")
    shutil.copy(routes / "ms.json", folder / "ms.json")
    fc = forecaster_argv(tiny_dataset, folder, folder / "fc.pt", folder / "fck", folder / "fm.csv")
    direct = direct_argv(tiny_dataset, folder, "d", "--pseudo-cache", folder / "cache" / "unlabeled.npy",
                         "--pseudo", folder / "pseudo" / "unlabeled.npy")
    ok(*fc)
    ok(*direct)
    old = {name: load_checkpoint(folder / name)["fingerprint"] for name in ("fc.pt", "d.pt")}
    masks, meta = load_array(folder / "pseudo" / "unlabeled.npy")
    relabelled = np.where(masks != 0, 1 + (masks.astype(int) + 15) % 48, 0).astype(np.uint8)  # same shape and ids
    save_array(folder / "pseudo" / "unlabeled.npy", relabelled, meta.pop("ids"), **meta)
    with caplog.at_level(logging.INFO, logger="futureseg"):
        ok(*fc)
        ok(*direct)
    assert "resuming" not in caplog.text and caplog.text.count("from scratch") == 2
    for name in ("fc.pt", "d.pt"):
        assert load_checkpoint(folder / name)["fingerprint"] != old[name], name


def test_the_forecaster_on_the_dynamics_prior_starts_from_route_dynamics(motion, tiny_dataset, tmp_path, capsys):
    # forecaster.prior: dynamics: route dynamics' sequences (an untrained dynamics model here,
    # written by train-dynamics with --max-steps 1 --lr 1e-12) are the prior, checked by the
    # model that made them
    f = motion
    ok("tracks", "--root", tiny_dataset, "--split", "train", "--frames", f / "cache" / "train.npy",
       "--out", tmp_path / "tracks.npz")
    ok("train-dynamics", "--tracks", tmp_path / "tracks.npz", "--val-root", tiny_dataset,
       "--val-frames", f / "cache" / "val.npy", "--motion-config", json.dumps(MOTION), "--width", 8, "--heads", 2,
       "--epochs", 1, "--batch-size", 4, "--lr", 1e-12, "--weight-decay", 0, "--max-steps", 1,
       "--out", tmp_path / "dyn.pt", "--metrics", tmp_path / "dyn.csv", "--checkpoints", tmp_path / "dyn_ck")
    sequences = {}
    for split, source in (("train", ["--root", tiny_dataset, "--split", "train"]),
                          ("unlabeled", ["--masks", f / "pseudo" / "unlabeled.npy"]),
                          ("val", ["--masks", f / "pseudo" / "val.npy"])):
        sequences[split] = tmp_path / f"dyn_seq_{split}.npy"
        ok("dynamics", "--model", tmp_path / "dyn.pt", *source, "--frames", f / "cache" / f"{split}.npy",
           "--out-sequence", sequences[split])
    argv = forecaster_argv(tiny_dataset, f, tmp_path / "fc.pt", tmp_path / "fc_ck", tmp_path / "fc.csv")
    argv[argv.index("--prior") + 1] = "dynamics"
    ok(*argv, "--priors", sequences["train"], sequences["unlabeled"], "--val-prior", sequences["val"],
       "--max-steps", 1, "--lr", 1e-12)
    state = load_checkpoint(tmp_path / "fc.pt")
    assert state["model_config"]["prior"] == "dynamics"
    assert state["dynamics"] == load_checkpoint(tmp_path / "dyn.pt")["fingerprint"]
    ok("forecast", "--model", tmp_path / "fc.pt", "--masks", f / "pseudo" / "val.npy", "--prior", sequences["val"],
       "--out", tmp_path / "val.npy", "--out-sequence", tmp_path / "seq.npy")
    np.testing.assert_array_equal(load_array(tmp_path / "seq.npy")[0], load_array(sequences["val"])[0])
    # route motion's sequence is not this forecaster's prior: refused by name
    assert run_cli("forecast", "--model", tmp_path / "fc.pt", "--masks", f / "pseudo" / "val.npy",
                   "--prior", f / "motion_seq_val.npy", "--out", tmp_path / "o.npy") == 2
    assert "motion_seq_val.npy: written with dynamics None" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
