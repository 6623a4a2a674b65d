"""The data layer: reading the Dataset_Student layout and every bad-input case it must name."""

import numpy as np
import pytest
from PIL import Image

from futureseg import cli
from futureseg.core import data
from futureseg.core.errors import DataError

TINY_COUNTS = {"train": 3, "val": 2, "unlabeled": 2, "hidden": 2}  # as in conftest.tiny_dataset
TINY_SIZE = (32, 48)


def test_lists_videos_sorted_by_id(tiny_dataset):
    ids = {split: [v.id for v in data.list_videos(tiny_dataset, split)] for split in data.SPLITS}
    for split, count in TINY_COUNTS.items():
        assert len(ids[split]) == count
        assert ids[split] == sorted(ids[split])
    all_ids = sum(ids.values(), [])
    assert len(set(all_ids)) == len(all_ids), "video ids are unique across splits"


def test_reads_frames_and_masks(tiny_dataset):
    video = data.list_videos(tiny_dataset, "train")[0]
    frames = data.read_frames(video)
    assert frames.shape == (22, *TINY_SIZE, 3) and frames.dtype == np.uint8
    mask = data.read_mask(video)
    assert mask.shape == (22, *TINY_SIZE) and mask.max() < data.NUM_CLASSES
    hidden = data.list_videos(tiny_dataset, "hidden")[0]
    assert data.read_frames(hidden).shape[0] == 11
    for split in data.SPLITS:
        assert data.validate_split(tiny_dataset, split) == TINY_SIZE


# Each case breaks a copy of the tiny dataset and names the path the error must start with.
def _missing_split(root):
    import shutil

    shutil.rmtree(root / "unlabeled")
    return root / "unlabeled", "split folder is missing"


def _empty_split(root):
    import shutil

    for video in (root / "train").iterdir():
        shutil.rmtree(video)
    return root / "train", "split is empty"


def _first(root, split="train"):
    return data.list_videos(root, split)[0]


def _missing_frame(root):
    path = _first(root).frame_path(7)
    path.unlink()
    return path, "frame is missing"


def _truncated_png(root):
    path = _first(root).frame_path(3)
    path.write_bytes(path.read_bytes()[:60])
    return path, "unreadable image"


def _grayscale(root):
    path = _first(root).frame_path(0)
    Image.open(path).convert("L").save(path)
    return path, "frame is L, expected 8-bit RGB"


def _rgba(root):
    path = _first(root, "unlabeled").frame_path(5)
    Image.open(path).convert("RGBA").save(path)
    return path, "frame is RGBA"


def _mixed_sizes(root):
    path = data.list_videos(root, "unlabeled")[-1].frame_path(2)
    Image.open(path).resize((TINY_SIZE[1] * 2, TINY_SIZE[0] * 2)).save(path)
    return path, "expected 32x48"


def _mask_wrong_shape(root):
    video = _first(root)
    np.save(video.mask_path, np.zeros((11, *TINY_SIZE), np.uint8))
    return video.mask_path, "mask shape is (11, 32, 48)"


def _mask_float(root):
    video = _first(root)
    np.save(video.mask_path, np.load(video.mask_path).astype(np.float32))
    return video.mask_path, "mask dtype is float32"


def _mask_class_out_of_range(root):
    video = _first(root)
    mask = np.load(video.mask_path).astype(np.int64)
    mask[5, 0, 0] = 49
    np.save(video.mask_path, mask)
    return video.mask_path, "expected 0…48"


def _mask_missing(root):
    video = _first(root)
    video.mask_path.unlink()
    return video.mask_path, "mask is missing"


BAD_DATASETS = [
    _missing_split,
    _empty_split,
    _missing_frame,
    _truncated_png,
    _grayscale,
    _rgba,
    _mixed_sizes,
    _mask_wrong_shape,
    _mask_float,
    _mask_class_out_of_range,
    _mask_missing,
]


@pytest.mark.parametrize("breakage", BAD_DATASETS, ids=lambda f: f.__name__.lstrip("_"))
def test_validation_names_the_path(dataset_copy, breakage):
    path, what = breakage(dataset_copy)
    with pytest.raises(DataError) as info:
        for split in data.SPLITS:
            data.validate_split(dataset_copy, split, TINY_SIZE)
    message = str(info.value)
    assert message.startswith(str(path)) and what in message, message


@pytest.mark.parametrize(
    "breakage",
    [_missing_split, _empty_split, _missing_frame, _truncated_png, _grayscale, _rgba, _mixed_sizes],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_mean_std_verb_fails_cleanly(dataset_copy, tmp_path, capsys, breakage):
    path, what = breakage(dataset_copy)
    out = tmp_path / "out" / "mean_std.json"
    code = cli.main(["mean-std", "--root", str(dataset_copy), "--out", str(out), "--splits", "train,unlabeled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(path) in err[0] and what in err[0], err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir()), "no partial output"


def test_hidden_video_with_22_frames_is_accepted_with_a_warning(dataset_copy):
    video = _first(dataset_copy, "hidden")
    source = _first(dataset_copy, "unlabeled")
    for index in range(11, 22):
        (video.path / f"image_{index}.png").write_bytes(source.frame_path(index).read_bytes())
    with pytest.warns(UserWarning, match="only 0…10 are used"):
        data.validate_split(dataset_copy, "hidden")
    assert data.read_frames(video).shape[0] == 11


def test_unknown_root(tmp_path):
    with pytest.raises(DataError, match="dataset root does not exist"):
        data.list_videos(tmp_path / "nowhere", "train")
