"""ENet (`segmenter.model: enet`, models/enet.py): its shapes at any frame size, the paper's
architecture at its width, that it learns, and its wiring: the registry, train-segmenter's
per-pixel path, the model file, `segment`, the config section, the schema and the rule."""

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from futureseg import cli
from futureseg.core import data
from futureseg.core.dense import dense_losses
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import load_array
from futureseg.core.training import load_checkpoint, save_checkpoint
from futureseg.models import segmenters
from futureseg.models.enet import ENet, ENetConfig
from futureseg.models.unet import UNet

from conftest import TINY_SIZE

REPO = Path(__file__).resolve().parents[1]
H, W = TINY_SIZE


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ok(*argv) -> None:
    assert cli.main([str(a) for a in argv]) == 0, argv


def trainer_argv(ds, folder, model, name, *model_flags):
    return ["train-segmenter", "--model", model, "--root", ds, "--seg-frames", folder / "segf",
            "--mean-std", folder / "ms.json", "--out", folder / f"{name}.pt", "--metrics", folder / f"{name}.csv",
            "--checkpoints", folder / f"{name}_ck", "--epochs", 2, "--batch-size", 8, "--lr", 0.005,
            "--weight-decay", 0.01, "--soft-iou-weight", 0, "--background-weight", 0.2, "--threads", 1, *model_flags]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """An ENet (width 4) and a U-Net trained by train-segmenter on the tiny dataset's frames."""
    f = tmp_path_factory.mktemp("enet")
    ok("mean-std", "--root", tiny_dataset, "--out", f / "ms.json", "--splits", "train")
    ok("make-seg-frames", "--root", tiny_dataset, "--out", f / "segf", "--no-generated", "--frameskip", "1",
       "--blur-prob", "0", "--blur-sigma", "0.5,2", "--seed", "0")
    ok(*trainer_argv(tiny_dataset, f, "enet", "enet", "--width", 4))
    ok(*trainer_argv(tiny_dataset, f, "unet", "unet", "--base-channels", 4, "--depth", 2))
    return f


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("size", [(32, 48), (31, 45), (7, 5), (80, 120)])
def test_logits_have_the_input_size(size):
    # three halvings want a multiple of 8: other sizes are padded and the logits cropped back
    torch.manual_seed(0)
    model = ENet(ENetConfig(width=4)).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, *size))
    assert logits.shape == (2, 49, *size) and torch.isfinite(logits).all()


def test_the_papers_width_builds_the_papers_architecture():
    model = ENet(ENetConfig())  # width 16: 16/64/128 channels
    assert model.initial.conv.out_channels == 13 and model.down1.ext[-3].out_channels == 64
    assert model.down2.ext[-3].out_channels == 128 and model.up4.main[0].out_channels == 64
    assert model.up5.main[0].out_channels == 16 and model.fullconv.out_channels == 49
    assert len(model.stage1) == 4 and len(model.stage23) == 16 and len(model.stage4) == 2
    dilations = [b.ext[3].dilation[0] for b in model.stage23 if b.ext[3].kernel_size == (3, 3)]
    assert dilations == [1, 2, 4, 1, 8, 16] * 2
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (5, 1) for m in model.modules()) == 4
    assert sum(p.numel() for p in model.parameters()) == 362_256  # the paper: 0.37 M (at its 12-20 classes)
    with torch.no_grad():  # at 1/8 of the frame by the end of stage 3
        x = model.initial(torch.rand(1, 3, 32, 48))
        x, _ = model.down1(x)
        assert model.down2(x)[0].shape == (1, 128, 4, 6)


def test_the_decoder_unpools_at_the_encoders_maxima():
    torch.manual_seed(0)
    model = ENet(ENetConfig(width=4)).eval()
    x = torch.rand(1, 16, 8, 12)
    _, indices = model.down2(x)  # 1x1 upsampling main branch, its extension silenced
    up = model.up4
    with torch.no_grad():
        up.ext[-3].weight.zero_()
        up.ext[-2].bias.zero_()
        main = up.main(torch.rand(1, 32, 4, 6)) + 10  # nowhere zero before unpooling
        pooled = torch.nn.functional.max_unpool2d(main, indices, 2)
    nonzero = (pooled != 0).sum(dim=(2, 3))
    assert (nonzero == 24).all()  # one of each 2x2 window: where the max-pool found its maximum


