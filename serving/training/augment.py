"""Dataset expansions on (image, boxes): the pixels and the boxes move together, exactly.

Boxes are float arrays N x 4 of (x1, y1, x2, y2) in pixel-edge coordinates: a box covering pixel columns
a..b has x1 = a and x2 = b + 1 (COCO's x, x + width). With edges, a flip maps x to W - x with no
off-by-one, so every geometric expansion below is exact.

- HOR_FLIPE: mirror left-right.   VER_FLIPE: mirror top-bottom.
- ROTATE_90: a quarter turn counter-clockwise (``np.rot90``); it also works on non-square images (the
  width and height swap).
- VAGUE: a Gaussian blur; boxes stay where they are.

:func:`expand` applies each configured expansion with probability 1/2, from a given numpy Generator, so a
training sample's augmentation is reproducible from its seed.

Two more augmentations change only pixels, never boxes, and serve generalisation to surfaces the training set
does not hold (the trainer applies them when its params say so, beside the platform's expansions):

- :func:`photometric`: brightness, contrast, gamma and per-channel gains, sometimes grey or with the colour
  channels swapped, so that the network keys on the shape of a defect rather than the colour of a surface;
- :func:`texture_mix`: the relief of another, defect-free training image laid over the sample, so that
  structure which belongs to a background (weave, grain, brushing, stripes) is seen on many surfaces and
  learned as background.
"""
import cv2
import numpy as np

# Blur strengths VAGUE draws from (Gaussian sigma in pixels): enough to soften, not to erase, pits.
_BLUR_SIGMA = (0.5, 1.5)


def _boxes(boxes):
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def hflip(image, boxes):
    """Mirror left-right: x -> W - x (so x1' = W - x2, x2' = W - x1)."""
    width = image.shape[1]
    boxes = _boxes(boxes)
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def vflip(image, boxes):
    """Mirror top-bottom: y -> H - y."""
    height = image.shape[0]
    boxes = _boxes(boxes)
    out = boxes.copy()
    out[:, 1], out[:, 3] = height - boxes[:, 3], height - boxes[:, 1]
    return np.ascontiguousarray(image[::-1]), out


def rot90(image, boxes):
    """Quarter turn counter-clockwise, as ``np.rot90(image)``: the point (x, y) goes to (y, W - x)."""
    width = image.shape[1]
    boxes = _boxes(boxes)
    out = np.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], axis=1)
    return np.ascontiguousarray(np.rot90(image)), out.astype(np.float32)


def blur(image, boxes, sigma=1.0):
    """Gaussian blur of ``sigma`` pixels; the boxes are unchanged (a copy is returned)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma)), _boxes(boxes).copy()


def photometric(image, rng):
    """A random photometric change of a BGR uint8 image (a new array; boxes are unaffected)."""
    out = image.astype(np.float32)
    if rng.random() < 0.2:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        out = np.repeat(grey[:, :, None], 3, axis=2)
    elif rng.random() < 0.3:
        out = out[:, :, rng.permutation(3)]
    out *= rng.uniform(0.8, 1.2, size=3).astype(np.float32)  # white balance
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.6, 1.4) + mean * rng.uniform(0.7, 1.3)  # contrast, brightness
    np.clip(out, 0, 255, out=out)
    gamma = rng.uniform(0.7, 1.4)
    out = 255.0 * (out / 255.0) ** gamma
    return np.clip(out, 0, 255).astype(np.uint8)


def texture_mix(image, texture, rng, strength=(0.2, 0.6)):
    """Lay the relief of ``texture`` (a defect-free BGR image) over ``image``: the image is multiplied by
    ``texture``'s normalised grey level raised to a random ``strength``, after a random flip and quarter turn of
    the texture (a new array; boxes are unaffected)."""
    grey = np.rot90(cv2.cvtColor(texture, cv2.COLOR_BGR2GRAY).astype(np.float32) + 1.0, int(rng.integers(4)))
    if rng.random() < 0.5:
        grey = grey[:, ::-1]
    grey = np.ascontiguousarray(grey)
    if grey.shape != image.shape[:2]:
        grey = cv2.resize(grey, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    relief = (grey / grey.mean()) ** rng.uniform(*strength)
    return np.clip(image.astype(np.float32) * relief[:, :, None], 0, 255).astype(np.uint8)


def expand(image, boxes, expansions, rng):
    """Apply each of ``expansions`` (names from ``params.EXPANSIONS``) with probability 1/2, in a fixed
    order, drawing from ``rng`` (a ``numpy.random.Generator``). Returns (image, boxes)."""
    boxes = _boxes(boxes)
    for name in expansions:
        if rng.random() >= 0.5:
            continue
        if name == "HOR_FLIPE":
            image, boxes = hflip(image, boxes)
        elif name == "VER_FLIPE":
            image, boxes = vflip(image, boxes)
        elif name == "ROTATE_90":
            image, boxes = rot90(image, boxes)
        elif name == "VAGUE":
            image, boxes = blur(image, boxes, rng.uniform(*_BLUR_SIGMA))
        else:
            raise ValueError(f"unknown dataset expansion {name!r}")
    return image, boxes

