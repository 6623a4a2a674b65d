"""The embedded synthetic dataset: CLEVRER-like videos in the Dataset_Student layout.

Each video is a small physics simulation of 2-6 shaded shapes (cube, sphere, cylinder;
metal or rubber; 8 colours) sliding on a floor seen by a fixed pinhole camera from above
and in front. Objects slow down by friction, bounce off the walls of the visible area and
off each other, occlude each other by depth, and in ~30% of the videos one more object
slides in from outside the frame after frame 10 (the task's input frames).

Rendering is exact and mask-consistent: every object is drawn as a set of pixel
footprints (no antialiasing), back to front, and the mask holds the class of the last
object painted at each pixel, so `mask == c` is exactly where object c's colour shows.

Everything is a pure function of (seed, video id): each video has its own numpy
Generator, so the output is byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
from PIL import Image

from futureseg.core.classes import COLOR_RGB, PALETTE, class_name, class_parts
from futureseg.core.data import N_FRAMES, N_INPUT, NUM_CLASSES, SPLITS
from futureseg.core.errors import ConfigError, DataError
from futureseg.core.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# ------------------------------------------------------------------ camera and floor

# A pinhole camera at height CAM_HEIGHT above the floor (y = 0), pitched down by CAM_PITCH,
# focal length CAM_FOCAL * width pixels. World coordinates: X to the right, Y up, D away
# from the camera along the floor. Sizes are in the same (arbitrary) world units.
CAM_PITCH = math.radians(35.0)
CAM_HEIGHT = 8.0
CAM_FOCAL = 1.0
FAR_ROW = 0.3  # the far wall of the arena is the floor line seen at 30% of the height
MIN_ARENA = 5.0  # the arena is at least this deep and this wide (objects are ~1.3 across)

# Light direction (towards the light): from the upper left, slightly in front.
_L = (-0.5, 0.8, -0.35)
LIGHT = tuple(c / math.hypot(*_L) for c in _L)  # plain floats: they keep float32 arrays float32


class Camera:
    """Projection of world points onto an H×W image (pixel centres at integer coords)."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        # Scaling the focal length with the larger side keeps the horizon above the image
        # whatever the aspect ratio (and is simply CAM_FOCAL * width for landscape frames).
        self.f = CAM_FOCAL * max(width, height)
        self.cx, self.cy = (width - 1) / 2, (height - 1) / 2
        self.sin, self.cos = math.sin(CAM_PITCH), math.cos(CAM_PITCH)
        # The visible floor: D from the bottom row (near wall) to the FAR_ROW row (far wall);
        # left/right walls are the floor lines seen at the image's left/right edges, so
        # |X| <= wall_a + wall_b * D (a trapezoid in world coordinates).
        self.d_near = self.ground_d(height - 1)
        self.d_far = self.ground_d(FAR_ROW * (height - 1))
        self.wall_a = self.cx / self.f * CAM_HEIGHT * self.sin
        self.wall_b = self.cx / self.f * self.cos
        # Very wide or very tall frames see a floor too shallow or too narrow for the
        # objects: then the arena extends past the image (objects may leave the view).
        self.d_far = max(self.d_far, self.d_near + MIN_ARENA)
        self.wall_a = max(self.wall_a, MIN_ARENA / 2 - self.wall_b * self.d_near)
        # The light in camera space (x right, y up, z towards the viewer), for shading.
        lx, ly, ld = LIGHT
        self.light = (lx, ly * self.cos + ld * self.sin, ly * self.sin - ld * self.cos)
        half = (self.light[0], self.light[1], self.light[2] + 1.0)
        self.half = tuple(c / math.hypot(*half) for c in half)  # Blinn-Phong half vector (viewer on +z)

    def depth(self, x: float, y: float, d: float) -> float:
        return (CAM_HEIGHT - y) * self.sin + d * self.cos

    def project(self, x: float, y: float, d: float) -> tuple[float, float, float]:
        """(column, row, depth) of world point (x, y, d)."""
        zc = (CAM_HEIGHT - y) * self.sin + d * self.cos
        up = (y - CAM_HEIGHT) * self.cos + d * self.sin
        return self.cx + self.f * x / zc, self.cy - self.f * up / zc, zc

    def ground_d(self, row: float) -> float:
        """D of the floor point seen at `row` in the middle column."""
        a = -(row - self.cy) / self.f
        dy = self.cos * a - self.sin
        dz = self.sin * a + self.cos
        return CAM_HEIGHT / -dy * dz

    def ellipse_at(self, x: float, y: float, d: float, r: float) -> tuple[float, float, float, float]:
        """(column, row, semi-axis x, semi-axis y) of the image of the horizontal circle of
        radius r centred on (x, y, d), approximated by an axis-aligned ellipse (the camera
        has no roll)."""
        cx, _, zc = self.project(x, y, d)
        _, row_far, _ = self.project(x, y, d + r)
        _, row_near, _ = self.project(x, y, d - r)
        return cx, (row_far + row_near) / 2, self.f * r / zc, (row_near - row_far) / 2


