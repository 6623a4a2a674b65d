"""Stage 5 scoring and figures: the metric matches torchmetrics, is accumulated over the
split, counts classes the way the report says, and rejects masks of the wrong videos."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index

from futureseg import cli
from futureseg.core import data
from futureseg.evaluate import report_figures, score
from futureseg.core.errors import FuturesegError
from futureseg.core.io import save_array

FIRST_VAL_ID = 1000


def write_val_split(root: Path, masks: np.ndarray, first_id: int = FIRST_VAL_ID) -> list[int]:
    """A val split whose videos have the given (N, 22, H, W) masks; frames are the masks
    colourised, so they are valid RGB PNGs of the right size."""
    ids = []
    table = report_figures.palette()
    for k, mask in enumerate(masks):
        video_id = first_id + k
        folder = root / "val" / f"video_{video_id:05d}"
        folder.mkdir(parents=True)
        for index in range(data.N_FRAMES):
            Image.fromarray(table[mask[index]]).save(folder / f"image_{index}.png")
        np.save(folder / "mask.npy", mask.astype(np.uint8))
        ids.append(video_id)
    return ids


def full_masks(frame21: np.ndarray, frame10: np.ndarray | None = None) -> np.ndarray:
    """(N, 22, H, W) masks whose frame 21 is given (and frame 10, default = frame 21)."""
    n, h, w = frame21.shape
    masks = np.zeros((n, data.N_FRAMES, h, w), np.uint8)
    masks[:] = (frame21 if frame10 is None else frame10)[:, None]
    masks[:, data.TARGET_FRAME] = frame21
    return masks


def jaccard(pred, target, average):
    return float(multiclass_jaccard_index(torch.as_tensor(pred).long(), torch.as_tensor(target).long(), data.NUM_CLASSES, average=average))


@pytest.fixture
def random_case(tmp_path):
    """5 val videos of random masks with a few dominant classes, pipeline and oracle guesses."""
    rng = np.random.default_rng(0)
    n, h, w = 5, 12, 16
    classes = np.array([0, 0, 0, 3, 7, 17, 30, 48])
    frame21 = classes[rng.integers(0, len(classes), (n, h, w))].astype(np.uint8)
    frame10 = classes[rng.integers(0, len(classes), (n, h, w))].astype(np.uint8)
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(frame21, frame10))
    pred = np.where(rng.random((n, h, w)) < 0.5, frame21, classes[rng.integers(0, len(classes), (n, h, w))]).astype(np.uint8)
    oracle = np.where(rng.random((n, h, w)) < 0.9, frame21, 5).astype(np.uint8)
    save_array(tmp_path / "masks_val.npy", pred, ids)
    save_array(tmp_path / "masks_val_oracle.npy", oracle, ids)
    return root, tmp_path, frame21, frame10, pred, oracle


def test_scores_equal_direct_torchmetrics_calls(random_case):
    root, folder, frame21, frame10, pred, oracle = random_case
    scores = score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=folder / "masks_val_oracle.npy", batch_size=2)
    assert json.loads((folder / "scores.json").read_text()) == scores
    assert scores["n_videos"] == 5
    for method, guess in (("pipeline", pred), ("oracle", oracle), ("copy_last", frame10)):
        assert scores[method]["iou"] == pytest.approx(jaccard(guess, frame21, "macro"), abs=1e-6)
        assert scores[method]["iou_micro"] == pytest.approx(jaccard(guess, frame21, "micro"), abs=1e-6)
        acc = float(multiclass_accuracy(torch.as_tensor(guess).long(), torch.as_tensor(frame21).long(), data.NUM_CLASSES, average="micro"))
        assert scores[method]["pixel_acc"] == pytest.approx(acc, abs=1e-6)
        assert scores[method]["pixel_acc"] == pytest.approx(float((guess == frame21).mean()), abs=1e-6)
    # the three differ, so the test would notice a method scored on the wrong guess
    assert len({round(scores[m]["iou"], 6) for m in score.METHODS}) == 3


@pytest.fixture
def hand_case(tmp_path):
    """One 2x4 video where macro and micro IoU differ and 46 classes are absent.

    target   0 0 0 0    pred   0 0 0 0
             0 0 1 1           0 1 1 2
    class 0: 5/6, class 1: 1/3, class 2 (predicted only): 0 → macro 7/18 over 3 classes;
    micro: 6 right of 8 → 6 / (6 + 2 + 2) = 0.6; pixel acc 0.75.
    """
    target = np.array([[[0, 0, 0, 0], [0, 0, 1, 1]]], np.uint8)
    pred = np.array([[[0, 0, 0, 0], [0, 1, 1, 2]]], np.uint8)
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(target))
    save_array(tmp_path / "masks_val.npy", pred, ids)
    save_array(tmp_path / "masks_val_oracle.npy", target, ids)
    return root, tmp_path


def test_macro_and_micro_on_a_hand_made_case(hand_case):
    root, folder = hand_case
    scores = score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=folder / "masks_val_oracle.npy")
    pipeline = scores["pipeline"]
    assert pipeline["iou"] == pytest.approx(7 / 18, abs=1e-6)
    assert pipeline["iou_micro"] == pytest.approx(0.6, abs=1e-6)
    assert pipeline["pixel_acc"] == pytest.approx(0.75, abs=1e-6)
    assert pipeline["n_classes_counted"] == 3
    assert scores["oracle"]["iou"] == pytest.approx(1.0) and scores["copy_last"]["iou"] == pytest.approx(1.0)


def test_per_class_csv_marks_absent_classes(hand_case):
    root, folder = hand_case
    score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=folder / "masks_val_oracle.npy", per_class=folder / "per_class.csv")
    with open(folder / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == data.NUM_CLASSES
    assert list(rows[0]) == ["class_id", "class_name", "iou_pipeline", "iou_oracle", "iou_copy_last", "support_pixels"]
    by_id = {int(r["class_id"]): r for r in rows}
    assert float(by_id[0]["iou_pipeline"]) == pytest.approx(5 / 6, abs=1e-6)
    assert float(by_id[1]["iou_pipeline"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(by_id[2]["iou_pipeline"]) == 0.0  # predicted but not true: a real 0, counted
    assert by_id[2]["iou_oracle"] == "absent"  # the oracle neither predicts nor meets class 2
    assert all(by_id[c]["iou_pipeline"] == "absent" for c in range(3, data.NUM_CLASSES))
    assert [int(by_id[c]["support_pixels"]) for c in range(4)] == [6, 2, 0, 0]
    assert by_id[5]["class_name"] == score.class_name(5) != ""


def test_scores_accumulate_over_the_split_not_per_batch(tmp_path):
    """Video A: all background, predicted right (macro 1.0 alone). Video B: half class 1,
    predicted all background (class 0 4/8, class 1 0 → 0.25 alone). Mean of the two
    batches: 0.625; the split as a whole: class 0 12/16, class 1 0 → 0.375."""
    target = np.zeros((2, 2, 4), np.uint8)
    target[1, 1] = 1
    pred = np.zeros_like(target)
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(target))
    save_array(tmp_path / "masks_val.npy", pred, ids)
    per_batch = np.mean([jaccard(pred[i : i + 1], target[i : i + 1], "macro") for i in range(2)])
    assert per_batch == pytest.approx(0.625)
    for batch_size in (1, 2):
        scores = score.run(root, tmp_path / "masks_val.npy", tmp_path / "scores.json", batch_size=batch_size)
        assert scores["pipeline"]["iou"] == pytest.approx(0.375, abs=1e-6)
    assert "oracle" not in scores  # --oracle is optional


@pytest.mark.parametrize(
    "ids_of, shape_of, message",
    [
        (lambda ids: [*ids[:-1], 99999], None, "do not match the val split's ids"),
        (lambda ids: ids[::-1], None, "different order"),
        (None, lambda s: (s[0], s[1] + 1, s[2]), "expected"),
    ],
)
def test_masks_of_other_videos_or_shape_are_refused(random_case, ids_of, shape_of, message):
    root, folder, frame21, _, pred, _ = random_case
    ids = [v.id for v in data.list_videos(root, "val")]
    bad = folder / "bad_masks.npy"
    array = np.zeros(shape_of(pred.shape), np.uint8) if shape_of else pred
    save_array(bad, array, ids_of(ids) if ids_of else ids)
    with pytest.raises(FuturesegError, match=re.escape(str(bad)) + ".*" + re.escape(message)):
        score.run(root, bad, folder / "scores.json")
    # the oracle file is checked the same way
    with pytest.raises(FuturesegError, match=re.escape(str(bad))):
        score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=bad)
    assert not (folder / "scores.json").exists()


def test_missing_sidecar_and_out_of_range_ids_are_named(random_case):
    root, folder, *_ = random_case
    (folder / "masks_val_oracle.json").unlink()
    with pytest.raises(FuturesegError, match=re.escape(str(folder / "masks_val_oracle.json")) + ": the ids sidecar"):
        score.run(root, folder / "masks_val.npy", folder / "s.json", oracle=folder / "masks_val_oracle.npy")
    ids = [v.id for v in data.list_videos(root, "val")]
    bad = np.full((5, 12, 16), 49, np.uint8)
    save_array(folder / "bad.npy", bad, ids)
    with pytest.raises(FuturesegError, match=re.escape(str(folder / "bad.npy")) + ".*class ids 49"):
        score.run(root, folder / "bad.npy", folder / "s.json")


def assert_png(path: Path, min_bytes: int = 5000) -> tuple[int, int]:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_score_writes_plots_and_confusion(random_case):
    root, folder, frame21, _, pred, _ = random_case
    score.run(
        root,
        folder / "masks_val.npy",
        folder / "scores.json",
        oracle=folder / "masks_val_oracle.npy",
        confusion=folder / "confusion.npy",
        plot_per_class=folder / "per_class_iou.png",
        plot_confusion=folder / "confusion.png",
    )
    confusion = np.load(folder / "confusion.npy")
    expected = np.zeros((data.NUM_CLASSES, data.NUM_CLASSES), np.int64)
    np.add.at(expected, (frame21.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(confusion, expected)  # rows = true class
    assert_png(folder / "per_class_iou.png")
    assert_png(folder / "confusion.png")
    assert not list(folder.glob(".*.tmp"))


def test_most_confused_picks_the_off_diagonal_mass():
    confusion = np.diag(np.full(data.NUM_CLASSES, 100))
    confusion[4, 9] = 50
    confusion[20, 4] = 30
    confusion[33, 33] = 10_000  # large but never confused
    assert report_figures.most_confused(confusion, top=3) == [4, 9, 20]
    assert report_figures.most_confused(confusion, top=2) == [4, 9]


def test_training_curves_and_val_examples(tmp_path, random_case):
    root, folder, frame21, _, pred, _ = random_case
    predictor, segmenter = tmp_path / "predictor", tmp_path / "segmenter"
    predictor.mkdir()
    segmenter.mkdir()
    (predictor / "metrics.csv").write_text("step,train_loss,val_psnr_f21,copy_last_psnr_f21,lr\n"
                                           + "".join(f"{s},{1 / s},{20 + s},20.5,{1e-3}\n" for s in range(1, 8)))
    (segmenter / "metrics.csv").write_text("step,loss,val_oracle_iou\n1,2.0,0.1\n2,1.5,\n3,1.0,0.3\n")
    assert_png(report_figures.training_curves({"predictor": predictor / "metrics.csv", "segmenter": segmenter / "metrics.csv"},
                                              tmp_path / "curves.png"))

    ids = [v.id for v in data.list_videos(root, "val")]
    frames = np.zeros((5, 2, 12, 16, 3), np.uint8)
    frames[:, 1] = report_figures.colourise(frame21)  # the predicted frame 21 sits at column 1
    save_array(folder / "frames_val.npy", frames, ids, frame_indices=[20, 21])
    width, height = assert_png(report_figures.val_examples(root, {"frames": folder / "masks_val.npy"}, tmp_path / "examples.png", n=3,
                                                           frames=folder / "frames_val.npy"))
    assert width > height  # 5 columns, 3 rows of wide frames

    save_array(folder / "frames_20.npy", frames[:, :1], ids, frame_indices=[20])
    with pytest.raises(FuturesegError, match=re.escape(str(folder / "frames_20.npy")) + ".*frame 21"):
        report_figures.val_examples(root, {"frames": folder / "masks_val.npy"}, tmp_path / "x.png", frames=folder / "frames_20.npy")


def test_palette_has_49_distinct_colours():
    table = report_figures.palette()
    assert table.shape == (data.NUM_CLASSES, 3) and table.dtype == np.uint8
    assert len({tuple(c) for c in table}) == data.NUM_CLASSES


def run_cli(monkeypatch, argv):
    """The real `futureseg` entry point with this stage's verbs registered."""
    monkeypatch.setattr(cli, "VERB_MODULES", tuple(m for m in cli.VERB_MODULES if m.startswith("evaluate.")))
    return cli.main(argv)


