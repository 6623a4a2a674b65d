"""`futureseg check-data`: the cheap check of every file, run first in the DAG. It must catch
every bad input the full readers of futureseg.core.data catch, with the same message, without
decoding the frames."""

import json

import numpy as np
import pytest
from PIL import Image

from futureseg.data import check_data
from futureseg import cli
from futureseg.core import data
from test_data import BAD_DATASETS, TINY_COUNTS, TINY_SIZE, _first


@pytest.mark.parametrize("breakage", BAD_DATASETS, ids=lambda f: f.__name__.lstrip("_"))
@pytest.mark.parametrize("workers", [1, 2])
def test_catches_what_the_readers_catch_with_the_same_message(dataset_copy, breakage, workers):
    path, what = breakage(dataset_copy)
    with pytest.raises(data.DataError) as info:
        check_data.check_dataset(dataset_copy, data.SPLITS, workers)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and what in message, message


@pytest.mark.parametrize("keep", [0, 33, 0.5, -1], ids=["empty", "header-only", "half", "last-byte-lost"])
def test_truncated_png_is_caught_wherever_it_was_cut(dataset_copy, keep):
    path = _first(dataset_copy, "val").frame_path(12)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep if keep >= 0 else len(raw) - 1])
    with pytest.raises(data.DataError, match="unreadable image") as info:
        check_data.check_dataset(dataset_copy)
    assert str(info.value).startswith(f"{path}: ")


def test_short_hidden_video_names_the_missing_frame(dataset_copy):
    path = _first(dataset_copy, "hidden").frame_path(10)
    path.unlink()
    with pytest.raises(data.DataError, match="frame is missing") as info:
        check_data.check_dataset(dataset_copy, ["hidden"])
    assert str(info.value).startswith(f"{path}: ")


def test_hidden_video_with_22_frames_is_accepted_with_a_warning(dataset_copy):
    video, source = _first(dataset_copy, "hidden"), _first(dataset_copy, "unlabeled")
    for index in range(11, 22):
        (video.path / f"image_{index}.png").write_bytes(source.frame_path(index).read_bytes())
    with pytest.warns(UserWarning, match="only 0…10 are used"):
        check_data.check_dataset(dataset_copy, ["hidden"])


def test_mask_of_any_integer_dtype_is_accepted(dataset_copy):
    video = _first(dataset_copy)
    np.save(video.mask_path, np.load(video.mask_path).astype(np.int64))
    check_data.check_dataset(dataset_copy, ["train"])


def test_checks_only_the_splits_asked_for(dataset_copy):
    path = _first(dataset_copy, "unlabeled").frame_path(0)
    Image.open(path).convert("L").save(path)
    report = check_data.check_dataset(dataset_copy, ["train", "val", "hidden"])
    assert set(report["splits"]) == {"train", "val", "hidden"}


def test_verb_writes_the_report(tiny_dataset, tmp_path):
    out = tmp_path / "data" / "check.json"
    assert cli.main(["check-data", "--root", str(tiny_dataset), "--out", str(out), "--splits", "train,val,hidden"]) == 0
    report = json.loads(out.read_text())
    assert report["frame_size"] == list(TINY_SIZE)
    assert report["splits"] == {s: {"videos": TINY_COUNTS[s], "frame_size": list(TINY_SIZE)} for s in ("train", "val", "hidden")}


def test_verb_fails_with_one_line_and_writes_nothing(dataset_copy, tmp_path, capsys):
    video = _first(dataset_copy, "val")
    np.save(video.mask_path, np.load(video.mask_path).astype(np.float32))
    out = tmp_path / "data" / "check.json"
    assert cli.main(["check-data", "--root", str(dataset_copy), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"futureseg check-data: error: {video.mask_path}: mask dtype is float32, expected an integer type"]
    assert not out.parent.exists() or not any(out.parent.iterdir())


# ---------------------------------------------------------------- when rule check_data reruns

CHECK = "results/data/check.json"


def test_rule_check_data_reruns_when_a_file_of_a_used_split_changes(dataset_copy, tmp_path):
    """On a real dataset (data.root) Snakemake sees only the root folder's own mtime; the
    rule's params hash every file's (path, size, mtime)."""
    import os
    import shutil

    from pipeline_helpers import planned_jobs, snakemake, tiny_config, write_config

    config = tiny_config()
    config["data"]["root"] = str(dataset_copy)
    workdir = tmp_path / "work"
    workdir.mkdir()
    write_config(workdir, config)
    snakemake(workdir, "--cores", "1", CHECK)
    assert planned_jobs(workdir, CHECK) == {}
    # a setting of another stage leaves the check alone; a split no stage reads any more
    # changes what it checks
    assert planned_jobs(workdir, CHECK, override={"predictor": {"lr": 0.003}}) == {}
    assert planned_jobs(workdir, CHECK, override={"predictor": {"train_splits": ["train"]},
                                                  "data": {"mean_std_splits": ["train"]},
                                                  "forecaster": {"pseudo_splits": []},
                                                  "dynamics": {"pseudo_splits": []},
                                                  "direct": {"pseudo_labels": False}}) == {"check_data": 1}

    mask = _first(dataset_copy, "val").mask_path
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten, same size
    assert planned_jobs(workdir, CHECK) == {"check_data": 1}
    snakemake(workdir, "--cores", "1", CHECK)
    assert planned_jobs(workdir, CHECK) == {}

    video = _first(dataset_copy, "unlabeled").path
    shutil.copytree(video, video.with_name("video_09999"))  # a video added
    assert planned_jobs(workdir, CHECK) == {"check_data": 1}
