"""The object classifier (models/object_classifier.py), its trainer and its use by segment and
pseudo-label: each object, a connected component of one colour of the segmenter's mask,
repainted in the shape and material the classifier sees, its colour kept.

The data are hand-drawn: squares (cubes) and discs (spheres) of the dataset's colours on a
grey floor, so the shape is a matter of the silhouette and a test can say what is right."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from futureseg import cli
from futureseg.core.classes import COLOR_RGB, class_id, class_parts
from futureseg.core.instances import colour_components
from futureseg.core.io import load_array, save_array
from futureseg.models import object_classifier as oc
from futureseg.models import segmenters

H, W = 32, 48
CUBE, SPHERE = 0, 1
RUBBER = 1


def ok(*argv) -> None:
    threads = torch.get_num_threads()
    try:
        assert cli.main([str(a) for a in argv]) == 0, argv
    finally:
        torch.set_num_threads(threads)


def draw(rng, n_objects: int = 2):
    """A frame and its true mask: squares and discs of 7…11 pixels, one per colour, apart."""
    frame = np.full((H, W, 3), 110, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    colours = rng.choice(len(COLOR_RGB), n_objects, replace=False)
    rows, cols = np.mgrid[:H, :W]
    for k, colour in enumerate(colours):
        shape = int(rng.integers(2))
        side = int(rng.integers(7, 12))
        top = int(rng.integers(2, H - side - 2))
        left = int(rng.integers(2 + k * W // n_objects, (k + 1) * W // n_objects - side - 1))
        if shape == CUBE:
            inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        else:
            r = side / 2
            inside = (rows + 0.5 - top - r) ** 2 + (cols + 0.5 - left - r) ** 2 <= r * r
        frame[inside] = COLOR_RGB[colour].astype(np.uint8)
        mask[inside] = class_id(shape, RUBBER, int(colour))
    return frame, mask


def write_seg_frames(folder, frames, masks) -> None:
    folder.mkdir()
    np.save(folder / "images.npy", np.stack(frames))
    np.save(folder / "masks.npy", np.stack(masks))
    with open(folder / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "video_id", "frame_index", "blur_sigma"])
        writer.writerows(["real", i, 0, 0.0] for i in range(len(frames)))
    (folder / "counts.json").write_text(json.dumps({"total": len(frames)}))


def write_val(root, frames, masks) -> None:
    """A val split of still videos: every frame is the drawing."""
    for video, (frame, mask) in enumerate(zip(frames, masks)):
        folder = root / "val" / f"video_{video}"
        folder.mkdir(parents=True)
        for index in range(22):
            Image.fromarray(frame).save(folder / f"image_{index}.png")
        np.save(folder / "mask.npy", np.repeat(mask[None], 22, axis=0))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A trained classifier: 64 drawn training frames, 8 val frames."""
    folder = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(0)
    train = [draw(rng) for _ in range(64)]
    val = [draw(rng) for _ in range(8)]
    write_seg_frames(folder / "segframes", *zip(*train))
    write_val(folder / "root", *zip(*val))
    ok("train-object-classifier", "--root", folder / "root", "--seg-frames", folder / "segframes",
       "--out", folder / "classifier.pt", "--metrics", folder / "metrics.csv", "--checkpoints", folder / "ck",
       "--crop-size", "16", "--width", "8", "--epochs", "8", "--batch-size", "8", "--lr", "0.01",
       "--weight-decay", "0.0", "--threads", "2")
    return folder, val


def constant_classifier(shape: int, material: int, crop_size: int = 16) -> oc.ObjectClassifier:
    """A classifier that answers (shape, material) for every object."""
    model = oc.ObjectClassifier(oc.ObjectClassifierConfig(crop_size=crop_size, width=2))
    with torch.no_grad():
        for name, answer in (("shape", shape), ("material", material)):
            model.heads[name].weight.zero_()
            model.heads[name].bias.zero_()
            model.heads[name].bias[answer] = 1.0
    return model


# ---------------------------------------------------------------- the model


def test_crops_hold_the_object_and_its_own_silhouette():
    frame = np.full((H, W, 3), 110, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 5:11] = class_id(CUBE, RUBBER, 1)  # red square, 6×6
    mask[20:30, 30:40] = class_id(SPHERE, RUBBER, 2)  # blue square beside it, 10×10
    mask[0:3, 44:48] = class_id(CUBE, 0, 1)  # a second red object, at the corner
    frame[mask != 0] = COLOR_RGB[(mask[mask != 0].astype(int) - 1) % 8].astype(np.uint8)
    labels, n, colours = colour_components(mask)
    assert n == 3 and sorted(colours.tolist()) == [1, 1, 2]
    model = constant_classifier(0, 0)
    crops, owner = oc.object_crops(model, frame[None], labels[None], [n])
    assert crops.shape == (3, 4, 16, 16) and owner.tolist() == [0, 0, 0]
    for k in range(n):
        silhouette = crops[k, 3]
        # the object fills the middle of its crop, its surroundings are -1
        assert silhouette[8, 8] == pytest.approx(1.0) and silhouette[0, 0] == pytest.approx(-1.0)
        # the crop is centred on its object alone: another object never shows in the channel
        assert (silhouette > 0).float().mean() < 0.7
        red = crops[k, 0, 8, 8] * model.std[0, 0, 0, 0] + model.mean[0, 0, 0, 0]
        assert red.item() * 255 == pytest.approx(COLOR_RGB[colours[k], 0], abs=2)
    empty, owner = oc.object_crops(model, frame[None], np.zeros((1, H, W), np.int64), [0])
    assert empty.shape == (0, 4, 16, 16) and len(owner) == 0


