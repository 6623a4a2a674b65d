"""The report's example sheet and animations: every route's mask of frame 21 beside the
truth, the submitted route marked, the masks of frames 11…21 animated for the routes that
forecast them; built from any set of routes; inputs checked before anything is written."""

import base64
import json
import re

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from futureseg import cli
from futureseg.core import data
from futureseg.core.errors import FuturesegError
from futureseg.core.io import save_array
from futureseg.evaluate import report_figures as rf

H, W = 32, 48
IDS = [1000, 1001]
SCALE = 4  # 32-pixel frames are scaled to at least 120 in the GIFs


@pytest.fixture
def case(tmp_path):
    """2 val videos of 32x48: a square moving right (class 3 + video), a bar moving left
    (class 17); routes masks and motion with their sequences of frames 11…21, route direct
    with its mask of frame 21 only, route frames with its predicted frames; masks submitted."""
    table = rf.palette()
    truth = np.zeros((len(IDS), data.N_FRAMES, H, W), np.uint8)
    for k, video_id in enumerate(IDS):
        folder = tmp_path / "dataset" / "val" / f"video_{video_id:05d}"
        folder.mkdir(parents=True)
        for t in range(data.N_FRAMES):
            truth[k, t, 8:18, 4 + t + 10 * k : 12 + t + 10 * k] = 3 + k
            truth[k, t, 20:28, 40 - t : 46 - t] = 17
            frame = table[truth[k, t]].copy()
            frame[truth[k, t] == 0] = (120, 120, 130)
            Image.fromarray(frame).save(folder / f"image_{t}.png")
        np.save(folder / "mask.npy", truth[k])
    future = list(range(data.N_INPUT, data.N_FRAMES))
    masks = truth[:, data.N_INPUT :].copy()
    masks[..., :3] = 5  # a strip of class 5 on the left: tells route masks from the truth
    motion = np.roll(truth[:, data.N_INPUT :], 2, axis=3)
    direct = np.zeros((len(IDS), H, W), np.uint8)
    direct[:, 10:20, 10:20] = 30
    predicted = (table[truth[:, data.N_INPUT :]] // 2 + 60).astype(np.uint8)  # (N, 11, H, W, 3)
    files = {
        "masks": masks[:, -1], "motion": motion[:, -1], "direct": direct, "frames": np.zeros((len(IDS), H, W), np.uint8),
    }
    for name, array in files.items():
        save_array(tmp_path / f"{name}_val.npy", array, IDS, frame_index=data.TARGET_FRAME)
    save_array(tmp_path / "masks_sequence.npy", masks, IDS, frame_indices=future)
    save_array(tmp_path / "motion_sequence.npy", motion, IDS, frame_indices=future)
    save_array(tmp_path / "frames_predicted.npy", predicted, IDS, frame_indices=future)
    (tmp_path / "scores.json").write_text(json.dumps({"submitted_route": "masks", "routes": {}}))
    return tmp_path, truth, masks, motion, direct, predicted


def routes_of(folder, *names):
    return {name: folder / f"{name}_val.npy" for name in names}


def sequences_of(folder, *names):
    return {name: folder / f"{name}_sequence.npy" for name in names}


def gifs(page):
    found = re.findall(r'<img alt="val video (\d+)" src="data:image/gif;base64,([^"]+)">', page)
    return {int(i): iio.imread(base64.b64decode(gif), index=None, extension=".gif") for i, gif in found}


def panels(animation, n_panels):
    """The panels of (T, h, w, 3) GIF frames, below the caption strip."""
    width, gap = W * SCALE, 2 * SCALE
    assert animation.shape[1:] == (H * SCALE + rf.GIF_CAPTION_PX, n_panels * (width + gap) - gap, 3)
    return [animation[:, rf.GIF_CAPTION_PX :, i * (width + gap) : i * (width + gap) + width] for i in range(n_panels)]


def up(image):
    return np.asarray(image).repeat(SCALE, 0).repeat(SCALE, 1)


def close(a, b):
    # GIF frames are palette images: colours may move a little
    return np.abs(a.astype(int) - up(b).astype(int)).mean() < 8


GREY = np.full((H, W, 3), rf.NOT_KEPT_GREY, np.uint8)


def test_two_sequence_routes_and_one_without_the_submitted_one_marked(case):
    folder, truth, masks, motion, direct, _ = case
    examples = rf.load_examples(folder / "dataset", routes_of(folder, "direct", "masks", "motion"), n=2,
                                sequences=sequences_of(folder, "masks", "motion"), scores=folder / "scores.json")
    assert [e.video_id for e in examples.examples] == IDS and examples.submitted == "masks"

    fig = rf.examples_figure(examples)
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert titles == ["input 10", "true 21", "true mask 21", "direct", "masks (submitted)", "motion"]
    assert "submitted: route masks" in fig.get_suptitle()
    # the sheet's images are the true frames and masks and each route's mask of frame 21
    shown = [ax.get_images()[0].get_array() for ax in fig.axes[6:]]  # the second video's row
    np.testing.assert_array_equal(shown[2], rf.colourise(truth[1, 21]))
    for image, mask in zip(shown[3:], (direct[1], masks[1, -1], motion[1, -1])):
        np.testing.assert_array_equal(image, rf.colourise(mask))
    assert fig.axes[4].spines["top"].get_edgecolor() != fig.axes[3].spines["top"].get_edgecolor()

    page = rf.animations_page(examples)
    assert "routes masks, motion (grey before frame 11)" in page and "of route direct" in page
    assert "Submitted: route masks" in page
    animation = gifs(page)[IDS[1]]
    assert animation.shape[0] == data.N_FRAMES
    # animated: true video, true masks, masks' and motion's forecasts; held still: true mask 21, direct's
    video, true_masks, masks_panel, motion_panel, true21, direct_panel = panels(animation, 6)
    for t in (0, 10, 11, 15, 21):
        assert close(true_masks[t], rf.colourise(truth[1, t]))
    for t in (0, 10):
        assert close(masks_panel[t], GREY) and close(motion_panel[t], GREY)
    for t in (11, 16, 21):
        assert close(masks_panel[t], rf.colourise(masks[1, t - 11])) and close(motion_panel[t], rf.colourise(motion[1, t - 11]))
    strip = masks_panel[16][:, : 3 * SCALE]  # route masks' own class-5 strip, not the truth's background
    assert close(strip, rf.colourise(masks[1, 5, :, :3])) and not close(strip, rf.colourise(truth[1, 16, :, :3]))
    for t in (0, 11, 21):
        assert close(true21[t], rf.colourise(truth[1, 21])) and close(direct_panel[t], rf.colourise(direct[1]))
    assert close(video[21], data.read_frames(data.list_videos(folder / "dataset", "val")[1], [21])[0])


def test_route_frames_keeps_its_predicted_frames_in_the_animations(case):
    folder, truth, masks, _, _, predicted = case
    examples = rf.load_examples(folder / "dataset", routes_of(folder, "frames", "masks"), n=1,
                                sequences=sequences_of(folder, "masks"), frames=folder / "frames_predicted.npy",
                                scores=folder / "scores.json")
    titles = [ax.get_title() for ax in rf.examples_figure(examples).axes]
    assert titles == ["input 10", "true 21", "frames: predicted 21", "true mask 21", "frames", "masks (submitted)"]
    # video, predicted frames, true masks, masks' forecast; held still: true mask 21, frames' mask 21
    _, frames_panel, _, masks_panel, _, frames_mask = panels(gifs(rf.animations_page(examples))[IDS[0]], 6)
    assert close(frames_panel[5], data.read_frames(data.list_videos(folder / "dataset", "val")[0], [5])[0])
    assert close(frames_panel[13], predicted[0, 2]) and close(masks_panel[13], rf.colourise(masks[0, 2]))
    assert close(frames_mask[4], np.zeros((H, W, 3), np.uint8) + rf.palette()[0])


def run_cli(monkeypatch, argv):
    monkeypatch.setattr(cli, "VERB_MODULES", ("evaluate.report_figures",))
    return cli.main([str(a) for a in argv])


def test_a_route_set_without_frames_through_the_cli(monkeypatch, capsys, case, tmp_path):
    folder = case[0]
    (folder / "metrics.csv").write_text("step,loss,val_oracle_iou\n1,1.0,0.1\n2,0.5,0.2\n")
    out = tmp_path / "report"
    argv = ["report-figures", "--metrics", f"segmenter={folder / 'metrics.csv'}", "--curves", out / "curves.png",
            "--root", folder / "dataset", "--route", f"direct={folder / 'direct_val.npy'}",
            "--route", f"masks={folder / 'masks_val.npy'}", "--sequence", f"masks={folder / 'masks_sequence.npy'}",
            "--scores", folder / "scores.json", "--examples", out / "examples.png", "--animations", out / "animations.html",
            "--n", "2"]
    assert run_cli(monkeypatch, argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["animations.html", "curves.png", "examples.png"]
    with Image.open(out / "examples.png") as png:
        assert png.format == "PNG" and png.width > png.height  # 5 columns, 2 rows of wide frames
    page = (out / "animations.html").read_text()
    assert "predicted frames" not in page and "route masks (grey before frame 11)" in page
    # video, true masks, masks' forecast; held still: true mask 21, direct's
    assert len(panels(gifs(page)[IDS[1]], 5)[0]) == data.N_FRAMES
    # without scores.json nothing is marked
    examples = rf.load_examples(folder / "dataset", routes_of(folder, "direct"), n=1)
    assert [ax.get_title() for ax in rf.examples_figure(examples).axes][-1] == "direct"


def refusals(folder):
    """(argv after --root, the file or flag the one-line error must name, what it says)."""
    save_array(folder / "swapped_val.npy", np.load(folder / "direct_val.npy")[::-1], IDS[::-1], frame_index=21)
    save_array(folder / "swapped_predicted.npy", np.load(folder / "frames_predicted.npy")[::-1], IDS[::-1],
               frame_indices=list(range(data.N_INPUT, data.N_FRAMES)))
    save_array(folder / "short_sequence.npy", np.load(folder / "masks_sequence.npy")[:1], IDS[:1])
    save_array(folder / "small_val.npy", np.zeros((2, H // 2, W // 2), np.uint8), IDS)
    save_array(folder / "other_val.npy", np.zeros((2, H, W), np.uint8), [1000, 1005])
    save_array(folder / "classes_val.npy", np.full((2, H, W), 60, np.uint8), IDS)
    (folder / "old_scores.json").write_text(json.dumps({"pipeline": {"iou": 0.5}}))
    masks = f"masks={folder / 'masks_val.npy'}"
    return {
        "ids in another order": (["--route", masks, "--route", f"direct={folder / 'swapped_val.npy'}"],
                                 folder / "swapped_val.npy", "video ids differ from those of"),
        "a sequence of other videos": (["--route", masks, "--sequence", f"masks={folder / 'short_sequence.npy'}"],
                                       folder / "short_sequence.npy", "video ids differ"),
        "predicted frames of other videos": (["--route", f"frames={folder / 'frames_val.npy'}", "--route", masks,
                                              "--frames", folder / "swapped_predicted.npy"],
                                             folder / "swapped_predicted.npy", "video ids differ"),
        "ids not in val": (["--route", f"direct={folder / 'other_val.npy'}"], folder / "other_val.npy", "not in"),
        "a missing file": (["--route", masks, "--route", f"direct={folder / 'nowhere.npy'}"], folder / "nowhere.npy",
                           "does not exist"),
        "frames of another size": (["--route", f"direct={folder / 'small_val.npy'}"], folder / "small_val.npy", "16x24"),
        "a sequence as frame-21 masks": (["--route", f"masks={folder / 'masks_sequence.npy'}"],
                                         folder / "masks_sequence.npy", "(N, H, W)"),
        "a class id out of range": (["--route", f"direct={folder / 'classes_val.npy'}"], folder / "classes_val.npy", "60"),
        "a sequence without its route": (["--route", masks, "--sequence", f"motion={folder / 'motion_sequence.npy'}"],
                                         "--sequence motion", "no --route motion"),
        "a route given twice": (["--route", masks, "--route", masks], "--route masks", "twice"),
        "frames without route frames": (["--route", masks, "--frames", folder / "frames_predicted.npy"], "--frames",
                                        "--route frames"),
        "the submitted route not shown": (["--route", f"direct={folder / 'direct_val.npy'}", "--scores",
                                           folder / "scores.json"], folder / "scores.json", "'masks' is not among"),
        "scores without submitted_route": (["--route", masks, "--scores", folder / "old_scores.json"],
                                           folder / "old_scores.json", "no submitted_route"),
    }


REFUSALS = ["ids in another order", "a sequence of other videos", "predicted frames of other videos", "ids not in val",
            "a missing file", "frames of another size", "a sequence as frame-21 masks", "a class id out of range",
            "a sequence without its route", "a route given twice", "frames without route frames",
            "the submitted route not shown", "scores without submitted_route"]


@pytest.mark.parametrize("name", REFUSALS)
def test_bad_inputs_are_refused_by_name_and_nothing_is_written(monkeypatch, capsys, case, tmp_path, name):
    folder = case[0]
    argv, named, says = refusals(folder)[name]
    (folder / "metrics.csv").write_text("step,loss,val_oracle_iou\n1,1.0,0.1\n2,0.5,0.2\n")
    out = tmp_path / "report"
    out.mkdir()
    code = run_cli(monkeypatch, ["report-figures", "--metrics", f"segmenter={folder / 'metrics.csv'}",
                                 "--curves", out / "curves.png",
                                 "--root", folder / "dataset", *argv, "--examples", out / "examples.png",
                                 "--animations", out / "animations.html"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(named) in err and says in err, err
    assert not list(out.iterdir()), "no output, not even the training curves, and no temporary file"


def test_the_functions_raise_the_same_errors(case):
    folder = case[0]
    refusals(folder)  # writes the bad files
    with pytest.raises(FuturesegError, match=re.escape(str(folder / "swapped_val.npy")) + ": its video ids differ"):
        rf.val_examples(folder / "dataset", {"masks": folder / "masks_val.npy", "direct": folder / "swapped_val.npy"},
                        folder / "x.png")
    assert not (folder / "x.png").exists()


# ---------------------------------------------------------------- training curves

# each trainer's metrics.csv header as core.training.fit writes it (its losses train_*, its
# validate()'s entries), taken from real runs of the trainers (the forecaster's from its code)
HEADERS = {
    "predictor": "step,epoch,lr,train_loss,step_seconds,val_loss,val_mse,val_psnr,val_ssim,val_mse_f21,val_psnr_f21,"
                 "val_ssim_f21,copy_last_mse,copy_last_psnr,copy_last_ssim,copy_last_mse_f21,copy_last_psnr_f21,"
                 "copy_last_ssim_f21",
    "segmenter": "step,epoch,lr,train_loss,train_ce,step_seconds,val_oracle_iou",
    "maskrcnn": "step,epoch,lr,loss,loss_classifier,loss_box_reg,loss_mask,loss_objectness,loss_rpn_box_reg,"
                "step_seconds,val_oracle_iou,val_seconds",
    "object_classifier": "step,epoch,lr,train_loss,train_shape,train_material,step_seconds,val_shape_acc,"
                         "val_material_acc,val_repaint_iou",
    "forecaster": "step,epoch,lr,train_loss,train_ce,train_soft_iou,step_seconds,val_iou,val_pseudo_copy_last_iou,"
                  "val_prior_iou",
    "forecaster_copy_last": "step,epoch,lr,train_loss,train_ce,step_seconds,val_iou,val_pseudo_copy_last_iou",
    "direct": "step,epoch,lr,train_loss,train_ce,step_seconds,val_iou",
    "dynamics": "step,epoch,lr,train_loss,train_position,train_log_scale,step_seconds,val_iou,val_rule_iou,"
                "val_threshold",
}
# the columns a baseline is read from: scored once per run, the same at every epoch
BASELINES = {"copy_last_psnr_f21": 20.57, "val_prior_iou": 0.2194, "val_pseudo_copy_last_iou": 0.1259,
             "val_rule_iou": 0.5195}


def metrics_csv(folder, layout, epochs=4, log_every_rows=True):
    """A metrics.csv of `layout` (a key of HEADERS): per epoch, a training-loss row every few
    steps (val cells empty, as fit's log_every rows), then the epoch-end row with the val metrics."""
    header = HEADERS[layout].split(",")
    rows = []
    for epoch in range(1, epochs + 1):
        for window in ((5, 10) if log_every_rows else (10,)):
            step = (epoch - 1) * 10 + window
            row = {"step": step, "epoch": epoch, "lr": 0.001, "step_seconds": 0.2}
            row.update({c: round(2.0 / step, 5) for c in header if c.startswith(("train_", "loss"))})
            if window == 10:
                row.update({c: round(0.1 * epoch, 4) for c in header if c.startswith("val_")})
                row.update({c: round(20 + epoch, 3) for c in header if c.startswith(("val_psnr", "copy_last"))})
                row.update({c: v for c, v in BASELINES.items() if c in header})
            rows.append(",".join(str(row.get(c, "")) for c in header))
    path = folder / f"{layout}_metrics.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    return path


def legends(fig):
    """{panel title: (legend texts of the val panel, legend texts of the loss panel)}."""
    return {sub.axes[0].get_title(): tuple([t.get_text() for t in ax.get_legend().get_texts()] for ax in sub.axes)
            for sub in fig.subfigs if sub.axes}


def test_one_panel_per_trainer_titled_by_stage_its_metric_beside_its_baseline(tmp_path):
    stages = ["predictor", "segmenter", "object_classifier", "forecaster", "direct", "dynamics"]
    # given out of the pipeline's order: drawn in it
    metrics = {stage: metrics_csv(tmp_path, stage) for stage in reversed(stages)}
    fig = rf.training_curves_figure(metrics, {"predictor": "simvp", "segmenter": "unet", "forecaster": "convlstm"})
    panels = legends(fig)
    assert list(panels) == ["Frame predictor (SimVP)", "Segmenter (U-Net)", "Object classifier",
                            "Mask forecaster (ConvLSTM)", "Direct U-Net", "Dynamics"]
    assert len([ax for sub in fig.subfigs for ax in sub.axes]) == 2 * len(stages)  # val and loss, one trainer each
    assert panels["Frame predictor (SimVP)"] == (["val PSNR of frame 21: 24.00", "val PSNR of copy-last: 20.57"],
                                                 ["train loss: 0.05", "val loss: 0.4"])
    assert panels["Segmenter (U-Net)"] == (["val IoU on true frames: 0.400"], ["train loss: 0.05"])
    assert panels["Object classifier"] == (["val IoU of repainted masks: 0.400"], ["train loss: 0.05"])
    assert panels["Mask forecaster (ConvLSTM)"] == (["val IoU: 0.400", "val IoU of the prior: 0.219"], ["train loss: 0.05"])
    assert panels["Direct U-Net"] == (["val IoU: 0.400"], ["train loss: 0.05"])
    assert panels["Dynamics"] == (["val IoU: 0.400", "val IoU of the rule (route motion): 0.519"], ["train loss: 0.05"])
    texts = [t for pair in panels.values() for side in pair for t in side] + [fig.get_suptitle()]
    assert not any("/" in t or ".csv" in t or str(tmp_path) in t for t in texts), "no file paths"

    forecaster = next(sub for sub in fig.subfigs if sub.axes[0].get_title().startswith("Mask forecaster"))
    val, loss = forecaster.axes
    metric, prior = val.get_lines()
    # the val IoU at the epoch ends only (the training-loss rows have none), every step's loss
    np.testing.assert_array_equal(metric.get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(metric.get_ydata(), [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(loss.get_lines()[0].get_xdata(), [5, 10, 15, 20, 25, 30, 35, 40])
    # the prior, a constant, is a dashed line across the whole panel
    assert prior.get_linestyle() == "--" and list(prior.get_ydata()) == [0.2194, 0.2194]
    assert list(prior.get_xdata()) == [0, 1] and prior.get_transform() != metric.get_transform()
    direct = next(sub for sub in fig.subfigs if sub.axes[0].get_title() == "Direct U-Net")
    assert len(direct.axes[0].get_lines()) == 1, "the direct U-Net logs no baseline: none is drawn"


def test_the_other_layouts_of_a_trainer_a_mask_rcnn_segmenter_and_a_copy_last_forecaster(tmp_path):
    fig = rf.training_curves_figure({"segmenter": metrics_csv(tmp_path, "maskrcnn", epochs=1, log_every_rows=False),
                                     "forecaster": metrics_csv(tmp_path, "forecaster_copy_last")},
                                    {"segmenter": "maskrcnn"})
    panels = legends(fig)
    # Mask R-CNN's loop logs its summed loss unprefixed; one epoch is one point, still drawn
    assert panels["Segmenter (Mask R-CNN)"] == (["val IoU on true frames: 0.100"], ["train loss: 0.2"])
    # a copy_last forecaster's prior is the segmenter's mask 10 copied, logged under that name
    assert panels["Mask forecaster"][0] == ["val IoU: 0.400", "val IoU of the prior (mask 10 copied): 0.126"]
    png = rf.training_curves({"dynamics": metrics_csv(tmp_path, "dynamics")}, tmp_path / "curves.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300


def test_training_curves_through_the_cli(monkeypatch, capsys, tmp_path):
    argv = ["report-figures", "--metrics", f"predictor={metrics_csv(tmp_path, 'predictor')}", "--model", "predictor=simvp",
            "--metrics", f"forecaster={metrics_csv(tmp_path, 'forecaster')}", "--curves", tmp_path / "out" / "curves.png"]
    assert run_cli(monkeypatch, argv) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "curves.png") as png:
        assert png.format == "PNG" and png.width > png.height  # two panels side by side


def curve_refusals(folder):
    """(argv, what the one-line error must name, what it says)."""
    predictor, segmenter = metrics_csv(folder, "predictor"), metrics_csv(folder, "segmenter")
    (folder / "no_step.csv").write_text("epoch,train_loss\n1,0.5\n")
    return {
        "an unknown stage": (["--metrics", f"predicter={predictor}"], f"--metrics predicter={predictor}",
                             "no trainer 'predicter'; one of predictor, segmenter"),
        "another trainer's CSV": (["--metrics", f"segmenter={predictor}"], str(predictor),
                                  "no val_oracle_iou values"),
        "another trainer's CSV, no metric": (["--metrics", f"forecaster={segmenter}"], str(segmenter), "no val_iou values"),
        "a CSV without a step column": (["--metrics", f"direct={folder / 'no_step.csv'}"], str(folder / "no_step.csv"),
                                        "no 'step' column"),
        "a missing CSV": (["--metrics", f"direct={folder / 'nowhere.csv'}"], str(folder / "nowhere.csv"),
                          "does not exist"),
        "a stage given twice": (["--metrics", f"predictor={predictor}", "--metrics", f"predictor={predictor}"],
                                "--metrics predictor", "twice"),
        "a model of a stage not drawn": (["--metrics", f"predictor={predictor}", "--model", "forecaster=simvp"],
                                         "--model forecaster=simvp", "no --metrics forecaster"),
    }


@pytest.mark.parametrize("name", ["an unknown stage", "another trainer's CSV", "another trainer's CSV, no metric",
                                  "a CSV without a step column", "a missing CSV", "a stage given twice",
                                  "a model of a stage not drawn"])
def test_bad_training_curves_are_refused_in_one_line_naming_the_file(monkeypatch, capsys, tmp_path, name):
    argv, named, says = curve_refusals(tmp_path)[name]
    out = tmp_path / "report"
    out.mkdir()
    code = run_cli(monkeypatch, ["report-figures", *argv, "--curves", out / "curves.png"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert named in err and says in err, err
    assert not list(out.iterdir())


def test_a_csv_without_a_training_loss_names_the_columns_looked_for(tmp_path):
    # a segmenter CSV of a trainer that logged neither train_loss nor loss: the error says both
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,val_oracle_iou\n10,1,0.2\n")
    with pytest.raises(FuturesegError, match=re.escape(str(path)) + ": no train_loss or loss values.*val_oracle_iou"):
        rf.training_curves_figure({"segmenter": path})
