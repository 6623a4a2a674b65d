import argparse
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

from futureseg.core import data
from futureseg.segment import segment, train_segmenter
from futureseg.core.errors import ConfigError, DataError, FuturesegError
from futureseg.core.instances import mask_to_instances
from futureseg.core.io import load_array, save_array
from futureseg.models import segmenters
from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig, TorchvisionMaskRCNN
from futureseg.core.training import load_checkpoint

# A Mask R-CNN small enough for 32×48 frames on two cores.
TINY_MODEL = dict(
    backbone="resnet18", fpn_channels=32, box_head_dim=64, mask_head_channels=32,
    box_batch_size_per_image=64, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_train=500,
)
TINY_ARGS = [
    "--backbone", "resnet18", "--fpn-channels", "32", "--box-head-dim", "64", "--mask-head-channels", "32",
    "--box-batch-per-image", "64", "--rpn-post-nms-train", "100", "--detections-per-image", "20",
]
N_SAMPLES, BATCH, EPOCHS = 10, 2, 2  # 5 steps per epoch, 10 in all

# What the `futureseg` CLI does with a verb, for a subprocess (independent of cli.py's list).
RUNNER = """
import argparse, logging, sys
from futureseg.segment import train_segmenter as verb
from futureseg.core.errors import FuturesegError
logging.basicConfig(level=logging.INFO, format="%(message)s")
parser = argparse.ArgumentParser()
verb.add_arguments(parser)
try:
    verb.main(parser.parse_args(sys.argv[1:]))
except FuturesegError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def parse(module, argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def tiny_batch(dataset_root, frames=((0, 3), (1, 17))):
    """Images and targets of a few (video, frame) pairs of the tiny dataset's train split."""
    videos = data.list_videos(dataset_root, "train")
    images, targets = [], []
    for video_index, frame in frames:
        video = videos[video_index]
        image = data.read_frames(video, [frame])[0]
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        instances = mask_to_instances(data.read_mask(video)[frame], min_pixels=4)
        targets.append({k: torch.from_numpy(v) for k, v in instances.items()})
    return images, targets


@pytest.fixture(scope="module")
def seg_frames(tiny_dataset, tmp_path_factory):
    """A stage-3 folder written with numpy: N_SAMPLES real frames of the train videos."""
    folder = tmp_path_factory.mktemp("segframes") / "segframes"
    folder.mkdir()
    rows = [(v, f) for v in data.list_videos(tiny_dataset, "train") for f in range(0, 22, 6)][:N_SAMPLES]
    np.save(folder / "images.npy", np.stack([data.read_frames(v, [f])[0] for v, f in rows]))
    np.save(folder / "masks.npy", np.stack([data.read_mask(v)[f] for v, f in rows]))
    with open(folder / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "video_id", "frame_index", "blur_sigma"])
        writer.writerows(("real", v.id, frame, 0.0) for v, frame in rows)
    (folder / "counts.json").write_text(json.dumps({"real": len(rows), "generated": 0}))
    return folder


def train_argv(root, seg_frames, out_dir: Path, *extra) -> list:
    return [
        "--root", root, "--seg-frames", seg_frames, "--out", out_dir / "model.pt",
        "--metrics", out_dir / "metrics.csv", "--checkpoints", out_dir / "checkpoints",
        "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", 0.01, "--weight-decay", 1e-4, "--warmup-steps", 3, "--seed", 7,
        "--checkpoint-every", 1, "--threads", 1, *TINY_ARGS, *extra,
    ]


