"""The synthetic dataset generator: class ids, layout, determinism, mask/frame agreement."""

import argparse
import colorsys
import json

import numpy as np
import pytest
from PIL import Image

from futureseg.core.classes import COLOR_RGB, COLORS, MATERIALS, PALETTE, SHAPES, class_id, class_name, class_parts
from futureseg.core.errors import ConfigError
from futureseg.data import synth
from futureseg.data.synth import generate_dataset, make_contact_sheet

H, W = 32, 48
SMALL = {"train": 2, "val": 1, "unlabeled": 1, "hidden": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Enough videos (at 32×48) that some have an object entering after frame 10."""
    root = tmp_path_factory.mktemp("synth") / "data"
    manifest = generate_dataset(root, {"train": 16, "val": 2, "unlabeled": 2, "hidden": 2}, H, W, seed=5)
    return root, manifest


def file_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ classes


def test_class_id_formula():
    ids = [class_id(s, m, c) for s in range(3) for m in range(2) for c in range(8)]
    assert sorted(ids) == list(range(1, 49))
    assert class_id(0, 0, 0) == 1  # metal gray cube
    assert class_id(1, 0, 1) == 18  # metal red sphere
    assert class_id(2, 1, 7) == 48  # rubber yellow cylinder
    assert class_id(1, 1, 2) == 1 * 16 + 1 * 8 + 2 + 1
    assert class_name(0) == "background"
    assert class_name(1) == "metal gray cube"
    assert class_name(18) == "metal red sphere"
    assert class_name(48) == "rubber yellow cylinder"
    for s in range(3):
        for m in range(2):
            for c in range(8):
                assert class_name(class_id(s, m, c)) == f"{MATERIALS[m]} {COLORS[c]} {SHAPES[s]}"
    with pytest.raises(ValueError):
        class_id(3, 0, 0)
    with pytest.raises(ValueError):
        class_name(49)


def test_palette():
    assert PALETTE.shape == (49, 3) and PALETTE.dtype == np.uint8
    assert (PALETTE[0] == 0).all()
    assert len({tuple(row) for row in PALETTE}) == 49


# ------------------------------------------------------------------ layout


def test_layout(dataset):
    root, manifest = dataset
    ids = manifest["ids"]
    assert ids["train"] == list(range(16)) and ids["val"] == [16, 17]
    assert ids["unlabeled"] == [18, 19] and ids["hidden"] == [20, 21]
    layout = (("train", 22, True), ("val", 22, True), ("unlabeled", 22, False), ("hidden", 11, False))
    for split, n_frames, has_mask in layout:
        videos = sorted((root / split).iterdir())
        assert [v.name for v in videos] == [f"video_{i:05d}" for i in ids[split]]
        for video in videos:
            names = {p.name for p in video.iterdir()}
            expected = {f"image_{t}.png" for t in range(n_frames)} | ({"mask.npy"} if has_mask else set())
            assert names == expected, video
            with Image.open(video / "image_0.png") as image:
                assert image.mode == "RGB" and image.size == (W, H)
            if has_mask:
                mask = np.load(video / "mask.npy")
                assert mask.shape == (22, H, W) and mask.dtype == np.uint8
                assert mask.max() <= 48 and mask.any()
    saved = json.loads((root / "manifest.json").read_text())
    assert saved == json.loads(json.dumps(manifest))
    assert saved["seed"] == 5 and (saved["height"], saved["width"]) == (H, W)
    assert saved["format_version"] == synth.FORMAT_VERSION


def test_zero_count_split_is_not_written(tmp_path):
    manifest = generate_dataset(tmp_path / "d", {"train": 1, "hidden": 2, "val": 0}, 16, 16, seed=0)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["hidden", "manifest.json", "train"]
    assert manifest["ids"] == {"train": [0], "hidden": [1, 2]}


# ------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    generate_dataset(tmp_path / "a", SMALL, H, W, seed=11)
    generate_dataset(tmp_path / "b", SMALL, H, W, seed=11)
    generate_dataset(tmp_path / "c", SMALL, H, W, seed=12)
    a, b, c = (file_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    data_files = [k for k in a if k != "manifest.json"]
    assert any(a[k] != c[k] for k in data_files)
    assert all(a[k] != c[k] for k in data_files if k.endswith("mask.npy"))


def test_workers_do_not_change_the_output(tmp_path):
    generate_dataset(tmp_path / "one", SMALL, H, W, seed=3, workers=1)
    generate_dataset(tmp_path / "two", SMALL, H, W, seed=3, workers=2)
    assert file_bytes(tmp_path / "one") == file_bytes(tmp_path / "two")


# ------------------------------------------------------------------ content


def colour_family(rgb) -> int:
    """Index into COLORS of the colour an RGB triple looks like: grey when unsaturated,
    else the colour of nearest hue. Shading (scaling) and highlights (adding white) keep
    the hue, so an object's mean colour keeps its family."""
    h, s, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))
    if s < 0.1:
        return 0
    hues = [colorsys.rgb_to_hsv(*(c / 255))[0] for c in COLOR_RGB[1:]]
    return 1 + int(np.argmin([min(abs(h - x), 1 - abs(h - x)) for x in hues]))