def test_repaint_gives_each_object_one_class_of_its_colour():
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 4:12] = class_id(CUBE, 0, 1)  # a red object painted in two classes
    mask[4:8, 4:12] = class_id(SPHERE, RUBBER, 1)
    mask[20:28, 30:38] = class_id(2, 0, 5)  # a cyan one
    frames = np.zeros((2, H, W, 3), np.uint8)
    out = oc.repaint(constant_classifier(SPHERE, 0), frames, np.stack([mask, np.zeros_like(mask)]))
    expected = np.zeros((H, W), np.uint8)
    expected[4:12, 4:12] = class_id(SPHERE, 0, 1)
    expected[20:28, 30:38] = class_id(SPHERE, 0, 5)
    np.testing.assert_array_equal(out[0], expected)
    assert not out[1].any() and out.dtype == np.uint8
    with pytest.raises(ValueError, match="frames"):
        oc.repaint(constant_classifier(0, 0), frames[:1], np.stack([mask, mask]))


def test_specks_keep_the_segmenters_classes_and_silhouettes_come_in_chunks(monkeypatch):
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 4:12] = class_id(CUBE, 0, 1)  # an object: repainted
    mask[20, 30] = class_id(CUBE, RUBBER, 3)  # a one-pixel speck and a three-pixel one: kept as they are
    mask[25, 40:43] = class_id(2, 0, 6)
    mask[28:30, 5:7] = class_id(2, 0, 4)  # four pixels: an object
    frames = np.zeros((1, H, W, 3), np.uint8)
    expected = mask.copy()
    expected[4:12, 4:12] = class_id(SPHERE, 0, 1)
    expected[28:30, 5:7] = class_id(SPHERE, 0, 4)
    np.testing.assert_array_equal(oc.repaint(constant_classifier(SPHERE, 0), frames, mask[None])[0], expected)
    # the silhouettes of many objects, cut a few at a time, are those cut at once
    many = np.zeros((H, W), np.int64)
    for k in range(12):
        many[(k // 6) * 10 : (k // 6) * 10 + 6, (k % 6) * 8 : (k % 6) * 8 + 5] = k + 1
    model = constant_classifier(0, 0)
    at_once, _ = oc.object_crops(model, frames, many[None], [12])
    monkeypatch.setattr(oc, "SILHOUETTE_CHUNK", 5)
    chunked, _ = oc.object_crops(model, frames, many[None], [12])
    assert torch.equal(at_once, chunked)


@pytest.mark.parametrize("bad", [{"crop_size": 4}, {"width": 0}, {"width": True}, {"image_std": (0.2, 0.0, 0.2)}])
def test_config_refuses_bad_values(bad):
    from futureseg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="segmenter.object_classifier"):
        oc.ObjectClassifierConfig(**bad)


# ---------------------------------------------------------------- training and use


def test_training_learns_squares_from_discs(drawn):
    folder, val = drawn
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert len(rows) == 8 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    last = rows[-1]
    assert float(last["val_shape_acc"]) >= 0.9 and float(last["val_material_acc"]) == 1.0
    assert float(last["val_repaint_iou"]) >= 0.8
    model, state = oc.load(folder / "classifier.pt")
    assert state["kind"] == "object_classifier" and model.config.crop_size == 16
    # the val objects repainted from a mask whose shapes are all wrong (every object a cylinder)
    frames = np.stack([f for f, _ in val])
    truth = np.stack([m for _, m in val])
    wrong = np.where(truth != 0, (truth.astype(int) - 1) % 16 + 2 * 16 + 1, 0).astype(np.uint8)
    repainted = oc.repaint(model, frames, wrong)
    right = [class_parts(c)[0] == class_parts(t)[0] for c, t in zip(repainted[truth != 0], truth[truth != 0])]
    assert np.mean(right) >= 0.9


def test_load_refuses_what_is_not_a_classifier(drawn, tmp_path):
    from futureseg.core.errors import FuturesegError

    torch.save({"model": {}, "fingerprint": "x", "segmenter": "unet", "model_config": {}}, tmp_path / "seg.pt")
    with pytest.raises(FuturesegError, match="seg.pt: not an object classifier"):
        oc.load(tmp_path / "seg.pt")


class ColourSegmenter:
    """Stands in for a segmenter that finds every object and its colour but calls each one a
    metal cylinder, the failure the classifier is for."""

    name = "unet"

    def to(self, device):
        return self

    def masks(self, frames, device, batch_size=16):
        frames = np.asarray(frames).astype(np.float32)
        distance = ((frames[..., None, :] - COLOR_RGB[None, None, None]) ** 2).sum(-1)
        colour = distance.argmin(-1)
        found = distance.min(-1) < 10
        return np.where(found, 2 * 16 + colour + 1, 0).astype(np.uint8)

    def sequence_masks(self, clips, device, batch_size=16):
        # a per-frame segmenter: each frame of each clip alone (Segmenter.sequence_masks)
        clips = np.asarray(clips)
        return self.masks(clips.reshape(-1, *clips.shape[2:]), device, batch_size).reshape(clips.shape[:4])


def test_segment_and_pseudo_label_repaint_with_the_classifier(drawn, tmp_path, monkeypatch, capsys):
    folder, val = drawn
    monkeypatch.setattr(segmenters, "load", lambda path, score_threshold=None, temporal=None: (ColourSegmenter(), {}))
    truth = np.stack([m for _, m in val])
    classifier = folder / "classifier.pt"
    ok("segment", "--model", "any.pt", "--root", folder / "root", "--out-val-oracle", tmp_path / "plain.npy")
    ok("segment", "--model", "any.pt", "--root", folder / "root", "--out-val-oracle", tmp_path / "classified.npy",
       "--object-classifier", classifier)
    plain, _ = load_array(tmp_path / "plain.npy")
    classified, meta = load_array(tmp_path / "classified.npy")
    assert meta["object_classifier"] == str(classifier) and meta["object_vote"] is False
    np.testing.assert_array_equal(classified != 0, plain != 0)  # the objects as found, colours kept
    np.testing.assert_array_equal((classified.astype(int) - 1) % 8, (plain.astype(int) - 1) % 8)
    assert (plain[truth != 0] == truth[truth != 0]).mean() == 0
    assert (classified[truth != 0] == truth[truth != 0]).mean() >= 0.9

    # pseudo-label: the same repaint per frame of a frame cache
    clips = np.repeat(np.stack([f for f, _ in val])[:, None], 3, axis=1)  # 8 videos of 3 frames
    save_array(tmp_path / "cache.npy", clips, list(range(8)), split="val")
    ok("pseudo-label", "--model", "any.pt", "--cache", tmp_path / "cache.npy", "--out", tmp_path / "pseudo.npy",
       "--frames", "3", "--object-classifier", classifier, "--track-vote")
    pseudo, meta = load_array(tmp_path / "pseudo.npy")
    assert meta["object_classifier"] == str(classifier) and meta["track_vote"] is True
    for k in range(3):
        np.testing.assert_array_equal(pseudo[:, k], classified)

    # one way of deciding an object's class at a time; a model file of the wrong kind is named
    assert cli.main(["segment", "--model", "any.pt", "--root", str(folder / "root"), "--out-val-oracle",
                     str(tmp_path / "x.npy"), "--object-vote", "--object-classifier", str(classifier)]) == 2
    assert "--object-vote and --object-classifier" in capsys.readouterr().err
    torch.save({"model": {}, "fingerprint": "x", "segmenter": "unet", "model_config": {}}, tmp_path / "seg.pt")
    assert cli.main(["pseudo-label", "--model", "any.pt", "--cache", str(tmp_path / "cache.npy"), "--out",
                     str(tmp_path / "y.npy"), "--frames", "3", "--object-classifier", str(tmp_path / "seg.pt")]) == 2
    assert "seg.pt: not an object classifier" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.npy").exists()


def test_a_rerun_resumes_and_a_truncated_checkpoint_is_moved_aside(drawn, tmp_path, caplog):
    folder, _ = drawn
    common = ["train-object-classifier", "--root", folder / "root", "--seg-frames", folder / "segframes",
              "--metrics", tmp_path / "m.csv", "--checkpoints", tmp_path / "ck", "--crop-size", "16",
              "--width", "4", "--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--weight-decay", "0.0",
              "--threads", "1"]
    ok(*common, "--out", tmp_path / "a.pt")
    (checkpoint,) = (tmp_path / "ck").glob("*/last.pt")
    ok(*common, "--out", tmp_path / "b.pt")  # resumes the finished run: the same weights
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    ok(*common, "--out", tmp_path / "c.pt")
    assert checkpoint.with_name("last.pt.corrupt").exists()
    c = torch.load(tmp_path / "c.pt")
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])  # trained afresh, deterministically