def test_score_and_report_figures_through_the_cli(monkeypatch, capsys, hand_case, tmp_path):
    root, folder = hand_case
    argv = ["score", "--root", str(root), "--pred", str(folder / "masks_val.npy"), "--out", str(folder / "cli.json")]
    assert run_cli(monkeypatch, argv) == 0
    assert json.loads((folder / "cli.json").read_text())["pipeline"]["iou"] == pytest.approx(7 / 18, abs=1e-6)
    assert "pipeline  IoU 0.3889" in capsys.readouterr().out
    argv = ["score", "--root", str(root), "--pred", str(folder / "nowhere.npy"), "--out", str(folder / "cli2.json")]
    assert run_cli(monkeypatch, argv) == 2
    assert str(folder / "nowhere.npy") in capsys.readouterr().err
    # report-figures needs its options in complete groups
    assert run_cli(monkeypatch, ["report-figures", "--metrics", "direct=m.csv"]) == 2
    assert "--metrics and --curves go together" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("step,train_loss,val_iou\n1,1.0,0.1\n2,0.5,0.2\n")
    assert run_cli(monkeypatch, ["report-figures", "--metrics", f"direct={tmp_path / 'm.csv'}", "--curves", str(tmp_path / "c.png")]) == 0
    assert_png(tmp_path / "c.png", min_bytes=2000)


