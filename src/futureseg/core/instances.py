"""Semantic masks ↔ instances, the two conversions around Mask R-CNN.

`mask_to_instances` turns a class-id mask into Mask R-CNN training targets: one instance
per 8-connected component of each class. (In this dataset every object has its own class,
so several components of one class are the pieces of one object cut by an occluder; each
piece is its own instance with a tight box, and pieces smaller than `min_pixels` — the
slivers an occluder leaves — are dropped.) 8-connectivity keeps two pixels that touch at a
corner together, since they are never two objects.

Boxes are xyxy float32 in pixel-edge coordinates: pixel (row r, column c) covers
[c, c+1) × [r, r+1), so a component spanning columns 3…7 has x1 = 3, x2 = 8. This is the
convention of COCO boxes as torchvision's detection references feed them, and of
detectron2's BitMasks.get_bounding_boxes; it also gives a one-pixel-wide piece a box of
width 1, where "x2 = last column" would give a degenerate box that torchvision rejects.

Connected components come from `scipy.ndimage.label` (a declared dependency): a C
implementation in a well-kept library. torchvision has no labelling op, and scikit-image
is heavier than scipy, so neither was used.

`instances_to_mask` paints predicted instances back into a class-id mask: instances
scoring at least `score_threshold` are painted in ascending score order, so where masks
overlap the most confident instance wins; a pixel belongs to an instance where its mask
probability is at least `mask_threshold`. Ties in score keep input order (the later one
wins). Unpainted pixels are background (0).

`object_vote` gives each object one class: every 8-connected component of the foreground
(class != 0), whatever its classes, is repainted in the class with most pixels in it. A
semantic segmenter finds the objects and their colour but may paint one object in two or
three classes (shape or material wrong on part of it); in this dataset an object has one
class, and the majority of its pixels is right more often than each pixel alone. (Two
objects that touch form one component and get one class: the price of the vote.)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def label_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean array: (int32 labels 1…n, 0 outside; n),
    numbered in row-major order of each component's first pixel."""
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"label_components: expected a 2-D array, got shape {binary.shape}")
    labels, n = ndimage.label(binary, structure=_EIGHT_NEIGHBOURS)
    return labels.astype(np.int32, copy=False), int(n)


def mask_to_instances(mask: np.ndarray, min_pixels: int = 0) -> dict:
    """Instances of a (H, W) class-id mask (0 = background).

    Returns {"boxes": float32 (N, 4) xyxy pixel edges, "labels": int64 (N,),
    "masks": uint8 (N, H, W) 0/1}, one instance per 8-connected component of each class
    with at least `min_pixels` pixels, ordered by class, then by the component's first
    pixel in row-major order. N may be 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_instances: expected a (H, W) mask, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask_to_instances: expected integer class ids, got dtype {mask.dtype}")
    h, w = mask.shape
    boxes, labels, masks = [], [], []
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        components, n = label_components(mask == class_id)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        # components are numbered in row-major order of their first pixel
        for component in range(1, n + 1):
            if sizes[component] < max(min_pixels, 1):
                continue
            piece = components == component
            rows = np.flatnonzero(piece.any(1))
            cols = np.flatnonzero(piece.any(0))
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
            labels.append(int(class_id))
            masks.append(piece)
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "masks": np.asarray(masks, dtype=np.uint8).reshape(-1, h, w),
    }


def instances_to_mask(
    masks: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A (H, W) uint8 class-id mask painted from instances (see the module docstring).

    masks: (N, H, W) probabilities in 0…1 or booleans/0-1 integers; labels (N,) class ids
    1…255; scores (N,). `size` gives (H, W) when N may be 0 and masks has no shape to tell.
    """
    masks = np.asarray(masks)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or not (len(masks) == len(labels) == len(scores)):
        raise ValueError(
            f"instances_to_mask: need masks (N, H, W), labels (N,), scores (N,); "
            f"got {masks.shape}, {labels.shape}, {scores.shape}"
        )
    if size is None:
        size = masks.shape[1:]
    out = np.zeros(size, dtype=np.uint8)
    order = np.argsort(scores, kind="stable")
    for index in order:
        if scores[index] < score_threshold:
            continue
        out[masks[index] >= mask_threshold] = labels[index]
    return out


def object_vote(mask: np.ndarray) -> np.ndarray:
    """One class per object: every object of a class-id mask repainted in its majority class
    (ties: the lowest class id); background (0) stays. mask: integer (H, W), or (..., H, W),
    each 2-D frame voted on its own; returns uint8 of the same shape.

    An object is an 8-connected component of the pixels of one colour (the class's colour
    part, `classes.class_parts`), not of the whole foreground: objects touch and occlude
    each other, and a foreground component holding two or three of them would be repainted
    in one class (measured on the demo's val: oracle 0.352 → 0.338 with the foreground vote),
    while a segmenter gets the colour right on 99% of an object's pixels and the shape on
    half of them, so colour components split touching objects apart and keep an object whole
    (oracle 0.352 → 0.407; 0.310 → 0.340 on another synthetic val of 100 videos).

    One `ndimage.label` per colour present and one bincount over (component, class) pairs
    per frame: about 1 ms for a 160×240 frame on one CPU core."""
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"object_vote: expected a (H, W) mask, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"object_vote: expected integer class ids, got dtype {mask.dtype}")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f"object_vote: class ids must lie in 0…255, got {int(mask.min())}…{int(mask.max())}")
    if mask.ndim > 2:
        frames = mask.reshape(-1, *mask.shape[-2:])
        return np.stack([_vote_frame(f) for f in frames]).reshape(mask.shape) if len(frames) else mask.astype(np.uint8)
    return _vote_frame(mask)


def colour_components(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """The objects of a (H, W) class-id mask as a segmenter sees them: the 8-connected
    components of the pixels of each colour (see `object_vote`). Returns (labels int64
    (H, W), 1…n on the objects, 0 on the background; n; colour (n,) int64, each object's
    colour index 0…7), numbered colour by colour, then in row-major order of a component's
    first pixel."""
    from futureseg.core.classes import COLORS

    # colour of each pixel, 1…8 (0: background); class id = shape*16 + material*8 + colour + 1
    colour = np.where(mask != 0, (mask.astype(np.int64) - 1) % len(COLORS) + 1, 0)
    labels = np.zeros(mask.shape, dtype=np.int64)
    colours = []
    n = 0
    for c in np.unique(colour[colour != 0]):
        pieces, count = ndimage.label(colour == c, structure=_EIGHT_NEIGHBOURS)
        labels[pieces != 0] = pieces[pieces != 0] + n
        n += count
        colours += [int(c) - 1] * count
    return labels, n, np.asarray(colours, dtype=np.int64)


def majority_class(mask: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """int64 (n + 1,): at k, the class of most of the pixels of component k (1…n) of a label
    image over a class-id mask (ties: the lowest class id); at 0, the background, 0. One
    bincount over (component, class) pairs."""
    width = int(mask.max()) + 1 if mask.size else 1
    flat_labels = labels.ravel()
    foreground = flat_labels != 0
    pairs = flat_labels[foreground].astype(np.int64) * width + mask.ravel()[foreground]
    counts = np.bincount(pairs, minlength=(n + 1) * width).reshape(n + 1, width)
    winner = counts.argmax(1)  # argmax: the first, i.e. lowest, class of a tie
    winner[0] = 0  # background
    return winner


def _vote_frame(mask: np.ndarray) -> np.ndarray:
    labels, n, _ = colour_components(mask)
    if n == 0:
        return mask.astype(np.uint8)
    return majority_class(mask, labels, n).astype(np.uint8)[labels]