@functools.lru_cache(maxsize=8)
def _camera(height: int, width: int) -> Camera:
    return Camera(height, width)


@functools.lru_cache(maxsize=8)
def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, shaped for broadcasting: rows (H, 1), columns (1, W)."""
    return (np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :])


@functools.lru_cache(maxsize=8)
def _floor(height: int, width: int) -> np.ndarray:
    array = _render_floor(height, width)
    array.setflags(write=False)
    return array


def render_floor(height: int, width: int) -> np.ndarray:
    """The empty floor as uint8 (H, W, 3): what every background pixel shows (unless an
    object's soft shadow darkens it)."""
    return _floor(height, width).copy()


def _render_floor(height: int, width: int) -> np.ndarray:
    """A neutral grey floor lit by a broad soft spot (left of centre, mid-depth) that fades
    with distance, so the floor has a gentle gradient towards the back and the sides."""
    cam = _camera(height, width)
    rows, cols = _grids(height, width)
    rows = rows.astype(np.float64)
    cols = cols.astype(np.float64)
    # Intersect each pixel's viewing ray with the floor (every row is below the horizon,
    # which lies above the image for this pitch).
    a = -(rows - cam.cy) / cam.f
    dy = cam.cos * a - cam.sin
    t = CAM_HEIGHT / -dy
    d = t * (cam.sin * a + cam.cos)
    x = t * (cols - cam.cx) / cam.f
    span = cam.d_far - cam.d_near
    spot_x, spot_d = -0.15 * (cam.wall_a + cam.wall_b * cam.d_far), cam.d_near + 0.45 * span
    dist2 = ((x - spot_x) ** 2 + (d - spot_d) ** 2) / (0.8 * span) ** 2
    light = 0.72 + 0.28 * np.exp(-dist2)
    fade = 1.0 - 0.18 * np.clip((d - cam.d_near) / (1.6 * span), 0, 1)  # darker far away
    level = 150.0 * light * fade
    tint = np.array([1.0, 1.0, 1.03])  # a faintly cool grey, like CLEVRER's floor
    return np.clip(np.rint(level[..., None] * tint), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ scene sampling

RADIUS_RANGE = (0.55, 0.8)  # object "radius" in world units (cube half-side is 0.8 r)
CUBE_HALF = 0.8
SPEED_RANGE = (0.12, 0.4)  # world units per frame for moving objects
P_STATIC = 0.3  # probability that an initial object starts at rest
P_AIMED = 0.5  # probability that a moving object starts towards another one
P_ENTERING = 0.3  # probability that a video has an object entering after frame 10
ENTRY_FRAMES = (11, 16)  # the entering object starts sliding in at a frame in this range
SUBSTEPS = 4  # physics substeps per frame
# Per-frame velocity retention: each video draws its friction from this range; an entering
# object keeps the weakest friction until it is inside (so its arrival time is predictable).
_FRICTION_MIN, _FRICTION_MAX = 0.95, 0.985
RESTITUTION = 0.9
# Objects bounce when their floor disc, grown by this factor, meets a wall: the image of a
# shape reaches a little beyond its disc (cube corners, perspective lean of tall shapes).
WALL_MARGIN = 1.25


class _Object:
    """One object of a video: its class and its state in floor coordinates."""

    __slots__ = ("cid", "shape", "material", "color", "r", "x", "d", "vx", "vd", "angle", "spin", "start", "inside")

    def __init__(self, cid, r, x, d, vx, vd, angle, spin, start):
        self.cid = cid
        self.shape, self.material, self.color = class_parts(cid)
        self.r, self.x, self.d, self.vx, self.vd = r, x, d, vx, vd
        self.angle, self.spin = angle, spin
        self.start = start  # first frame the object exists in (0, or its entry frame)
        self.inside = start == 0  # walls apply once the object is fully inside the arena

    @property
    def mass(self) -> float:
        return self.r**3


def _wall_distances(cam: Camera, x: float, d: float):
    """Signed distances of point (x, d) to the four walls (positive inside), with the
    inward unit normals: left, right, near, far."""
    norm = math.hypot(1.0, cam.wall_b)
    lim = cam.wall_a + cam.wall_b * d
    return (
        ((x + lim) / norm, (1 / norm, cam.wall_b / norm)),
        ((lim - x) / norm, (-1 / norm, cam.wall_b / norm)),
        (d - cam.d_near, (0.0, 1.0)),
        (cam.d_far - d, (0.0, -1.0)),
    )


def _fits(cam: Camera, x: float, d: float, r: float) -> bool:
    return all(dist >= r * WALL_MARGIN for dist, _ in _wall_distances(cam, x, d))


def _sample_scene(rng: np.random.Generator, cam: Camera) -> list[_Object]:
    entering = rng.random() < P_ENTERING
    n_initial = int(rng.integers(2, 6 if entering else 7))  # 2..5 (+1 entering) or 2..6
    n_total = n_initial + int(entering)
    cids = [int(c) + 1 for c in rng.choice(NUM_CLASSES - 1, size=n_total, replace=False)]
    objects: list[_Object] = []
    for cid in cids[:n_initial]:
        r = float(rng.uniform(*RADIUS_RANGE))
        for _ in range(200):  # rejection sampling of a free spot in the arena
            d = float(rng.uniform(cam.d_near + r, cam.d_far - r))
            lim = cam.wall_a + cam.wall_b * d
            x = float(rng.uniform(-lim, lim))
            if _fits(cam, x, d, r) and all(math.hypot(x - o.x, d - o.d) > r + o.r + 0.2 for o in objects):
                break
        # (if 200 tries found no free spot, the last one is kept: collisions separate them)
        angle, spin = float(rng.uniform(0, math.pi / 2)), float(rng.normal(0, 0.03))
        objects.append(_Object(cid, r, x, d, 0.0, 0.0, angle, spin, start=0))
    for o in objects:
        if rng.random() < P_STATIC:
            continue
        speed = float(rng.uniform(*SPEED_RANGE))
        if rng.random() < P_AIMED:  # head for another object (give or take) to make collisions
            other = objects[int(rng.integers(len(objects) - 1))]
            other = other if other is not o else objects[-1]
            heading = math.atan2(other.d - o.d, other.x - o.x) + float(rng.normal(0, 0.2))
        else:
            heading = float(rng.uniform(0, 2 * math.pi))
        o.vx, o.vd = speed * math.cos(heading), speed * math.sin(heading)
    if entering:
        objects.append(_entering_object(rng, cam, cids[-1]))
    return objects


def _entering_object(rng: np.random.Generator, cam: Camera, cid: int) -> _Object:
    """An object that starts just outside the image at a frame in ENTRY_FRAMES and slides
    into the arena, coming from the left, right or front edge."""
    r = float(rng.uniform(*RADIUS_RANGE))
    start = int(rng.integers(ENTRY_FRAMES[0], ENTRY_FRAMES[1] + 1))
    side = int(rng.integers(3))
    angle, spin = float(rng.uniform(0, math.pi / 2)), float(rng.normal(0, 0.03))
    probe = _Object(cid, r, 0.0, 0.0, 0.0, 0.0, angle, 0.0, start)
    if side < 2:  # from the left (0) or right (1) edge, at a random depth
        sign = -1.0 if side == 0 else 1.0
        probe.d = float(rng.uniform(cam.d_near + 1.5 * r, cam.d_far - 1.5 * r))
        lim = cam.wall_a + cam.wall_b * probe.d
        step, probe.x = (sign * r * 0.25, 0.0), sign * lim
    else:  # from the front (bottom) edge
        lim = cam.wall_a + cam.wall_b * cam.d_near
        probe.x = float(rng.uniform(-0.6 * lim, 0.6 * lim))
        step, probe.d = (0.0, -r * 0.25), cam.d_near
    # Walk outwards until the object's whole image is off-screen.
    travel = 0.0
    while _visible(cam, probe):
        probe.x += step[0]
        probe.d += step[1]
        travel += math.hypot(*step)
    # Speed so that, under the outside friction, it covers `travel` + 2.5 r (back to the
    # edge, then fully across the wall with a margin) by frame 20.
    frames = 20 - start
    distance = travel + 2.5 * r
    gamma = _FRICTION_MAX
    speed = distance * (1 - gamma) / (1 - gamma**frames)
    jitter = float(rng.uniform(-0.25, 0.25))  # a slightly oblique heading
    ux, ud = -step[0], -step[1]
    norm = math.hypot(ux, ud)
    ux, ud = ux / norm, ud / norm
    vx, vd = ux * math.cos(jitter) - ud * math.sin(jitter), ux * math.sin(jitter) + ud * math.cos(jitter)
    probe.vx, probe.vd = speed * vx, speed * vd
    probe.spin = spin
    return probe


def _simulate(rng: np.random.Generator, cam: Camera, objects: list[_Object], n_frames: int):
    """The state of every object at every frame: list (frames) of lists of
    (object, x, d, angle) for the objects that exist in that frame."""
    gamma = float(rng.uniform(_FRICTION_MIN, _FRICTION_MAX)) ** (1.0 / SUBSTEPS)
    gamma_outside = _FRICTION_MAX ** (1.0 / SUBSTEPS)
    frames = []
    for t in range(n_frames):
        frames.append([(o, o.x, o.d, o.angle) for o in objects if o.start <= t])
        for _ in range(SUBSTEPS):
            active = [o for o in objects if o.start <= t]
            for o in active:
                o.x += o.vx / SUBSTEPS
                o.d += o.vd / SUBSTEPS
                o.angle += o.spin / SUBSTEPS
                g = gamma if o.inside else gamma_outside
                o.vx *= g
                o.vd *= g
                o.spin *= gamma
                if not o.inside:
                    o.inside = _fits(cam, o.x, o.d, o.r)
                    continue
                _bounce_walls(cam, o)
            live = [o for o in active if o.inside]
            for i, a in enumerate(live):
                for b in live[i + 1 :]:
                    _collide(a, b)
    return frames


def _bounce_walls(cam: Camera, o: _Object) -> None:
    reach = o.r * WALL_MARGIN
    for dist, (nx, nd) in _wall_distances(cam, o.x, o.d):
        if dist < reach:
            o.x += (reach - dist) * nx
            o.d += (reach - dist) * nd
            vn = o.vx * nx + o.vd * nd
            if vn < 0:
                o.vx -= (1 + RESTITUTION) * vn * nx
                o.vd -= (1 + RESTITUTION) * vn * nd


def _collide(a: _Object, b: _Object) -> None:
    """Elastic-ish collision of two discs (masses ∝ r³), with overlap separation."""
    dx, dd = b.x - a.x, b.d - a.d
    dist = math.hypot(dx, dd)
    gap = a.r + b.r - dist
    if gap <= 0 or dist == 0:
        return
    nx, nd = dx / dist, dd / dist
    ma, mb = a.mass, b.mass
    a.x -= gap * nx * mb / (ma + mb)
    a.d -= gap * nd * mb / (ma + mb)
    b.x += gap * nx * ma / (ma + mb)
    b.d += gap * nd * ma / (ma + mb)
    approach = (a.vx - b.vx) * nx + (a.vd - b.vd) * nd
    if approach > 0:
        impulse = (1 + RESTITUTION) * approach / (1 / ma + 1 / mb)
        a.vx -= impulse / ma * nx
        a.vd -= impulse / ma * nd
        b.vx += impulse / mb * nx
        b.vd += impulse / mb * nd
        # a glancing blow sets cubes spinning a little
        tangential = (a.vx - b.vx) * -nd + (a.vd - b.vd) * nx
        a.spin += 0.05 * tangential
        b.spin -= 0.05 * tangential


# ------------------------------------------------------------------ rendering
#
# Every shape is drawn as boolean footprints inside its bounding box, with a colour that
# is constant, per-row, per-column or per-pixel as the shading needs (broadcast on write),
# so a frame costs a handful of small array operations per object. Footprints come from
# per-row spans [lo, hi] (convex polygons, ellipses), which is two comparisons per pixel.


def _cube_corners(cam: Camera, x, d, r, angle):
    """World (x, d) of the 4 bottom corners (counter-clockwise in the floor plane), their
    projections at the bottom and at the top of the cube, and the cube's half-side."""
    h = CUBE_HALF * r
    c, s = math.cos(angle), math.sin(angle)
    local = ((h, h), (-h, h), (-h, -h), (h, -h))
    world = [(x + u * c - v * s, d + u * s + v * c) for u, v in local]
    bottom = [cam.project(wx, 0.0, wd)[:2] for wx, wd in world]
    top = [cam.project(wx, 2 * h, wd)[:2] for wx, wd in world]
    return world, bottom, top, h


def _spans_mask(cols, lo, hi):
    return (cols >= lo[:, None]) & (cols <= hi[:, None])


def _convex(rows, cols, pts):
    """Pixels inside the convex polygon `pts` (either winding), edges included.

    Each edge is a half-plane a*col + b*row + c >= 0; for a row that is a bound on col,
    so the polygon is one span per row."""
    r = rows[:, 0]
    lo = np.full(r.shape, -np.inf, np.float32)
    hi = np.full(r.shape, np.inf, np.float32)
    n = len(pts)
    area = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
    sign = 1.0 if area >= 0 else -1.0
    for i in range(n):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        # sign * ((x1-x0)(row-y0) - (y1-y0)(col-x0)) >= -eps
        a = -sign * (y1 - y0)
        b = sign * (x1 - x0) * (r - y0) + sign * (y1 - y0) * x0 + 1e-3
        if a > 1e-9:
            lo = np.maximum(lo, -b / a)
        elif a < -1e-9:
            hi = np.minimum(hi, -b / a)
        else:  # horizontal edge: a bound on the row
            hi = np.where(b >= 0, hi, -np.inf)
    return _spans_mask(cols, lo, hi)


def _ellipse(rows, cols, cx, cy, ax, ay):
    """Pixels inside the axis-aligned ellipse, boundary included."""
    t = 1.0 - ((rows[:, 0] - cy) / max(ay, 1e-3)) ** 2
    half = max(ax, 1e-3) * np.sqrt(np.maximum(t, 0.0))
    half = np.where(t >= 0, half, -np.inf)
    return _spans_mask(cols, cx - half, cx + half)


def _bbox(cam: Camera, xs, ys):
    """Integer pixel box (r0, r1, c0, c1) covering the given extents, clipped to the image;
    None when it is empty."""
    r0, r1 = max(0, math.floor(min(ys))), min(cam.h, math.ceil(max(ys)) + 1)
    c0, c1 = max(0, math.floor(min(xs))), min(cam.w, math.ceil(max(xs)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def _extent(cam: Camera, o: _Object, x, d, angle):
    """Image-space extents (columns, rows) of an object, for bounding boxes."""
    if o.shape == 0:
        _, bottom, top, _ = _cube_corners(cam, x, d, o.r, angle)
        pts = bottom + top
        return [p[0] for p in pts], [p[1] for p in pts]
    if o.shape == 1:
        cx, cy, zc = cam.project(x, o.r, d)
        rad = cam.f * o.r / zc
        return [cx - rad, cx + rad], [cy - rad, cy + rad]
    bx, by, bax, bay = cam.ellipse_at(x, 0.0, d, o.r)
    tx, ty, tax, tay = cam.ellipse_at(x, 2 * o.r, d, o.r)
    return [bx - bax, bx + bax, tx - tax, tx + tax], [by + bay, ty - tay]


def _visible(cam: Camera, o: _Object) -> bool:
    xs, ys = _extent(cam, o, o.x, o.d, o.angle)
    return max(xs) >= -0.5 and min(xs) <= cam.w - 0.5 and max(ys) >= -0.5 and min(ys) <= cam.h - 0.5


def _finish(base, diffuse, spec, metal):
    """uint8 colour (..., 3) from the base colour, a diffuse term in [0, 1] and a specular
    term in [0, 1] (arrays or floats, broadcast together). Metal: dark, high-contrast body
    with a near-white highlight; rubber: soft matte shading with a faint sheen."""
    diffuse = np.asarray(diffuse, np.float32)
    spec = np.asarray(spec, np.float32)
    if metal:
        shade = 0.2 + 0.95 * diffuse * np.sqrt(diffuse)
        gloss = 0.95 * spec
    else:
        shade = 0.38 + 0.72 * diffuse
        gloss = 0.08 * spec
    colour = base * shade[..., None]
    colour += (255.0 - colour) * gloss[..., None]
    return _u8(colour)


def _u8(colour):
    return np.clip(colour + 0.5, 0.0, 255.0).astype(np.uint8)


def _paint_sphere(cam, img, mask, o, x, d, rows_all, cols_all):
    cx, cy, zc = cam.project(x, o.r, d)
    rad = cam.f * o.r / zc
    box = _bbox(cam, [cx - rad, cx + rad], [cy - rad, cy + rad])
    if box is None:
        return
    r0, r1, c0, c1 = box
    u = (cols_all[:, c0:c1] - cx) / rad
    v = (rows_all[r0:r1] - cy) / rad
    rr = u * u + v * v
    inside = rr <= 1.0
    # screen-space unit normal (u, -v, w) of the visible hemisphere
    w = np.sqrt(np.maximum(1.0 - rr, 0.0))
    lx, ly, lz = cam.light
    hx, hy, hz = cam.half
    diffuse = np.clip(u * lx - v * ly + w * lz, 0.0, 1.0)
    metal = o.material == 0
    spec = np.clip(u * hx - v * hy + w * hz, 0.0, 1.0) ** (60.0 if metal else 10.0)
    if metal:
        # a mirror-like sphere also reflects the bright floor near its lower rim
        spec = spec + 0.18 * np.clip(v, 0.0, 1.0) ** 3
    _put(img, mask, box, inside, _finish(COLOR_RGB[o.color], diffuse, spec, metal), o.cid)


def _paint_cylinder(cam, img, mask, o, x, d, rows_all, cols_all):
    bx, by, bax, bay = cam.ellipse_at(x, 0.0, d, o.r)
    tx, ty, tax, tay = cam.ellipse_at(x, 2 * o.r, d, o.r)
    box = _bbox(cam, [bx - bax, bx + bax, tx - tax, tx + tax], [by + bay, ty - tay])
    if box is None:
        return
    r0, r1, c0, c1 = box
    rows, cols = rows_all[r0:r1], cols_all[:, c0:c1]
    top = _ellipse(rows, cols, tx, ty, tax, tay)
    body = _ellipse(rows, cols, bx, by, bax, bay) | _convex(
        rows, cols, [(tx - tax, ty), (tx + tax, ty), (bx + bax, by), (bx - bax, by)]
    )
    metal = o.material == 0
    base = COLOR_RGB[o.color]
    lx, ly, lz = cam.light
    hx, hy, hz = cam.half
    # Body: shaded from the horizontal surface normal seen at each pixel; the axis leans
    # (perspective) and the side tapers a little, so axis and half-width follow the row.
    frac = np.clip((rows - ty) / max(by - ty, 1e-3), 0.0, 1.0)
    u = np.clip((cols - (tx + (bx - tx) * frac)) / (tax + (bax - tax) * frac), -1.0, 1.0)
    w = np.sqrt(1.0 - u * u)
    ny, nz = -w * cam.sin, w * cam.cos  # camera-space y, z of that horizontal normal
    diffuse = np.clip(u * lx + ny * ly + nz * lz, 0.0, 1.0)
    spec = np.clip(u * hx + ny * hy + nz * hz, 0.0, 1.0) ** (40.0 if metal else 8.0)
    body_colour = _finish(base, diffuse, spec, metal)
    # Top: flat, facing up; metal gets a glint towards the light.
    top_diffuse = max(0.0, cam.cos * ly + cam.sin * lz) * 0.95
    if metal:
        gx, gy = tx - 0.35 * tax, ty - 0.3 * tay
        glint = np.exp(-(((cols - gx) / (0.35 * tax + 0.5)) ** 2 + ((rows - gy) / (0.35 * tay + 0.5)) ** 2))
        top_colour = _finish(base, np.full(glint.shape, top_diffuse, np.float32), glint, True)
    else:
        top_colour = _finish(base, top_diffuse, 0.0, False)
    region, mregion = img[r0:r1, c0:c1], mask[r0:r1, c0:c1]
    np.copyto(region, body_colour, where=body[..., None])
    np.copyto(region, top_colour, where=top[..., None])
    mregion[body | top] = o.cid


def _paint_cube(cam, img, mask, o, x, d, angle, rows_all, cols_all):
    world, bottom, top, h = _cube_corners(cam, x, d, o.r, angle)
    pts = bottom + top
    box = _bbox(cam, [p[0] for p in pts], [p[1] for p in pts])
    if box is None:
        return
    r0, r1, c0, c1 = box
    rows, cols = rows_all[r0:r1], cols_all[:, c0:c1]
    region, mregion = img[r0:r1, c0:c1], mask[r0:r1, c0:c1]
    metal = o.material == 0
    base = COLOR_RGB[o.color]
    lx, ly, ld = LIGHT
    if metal:
        # A metal cube's sides reflect a brighter sky near their top edges: a row gradient.
        top_row = min(p[1] for p in top)
        height_px = max(max(p[1] for p in bottom) - top_row, 1.0)
        sheen = np.clip(1.0 - (rows - top_row) / height_px, 0.0, 1.0)  # (h, 1)
    inside = None
    # Side faces that face the camera (one or two), then the top face over them.
    for i in range(4):
        j = (i + 1) % 4
        fx, fd = (world[i][0] + world[j][0]) / 2, (world[i][1] + world[j][1]) / 2
        nx, nd = (fx - x) / h, (fd - d) / h  # outward horizontal unit normal
        if nx * -fx + nd * -fd <= 0:  # faces away from the camera at (0, CAM_HEIGHT, 0)
            continue
        face = _convex(rows, cols, [bottom[i], bottom[j], top[j], top[i]])
        diffuse = max(0.0, nx * lx + nd * ld)
        if metal:
            tone = _finish(base, diffuse * (0.6 + 0.4 * sheen), 0.45 * sheen**3, True)
        else:
            tone = _finish(base, diffuse, 0.0, False)
        np.copyto(region, tone, where=face[..., None])
        inside = face if inside is None else inside | face
    face = _convex(rows, cols, top)
    if metal:
        cx = sum(p[0] for p in top) / 4
        cy = sum(p[1] for p in top) / 4
        size = max(max(p[0] for p in top) - min(p[0] for p in top), 2.0)
        gx, gy = cx - 0.18 * size, cy - 0.05 * size
        spec = np.exp(-(((cols - gx) / (0.22 * size)) ** 2 + ((rows - gy) / (0.12 * size)) ** 2))
        tone = _finish(base, np.full(spec.shape, ly * 0.9, np.float32), spec, True)
    else:
        tone = _finish(base, ly, 0.0, False)
    np.copyto(region, tone, where=face[..., None])
    inside = face if inside is None else inside | face
    mregion[inside] = o.cid


def _put(img, mask, box, inside, colour, cid):
    """Paint `colour` (uint8, broadcastable to the box) and the class id exactly on the
    footprint `inside`."""
    r0, r1, c0, c1 = box
    np.copyto(img[r0:r1, c0:c1], colour, where=inside[..., None])
    mask[r0:r1, c0:c1][inside] = cid


SHADOW_STRENGTH = 0.3


def _paint_shadow(cam, img, o, x, d, rows_all, cols_all):
    """A soft shadow on the floor, cast away from the light; it only darkens."""
    height = (2 * CUBE_HALF if o.shape == 0 else 1.0) * o.r  # height of the object's centre
    lx, ly, ld = LIGHT
    sx, sd = x - lx / ly * height * 0.8, d - ld / ly * height * 0.8
    cx, cy, ax, ay = cam.ellipse_at(sx, 0.0, sd, o.r * 1.2)
    box = _bbox(cam, [cx - ax, cx + ax], [cy - ay, cy + ay])
    if box is None:
        return
    r0, r1, c0, c1 = box
    q = ((cols_all[:, c0:c1] - cx) / max(ax, 1e-3)) ** 2 + ((rows_all[r0:r1] - cy) / max(ay, 1e-3)) ** 2
    keep = 1.0 - SHADOW_STRENGTH * np.maximum(1.0 - q, 0.0)  # darkest at the centre, soft edge
    region = img[r0:r1, c0:c1]
    region[...] = region * keep[..., None]  # truncating: only ever darker than the floor


def _render_frame(cam, floor, state, rows_all, cols_all):
    img = floor.copy()
    mask = np.zeros(floor.shape[:2], np.uint8)
    for o, x, d, angle in state:
        _paint_shadow(cam, img, o, x, d, rows_all, cols_all)
    # Painter's algorithm: farthest (largest camera depth of the floor contact) first.
    for o, x, d, angle in sorted(state, key=lambda s: -cam.depth(s[1], 0.0, s[2])):
        if o.shape == 0:
            _paint_cube(cam, img, mask, o, x, d, angle, rows_all, cols_all)
        elif o.shape == 1:
            _paint_sphere(cam, img, mask, o, x, d, rows_all, cols_all)
        else:
            _paint_cylinder(cam, img, mask, o, x, d, rows_all, cols_all)
    return img, mask


def render_video(video_id: int, seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """All 22 frames (uint8 (22, H, W, 3)), masks (uint8 (22, H, W)) and a summary
    ({"objects": [class ids], "entering": [class id], "entry_frame": int|None}) of one video."""
    rng = np.random.default_rng([seed, video_id])
    cam = _camera(height, width)
    floor = _floor(height, width)
    rows_all, cols_all = _grids(height, width)
    objects = _sample_scene(rng, cam)
    states = _simulate(rng, cam, objects, N_FRAMES)
    frames = np.empty((N_FRAMES, height, width, 3), np.uint8)
    masks = np.empty((N_FRAMES, height, width), np.uint8)
    for t, state in enumerate(states):
        frames[t], masks[t] = _render_frame(cam, floor, state, rows_all, cols_all)
    late = [o for o in objects if o.start > 0]
    info = {
        "objects": [o.cid for o in objects],
        "entering": [o.cid for o in late],
        "entry_frame": late[0].start if late else None,
    }
    return frames, masks, info


# ------------------------------------------------------------------ writing the dataset


def _write_video(job) -> tuple[int, dict]:
    """Render one video and write its folder. Runs in worker processes."""
    folder, video_id, split, seed, height, width = job
    frames, masks, info = render_video(video_id, seed, height, width)
    folder = Path(folder)
    folder.mkdir()
    n_frames = N_INPUT if split == "hidden" else N_FRAMES
    for t in range(n_frames):
        # No pnginfo and a fixed compress level: the bytes depend on the pixels only.
        Image.fromarray(frames[t]).save(folder / f"image_{t}.png", format="PNG", compress_level=1)
    if split in ("train", "val"):
        np.save(folder / "mask.npy", masks)
    return video_id, info


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"synthetic {name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"synthetic {name}: must be >= {minimum}, got {value}")
    return int(value)


def _check_counts(counts) -> dict[str, int]:
    if not isinstance(counts, dict):
        raise ConfigError(f"synthetic counts: expected a mapping split -> videos, got {counts!r}")
    unknown = [s for s in counts if s not in SPLITS]
    if unknown:
        raise ConfigError(
            f"synthetic counts: unknown split(s) {', '.join(map(repr, unknown))}; expected {', '.join(SPLITS)}"
        )
    checked = {s: _check_int(f"counts[{s!r}]", counts.get(s, 0), 0) for s in SPLITS}
    if sum(checked.values()) == 0:
        raise ConfigError("synthetic counts: no videos to generate (every split count is 0)")
    return checked


def generate_dataset(root, counts: dict[str, int], height: int, width: int, seed: int, workers: int = 1) -> dict:
    """Write a synthetic Dataset_Student under `root` (replacing it if it exists) and
    return its manifest.

    `counts` maps split names (train, val, unlabeled, hidden) to numbers of videos; a
    missing or 0 split is not written. Video ids are consecutive across the splits in
    that order. The folder appears only when complete (it is built beside `root` and
    renamed), so an interrupted run leaves no `root`.
    """
    counts = _check_counts(counts)
    height = _check_int("height", height, 16)
    width = _check_int("width", width, 16)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1)
    ids: dict[str, list[int]] = {}
    next_id = 0
    for split in SPLITS:
        if counts[split]:
            ids[split] = list(range(next_id, next_id + counts[split]))
            next_id += counts[split]
    started = time.perf_counter()
    with atomic_path(root, is_dir=True) as tmp:
        jobs = []
        for split, split_ids in ids.items():
            (tmp / split).mkdir()
            jobs += [(str(tmp / split / f"video_{i:05d}"), i, split, seed, height, width) for i in split_ids]
        if workers > 1 and len(jobs) > 1:
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
                results = dict(pool.imap_unordered(_write_video, jobs, chunksize=chunk))
        else:
            results = dict(map(_write_video, jobs))
        manifest = {
            "format": "futureseg-synth",
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "height": height,
            "width": width,
            "counts": counts,
            "ids": ids,
            "frames": {split: N_INPUT if split == "hidden" else N_FRAMES for split in ids},
            "classes": {str(c): class_name(c) for c in range(NUM_CLASSES)},
            "videos": {str(i): results[i] for split_ids in ids.values() for i in split_ids},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    seconds = time.perf_counter() - started
    log.info("wrote %d synthetic videos (%d×%d) to %s in %.1f s", len(jobs), height, width, root, seconds)
    return manifest


# ------------------------------------------------------------------ contact sheet


def make_contact_sheet(root, split: str, out_png, n_videos: int = 4, frames=(0, 5, 10, 15, 21)) -> None:
    """A PNG to look at: one row per video (the split's first `n_videos` by id), one
    column per frame index; each cell is the frame above its colourised mask (PALETTE).
    Frames a video lacks (hidden has 0…10) are left grey; splits without masks show
    frames only. Small frames are enlarged (nearest neighbour) to stay legible."""
    from PIL import ImageDraw

    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: split folder is missing")
    videos = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("video_") and p.name[6:].isdigit()]
    videos.sort(key=lambda p: int(p.name[6:]))
    if not videos:
        raise DataError(f"{folder}: split is empty (no video_<id> folders)")
    videos = videos[: max(1, int(n_videos))]
    frames = tuple(int(t) for t in frames)
    if not (videos[0] / "image_0.png").is_file():
        raise DataError(f"{videos[0] / 'image_0.png'}: frame is missing")
    with Image.open(videos[0] / "image_0.png") as first:
        width, height = first.size
    scale = max(1, math.ceil(96 / height))
    cell_h, cell_w = height * scale, width * scale
    has_mask = (videos[0] / "mask.npy").is_file()
    gap, left, head = 4, 64, 18
    per_cell = 2 if has_mask else 1
    size = (left + len(frames) * (cell_w + gap), head + len(videos) * (per_cell * cell_h + 2 * gap))
    sheet = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for j, t in enumerate(frames):
        draw.text((left + j * (cell_w + gap) + 2, 3), f"frame {t}", fill=(230, 230, 230))
    for i, video in enumerate(videos):
        top = head + i * (per_cell * cell_h + 2 * gap)
        draw.text((4, top + 2), video.name.replace("video_", "video\n"), fill=(230, 230, 230))
        masks = np.load(video / "mask.npy") if has_mask else None
        for j, t in enumerate(frames):
            x = left + j * (cell_w + gap)
            path = video / f"image_{t}.png"
            if path.is_file():
                with Image.open(path) as image:
                    sheet.paste(image.convert("RGB").resize((cell_w, cell_h), Image.NEAREST), (x, top))
            else:
                sheet.paste((90, 90, 90), (x, top, x + cell_w, top + cell_h))
            if masks is not None and t < len(masks):
                coloured = Image.fromarray(PALETTE[np.clip(masks[t], 0, NUM_CLASSES - 1)])
                sheet.paste(coloured.resize((cell_w, cell_h), Image.NEAREST), (x, top + cell_h))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")


# ------------------------------------------------------------------ CLI verb

VERB = "synth"
HELP = "write the synthetic CLEVRER-like Dataset_Student (stage 0)"


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset root to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    for split, default in zip(SPLITS, (1000, 1000, 13000, 2000)):
        parser.add_argument(f"--{split}", type=int, default=default, help=f"videos in {split}/ (0: no folder)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--contact-sheet", help="also write this PNG (first train videos, frames over masks)")


def main(args) -> None:
    counts = {split: getattr(args, split) for split in SPLITS}
    manifest = generate_dataset(args.out, counts, args.height, args.width, args.seed, args.workers)
    if args.contact_sheet:
        split = next(s for s in SPLITS if s in manifest["ids"])
        make_contact_sheet(args.out, split, args.contact_sheet)
    print(f"wrote {sum(manifest['counts'].values())} videos to {args.out}")