def test_score_writes_the_three_way_table_as_html(random_case):
    root, folder, *_ = random_case
    scores = score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=folder / "masks_val_oracle.npy",
                       table=folder / "scores.html")
    page = (folder / "scores.html").read_text()
    main_table, factor_table = page.split("Which factor fails")
    rows = re.findall(r"<tr><th scope=\"row\">(.*?)</th>((?:<td>.*?</td>)+)</tr>", main_table)
    assert [label.split(" ")[0] for label, _ in rows] == ["pipeline", "oracle", "copy-last"]
    for (_, cells), method in zip(rows, score.METHODS):
        values = re.findall(r"<td>(.*?)</td>", cells)
        s = scores[method]
        assert values == [*(f"{s[k]:.4f}" for k in ("iou", "boundary_f", "j_and_f", "iou_micro", "pixel_acc")),
                          str(s["n_classes_counted"])]
    factor_rows = re.findall(r"<tr><th scope=\"row\">(.*?)</th>((?:<td>.*?</td>)+)</tr>", factor_table)
    for (_, cells), method in zip(factor_rows, score.METHODS):
        s = scores[method]
        expected = [s["foreground_iou"], *(s["factor_accuracy"][f] for f in score.FACTORS)]
        assert re.findall(r"<td>(.*?)</td>", cells) == [f"{v:.4f}" for v in expected]
    assert len(factor_rows) == 3 and "5 val videos" in page


