"""The one reader of the Dataset_Student layout (real or synthetic), used by every stage.

    <root>/<split>/video_<id>/image_0.png … image_21.png [, mask.npy]

Every check raises `DataError` whose message starts with the offending path.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from futureseg.core.errors import DataError

SPLITS = ("train", "val", "unlabeled", "hidden")
LABELED_SPLITS = ("train", "val")
N_FRAMES = 22  # frames in a full video
N_INPUT = 11  # frames 0…10 are the model's input
TARGET_FRAME = 21  # the frame whose mask is predicted
NUM_CLASSES = 49  # background + 48 object classes

_VIDEO_DIR = re.compile(r"^video_(\d+)$")


@dataclass(frozen=True)
class Video:
    id: int
    path: Path
    split: str

    def frame_path(self, index: int) -> Path:
        return self.path / f"image_{index}.png"

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.npy"


def frames_in_split(split: str) -> int:
    """Hidden videos hold only the 11 input frames; every other split holds 22."""
    return N_INPUT if split == "hidden" else N_FRAMES


def list_videos(root: str | Path, split: str) -> list[Video]:
    """The videos of one split, sorted by id. A missing or empty split is an error."""
    if split not in SPLITS:
        raise DataError(f"{split!r}: unknown split, expected one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist or is not a folder")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder}: split folder is missing")
    videos = []
    for entry in folder.iterdir():
        match = _VIDEO_DIR.match(entry.name)
        if match and entry.is_dir():
            videos.append(Video(int(match.group(1)), entry, split))
    if not videos:
        raise DataError(f"{folder}: split is empty (no video_<id> folders)")
    videos.sort(key=lambda v: v.id)
    return videos


def read_frame(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One RGB frame as uint8 (H, W, 3). `size`, when given, is the (H, W) it must have."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: frame is missing")
    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except Exception as exc:  # PIL raises many types for truncated or non-image files
        raise DataError(f"{path}: unreadable image ({exc})") from None
    _check_frame_format(path, mode, array.shape[:2], size)
    return array


# The last chunk of every PNG: IEND, empty, with its fixed CRC.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def frame_header(path: str | Path, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of a frame from its PNG header, without decoding the pixels: the checks of
    `read_frame` (present, an image, 8-bit RGB, of `size`) plus the PNG's closing IEND chunk,
    which a truncated file (an interrupted copy or unzip) lacks. Damage inside the
    compressed data shows only when the frame is decoded (read_frame)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: frame is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable image ({exc.strerror})") from None
    with f:
        try:
            with Image.open(f) as image:
                mode, (width, height) = image.mode, image.size
                format_ = image.format
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(0, end - len(_PNG_END)))
            tail = f.read()
        except Exception as exc:  # PIL raises many types for truncated or non-image files
            raise DataError(f"{path}: unreadable image ({exc})") from None
    if format_ == "PNG" and tail != _PNG_END:
        raise DataError(f"{path}: unreadable image (truncated PNG: no IEND chunk at the end of its {end} bytes)")
    _check_frame_format(path, mode, (height, width), size)
    return height, width


def _check_frame_format(path: Path, mode: str, shape: tuple[int, int], size: tuple[int, int] | None) -> None:
    """What read_frame and frame_header both require of a frame's mode and size."""
    if mode != "RGB":
        raise DataError(f"{path}: frame is {mode}, expected 8-bit RGB")
    if size is not None and tuple(shape) != tuple(size):
        raise DataError(
            f"{path}: frame is {shape[0]}x{shape[1]}, "
            f"expected {size[0]}x{size[1]} like the rest of the dataset"
        )


def read_frames(video: Video, indices=None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames of a video as uint8 (T, H, W, 3); all frames of its split by default."""
    if indices is None:
        indices = range(frames_in_split(video.split))
    frames = []
    for index in indices:
        frame = read_frame(video.frame_path(index), size)
        size = size or frame.shape[:2]
        frames.append(frame)
    return np.stack(frames)


def read_mask(video: Video, size: tuple[int, int] | None = None) -> np.ndarray:
    """The (22, H, W) class-id mask of a labeled video, as uint8."""
    return load_mask(video.mask_path, size).astype(np.uint8)


def load_mask(path: str | Path, size: tuple[int, int] | None = None, mmap: bool = False) -> np.ndarray:
    """A mask.npy, checked: integer dtype, shape (22, H, W) (H, W = `size` when given), class
    ids 0…48. With `mmap` the array stays on disk (memory-mapped, as stored): the dtype and
    shape come from the .npy header, only the class range reads the data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask is missing")
    try:
        mask = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: unreadable mask ({exc})") from None
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{path}: mask dtype is {mask.dtype}, expected an integer type")
    expected = (N_FRAMES, *size) if size is not None else None
    if mask.ndim != 3 or mask.shape[0] != N_FRAMES or (expected and mask.shape != expected):
        want = f"(22, {size[0]}, {size[1]})" if size else "(22, H, W)"
        raise DataError(f"{path}: mask shape is {mask.shape}, expected {want}")
    if mask.size and (mask.min() < 0 or mask.max() >= NUM_CLASSES):
        raise DataError(
            f"{path}: mask holds class ids {int(mask.min())}…{int(mask.max())}, "
            f"expected 0…{NUM_CLASSES - 1}"
        )
    return mask


def frame_size(root: str | Path, split: str) -> tuple[int, int]:
    """(H, W) of the dataset, read from the first frame of the split's first video."""
    first = list_videos(root, split)[0]
    return read_frame(first.frame_path(0)).shape[:2]


def validate_split(root: str | Path, split: str, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Read every frame and mask of a split once; return its frame size.

    A hidden video with 22 frames is accepted (only frames 0…10 are used) with a warning.
    """
    videos = list_videos(root, split)
    size = size or read_frame(videos[0].frame_path(0)).shape[:2]
    for video in videos:
        read_frames(video, size=size)
        if split in LABELED_SPLITS:
            read_mask(video, size)
        warn_long_hidden(video)
    return size


def warn_long_hidden(video: Video) -> None:
    """A hidden video with all 22 frames is accepted; say that frames 11… go unused."""
    if video.split == "hidden" and video.frame_path(N_INPUT).exists():
        warnings.warn(f"{video.path}: hidden video has more than 11 frames; only 0…10 are used")


def read_split_masks(root, split: str) -> tuple[np.ndarray, list[int]]:
    """uint8 (N, 22, H, W) true masks of a labeled split, and the video ids."""
    videos = list_videos(root, split)
    size = frame_size(root, split)
    return np.stack([read_mask(v, size).astype(np.uint8) for v in videos]), [v.id for v in videos]
