"""Stage 3: the segmentation training set (real + predicted frames, blur, frameskip).

The dataset here is written directly rather than by the synthetic generator so that every
frame is noise (a blur always changes it) and every mask is unique to its (video, frame):
a sample paired with the wrong frame's mask cannot pass.
"""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from futureseg.core import data
from futureseg.segment import make_seg_frames
from futureseg.core.errors import ConfigError, DataError, FuturesegError
from futureseg.core.io import load_array, save_array

SIZE = (32, 48)
TRAIN_IDS = (0, 1, 2)
VAL_IDS = (3,)
PREDICTED = list(range(data.N_INPUT, data.N_FRAMES))  # 11…21


def _frame(video_id, t):
    return np.random.default_rng([video_id, t]).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def _mask(video_id):
    """Frame t: top half = class t+1, bottom-left quarter = class 23+video; 0 elsewhere."""
    mask = np.zeros((data.N_FRAMES, *SIZE), np.uint8)
    for t in range(data.N_FRAMES):
        mask[t, : SIZE[0] // 2] = t + 1
        mask[t, SIZE[0] // 2 :, : SIZE[1] // 2] = 23 + video_id
    return mask


def _write_dataset(root):
    for split, ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
        for video_id in ids:
            folder = root / split / f"video_{video_id:05d}"
            folder.mkdir(parents=True)
            for t in range(data.N_FRAMES):
                Image.fromarray(_frame(video_id, t)).save(folder / f"image_{t}.png")
            np.save(folder / "mask.npy", _mask(video_id))
    return root


def _predicted(ids=TRAIN_IDS, size=SIZE, frame_indices=PREDICTED):
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, (len(ids), len(frame_indices), *size, 3), dtype=np.uint8)


def _write_frames(path, ids=TRAIN_IDS, size=SIZE, frame_indices=PREDICTED):
    save_array(path, _predicted(ids, size, frame_indices), ids, frame_indices=list(frame_indices), split="train")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("segframes") / "dataset")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return _write_frames(tmp_path_factory.mktemp("predictor") / "frames_train.npy")


def _load(out):
    images = np.load(out / "images.npy")
    masks = np.load(out / "masks.npy")
    index = make_seg_frames.read_index(out)
    counts = json.loads((out / "counts.json").read_text())
    assert images.dtype == masks.dtype == np.uint8
    assert images.shape == (len(index), *SIZE, 3) and masks.shape == (len(index), *SIZE)
    return images, masks, index, counts


def _check_rows(out, frames_path=None):
    """Every row's pixels come from its stated source and frame, its mask is the GT of that
    frame; returns the index."""
    images, masks, index, _ = _load(out)
    predicted, meta = load_array(frames_path) if frames_path else (None, None)
    for row, entry in enumerate(index):
        video_id, t, sigma = entry["video_id"], entry["frame_index"], entry["blur_sigma"]
        np.testing.assert_array_equal(masks[row], _mask(video_id)[t])
        if entry["source"] == "real":
            assert images[row].tolist() == make_seg_frames.gaussian_blur(_frame(video_id, t), sigma).tolist()
        else:
            assert entry["source"] == "generated" and sigma == 0
            expected = predicted[meta["ids"].index(video_id), meta["frame_indices"].index(t)]
            np.testing.assert_array_equal(images[row], expected)
    return index


def _by_video(index, source):
    frames = {}
    for entry in index:
        if entry["source"] == source:
            frames.setdefault(entry["video_id"], []).append(entry["frame_index"])
    return frames


def test_all_frames_with_generated(dataset, frames, tmp_path):
    out = tmp_path / "segframes"
    counts = make_seg_frames.build_training_set(dataset, out, frames, frameskip=1, blur_prob=0.3, seed=0)
    index = _check_rows(out, frames)
    n = len(TRAIN_IDS)
    assert (counts["real"], counts["generated"], counts["total"]) == (22 * n, 11 * n, 33 * n)
    assert counts == _load(out)[3]
    assert _by_video(index, "real") == {v: list(range(22)) for v in TRAIN_IDS}
    assert _by_video(index, "generated") == {v: PREDICTED for v in TRAIN_IDS}
    blurred = [e for e in index if e["blur_sigma"] > 0]
    assert counts["blurred_real"] == len(blurred) and 0 < len(blurred) < 22 * n
    assert all(e["source"] == "real" and 0.5 <= e["blur_sigma"] <= 2.0 for e in blurred)
    assert sorted(p.name for p in out.iterdir()) == ["counts.json", "images.npy", "index.csv", "masks.npy"]
    assert [p.name for p in tmp_path.iterdir()] == ["segframes"], "no temp folder left"