def _gif_panels(animation, n_panels, scale):
    """Split (T, h, w, 3) animation frames into their panels below the caption strip."""
    panel_w = (animation.shape[2] + 2 * scale) // n_panels - 2 * scale
    return [animation[:, report_figures.GIF_CAPTION_PX :, i * (panel_w + 2 * scale) : i * (panel_w + 2 * scale) + panel_w] for i in range(n_panels)]


def test_val_animations_show_inputs_then_true_beside_predicted_and_the_masks(random_case, tmp_path):
    import base64

    import imageio.v3 as iio

    root, folder, frame21, frame10, pred, _ = random_case
    videos = data.list_videos(root, "val")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 2, 12, 16, 3), np.uint8)  # frames 15 and 21 kept
    save_array(folder / "frames_val.npy", frames, [v.id for v in videos], frame_indices=[15, 21])
    out = report_figures.val_animations(root, {"frames": folder / "masks_val.npy"}, tmp_path / "animations.html", n=2,
                                        frames=folder / "frames_val.npy")
    page = out.read_text()
    gifs = re.findall(r'<img alt="val video (\d+)" src="data:image/gif;base64,([^"]+)">', page)
    assert [int(i) for i, _ in gifs] == [videos[0].id, videos[4].id]  # spread over the split
    animation = iio.imread(base64.b64decode(gifs[1][1]), index=None, extension=".gif")
    scale = 10  # 12-pixel frames are scaled to at least 120
    # animated: true video, predicted frames, true masks; held still: true mask 21, route frames' mask 21
    assert animation.shape == (22, 12 * scale + report_figures.GIF_CAPTION_PX, 5 * 16 * scale + 4 * 2 * scale, 3)

    def up(image):
        return np.asarray(image).repeat(scale, 0).repeat(scale, 1)

    true, predicted, true_masks, true_mask, predicted_mask = _gif_panels(animation, 5, scale)
    true_frames = data.read_frames(videos[4])
    # GIF frames are palette images: colours may move a little, so compare closely, not exactly
    def close(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean() < 8

    assert close(true[0], up(true_frames[0])) and close(predicted[0], up(true_frames[0]))
    assert close(true[21], up(true_frames[21])) and close(predicted[21], up(frames[4, 1]))
    assert close(predicted[15], up(frames[4, 0]))
    assert (np.abs(predicted[12].astype(int) - report_figures.NOT_KEPT_GREY) < 8).all(), "frame 12 was not kept: grey"
    assert close(predicted_mask[3], up(report_figures.colourise(pred[4]))) and close(true_mask[20], up(report_figures.colourise(frame21[4])))
    assert close(true_masks[3], up(report_figures.colourise(frame10[4]))) and close(true_masks[21], up(report_figures.colourise(frame21[4])))
    assert not close(predicted[21], up(true_frames[21]))
    assert not list(tmp_path.glob(".*.tmp"))


def test_foreground_iou_and_factor_accuracy_on_a_hand_made_case(tmp_path):
    # ids: 2 = metal red cube, 18 = metal red sphere (shape wrong), 10 = rubber red cube
    # (material wrong), 3 = metal blue cube (colour wrong)
    target = np.array([[[0, 2, 2, 2, 2, 0]]], np.uint8)
    pred = np.array([[[2, 2, 18, 10, 3, 0]]], np.uint8)
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(target, np.zeros_like(target)))
    save_array(tmp_path / "routes.npy", pred, ids)
    save_array(tmp_path / "motion_truth.npy", target, ids)
    scores = score.run(root, None, tmp_path / "scores.json", routes={"motion": tmp_path / "routes.npy"},
                       motion_truth=tmp_path / "motion_truth.npy", table=tmp_path / "scores.html")
    route = scores["routes"]["motion"]
    # objects: predicted at 5 pixels, true at 4, both at 4 → 4 / 5; of those 4, one wrong per factor
    assert route["foreground_iou"] == pytest.approx(0.8)
    assert route["factor_accuracy"] == pytest.approx({"shape": 0.75, "material": 0.75, "colour": 0.75})
    assert scores["motion_truth"]["iou"] == pytest.approx(1.0) and scores["motion_truth"]["foreground_iou"] == 1.0
    # copy-last (frame 10 all background) finds no object: no factor to judge
    assert scores["copy_last"]["foreground_iou"] == 0.0
    assert scores["copy_last"]["factor_accuracy"] == {"shape": None, "material": None, "colour": None}
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
    page = (tmp_path / "scores.html").read_text()
    assert "motion truth" in page and "route motion" in page


