"""Seeded generator of synthetic labelled shape images for the ``shapes`` example app.

Every image is one filled shape (circle, square, triangle or star) of a random colour, size, position
and rotation, drawn on a background of a random colour and a linear gradient, with pixel noise over
everything. Image sides vary between 64 and 160 pixels, so the resize in :mod:`evals.shapes.preprocess`
is exercised.

Everything is driven by a ``numpy.random.Generator``: the same seed gives byte-identical images, which
lets the model build and the tests use disjoint seeds for training and held-out data.

    python -m evals.shapes.data OUT_DIR [N] [SEED]    # writes N PNG files and OUT_DIR/labels.json
"""

import json
import os
import sys

import cv2
import numpy as np

#: Class names, in the order of the model's output logits.
CLASSES = ("circle", "square", "triangle", "star")

MIN_SIDE = 64
MAX_SIDE = 160

#: Seeds ``build_model.py`` trains and measures held-out accuracy on; use any other seed for images the
#: model has never seen (tests, demos).
TRAIN_SEED = 1
HELD_OUT_SEED = 2

# Fractional bits for cv2 drawing coordinates: sub-pixel vertices keep small shapes from snapping to
# the pixel grid, so rotation and position look continuous.
_SHIFT = 4
_SCALE = 1 << _SHIFT


def _background(rng, side):
    """A side x side x 3 float32 image: a base colour plus a linear gradient in a random direction."""
    base = rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
    yy, xx = np.meshgrid(ramp, ramp, indexing="ij")
    direction = np.cos(angle) * xx + np.sin(angle) * yy  # in [-0.71, 0.71]
    strength = rng.uniform(0, 90, size=3)  # per channel, so gradients also shift hue
    return (base[None, None, :] + direction[:, :, None] * strength[None, None, :]).astype(np.float32)


def _shape_colour(rng, background_mean):
    """A random colour far enough from the mean background colour for the shape to stay visible."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background_mean) >= 110:
            return colour
    # Fallback: pushing each channel to the far end of its range is at least 127.5 * sqrt(3) away.
    return np.where(background_mean > 127.5, 0.0, 255.0)


def _polygon(center, radius, angle, n_vertices, inner_ratio=None):
    """Vertices of a regular polygon (or a star when ``inner_ratio`` is set) as an int32 cv2 array."""
    if inner_ratio is None:
        angles = angle + np.arange(n_vertices) * 2 * np.pi / n_vertices
        radii = np.full(n_vertices, radius)
    else:
        angles = angle + np.arange(2 * n_vertices) * np.pi / n_vertices
        radii = np.where(np.arange(2 * n_vertices) % 2 == 0, radius, radius * inner_ratio)
    xs = center[0] + radii * np.cos(angles)
    ys = center[1] + radii * np.sin(angles)
    points = np.stack([xs, ys], axis=1) * _SCALE
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def render(kind, rng, size=None):
    """Render one ``kind`` shape (a name from :data:`CLASSES`) as a BGR uint8 image.

    ``rng`` is a ``numpy.random.Generator``; ``size`` is the image side in pixels, or None for a random
    side in [MIN_SIDE, MAX_SIDE].
    """
    if kind not in CLASSES:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {CLASSES}")
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) if size is None else int(size)
    if side < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE}, got {side}")

    image = _background(rng, side)
    colour = _shape_colour(rng, image.mean(axis=(0, 1)))

    # The radius is the circumscribed radius; keep the whole shape inside the image.
    radius = rng.uniform(0.2, 0.42) * side
    center = rng.uniform(radius + 1, side - radius - 1, size=2)
    angle = rng.uniform(0, 2 * np.pi)

    canvas = np.zeros((side, side), dtype=np.uint8)
    if kind == "circle":
        cx, cy = np.round(center * _SCALE).astype(int)
        cv2.circle(canvas, (int(cx), int(cy)), int(round(radius * _SCALE)), 255, -1, cv2.LINE_AA, _SHIFT)
    elif kind == "square":
        cv2.fillPoly(canvas, [_polygon(center, radius, angle, 4)], 255, cv2.LINE_AA, _SHIFT)
    elif kind == "triangle":
        cv2.fillPoly(canvas, [_polygon(center, radius, angle, 3)], 255, cv2.LINE_AA, _SHIFT)
    else:  # star
        inner = rng.uniform(0.38, 0.5)
        cv2.fillPoly(canvas, [_polygon(center, radius, angle, 5, inner)], 255, cv2.LINE_AA, _SHIFT)

    # Blend through the anti-aliased mask, then add sensor-like noise over background and shape alike
    # so neither is a flat fill.
    alpha = (canvas.astype(np.float32) / 255.0)[:, :, None]
    image = image * (1.0 - alpha) + np.asarray(colour, dtype=np.float32)[None, None, :] * alpha
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 14))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_dataset(n, seed):
    """Render ``n`` images with a balanced, shuffled class mix.

    Returns ``(images, labels)``: a list of BGR uint8 images (sides vary) and an int64 array of class
    indices into :data:`CLASSES`.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    rng.shuffle(labels)
    images = [render(CLASSES[label], rng) for label in labels]
    return images, labels


def write_folder(out_dir, n, seed):
    """Write ``n`` PNG images to ``out_dir`` plus ``labels.json`` (file name -> class name).

    Returns the path of ``labels.json``.
    """
    os.makedirs(out_dir, exist_ok=True)
    images, labels = make_dataset(n, seed)
    names = {}
    for index, (image, label) in enumerate(zip(images, labels)):
        name = f"shape_{index:05d}.png"
        if not cv2.imwrite(os.path.join(out_dir, name), image):
            raise OSError(f"could not write {os.path.join(out_dir, name)}")
        names[name] = CLASSES[label]
    labels_path = os.path.join(out_dir, "labels.json")
    with open(labels_path, "w", encoding="utf-8") as handle:
        json.dump(names, handle, indent=1, sort_keys=True)
    return labels_path


def main(argv=None):
    """Command line: ``python -m evals.shapes.data OUT_DIR [N] [SEED]``."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    n = int(args[1]) if len(args) > 1 else 100
    seed = int(args[2]) if len(args) > 2 else 0
    print(write_folder(args[0], n, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