def test_a_few_steps_lower_the_loss(tiny_dataset):
    videos = data.list_videos(tiny_dataset, "train")
    frames = np.stack([data.read_frames(v, [0, 9, 21]) for v in videos]).reshape(-1, H, W, 3)
    masks = np.stack([data.read_mask(v)[[0, 9, 21]] for v in videos]).reshape(-1, H, W)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(masks.astype(np.int64))
    torch.manual_seed(0)
    model = ENet(ENetConfig(width=8)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses = []
    for _ in range(20):
        loss = dense_losses(model(x), y, 0.0, 0.2)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < min(losses[:10]), losses


@pytest.mark.parametrize("kwargs, named", [
    ({"width": 3}, "segmenter.enet.width"),
    ({"width": True}, "segmenter.enet.width"),
    ({"internal_ratio": 0}, "segmenter.enet.internal_ratio"),
    ({"width": 4, "internal_ratio": 8}, "segmenter.enet.internal_ratio"),
    ({"dropout": 1.0}, "segmenter.enet.dropout"),
    ({"num_classes": 1}, "segmenter.enet.num_classes"),
    ({"image_std": (0.2, 0.0, 0.2)}, "segmenter.enet.image_std"),
    ({"image_mean": (0.5,)}, "segmenter.enet: image_mean"),
])
def test_config_errors_name_the_key(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        ENetConfig(**kwargs)


# ---------------------------------------------------------------- trainer, model file, segment


def test_train_segmenter_writes_an_enet_model_file(trained, tiny_dataset, tmp_path):
    state = load_checkpoint(trained / "enet.pt")
    assert state["segmenter"] == "enet" and state["model_config"]["width"] == 4
    assert state["settings"]["model_config"] == state["model_config"] and "backend" not in state
    rows = (trained / "enet.csv").read_text().splitlines()
    assert len(rows) == 3 and 0 <= state["val_metrics"]["val_oracle_iou"] <= 1

    segmenter, _ = segmenters.load(trained / "enet.pt")
    assert segmenter.name == "enet" and isinstance(segmenter.net, ENet)
    assert segmenter.net.mean.flatten().tolist() == pytest.approx(state["model_config"]["image_mean"])
    frames = np.stack([data.read_frames(v, [21])[0] for v in data.list_videos(tiny_dataset, "val")])
    with torch.no_grad():
        direct = segmenter.net.eval()(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).argmax(1)
    np.testing.assert_array_equal(segmenter.masks(frames, torch.device("cpu"), 1), direct.numpy())
    ok("segment", "--model", trained / "enet.pt", "--root", tiny_dataset, "--out-val-oracle", tmp_path / "o.npy",
       "--out-val-frame10", tmp_path / "f10.npy", "--object-vote", "--threads", "1")
    oracle, meta = load_array(tmp_path / "o.npy")
    assert oracle.shape == (2, H, W) and oracle.dtype == np.uint8 and meta["frame_index"] == 21


def test_a_model_file_of_the_other_kind_is_refused(trained, tmp_path):
    # the file names its model; a U-Net's file labelled enet (or an ENet's labelled unet) is
    # refused in one line naming the file, never half-loaded
    assert isinstance(segmenters.load(trained / "unet.pt")[0].net, UNet)
    for source, label in (("unet", "enet"), ("enet", "unet")):
        state = load_checkpoint(trained / f"{source}.pt")
        save_checkpoint(tmp_path / "wrong.pt", {**state, "segmenter": label})
        with pytest.raises(FuturesegError, match=rf"wrong\.pt: not a {label} model file: segmenter\.{label}: "
                                                 "unknown setting") as error:
            segmenters.load(tmp_path / "wrong.pt")
        assert "\n" not in str(error.value)
    # the right config with another model's weights
    state = load_checkpoint(trained / "enet.pt")
    save_checkpoint(tmp_path / "weights.pt", {**state, "model": load_checkpoint(trained / "unet.pt")["model"]})
    with pytest.raises(FuturesegError, match=r"weights\.pt: not a enet model file: Error\(s\) in loading") as error:
        segmenters.load(tmp_path / "weights.pt")
    assert "\n" not in str(error.value)


def test_the_trainer_refuses_the_other_models_settings(trained, tiny_dataset, tmp_path, capsys):
    argv = trainer_argv(tiny_dataset, trained, "enet", "x", "--width", 4, "--base-channels", 8)
    assert cli.main([str(a) for a in argv]) == 2
    assert "--base-channels: not a setting of the ENet (segmenter.enet)" in capsys.readouterr().err
    argv = trainer_argv(tiny_dataset, trained, "enet", "x", "--width", 3)
    assert cli.main([str(a) for a in argv]) == 2
    assert "segmenter.enet.width" in capsys.readouterr().err
    assert not (trained / "x.pt").exists()


# ---------------------------------------------------------------- config, schema, rule


def config_schema():
    return yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


@pytest.mark.parametrize("change, bad", [
    ({}, None),
    ({"width": 3}, "width"),
    ({"lr": 0}, "lr"),
    ({"background_weight": -1}, "background_weight"),
    ({"epochs": 0}, "epochs"),
    ({"depth": 4}, "depth"),  # a U-Net setting under enet
])
def test_the_schema_checks_the_enet_section(change, bad):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["segmenter"]["model"] = "enet"
    config["segmenter"]["enet"].update(change)
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = list(validator.iter_errors(config))
    if bad is None:
        assert errors == []
    else:
        assert errors and all("enet" in e.json_path for e in errors), [e.message for e in errors]
        assert any(bad in e.json_path or bad in e.message for e in errors)
    missing = copy.deepcopy(config)
    del missing["segmenter"]["enet"]
    assert any("'enet' is a required property" in e.message for e in validator.iter_errors(missing))


def test_the_rule_passes_only_the_enet_section(tmp_path):
    from futureseg.data.synth import generate_dataset

    generate_dataset(tmp_path / "ds", {"train": 1, "val": 1, "unlabeled": 1, "hidden": 1}, 32, 48, seed=0)
    override = tmp_path / "enet.yaml"
    override.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "ds")},
                                        "segmenter": {"model": "enet", "enet": {"width": 8}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
         str(REPO / "config.yaml"), str(override), "--dry-run", "--printshellcmds", "--cores", "1",
         "results/segmenter/model.pt"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    command = next(line for line in result.stdout.splitlines() if "futureseg train-segmenter" in line)
    enet = yaml.safe_load((REPO / "config.yaml").read_text())["segmenter"]["enet"]
    assert "--model enet --width 8 " in command and f"--lr {enet['lr']} " in command
    assert "--base-channels" not in command and "--depth" not in command and "--backbone" not in command
