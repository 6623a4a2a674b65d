"""io.read_array: every verb's reader of an array with an ids sidecar names the file at fault."""

import re

import numpy as np
import pytest

from futureseg.errors import DataError
from futureseg.io import read_array, save_array


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