def test_diagnostics_of_a_random_case_match_a_pixel_count(random_case):
    root, folder, frame21, frame10, pred, oracle = random_case
    scores = score.run(root, folder / "masks_val.npy", folder / "scores.json", oracle=folder / "masks_val_oracle.npy")
    both = (pred > 0) & (frame21 > 0)
    assert scores["pipeline"]["foreground_iou"] == pytest.approx(both.sum() / ((pred > 0) | (frame21 > 0)).sum())
    p, t = pred[both].astype(int) - 1, frame21[both].astype(int) - 1
    for factor, part in (("shape", lambda k: k // 16), ("material", lambda k: (k // 8) % 2), ("colour", lambda k: k % 8)):
        assert scores["pipeline"]["factor_accuracy"][factor] == pytest.approx((part(p) == part(t)).mean()), factor


@pytest.fixture
def motion_case(tmp_path):
    """Two 32×48 val videos, each a 10×10 object on background (video 0: class 2, metal red
    cube; video 1: class 48, rubber yellow cylinder), frame 10 = frame 21. Route motion's
    masks: video 0 gets 50 pixels right, 25 as class 18 (metal red sphere: shape wrong), 25
    missed, and 50 false pixels of class 10 on the background; video 1 all 100 as class 47
    (rubber purple cylinder: colour wrong). Route frames is the truth. motion_truth = the truth."""
    h, w = 32, 48
    target = np.zeros((2, h, w), np.uint8)
    target[0, 0:10, 0:10] = 2
    target[1, 5:15, 20:30] = 48
    pred = np.zeros_like(target)
    pred[0, 0:5, 0:10] = 2
    pred[0, 5:10, 0:5] = 18
    pred[0, 20:25, 30:40] = 10
    pred[1, 5:15, 20:30] = 47
    root = tmp_path / "dataset"
    ids = write_val_split(root, full_masks(target))
    save_array(tmp_path / "motion.npy", pred, ids)
    save_array(tmp_path / "frames.npy", target, ids)
    save_array(tmp_path / "masks_val_truth.npy", target, ids)
    # sequences of frames 11…21: route motion's flips between two whole-frame classes every
    # frame (each pair's macro IoU 0), route frames' never changes (1)
    flip = np.zeros((2, 11, h, w), np.uint8)
    flip[:, 0::2], flip[:, 1::2] = 3, 4
    save_array(tmp_path / "motion_sequence.npy", flip, ids)
    save_array(tmp_path / "frames_sequence.npy", np.repeat(target[:, None], 11, axis=1), ids)
    return root, tmp_path


def test_diagnostics_motion_truth_and_sequences_of_any_route_through_the_cli(monkeypatch, motion_case):
    root, folder = motion_case
    plotted = {}
    monkeypatch.setattr(report_figures, "per_class_iou", lambda per_method, *args: plotted.update(per_method))
    argv = ["score", "--root", str(root), "--route", f"frames={folder / 'frames.npy'}",
            "--route", f"motion={folder / 'motion.npy'}", "--motion-truth", str(folder / "masks_val_truth.npy"),
            "--sequence", f"motion={folder / 'motion_sequence.npy'}", "--sequence", f"frames={folder / 'frames_sequence.npy'}",
            "--submit", "motion", "--out", str(folder / "scores.json"), "--table", str(folder / "scores.html"),
            "--per-class", str(folder / "per_class.csv"), "--plot-per-class", str(folder / "per_class.png")]
    assert run_cli(monkeypatch, argv) == 0
    scores = json.loads((folder / "scores.json").read_text())
    # objects: 175 pixels that both call an object, of a union of 250; of the 175, the shape
    # is wrong on video 0's 25 sphere pixels, the colour on video 1's 100
    motion = scores["routes"]["motion"]
    assert motion["foreground_iou"] == pytest.approx(175 / 250)
    assert motion["factor_accuracy"] == pytest.approx({"shape": 150 / 175, "material": 1.0, "colour": 75 / 175})
    assert scores["pipeline"] == motion and scores["submitted_route"] == "motion"
    for entry in (scores["routes"]["frames"], scores["motion_truth"], scores["copy_last"]):
        assert entry["iou"] == pytest.approx(1.0) and entry["foreground_iou"] == pytest.approx(1.0)
        assert entry["factor_accuracy"] == {"shape": 1.0, "material": 1.0, "colour": 1.0}
    assert set(scores["motion_truth"]) == set(score.SUMMARY_KEYS)
    # every route and reference carries DAVIS's boundary F and J&F; route frames is the truth
    for name, entry in {**scores["routes"], **{m: scores[m] for m in ("pipeline", "motion_truth", "copy_last")}}.items():
        assert set(entry) == set(score.SUMMARY_KEYS), name
        assert entry["j_and_f"] == pytest.approx((entry["iou"] + entry["boundary_f"]) / 2), name
    assert scores["routes"]["frames"]["boundary_f"] == 1.0 > motion["boundary_f"]
    assert scores["inputs"]["motion_truth"] == str(folder / "masks_val_truth.npy")
    assert scores["temporal_iou"] == pytest.approx({"motion": 0.0, "frames": 1.0, "true_masks": 1.0})
    # temporal stability T beside it: route motion's classes are never in two consecutive
    # frames (no pair to match: None); route frames' and the truth's objects never move (0)
    assert scores["temporal_stability"] == {"motion": None, "frames": 0.0, "true_masks": 0.0}
    # motion truth beside the oracle's place: after the routes, before copy-last
    with open(folder / "per_class.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[2:-1] == ["iou_frames", "iou_motion", "iou_motion_truth", "iou_copy_last"]
    assert list(plotted) == ["frames", "motion", "motion_truth", "copy_last"]
    page = (folder / "scores.html").read_text()
    main_table, factor_table = page.split("Which factor fails")
    assert "motion truth" in main_table and "motion truth" in factor_table
    assert f"<td>{175 / 250:.4f}</td><td>{150 / 175:.4f}</td><td>1.0000</td><td>{75 / 175:.4f}</td>" in factor_table
    assert "<th scope=\"row\">motion</th><td>0.0000</td><td>–</td>" in page  # its temporal IoU and T
    assert "<th>temporal IoU</th><th>temporal stability T</th>" in page


def test_pseudo_labels_of_the_input_frames_are_scored_beside_the_truths_temporal_iou(monkeypatch, motion_case):
    # The segmenter's masks of frames 0…10: the truth on even frames, nothing on odd ones (an
    # object that flickers). Frames 0…10 of motion_case are the truth's frame 21, a 100-pixel
    # object a video on 1,536 pixels.
    root, folder = motion_case
    truth = np.stack([data.read_mask(v) for v in data.list_videos(root, "val")])[:, : data.N_INPUT]
    pseudo = truth.copy()
    pseudo[:, 1::2] = 0
    save_array(folder / "pseudo_val.npy", pseudo, [1000, 1001], frame_indices=list(range(data.N_INPUT)))
    argv = ["score", "--root", str(root), "--route", f"motion={folder / 'motion.npy'}",
            "--pseudo-labels", str(folder / "pseudo_val.npy"), "--out", str(folder / "scores.json"),
            "--table", str(folder / "scores.html")]
    assert run_cli(monkeypatch, argv) == 0
    scores = json.loads((folder / "scores.json").read_text())
    # IoU over the 22 frames: each object found on 6 frames of 11; the background gains the
    # 5 frames' 2 missed objects
    background = 2 * 11 * 1436 / (2 * 11 * 1436 + 2 * 5 * 100)
    # each pair of consecutive frames: one with the objects, one without: objects 0, background 1436/1536
    pseudo_labels = scores["pseudo_labels"]
    assert pseudo_labels.pop("frames") == list(range(11))
    # temporal stability T: no object of the pseudo-labels is in two consecutive frames, so
    # there is no pair to match (None); the truth's objects never move (T 0)
    assert (pseudo_labels.pop("temporal_stability"), pseudo_labels.pop("true_temporal_stability")) == (None, 0.0)
    assert pseudo_labels == pytest.approx({"iou": (2 * 600 / 1100 + background) / 3,
                                           "temporal_iou": 1436 / 1536 / 3, "true_temporal_iou": 1.0})
    assert scores["inputs"]["pseudo_labels"] == str(folder / "pseudo_val.npy")
    assert (f"temporal IoU {1436 / 1536 / 3:.4f} (the true masks': 1.0000), temporal stability T – (the true "
            "masks': 0.0000)") in (folder / "scores.html").read_text()

    # the frames 11…21 of a split, or another split's videos, are refused by name
    save_array(folder / "late.npy", pseudo, [1000, 1001], frame_indices=list(range(11, 22)))
    with pytest.raises(FuturesegError, match=r"late\.npy: pseudo-labels of frames \[11, .*expected 0…10"):
        score.pseudo_label_scores(root, folder / "late.npy")
    save_array(folder / "other.npy", pseudo, [7, 8])
    with pytest.raises(FuturesegError, match=r"other\.npy: ids in its sidecar do not match"):
        score.pseudo_label_scores(root, folder / "other.npy")
    save_array(folder / "short.npy", pseudo[:, :5], [1000, 1001])
    with pytest.raises(FuturesegError, match=r"short\.npy: pseudo-labels have shape \(2, 5, 32, 48\)"):
        score.pseudo_label_scores(root, folder / "short.npy")


def test_motion_truth_is_optional_and_checked_like_the_oracle(motion_case):
    root, folder = motion_case
    routes = {"motion": folder / "motion.npy"}
    scores = score.run(root, None, folder / "scores.json", routes=routes, table=folder / "scores.html")
    assert "motion_truth" not in scores and "motion truth" not in (folder / "scores.html").read_text()
    save_array(folder / "other.npy", np.load(folder / "motion.npy"), [7, 8])
    with pytest.raises(FuturesegError, match="ids in other.json do not match"):
        score.run(root, None, folder / "scores.json", routes=routes, motion_truth=folder / "other.npy")
    with pytest.raises(score.ConfigError, match="'motion_truth' names a reference"):
        score.run(root, None, folder / "scores.json", routes={"motion_truth": folder / "motion.npy"})


def test_dynamics_truth_and_placement_oracle_sit_in_reading_order(motion_case):
    # a user reads, side by side: segmentation (oracle), the rule (motion_truth), the learnt
    # motion (dynamics_truth), the ceiling of moving what was seen (placement_oracle)
    root, folder = motion_case
    save_array(folder / "dynamics_truth.npy", np.load(folder / "motion.npy"), json.loads(
        (folder / "motion.json").read_text())["ids"])
    scores = score.run(root, None, folder / "scores.json", routes={"motion": folder / "motion.npy"},
                       oracle=folder / "frames.npy", motion_truth=folder / "masks_val_truth.npy",
                       dynamics_truth=folder / "dynamics_truth.npy", placement_oracle=folder / "masks_val_truth.npy",
                       table=folder / "scores.html", per_class=folder / "per_class.csv")
    assert scores["dynamics_truth"]["iou"] == scores["routes"]["motion"]["iou"] < 1.0
    assert scores["placement_oracle"]["iou"] == pytest.approx(1.0)
    assert scores["inputs"]["placement_oracle"] == str(folder / "masks_val_truth.npy")
    keys = [key for key, _, _ in score.table_rows(scores)]
    assert keys == ["motion", "oracle", "motion_truth", "dynamics_truth", "placement_oracle", "copy_last"]
    page = (folder / "scores.html").read_text()
    assert page.index("motion truth") < page.index("dynamics truth") < page.index("placement oracle")
    with open(folder / "per_class.csv", newline="") as f:
        assert "iou_placement_oracle" in next(csv.reader(f))
    with pytest.raises(score.ConfigError, match="'placement_oracle' names a reference"):
        score.run(root, None, folder / "scores.json", routes={"placement_oracle": folder / "motion.npy"})
