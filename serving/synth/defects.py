"""Seeded defect generators: scratch, spot, crack and pit, each with the mask its exact box comes from.

A defect is rendered against the image it will land on (so its contrast can adapt to the local surface) as
an opacity mask ``alpha`` and a colour ``layer``; :func:`apply_defect` composites it as
``image * (1 - alpha) + layer * alpha``. The mask is cut at :data:`ALPHA_MIN`: every pixel with a non-zero
alpha is changed by at least ``ALPHA_MIN x`` the defect's contrast (which is kept >= :data:`MIN_CONTRAST`
grey levels), and every other pixel is left untouched. So the box of the non-zero mask *is* the box of the
changed pixels, which is what "exact" means here, and what ``tests/test_synth.py`` checks on flat surfaces.

Boxes are ``[x1, y1, x2, y2]`` in pixel-edge coordinates: the defect covers columns ``x1 .. x2 - 1`` and rows
``y1 .. y2 - 1``, so ``x2 - x1`` is the COCO width.

Kinds (sizes are for a 256-pixel image and scale with the image side):

- ``scratch``: a thin (0.8-2 px), long (40-130 px), straight or gently curved line, brighter or darker than
  the surface, fading along its length.
- ``spot``: an irregular blob (radius 5-22 px) of a different colour, with a soft edge (a stain, a drop).
- ``crack``: a dark jagged random walk (45-140 px) whose width tapers from 2-3 px, with side branches.
- ``pit``: a small dark crater (radius 3-7 px) with a bright crescent on the rim facing the light.
"""
from dataclasses import dataclass

import cv2
import numpy as np

#: Category names; COCO ids are their 1-based positions.
CATEGORIES = ("scratch", "spot", "crack", "pit")

#: Mask values below this are set to 0: such faint anti-aliasing fringes are not visible defect pixels.
ALPHA_MIN = 0.2

#: The smallest difference (grey levels) between a defect's colour and the surface under it.
MIN_CONTRAST = 30.0

#: The smallest box side in pixels (at 256 px). Slivers thinner than this have an IoU that a 1-pixel error
#: ruins, which measures the annotation's rounding rather than the detector.
MIN_BOX_SIDE = 6

# Supersampling factor for drawn shapes: cv2 draws on the integer grid, so shapes are drawn this much larger
# and area-averaged down, giving anti-aliased edges and fractional widths.
_SUPERSAMPLE = 4


@dataclass
class Defect:
    """One rendered defect: its category, opacity mask (HxW float32), colour layer (HxWx3) and exact box."""

    category: str
    alpha: np.ndarray
    layer: np.ndarray
    box: tuple  # (x1, y1, x2, y2) ints, pixel edges


