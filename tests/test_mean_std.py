import json

import numpy as np

from futureseg import cli
from futureseg.core import data
from futureseg.core.io import read_mean_std
from futureseg.data import mean_std


def _reference(root, splits):
    """Plain float64 numpy over every pixel, all frames held in memory."""
    frames = [data.read_frames(v).reshape(-1, 3) for s in splits for v in data.list_videos(root, s)]
    pixels = np.concatenate(frames).astype(np.float64)
    return pixels.mean(0), pixels.std(0), len(frames) * 22


def test_equals_numpy_reference(tiny_dataset):
    stats = mean_std.compute_mean_std(tiny_dataset, ("train", "unlabeled"), workers=1)
    mean, std, _ = _reference(tiny_dataset, ("train", "unlabeled"))
    np.testing.assert_allclose(stats["mean"], mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["std"], std, rtol=0, atol=1e-6)
    assert stats["n_frames"] == 5 * 22
    assert stats["n_pixels_per_channel"] == 5 * 22 * 32 * 48


def test_workers_do_not_change_the_result(tiny_dataset):
    one = mean_std.compute_mean_std(tiny_dataset, ("train", "unlabeled", "hidden"), workers=1)
    two = mean_std.compute_mean_std(tiny_dataset, ("train", "unlabeled", "hidden"), workers=2)
    assert one == two
    assert one["n_frames"] == 5 * 22 + 2 * 11


def test_verb_writes_json(tiny_dataset, tmp_path):
    out = tmp_path / "results" / "data" / "mean_std.json"
    assert cli.main(["mean-std", "--root", str(tiny_dataset), "--out", str(out), "--workers", "2"]) == 0
    stats = json.loads(out.read_text())
    assert set(stats) >= {"mean", "std", "n_frames", "n_pixels_per_channel"}
    loaded_mean, loaded_std = read_mean_std(out)
    assert loaded_mean.shape == (3,) and (loaded_std > 0).all()
    assert [p.name for p in out.parent.iterdir()] == ["mean_std.json"], "no temp files left"


def test_accumulators_fold_before_uint32_overflow(monkeypatch):
    # Folding every 3 frames over 10 saturated-and-random frames: the integer sums must be
    # exact, the same as with no folding, and equal Python's sums.
    rng = np.random.default_rng(0)
    frames = [np.full((4, 5, 3), 255, np.uint8)] * 4 + [rng.integers(0, 256, (4, 5, 3), np.uint8) for _ in range(6)]
    expected = (
        10,
        [int(sum(int(v) for f in frames for v in f[..., c].ravel())) for c in range(3)],
        [int(sum(int(v) ** 2 for f in frames for v in f[..., c].ravel())) for c in range(3)],
    )
    for fold_every in (3, mean_std.FRAMES_PER_FOLD):
        monkeypatch.setattr(mean_std, "FRAMES_PER_FOLD", fold_every)
        moments = mean_std.ChannelMoments((4, 5))
        for frame in frames:
            moments.add(frame)
        assert moments.sums() == expected
    # 65,536 saturated frames fill a uint32 pixel with squares up to 4,261,478,400 < 2^32.
    assert mean_std.FRAMES_PER_FOLD * 255**2 < 2**32 <= (mean_std.FRAMES_PER_FOLD + 1000) * 255**2