@pytest.fixture
def one_thread():
    """Training steps in this process on one thread (the machine may be shared), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tiny_dataset, seg_frames, tmp_path_factory):
    """One uninterrupted training run, in this process (1 thread, as the subprocess runs)."""
    out_dir = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    try:
        train_segmenter.train(parse(train_segmenter, train_argv(tiny_dataset, seg_frames, out_dir)))
    finally:
        torch.set_num_threads(threads)
    return out_dir


# ---------------------------------------------------------------- the backend


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_dataset, one_thread):
    torch.manual_seed(0)
    backend = TorchvisionMaskRCNN(MaskRCNNConfig(min_size=32, max_size=48, **TINY_MODEL))
    images, targets = tiny_batch(tiny_dataset)
    assert all(len(t["labels"]) for t in targets), "the batch should hold objects"
    optimizer = train_segmenter.make_optimizer(backend.model, lr=0.01, weight_decay=1e-4)
    history = []
    for _ in range(15):
        losses = backend.losses(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.6 * history[0], history


def test_empty_targets_and_predictions(tiny_dataset, one_thread):
    torch.manual_seed(0)
    backend = TorchvisionMaskRCNN(MaskRCNNConfig(min_size=32, max_size=48, **TINY_MODEL))
    images, targets = tiny_batch(tiny_dataset)
    empty = mask_to_instances(np.zeros((32, 48), dtype=np.uint8))
    targets[1] = {k: torch.from_numpy(v) for k, v in empty.items()}
    losses = backend.losses(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    backend.model.train()
    predictions = backend.predict(images)
    assert backend.model.training, "predict leaves the model's mode as it was"
    assert len(predictions) == 2
    for p in predictions:
        n = len(p["scores"])
        assert p["masks"].shape == (n, 32, 48) and p["labels"].shape == (n,)
        if n:
            assert 0 <= float(p["masks"].min()) and float(p["masks"].max()) <= 1
            assert 1 <= int(p["labels"].min()) and int(p["labels"].max()) <= 48


def test_under_bf16_autocast_only_the_backbone_runs_in_bf16(tiny_dataset, one_thread):
    """Anchors, proposals and the boxes the losses compare stay fp32 (bf16 puts a box edge
    near 200 px on a 1-px grid); the backbone and FPN still take the caller's autocast."""
    torch.manual_seed(0)
    backend = TorchvisionMaskRCNN(MaskRCNNConfig(min_size=32, max_size=48, **TINY_MODEL))
    model = backend.model
    seen = {}
    model.backbone.body.register_forward_hook(lambda m, i, out: seen.update(body=out["3"].dtype))
    model.roi_heads.register_forward_pre_hook(
        lambda m, args: seen.update(features={f.dtype for f in args[0].values()}, proposals={p.dtype for p in args[1]}))
    real_encode = model.roi_heads.box_coder.encode

    def encode(matched_boxes, proposals):  # the box head's regression targets
        seen["targets"] = {b.dtype for b in matched_boxes} | {p.dtype for p in proposals}
        return real_encode(matched_boxes, proposals)

    model.roi_heads.box_coder.encode = encode
    images, targets = tiny_batch(tiny_dataset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = backend.losses(images, targets)
    assert seen == {"body": torch.bfloat16, "features": {torch.float32}, "proposals": {torch.float32},
                    "targets": {torch.float32}}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictions = backend.predict(images)
    assert all(p["masks"].dtype == p["scores"].dtype == torch.float32 for p in predictions)


def test_frames_are_not_resized_and_nothing_is_downloaded(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    backend = TorchvisionMaskRCNN(MaskRCNNConfig(min_size=160, max_size=240, backbone="resnet18"))
    image_list, _ = backend.model.transform([torch.rand(3, 160, 240)])
    assert image_list.image_sizes == [(160, 240)]
    assert backend.model.rpn._post_nms_top_n["training"] == 1000
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.backbone.modules())
    assert all(p.requires_grad for p in backend.model.backbone.parameters())


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="segmenter.backbone"):
        TorchvisionMaskRCNN(MaskRCNNConfig(backbone="vgg16"))
    with pytest.raises(ConfigError, match="segmenter.norm"):
        TorchvisionMaskRCNN(MaskRCNNConfig(norm="frozen"))


