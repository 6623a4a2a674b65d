"""io.read_array: every verb's reader of an array with an ids sidecar names the file at fault;
atomic_path: a killed writer's temps are removed by the next writer of the same output."""

import re

import numpy as np
import pytest

from futureseg.core.errors import DataError
from futureseg.core.io import atomic_path, read_array, save_array, write_json


@pytest.fixture
def array_file(tmp_path):
    path = tmp_path / "masks_val.npy"
    save_array(path, np.arange(24, dtype=np.uint8).reshape(3, 2, 4), [4, 7, 9], frame_index=21)
    return path


def test_reads_the_array_and_its_sidecar(array_file):
    for mmap in (True, False):
        array, meta = read_array(array_file, "masks", mmap=mmap)
        np.testing.assert_array_equal(array, np.arange(24).reshape(3, 2, 4))
        assert meta == {"ids": [4, 7, 9], "frame_index": 21}
    assert isinstance(read_array(array_file, "masks")[0], np.memmap)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])
    return path


@pytest.mark.parametrize(
    "spoil, at_fault, message",
    [
        (lambda p: p.unlink(), "npy", "masks file does not exist"),
        (lambda p: p.with_suffix(".json").unlink(), "json", "the ids sidecar of the masks masks_val.npy is missing"),
        (_truncate, "npy", "unreadable masks (ValueError"),
        (lambda p: p.write_bytes(b"not an npy file"), "npy", "unreadable masks (ValueError"),
        (lambda p: p.with_suffix(".json").write_text('{"ids": [4, 7'), "npy", "unreadable masks (JSONDecodeError"),
        (lambda p: p.with_suffix(".json").write_text('{"ids": [4, 7]}'), "json", "expected the ids of the 3 rows of masks_val.npy, found 2 ids"),
        (lambda p: p.with_suffix(".json").write_text('{"id": [4, 7, 9]}'), "json", "found no ids list"),
        (lambda p: p.with_suffix(".json").write_text('[4, 7, 9]'), "json", "found no ids list"),
    ],
    ids=["no array", "no sidecar", "truncated", "not npy", "bad json", "ids short", "no ids key", "not an object"],
)
def test_names_the_file_and_what_is_wrong(array_file, spoil, at_fault, message):
    spoil(array_file)
    path = array_file if at_fault == "npy" else array_file.with_suffix(".json")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: .*{re.escape(message)}"):
        read_array(array_file, "masks", mmap=False)


def test_the_next_writer_removes_a_killed_writers_temps_of_its_output_only(tmp_path):
    stale = [tmp_path / ".scores.json.k3v_9x0a.tmp", tmp_path / ".scores.json.00000000.tmp"]
    stale[0].write_text("half a file")
    stale[1].mkdir()  # a temp folder (atomic_path(..., is_dir=True)) with content
    (stale[1] / "part").write_text("x")
    others = [
        tmp_path / ".scores.json.json.k3v_9x0a.tmp",  # another output's temp (scores.json.json)
        tmp_path / ".per_class.csv.k3v_9x0a.tmp",  # another output's temp
        tmp_path / ".scores.json.notatemp",  # not a name atomic_path makes
        tmp_path / "scores.json.k3v_9x0a.tmp",
    ]
    for path in others:
        path.write_text("keep")
    write_json(tmp_path / "scores.json", {"iou": 0.5})
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "keep" for path in others)
    assert {p.name for p in tmp_path.iterdir()} == {"scores.json", *(p.name for p in others)}


def test_a_writer_keeps_its_own_temp_until_it_renames_it(tmp_path):
    out = tmp_path / "model.pt"
    with atomic_path(out) as tmp:
        tmp.write_text("weights")
        assert tmp.exists() and tmp.name.startswith(".model.pt.")
    assert out.read_text() == "weights" and list(tmp_path.iterdir()) == [out]
