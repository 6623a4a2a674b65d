"""`futureseg cache-frames`: each split decoded once into a uint8 (N, T, H, W, 3) .npy."""

import argparse

import numpy as np
import pytest
from PIL import Image

from futureseg.core import data
from futureseg.data import cache_frames
from futureseg.core.errors import DataError
from futureseg.core.io import array_writer, load_array, load_cache


def _cache(root, split, out, workers=1):
    parser = argparse.ArgumentParser()
    cache_frames.add_arguments(parser)
    cache_frames.main(parser.parse_args(
        ["--root", str(root), "--split", split, "--out", str(out), "--workers", str(workers)]))


@pytest.mark.parametrize("split, workers", [("train", 2), ("unlabeled", 1), ("hidden", 2)])
def test_cache_equals_the_pngs(tiny_dataset, tmp_path, split, workers):
    out = tmp_path / "cache" / f"{split}.npy"
    _cache(tiny_dataset, split, out, workers)
    frames, meta = load_array(out)
    videos = data.list_videos(tiny_dataset, split)
    n_frames = 11 if split == "hidden" else 22
    assert frames.dtype == np.uint8 and frames.shape == (len(videos), n_frames, 32, 48, 3)
    assert meta["ids"] == [v.id for v in videos]
    assert meta["frame_indices"] == list(range(n_frames)) and meta["split"] == split
    for row, video in zip(frames, videos):
        np.testing.assert_array_equal(row, data.read_frames(video))
    assert sorted(p.name for p in out.parent.iterdir()) == [f"{split}.json", f"{split}.npy"], "no temp files"
    mapped, _ = load_cache(out)
    assert isinstance(mapped, np.memmap) and mapped.shape == frames.shape


def test_array_writer_matches_save_array_format(tmp_path):
    out = tmp_path / "a.npy"
    with array_writer(out, (3, 2, 2), [7, 8, 9], note="x") as array:
        array[:] = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    values, meta = load_array(out)
    np.testing.assert_array_equal(values, np.arange(12).reshape(3, 2, 2))
    assert meta == {"ids": [7, 8, 9], "note": "x"}


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_frame_names_the_file_and_leaves_no_output(dataset_copy, tmp_path, workers):
    video = data.list_videos(dataset_copy, "unlabeled")[-1]
    bad = video.frame_path(4)
    Image.new("RGB", (40, 30)).save(bad)  # a frame of another size
    out = tmp_path / "cache" / "unlabeled.npy"
    with pytest.raises(DataError, match=rf"^{bad}: frame is 30x40, expected 32x48"):
        _cache(dataset_copy, "unlabeled", out, workers)
    assert not out.parent.exists() or list(out.parent.iterdir()) == [], "no output and no temp file"


def test_load_cache_checks_the_sidecar(tiny_dataset, tmp_path):
    out = tmp_path / "val.npy"
    _cache(tiny_dataset, "val", out)
    out.with_suffix(".json").write_text('{"ids": [1]}')
    with pytest.raises(DataError, match=rf"^{out.with_suffix('.json')}: expected the ids of the 2 rows of val.npy, found 1 ids"):
        load_cache(out)
    with pytest.raises(DataError, match="frame cache file does not exist"):
        load_cache(tmp_path / "nothing.npy")
