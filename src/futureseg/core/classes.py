"""The dataset's 48 object classes: a shape, a material and a colour each (class id =
shape*16 + material*8 + colour + 1, 0 is the background), their names and the colours that
draw them. The generator renders with them; the scores and figures name and paint by them.
"""

from __future__ import annotations

import numpy as np

from futureseg.core.data import NUM_CLASSES

SHAPES = ("cube", "sphere", "cylinder")
MATERIALS = ("metal", "rubber")
COLORS = ("gray", "red", "blue", "green", "brown", "cyan", "purple", "yellow")
assert NUM_CLASSES == 1 + len(SHAPES) * len(MATERIALS) * len(COLORS)

# The CLEVR colour table: what the base (fully lit, diffuse) colour of each object is.
COLOR_RGB = np.array(
    [
        (87, 87, 87),  # gray
        (173, 35, 35),  # red
        (42, 75, 215),  # blue
        (29, 105, 20),  # green
        (129, 74, 25),  # brown
        (41, 208, 208),  # cyan
        (129, 38, 192),  # purple
        (255, 238, 51),  # yellow
    ],
    dtype=np.float32,
)


def class_id(shape: int, material: int, color: int) -> int:
    """The class id of an object, 1…48: shape*16 + material*8 + color + 1."""
    parts = (("shape", shape, len(SHAPES)), ("material", material, len(MATERIALS)), ("color", color, len(COLORS)))
    for name, value, n in parts:
        if not 0 <= int(value) < n:
            raise ValueError(f"{name} index {value} out of range 0..{n - 1}")
    return int(shape) * 16 + int(material) * 8 + int(color) + 1


def class_parts(cid: int) -> tuple[int, int, int]:
    """(shape, material, color) indices of an object class id 1…48."""
    if not 1 <= int(cid) < NUM_CLASSES:
        raise ValueError(f"object class id {cid} out of range 1..{NUM_CLASSES - 1}")
    k = int(cid) - 1
    return k // 16, (k // 8) % 2, k % 8


def class_name(cid: int) -> str:
    """E.g. 18 -> "metal red sphere", 48 -> "rubber yellow cylinder", 0 -> "background"."""
    if int(cid) == 0:
        return "background"
    shape, material, color = class_parts(cid)
    return f"{MATERIALS[material]} {COLORS[color]} {SHAPES[shape]}"


def _make_palette() -> np.ndarray:
    """49 display colours: index 0 black; an object class gets its own colour family's hue,
    darkened or lightened per (shape, material), so that a colourised mask reads like the
    frame while the six classes of one colour stay distinguishable."""
    # shade per shape*2+material: cube metal/rubber, sphere metal/rubber, cylinder metal/rubber
    shades = (-0.45, -0.2, 0.0, 0.25, 0.5, 0.7)
    table = np.zeros((NUM_CLASSES, 3), np.float64)
    for cid in range(1, NUM_CLASSES):
        shape, material, color = class_parts(cid)
        base = COLOR_RGB[color].astype(np.float64)
        if color == 0:  # gray: lift it off the black background before shading
            base = np.array([128.0, 128.0, 128.0])
        s = shades[shape * 2 + material]
        table[cid] = base * (1 + s) if s < 0 else base + (255 - base) * s
    return np.round(table).astype(np.uint8)


PALETTE = _make_palette()
PALETTE.setflags(write=False)