def test_colour_family_of_base_colours():
    assert [colour_family(c) for c in COLOR_RGB] == list(range(8))


def test_masks_agree_with_frames(dataset):
    root, _ = dataset
    floor = synth.render_floor(H, W).astype(int)
    checked = 0
    for video in sorted((root / "train").iterdir())[:8]:
        masks = np.load(video / "mask.npy")
        for t in range(22):
            frame = np.asarray(Image.open(video / f"image_{t}.png")).astype(int)
            background = masks[t] == 0
            # background is the floor, at most darkened by soft shadows
            assert (frame[background] <= floor[background]).all()
            assert (frame[background] >= 0.5 * floor[background]).all()
            assert (frame[background] == floor[background]).all(axis=1).mean() > 0.5
            for c in np.unique(masks[t])[1:]:
                pixels = frame[masks[t] == c]
                assert colour_family(pixels.mean(0)) == class_parts(c)[2], (video, t, class_name(c))
                assert (pixels != floor[masks[t] == c]).any(axis=1).mean() > 0.5
                checked += 1
    assert checked > 100


def test_objects_have_distinct_classes_and_stay_in_view(dataset):
    root, manifest = dataset
    for video_id, info in manifest["videos"].items():
        assert 2 <= len(info["objects"]) <= 6
        assert len(set(info["objects"])) == len(info["objects"])
    for video in sorted((root / "train").iterdir()):
        masks = np.load(video / "mask.npy")
        info = manifest["videos"][str(int(video.name[6:]))]
        initial = set(info["objects"]) - set(info["entering"])
        assert initial <= set(np.unique(masks[0]).tolist())


def test_some_object_enters_after_frame_10(dataset):
    root, manifest = dataset
    entered = []
    for video in sorted((root / "train").iterdir()):
        masks = np.load(video / "mask.npy")
        late = set(np.unique(masks[21]).tolist()) - set(np.unique(masks[:11]).tolist())
        if late:
            entered.append(video.name)
            assert late <= set(manifest["videos"][str(int(video.name[6:]))]["entering"])
    assert entered
    assert sum(bool(v["entering"]) for v in manifest["videos"].values()) >= len(entered)


# ------------------------------------------------------------------ errors and atomicity


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 8},
        {"width": 15},
        {"height": "32"},
        {"counts": {"test": 1}},
        {"counts": {"train": -1}},
        {"counts": {"train": 1.5}},
        {"counts": {"train": True}},
        {"counts": {"train": 0, "val": 0}},
        {"counts": ["train"]},
        {"seed": -1},
        {"workers": 0},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    args = {"counts": {"train": 1}, "height": H, "width": W, "seed": 0, **kwargs}
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "d", **args)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_root(tmp_path, monkeypatch):
    real = synth.render_video
    calls = []

    def flaky(video_id, *args):
        calls.append(video_id)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(video_id, *args)

    monkeypatch.setattr(synth, "render_video", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        generate_dataset(tmp_path / "d", SMALL, H, W, seed=0)
    assert list(tmp_path.iterdir()) == []  # neither the root nor a temporary folder


def test_existing_root_is_replaced(tmp_path):
    root = tmp_path / "d"
    (root / "stale").mkdir(parents=True)
    generate_dataset(root, {"val": 1}, 16, 16, seed=0)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "val"]


# ------------------------------------------------------------------ contact sheet and verb


def test_contact_sheet(dataset, tmp_path):
    root, _ = dataset
    make_contact_sheet(root, "train", tmp_path / "train.png", n_videos=3)
    make_contact_sheet(root, "hidden", tmp_path / "hidden.png")  # 11 frames, no masks
    with Image.open(tmp_path / "train.png") as sheet, Image.open(tmp_path / "hidden.png") as hidden:
        assert sheet.mode == "RGB"
        assert sheet.size[0] > 5 * W and sheet.size[1] > 3 * 2 * H
        assert hidden.size[1] < sheet.size[1]


def test_verb(tmp_path):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    out = tmp_path / "d"
    args = parser.parse_args(
        ["--out", str(out), "--height", "16", "--width", "24", "--train", "1", "--val", "0",
         "--unlabeled", "1", "--hidden", "0", "--seed", "2", "--contact-sheet", str(tmp_path / "s.png")]
    )
    synth.main(args)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train", "unlabeled"]
    assert (tmp_path / "s.png").is_file()
