"""`futureseg predict-frames`: the trained predictor's frames 11…21 as uint8, with ids and
frame_indices, sharded or whole, and GIFs of input → true | predicted."""

import argparse

import numpy as np
import pytest
import torch

from futureseg.data import cache_frames, mean_std
from futureseg.predict import predict_frames, train_predictor
from futureseg.core.errors import DataError
from futureseg.core.io import array_writer, load_array


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """Caches of val and hidden, and a tiny SimVP trained for 2 steps."""
    folder = tmp_path_factory.mktemp("predictor")
    for split in ("train", "val", "hidden"):
        cache_frames.cache_split(tiny_dataset, split, folder / f"{split}.npy")
    mean_std.run(tiny_dataset, folder / "mean_std.json")
    parser = argparse.ArgumentParser()
    train_predictor.add_arguments(parser)
    threads = torch.get_num_threads()
    train_predictor.train(parser.parse_args([
        "--cache", str(folder / "train.npy"), "--val-cache", str(folder / "val.npy"),
        "--mean-std", str(folder / "mean_std.json"), "--out", str(folder / "model.pt"),
        "--metrics", str(folder / "metrics.csv"), "--checkpoints", str(folder / "checkpoints"),
        "--model", "simvp", "--model-config", '{"hid_S": 8, "hid_T": 16, "N_S": 2, "N_T": 2}',
        "--epochs", "4", "--lr", "0.002", "--weight-decay", "0.05", "--batch-size", "1", "--max-steps", "2",
        "--threads", "1", "--loader-workers", "0",
    ]))
    torch.set_num_threads(threads)
    return folder


def _predict(trained, split, out, *extra):
    parser = argparse.ArgumentParser()
    predict_frames.add_arguments(parser)
    args = parser.parse_args(["--model", str(trained / "model.pt"), "--cache", str(trained / f"{split}.npy"),
                              "--out", str(out), "--threads", "1", *extra])
    predict_frames.main(args)
    return load_array(out)


def _reference(trained, split):
    """What the model predicts, computed directly: float frames 11…21 on the 0…255 scale."""
    model, saved = predict_frames.load_predictor(trained / "model.pt", torch.device("cpu"))
    videos, _ = load_array(trained / f"{split}.npy")
    mean = torch.tensor(saved["mean"]).view(1, 1, 3, 1, 1)
    std = torch.tensor(saved["std"]).view(1, 1, 3, 1, 1)
    x = torch.from_numpy(videos[:, :11]).permute(0, 1, 4, 2, 3).float()
    with torch.no_grad():
        predicted = model((x - mean) / std) * std + mean
    return predicted.permute(0, 1, 3, 4, 2).numpy()


def test_predicted_frames_are_rounded_uint8_with_ids_and_frame_indices(trained, tmp_path):
    frames, meta = _predict(trained, "val", tmp_path / "frames_val.npy", "--frames", "11,15,21", "--batch-size", "1")
    _, cache_meta = load_array(trained / "val.npy")
    assert frames.dtype == np.uint8 and frames.shape == (2, 3, 32, 48, 3)
    assert meta["ids"] == cache_meta["ids"] and meta["frame_indices"] == [11, 15, 21]
    reference = _reference(trained, "val")[:, [0, 4, 10]]
    expected = np.clip(np.round(reference), 0, 255)
    # rounding the same float from two batchings may differ by one at an exact .5
    assert np.abs(frames.astype(int) - expected).max() <= 1
    assert (frames.astype(int) == expected).mean() > 0.999

    everything, meta_all = _predict(trained, "val", tmp_path / "all.npy", "--frames", "11-21")
    assert meta_all["frame_indices"] == list(range(11, 22)) and everything.shape[1] == 11
    np.testing.assert_array_equal(everything[:, [0, 4, 10]], frames)


def test_hidden_split_and_shards_concatenate(trained, tmp_path):
    whole, meta = _predict(trained, "hidden", tmp_path / "frames_hidden.npy", "--frames", "21")
    _, cache_meta = load_array(trained / "hidden.npy")
    assert whole.shape == (2, 1, 32, 48, 3) and meta["ids"] == cache_meta["ids"]
    assert meta["frame_indices"] == [21] and meta["split"] == "hidden"

    parts = [_predict(trained, "hidden", tmp_path / f"shard{i}.npy", "--frames", "21", "--shard", f"{i}/2")
             for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole)
    assert sum((p[1]["ids"] for p in parts), []) == meta["ids"]
    assert [p[1]["shard"] for p in parts] == [[0, 2], [1, 2]]


def test_parse_frames_and_shard():
    assert predict_frames.parse_frames("11-21") == list(range(11, 22))
    assert predict_frames.parse_frames("21") == [21]
    assert predict_frames.parse_frames("21,11,15") == [11, 15, 21]
    for bad in ("10", "22", "11-22", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            predict_frames.parse_frames(bad)
    assert predict_frames.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            predict_frames.parse_shard(bad)
    rows = [predict_frames.shard_rows(10, (i, 3)) for i in range(3)]
    assert [list(r) for r in rows] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_a_cache_of_another_frame_size_is_refused(trained, tmp_path):
    other = tmp_path / "other.npy"
    with array_writer(other, (1, 22, 16, 16, 3), [5]) as array:
        array[:] = 0
    with pytest.raises(DataError, match=rf"^{other}: frames are 16x16, the model .* was trained on 32x48"):
        _predict(trained, "val", tmp_path / "out.npy", "--cache", str(other))