def mask_box(alpha):
    """The box (x1, y1, x2, y2) of the non-zero pixels of ``alpha``, pixel edges; None when it is empty."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def apply_defect(image, defect):
    """``image`` (float32 HxWx3) with ``defect`` composited over it (a new array)."""
    alpha = defect.alpha[:, :, None]
    return image * (1.0 - alpha) + defect.layer * alpha


def _luma(colour):
    """Grey level of a BGR colour (or of the last axis of an array)."""
    return 0.114 * colour[..., 0] + 0.587 * colour[..., 1] + 0.299 * colour[..., 2]


def _local_mean(image, box):
    """Mean BGR colour of ``image`` inside ``box`` (x1, y1, x2, y2), float32 triple."""
    x1, y1, x2, y2 = box
    return image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)


def _signed_contrast(rng, background_luma, low, high, bright_probability):
    """A grey-level offset of magnitude in [low, high] that has room to show on ``background_luma``.

    Brightening is chosen with ``bright_probability`` when there is headroom above the surface, darkening
    otherwise; the magnitude is capped by the room left so clipping at 0 or 255 never swallows the defect,
    but kept >= MIN_CONTRAST (the darker or brighter side always has at least 127 levels of room).
    """
    room_up, room_down = 255.0 - background_luma, background_luma
    bright = rng.random() < bright_probability
    if bright and room_up < low:
        bright = False
    elif not bright and room_down < low:
        bright = True
    magnitude = min(rng.uniform(low, high), room_up if bright else room_down)
    magnitude = max(magnitude, MIN_CONTRAST)
    return magnitude if bright else -magnitude


def _cut(alpha):
    """``alpha`` clipped to [0, 1] with values below ALPHA_MIN set to 0 (in place, returned)."""
    np.clip(alpha, 0.0, 1.0, out=alpha)
    alpha[alpha < ALPHA_MIN] = 0.0
    return alpha


def _draw_strokes(size, strokes):
    """Anti-aliased opacity (HxW float32 in [0, 1]) of polylines with per-segment widths.

    ``strokes`` is a list of (points Nx2 float (x, y), widths N-1 floats in pixels, intensities N-1 floats
    in [0, 1]). Only the window around the points is drawn, supersampled, then area-averaged down.
    """
    everything = np.concatenate([points for points, _, _ in strokes])
    pad = 4
    x0 = int(max(0, np.floor(everything[:, 0].min()) - pad))
    y0 = int(max(0, np.floor(everything[:, 1].min()) - pad))
    x1 = int(min(size, np.ceil(everything[:, 0].max()) + pad))
    y1 = int(min(size, np.ceil(everything[:, 1].max()) + pad))
    alpha = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return alpha
    ss = _SUPERSAMPLE
    canvas = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    for points, widths, intensities in strokes:
        # Pixel centres are at integer + 0.5 in the supersampled grid's frame.
        scaled = np.round((points - (x0, y0)) * ss - 0.5).astype(np.int32)
        for k in range(len(scaled) - 1):
            thickness = max(1, int(round(widths[k] * ss)))
            value = int(round(255 * intensities[k]))
            cv2.line(canvas, tuple(map(int, scaled[k])), tuple(map(int, scaled[k + 1])), value, thickness,
                     cv2.LINE_8)
    small = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    alpha[y0:y1, x0:x1] = small.astype(np.float32) / 255.0
    return alpha


def _grey_layer(image, offset):
    """The surface itself shifted by a grey offset: the texture shows through, as on a real scratch."""
    return image + np.float32(offset)


# ---------------------------------------------------------------------------------------------- kinds


def _scratch(rng, image):
    size = image.shape[0]
    scale = size / 256.0
    length = rng.uniform(40, 130) * scale
    start = rng.uniform(0.1, 0.9, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    # Straight or gently curved: total turn up to ~0.8 rad along the scratch.
    curvature = rng.choice([0.0, rng.uniform(-0.8, 0.8)]) / length
    steps = 24
    ds = length / steps
    headings = heading + curvature * ds * np.arange(steps)
    points = np.vstack([start, start + np.cumsum(ds * np.c_[np.cos(headings), np.sin(headings)], axis=0)])
    width = rng.uniform(0.8, 2.0) * max(scale, 0.5)
    # A scratch is deepest in its middle and fades towards its ends (the tool entering and leaving).
    t = np.linspace(0, 1, steps)
    fade = np.clip(rng.uniform(0.6, 1.0) * (1 - np.abs(2 * t - 1) ** 3) + 0.35, 0, 1)
    alpha = _cut(_draw_strokes(size, [(points, np.full(steps, width), fade)]))
    box = mask_box(alpha)
    if box is None:
        return None
    luma = float(_luma(_local_mean(image, box)))
    offset = _signed_contrast(rng, luma, 45, 90, bright_probability=0.6)
    return alpha, _grey_layer(image, offset)


def _spot(rng, image):
    size = image.shape[0]
    scale = size / 256.0
    radius = rng.uniform(5, 22) * scale
    centre = rng.uniform(0.08, 0.92, 2) * size
    # An irregular outline: a few low harmonics on the radius, and a random aspect ratio and rotation.
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = sum(rng.uniform(0, 0.12) * np.cos(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5))
    aspect = rng.uniform(0.6, 1.0)
    rotation = rng.uniform(0, np.pi)
    rx = radius * (1 + wobble) * np.cos(angles)
    ry = radius * aspect * (1 + wobble) * np.sin(angles)
    xs = centre[0] + rx * np.cos(rotation) - ry * np.sin(rotation)
    ys = centre[1] + rx * np.sin(rotation) + ry * np.cos(rotation)
    polygon = np.c_[xs, ys]
    pad = int(3 * radius) + 4
    x0, y0 = (int(max(0, np.floor(v) - pad)) for v in (xs.min(), ys.min()))
    x1, y1 = (int(min(size, np.ceil(v) + pad)) for v in (xs.max(), ys.max()))
    if x1 <= x0 or y1 <= y0:
        return None
    ss = _SUPERSAMPLE
    canvas = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    cv2.fillPoly(canvas, [np.round((polygon - (x0, y0)) * ss - 0.5).astype(np.int32)], 255, cv2.LINE_8)
    window = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    # Soft edge: a blur proportional to the size, then an opacity < 1 so the texture shows through.
    window = cv2.GaussianBlur(window, (0, 0), rng.uniform(0.8, 0.25 * radius + 1.0))
    window *= rng.uniform(0.7, 1.0) / max(float(window.max()), 1e-6)
    alpha = np.zeros((size, size), np.float32)
    alpha[y0:y1, x0:x1] = window
    alpha = _cut(alpha)
    box = mask_box(alpha)
    if box is None:
        return None
    mean = _local_mean(image, box)
    offset = _signed_contrast(rng, float(_luma(mean)), 40, 90, bright_probability=0.35)
    # Stains change colour too: shift the hue with a random per-channel tilt around the grey offset.
    tilt = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    colour = np.clip(mean + offset * (1.0 + tilt), 0, 255).astype(np.float32)
    if abs(float(_luma(colour)) - float(_luma(mean))) < MIN_CONTRAST:
        colour = np.clip(mean + offset, 0, 255).astype(np.float32)
    # Half of the surface texture survives under the stain.
    layer = colour[None, None, :] + 0.5 * (image - mean[None, None, :])
    return alpha, layer


def _walk(rng, start, heading, n_steps, step, jitter):
    """Points of a jagged random walk: each step turns by N(0, jitter) around a slowly drifting heading."""
    turns = rng.normal(0, jitter, n_steps)
    drift = np.cumsum(rng.normal(0, 0.08, n_steps))
    headings = heading + drift + turns
    lengths = step * rng.uniform(0.6, 1.4, n_steps)
    moves = np.c_[np.cos(headings), np.sin(headings)] * lengths[:, None]
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _crack(rng, image):
    size = image.shape[0]
    scale = size / 256.0
    length = rng.uniform(45, 140) * scale
    step = rng.uniform(3, 5) * scale
    n_steps = max(4, int(length / step))
    heading = rng.uniform(0, 2 * np.pi)
    start = rng.uniform(0.15, 0.85, 2) * size
    trunk = _walk(rng, start, heading, n_steps, step, jitter=rng.uniform(0.3, 0.6))
    width0 = rng.uniform(1.8, 3.2) * max(scale, 0.5)
    taper = np.linspace(1.0, 0.35, n_steps)
    strokes = [(trunk, width0 * taper, np.ones(n_steps))]
    # Side branches split off the trunk, thinner and shorter, at a sharp angle.
    for _ in range(rng.integers(0, 4)):
        at = int(rng.integers(1, n_steps - 1))
        branch_steps = max(2, int(rng.uniform(0.2, 0.5) * (n_steps - at) + 2))
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
        branch = _walk(rng, trunk[at], branch_heading, branch_steps, step, jitter=0.5)
        widths = width0 * taper[at] * np.linspace(0.8, 0.3, branch_steps)
        strokes.append((branch, widths, np.ones(branch_steps)))
    alpha = _cut(_draw_strokes(size, strokes))
    box = mask_box(alpha)
    if box is None:
        return None
    luma = float(_luma(_local_mean(image, box)))
    # Cracks are dark gaps: a fraction of the surface's light, never less than MIN_CONTRAST darker.
    # (On a surface too dark for that, as dark as it gets.)
    factor = rng.uniform(0.15, 0.45)
    if luma * (1 - factor) < MIN_CONTRAST:
        return alpha, np.maximum(image - (MIN_CONTRAST + 10), 0)
    return alpha, image * np.float32(factor)


def _pit(rng, image):
    size = image.shape[0]
    scale = size / 256.0
    radius = rng.uniform(3.0, 7.0) * scale
    cx, cy = rng.uniform(0.05, 0.95, 2) * size
    light = rng.uniform(0, 2 * np.pi)  # direction the light comes from
    pad = int(np.ceil(radius + 3))
    x0, x1 = int(max(0, np.floor(cx) - pad)), int(min(size, np.ceil(cx) + pad + 1))
    y0, y1 = int(max(0, np.floor(cy) - pad)), int(min(size, np.ceil(cy) + pad + 1))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    distance = np.hypot(dx, dy)
    facing = np.cos(np.arctan2(dy, dx) - light)  # +1 on the rim towards the light
    crater = np.clip(radius - distance + 0.5, 0, 1)  # anti-aliased disc
    rim_width = rng.uniform(1.0, 2.0) * max(scale, 0.5)
    rim = np.clip(1 - np.abs(distance - radius - 0.3 * rim_width) / rim_width, 0, 1)
    crescent = rim * np.clip(facing, 0, 1) ** 1.5

    window = image[y0:y1, x0:x1]
    mean = window.reshape(-1, 3).mean(axis=0)
    luma = float(_luma(mean))
    # Inside: dark, with the wall opposite the light catching some of it.
    darkness = rng.uniform(0.15, 0.4)
    wall = 1.0 + 0.8 * np.clip(-facing, 0, 1) * (distance / radius) ** 2
    inside = window * (darkness * wall)[:, :, None]
    if luma * (1 - darkness * 1.8) < MIN_CONTRAST:
        inside = np.maximum(window - (MIN_CONTRAST + 10), 0)
    highlight = min(rng.uniform(50, 90), 255.0 - luma)
    if highlight < MIN_CONTRAST:
        crescent[:] = 0  # no room to brighten: the pit shows as a dark crater only
    outside = window + np.float32(highlight)

    alpha_window = np.maximum(crater, crescent)
    alpha = np.zeros((size, size), np.float32)
    alpha[y0:y1, x0:x1] = alpha_window
    alpha = _cut(alpha)
    layer = image.copy()
    layer[y0:y1, x0:x1] = np.where((crescent > crater)[:, :, None], outside, inside)
    return alpha, layer


_RENDERERS = {"scratch": _scratch, "spot": _spot, "crack": _crack, "pit": _pit}


def render_defect(rng, category, image):
    """A :class:`Defect` of ``category`` placed at random on ``image`` (float32 HxWx3, not modified).

    Returns None when the draw came out unusable (empty, or a box side below MIN_BOX_SIDE scaled to the
    image, e.g. a scratch almost parallel to an axis); callers draw again.
    Raises ValueError for an unknown category.
    """
    if category not in _RENDERERS:
        raise ValueError(f"unknown defect category {category!r}: use one of {list(CATEGORIES)}")
    drawn = _RENDERERS[category](rng, image)
    if drawn is None:
        return None
    alpha, layer = drawn
    box = mask_box(alpha)
    min_side = max(2, int(round(MIN_BOX_SIDE * image.shape[0] / 256)))
    if box is None or min(box[2] - box[0], box[3] - box[1]) < min_side:
        return None
    return Defect(category=category, alpha=alpha, layer=layer.astype(np.float32, copy=False), box=box)