def test_detectron2_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # makes `import detectron2` fail
    with pytest.raises(ConfigError, match="segmenter.backend"):
        segmenters.build_backend("detectron2", {"height": 32, "width": 48})


# ---------------------------------------------------------------- training


def test_training_writes_model_and_metrics(trained):
    state = load_checkpoint(trained / "model.pt")
    assert state["backend"] == "torchvision" and state["step"] == EPOCHS * N_SAMPLES // BATCH
    assert state["model_config"]["min_size"] == 32 and state["model_config"]["max_size"] == 48
    with open(trained / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [5, 10]
    for row in rows:
        assert 0 <= float(row["val_oracle_iou"]) <= 1
        assert np.isfinite(float(row["loss"])) and float(row["loss"]) > 0


def test_sigterm_writes_a_checkpoint_and_the_rerun_resumes_to_the_same_weights(tiny_dataset, seg_frames, trained, tmp_path):
    argv = [str(a) for a in train_argv(tiny_dataset, seg_frames, tmp_path)]
    command = [sys.executable, "-c", RUNNER, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "checkpoints").glob("*/last.pt")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert "SIGTERM" in stderr and "rerun to resume" in stderr
    assert not (tmp_path / "model.pt").exists()
    [checkpoint] = (tmp_path / "checkpoints").glob("*/last.pt")
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert 1 <= stopped_at < EPOCHS * N_SAMPLES // BATCH

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"at step {stopped_at} of 10" in rerun.stderr
    resumed = load_checkpoint(tmp_path / "model.pt")["model"]
    reference = load_checkpoint(trained / "model.pt")["model"]
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [5, 10]


def test_changed_settings_start_a_new_checkpoint_folder(tiny_dataset, seg_frames, trained, tmp_path):
    # the same run with another seed must not resume the reference's finished checkpoint
    args = parse(train_segmenter, train_argv(tiny_dataset, seg_frames, trained, "--max-steps", 1, "--seed", 8))
    args.out, args.metrics = tmp_path / "model.pt", tmp_path / "metrics.csv"
    threads = torch.get_num_threads()
    try:
        train_segmenter.train(args)
    finally:
        torch.set_num_threads(threads)
    assert len(list((trained / "checkpoints").glob("*/last.pt"))) == 2
    assert load_checkpoint(tmp_path / "model.pt")["step"] == 1


def test_batches_do_not_depend_on_the_number_of_workers(seg_frames):
    dataset = train_segmenter.TrainingSet(seg_frames, min_fragment=4, seed=3)
    batches = train_segmenter.epoch_batches(len(dataset), 3, seed=3, epoch=1)
    assert sorted(k[1] for b in batches for k in b) == list(range(N_SAMPLES))
    assert batches != train_segmenter.epoch_batches(len(dataset), 3, seed=3, epoch=2)
    in_process = list(train_segmenter.loader(dataset, batches, workers=0, seed=3))
    in_workers = list(train_segmenter.loader(dataset, batches, workers=2, seed=3))
    for (images_a, targets_a), (images_b, targets_b) in zip(in_process, in_workers, strict=True):
        for a, b in zip(images_a, images_b, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(targets_a, targets_b, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "masks"))


def test_mask_rcnn_on_a_gpu_leaves_cudnn_benchmark_off(tiny_dataset, tmp_path, monkeypatch):
    """The mask head meets a new ROI count every step; benchmark would re-tune for each."""
    from futureseg.core import training

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(training, "select_device", lambda **kw: torch.device("cuda", 0))
    # the run stops at the missing training set, after its device settings
    args = parse(train_segmenter, train_argv(tiny_dataset, tmp_path / "absent", tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        train_segmenter.train(args)
    assert torch.backends.cudnn.benchmark is False


def test_augmentation_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (6, 9, 3), dtype=np.uint8)
    mask = np.zeros((6, 9), dtype=np.uint8)
    mask[0, 0] = 5  # mark a corner pixel in both
    image[0, 0] = 250
    seen = set()
    for seed in range(16):
        out_image, out_mask = train_segmenter.augment(image, mask, np.random.default_rng(seed))
        [(row, col)] = zip(*np.nonzero(out_mask))
        assert out_image[row, col].max() == out_image.max(), "the marked pixel moved with the mask"
        seen.add((int(row), int(col)))
    assert seen == {(0, 0), (0, 8), (5, 0), (5, 8)}, "both flips occur"


def test_broken_training_set_names_the_file(tiny_dataset, seg_frames, tmp_path):
    broken = tmp_path / "segframes"
    broken.mkdir()
    for name in ("images.npy", "index.csv", "counts.json"):
        (broken / name).write_bytes((seg_frames / name).read_bytes())
    args = parse(train_segmenter, train_argv(tiny_dataset, broken, tmp_path))
    with pytest.raises(DataError, match=str(broken / "masks.npy")):
        train_segmenter.train(args)
    np.save(broken / "masks.npy", np.zeros((3, 32, 48), dtype=np.uint8))
    with pytest.raises(DataError, match="masks.npy"):
        train_segmenter.train(args)


# ---------------------------------------------------------------- segment


def write_predicted_frames(root, split, path: Path, frame_indices) -> list[int]:
    """A predict-frames output for `split`: its true frames at `frame_indices` (hidden
    videos only have 0…10, so their frames 0… stand in)."""
    videos = data.list_videos(root, split)
    n_frames = data.frames_in_split(split)
    frames = np.stack([data.read_frames(v, [i % n_frames for i in frame_indices]) for v in videos])
    save_array(path, frames, [v.id for v in videos], split=split, frame_indices=list(frame_indices))
    return [v.id for v in videos]


def test_segment_writes_masks_with_ids(tiny_dataset, trained, tmp_path):
    val_ids = write_predicted_frames(tiny_dataset, "val", tmp_path / "frames_val.npy", [20, 21])
    hidden_ids = write_predicted_frames(tiny_dataset, "hidden", tmp_path / "frames_hidden.npy", [21])
    out = {name: tmp_path / "seg" / f"masks_{name}.npy" for name in ("val", "hidden", "val_oracle", "val_frame10")}
    args = parse(segment, [
        "--model", trained / "model.pt", "--root", tiny_dataset,
        "--val-frames", tmp_path / "frames_val.npy", "--hidden-frames", tmp_path / "frames_hidden.npy",
        "--out-val", out["val"], "--out-hidden", out["hidden"], "--out-val-oracle", out["val_oracle"],
        "--out-val-frame10", out["val_frame10"], "--score-threshold", "0.05", "--batch-size", "1", "--threads", "1",
    ])
    threads = torch.get_num_threads()
    try:
        segment.main(args)
    finally:
        torch.set_num_threads(threads)
    for name, path in out.items():
        masks, meta = load_array(path)
        ids = hidden_ids if name == "hidden" else val_ids
        assert masks.dtype == np.uint8 and masks.shape == (len(ids), 32, 48), name
        assert masks.max() < data.NUM_CLASSES
        assert meta["ids"] == ids
        assert meta["frame_index"] == (10 if name == "val_frame10" else 21)
    # the predicted val frame 21 is the true frame 21 here, so it must equal the oracle
    np.testing.assert_array_equal(load_array(out["val"])[0], load_array(out["val_oracle"])[0])


def test_segment_needs_frame_21(tiny_dataset, trained, tmp_path):
    write_predicted_frames(tiny_dataset, "val", tmp_path / "frames_val.npy", [11, 12])
    with pytest.raises(FuturesegError, match=str(tmp_path / "frames_val.npy") + ".*frame 21"):
        segment.run(trained / "model.pt", val_frames=tmp_path / "frames_val.npy", out_val=tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()
