import numpy as np
import pytest

from futureseg import cli
from futureseg.core.io import load_array, save_array


def _shards(tmp_path, parts):
    paths = []
    for i, (ids, array) in enumerate(parts):
        path = tmp_path / f"masks_{i + 1}-of-{len(parts)}.npy"
        save_array(path, array, ids, frame_index=21, source=f"shard {i}")
        paths.append(str(path))
    return paths


def test_gathers_in_order(tmp_path):
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 49, (5, 4, 6), dtype=np.uint8)
    paths = _shards(tmp_path, [([10, 11], whole[:2]), ([12, 13, 14], whole[2:])])
    out = tmp_path / "masks_hidden.npy"
    assert cli.main(["gather-shards", "--shards", *paths, "--out", str(out)]) == 0
    array, meta = load_array(out)
    np.testing.assert_array_equal(array, whole)
    assert meta["ids"] == [10, 11, 12, 13, 14] and meta["frame_index"] == 21


@pytest.mark.parametrize(
    "parts, message",
    [
        ([([12, 13], np.zeros((2, 4, 6), np.uint8)), ([10, 11], np.zeros((2, 4, 6), np.uint8))], "not ascending"),
        ([([10], np.zeros((1, 4, 6), np.uint8)), ([11], np.zeros((1, 4, 7), np.uint8))], "shard rows are"),
    ],
    ids=["out-of-order", "other-frame-size"],
)
def test_refuses_shards_that_do_not_fit(tmp_path, capsys, parts, message):
    paths = _shards(tmp_path, parts)
    out = tmp_path / "masks_hidden.npy"
    assert cli.main(["gather-shards", "--shards", *paths, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