@pytest.mark.parametrize("k", [2, 3])
def test_frameskip_keeps_every_kth_frame(dataset, frames, tmp_path, k):
    out = tmp_path / "segframes"
    counts = make_seg_frames.build_training_set(dataset, out, frames, frameskip=k, blur_prob=0.5, seed=3)
    index = _check_rows(out, frames)
    for source, n_frames, first in (("real", 22, 0), ("generated", 11, 11)):
        kept = _by_video(index, source)
        assert sorted(kept) == list(TRAIN_IDS)
        for chosen in kept.values():
            assert len(chosen) in (n_frames // k, -(-n_frames // k))
            assert chosen[0] - first < k and np.all(np.diff(chosen) == k)
            assert chosen[-1] + k >= first + n_frames, "no frame left out at the end"
    assert counts["frameskip"] == k
    assert counts["real"] == sum(len(v) for v in _by_video(index, "real").values())


def test_frameskip_indices_and_random_phase():
    phases = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        for n, k in ((22, 1), (22, 2), (11, 2), (11, 3), (22, 5)):
            kept = make_seg_frames.frameskip_indices(n, k, rng)
            assert len(kept) in (n // k, -(-n // k)) and kept[0] < k and np.all(np.diff(kept) == k)
        phases.add(int(make_seg_frames.frameskip_indices(22, 4, np.random.default_rng(seed))[0]))
    assert phases == {0, 1, 2, 3}, "the phase is random, not always 0"
    np.testing.assert_array_equal(make_seg_frames.frameskip_indices(5, 1, np.random.default_rng(0)), range(5))
    assert len(make_seg_frames.frameskip_indices(11, 30, np.random.default_rng(0))) == 1, "k > n keeps one frame"
    with pytest.raises(ConfigError, match="augment.frameskip"):
        make_seg_frames.frameskip_indices(22, 0, np.random.default_rng(0))


def test_no_generated_keeps_the_same_real_samples(dataset, frames, tmp_path):
    with_generated = tmp_path / "on"
    without = tmp_path / "off"
    make_seg_frames.build_training_set(dataset, with_generated, frames, frameskip=2, blur_prob=0.5, seed=7)
    counts = make_seg_frames.build_training_set(dataset, without, None, generated=False, frameskip=2, blur_prob=0.5, seed=7)
    index = _check_rows(without)
    assert counts["generated"] == 0 and counts["real"] == counts["total"] == len(index) == 11 * len(TRAIN_IDS)
    assert {e["source"] for e in index} == {"real"}
    # The ablation differs only by the generated samples: same real frames, same blur.
    images_on, masks_on, index_on, _ = _load(with_generated)
    real_rows = [i for i, e in enumerate(index_on) if e["source"] == "real"]
    assert [index_on[i] for i in real_rows] == index
    np.testing.assert_array_equal(images_on[real_rows], np.load(without / "images.npy"))


def test_blur_prob_zero_and_one(dataset, frames, tmp_path):
    sharp = tmp_path / "sharp"
    counts = make_seg_frames.build_training_set(dataset, sharp, frames, blur_prob=0.0, seed=1)
    index = _check_rows(sharp, frames)
    assert counts["blurred_real"] == 0 and all(e["blur_sigma"] == 0 for e in index)

    blurred = tmp_path / "blurred"
    counts = make_seg_frames.build_training_set(dataset, blurred, frames, blur_prob=1.0, blur_sigma=(0.8, 1.5), seed=1)
    index = _check_rows(blurred, frames)  # image == blur(raw frame, recorded sigma), mask == GT
    images, masks, _, _ = _load(blurred)
    real = [i for i, e in enumerate(index) if e["source"] == "real"]
    assert counts["blurred_real"] == len(real) == 22 * len(TRAIN_IDS)
    sigmas = [index[i]["blur_sigma"] for i in real]
    assert min(sigmas) >= 0.8 and max(sigmas) <= 1.5 and len(set(sigmas)) > 1
    for i in real:
        raw = _frame(index[i]["video_id"], index[i]["frame_index"])
        assert not np.array_equal(images[i], raw), "a blurred frame differs from the raw one"
        np.testing.assert_array_equal(masks[i], _mask(index[i]["video_id"])[index[i]["frame_index"]])
    generated = [e for e in index if e["source"] == "generated"]
    assert len(generated) == 11 * len(TRAIN_IDS) and all(e["blur_sigma"] == 0 for e in generated)


def test_real_frames_of_several_splits(dataset, frames, tmp_path):
    out = tmp_path / "segframes"
    counts = make_seg_frames.build_training_set(dataset, out, frames, splits=("train", "val"))
    index = _check_rows(out, frames)
    assert sorted(_by_video(index, "real")) == [*TRAIN_IDS, *VAL_IDS]
    assert sorted(_by_video(index, "generated")) == list(TRAIN_IDS)
    assert counts["videos"] == 4 and counts["generated_videos"] == 3


def test_deterministic(dataset, frames, tmp_path):
    settings = dict(frameskip=2, blur_prob=0.5, blur_sigma=(0.5, 2.0))
    for name in ("a", "b"):
        make_seg_frames.build_training_set(dataset, tmp_path / name, frames, seed=11, **settings)
    make_seg_frames.build_training_set(dataset, tmp_path / "other", frames, seed=12, **settings)
    for name in ("images.npy", "masks.npy", "index.csv", "counts.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "index.csv").read_text() != (tmp_path / "other" / "index.csv").read_text()


def test_verb(dataset, frames, tmp_path):
    parser = argparse.ArgumentParser()
    make_seg_frames.add_arguments(parser)
    out = tmp_path / "results" / "segframes"
    args = parser.parse_args(
        ["--root", str(dataset), "--frames", str(frames), "--out", str(out), "--frameskip", "2",
         "--blur-prob", "1", "--blur-sigma", "1,1.25", "--seed", "5"]
    )
    assert args.generated is True
    make_seg_frames.main(args)
    index = _check_rows(out, frames)
    real = [e["blur_sigma"] for e in index if e["source"] == "real"]
    assert len(real) == 11 * len(TRAIN_IDS) and all(1 <= sigma <= 1.25 for sigma in real)
    args = parser.parse_args(["--root", str(dataset), "--out", str(out), "--no-generated"])
    assert args.generated is False and args.frameskip == 1 and args.blur_prob == 0.3
    make_seg_frames.main(args)
    assert _load(out)[3]["generated"] == 0, "a rerun replaces the folder"
    assert make_seg_frames.parse_sigma_range(" 0.5 , 2 ") == (0.5, 2.0)


# Each case: (build_training_set kwargs, text the error must contain, what it must start with).
def _bad_cases(tmp_path):
    def frames_file(name, **kwargs):
        return _write_frames(tmp_path / name / "frames_train.npy", **kwargs)

    unknown, small, inputs = frames_file("ids", ids=(0, 1, 99)), frames_file("size", size=(16, 24)), frames_file(
        "idx", frame_indices=range(5, 16)
    )
    missing = tmp_path / "nowhere" / "frames_train.npy"
    return {
        "unknown ids": (dict(frames_path=unknown), "not labeled videos of the dataset", str(unknown)),
        "frame size": (dict(frames_path=small), "16x24, but the dataset's are 32x48", str(small)),
        "input frames": (dict(frames_path=inputs), "frame_indices", str(inputs.with_suffix(".json"))),
        "missing file": (dict(frames_path=missing), "does not exist", str(missing)),
        "no frames path": (dict(frames_path=None), "required unless --no-generated", "--frames"),
        "k=0": (dict(frameskip=0), "must be an integer >= 1", "augment.frameskip"),
        "prob > 1": (dict(blur_prob=1.5), "probability", "augment.blur_prob"),
        "prob < 0": (dict(blur_prob=-0.1), "probability", "augment.blur_prob"),
        "sigma reversed": (dict(blur_sigma=(2.0, 1.0)), "0 < min <= max", "augment.blur_sigma"),
        "sigma zero": (dict(blur_sigma=(0.0, 1.0)), "0 < min <= max", "augment.blur_sigma"),
        "unlabeled split": (dict(splits=("unlabeled",)), "need masks", "--splits"),
        "seed": (dict(seed=-1), ">= 0", "augment.seed"),
    }


@pytest.mark.parametrize(
    "case",
    ["unknown ids", "frame size", "input frames", "missing file", "no frames path", "k=0",
     "prob > 1", "prob < 0", "sigma reversed", "sigma zero", "unlabeled split", "seed"],
)
def test_bad_input_raises_and_writes_nothing(dataset, frames, tmp_path, case):
    kwargs, message, prefix = _bad_cases(tmp_path)[case]
    kwargs.setdefault("frames_path", frames)
    results = tmp_path / "results"
    with pytest.raises(FuturesegError, match=message) as info:
        make_seg_frames.build_training_set(dataset, results / "segframes", **kwargs)
    assert str(info.value).startswith(prefix), "the error names the file or the option first"
    assert not results.exists(), "no output folder, no temp folder"


def test_bad_sigma_text():
    for text in ("1", "a,b", "1,2,3", ""):
        with pytest.raises(ConfigError, match="augment.blur_sigma"):
            make_seg_frames.parse_sigma_range(text)


def test_failure_midway_keeps_previous_output(dataset, frames, tmp_path):
    broken = tmp_path / "dataset"
    _write_dataset(broken)
    out = tmp_path / "results" / "segframes"
    make_seg_frames.build_training_set(broken, out, frames, seed=0)
    before = (out / "index.csv").read_bytes()
    missing = data.list_videos(broken, "train")[-1].frame_path(20)
    missing.unlink()
    with pytest.raises(DataError, match="frame is missing") as info:
        make_seg_frames.build_training_set(broken, out, frames, seed=1)
    assert str(info.value).startswith(str(missing))
    assert (out / "index.csv").read_bytes() == before, "the previous set is untouched"
    assert [p.name for p in out.parent.iterdir()] == ["segframes"], "no temp folder left"
