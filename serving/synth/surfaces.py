"""Seeded texture generators for industrial surfaces, grouped in families of named variants.

A *surface* is named ``family/variant`` (for instance ``stone/granite``). Every surface renders a
``size x size x 3`` float32 BGR image in [0, 255] from a ``numpy.random.Generator``, with numpy and cv2
only; each takes a few milliseconds at 256 x 256.

Families and variants (the last of each family is held out, see below):

- ``brushed_metal``: ``steel``, ``aluminium``, ``brass``, held out ``spun`` (concentric brushing marks).
  Directional streak noise (anisotropic stretch) rotated to a random brushing angle, with a sheen band.
- ``painted``: ``gloss``, ``matte``, ``satin``, held out ``metallic`` (sparkling flakes).
  A smooth colour, orange-peel (band-pass noise used as shading) and gradient lighting, plus a specular
  highlight on gloss.
- ``textile``: ``canvas`` (plain weave), ``denim`` (3/1 twill), ``mesh`` (open grid), held out ``carbon``
  (2/2 twill of dark glossy tows). Thread profiles from the weave pattern, fibre noise, colour variation.
- ``stone``: ``granite``, ``concrete``, ``slate``, held out ``marble`` (turbulent veins).
  Multi-scale (fBm) noise, speckles and pores.
- ``photographed``: ``wood``, ``sandblasted``, ``rubber``, held out ``leather`` (creased grain). Textures
  seen through a camera: :func:`camera_pre` (slight lens blur) runs before defects are drawn and
  :func:`camera_post` (vignetting, uneven light, sensor noise, JPEG artefacts) after, as in a photo.

Held-out surfaces: :data:`HELD_OUT_SURFACES` holds one variant per family whose *structure* differs from the
family's other variants (not just its colour), and :data:`TRAIN_SURFACES` holds the rest. A model trained on
``TRAIN_SURFACES`` and tested on ``HELD_OUT_SURFACES`` is measured on surfaces it did not see, while staying
in families it knows. :func:`resolve_surfaces` turns user selections (``"train"``, ``"held_out"``,
``"all"``, family names, surface names) into surface names.
"""
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

# ---------------------------------------------------------------------------------------------- helpers


def smooth_noise(rng, size, scale):
    """Zero-mean, unit-std noise whose features are about ``scale`` pixels wide (bicubic-upsampled grid).

    Upsampling a coarse grid is much cheaper than blurring full-size noise with a wide kernel.
    """
    cells = max(2, int(round(size / scale)) + 1)
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return _standardise(field)


def fbm(rng, size, scales=(64, 32, 16, 8, 4), persistence=0.6):
    """Fractal (multi-scale) noise: octaves of :func:`smooth_noise`, finer octaves weaker; unit std."""
    total = np.zeros((size, size), np.float32)
    amplitude = 1.0
    for scale in scales:
        total += amplitude * smooth_noise(rng, size, scale)
        amplitude *= persistence
    return _standardise(total)


def _standardise(field):
    std = float(field.std())
    return (field - field.mean()) / (std if std > 1e-6 else 1.0)


def _coords(size):
    """Pixel-centre coordinate grids (ys, xs), float32."""
    ramp = np.arange(size, dtype=np.float32)
    return np.meshgrid(ramp, ramp, indexing="ij")


def _linear_light(rng, size, strength):
    """A multiplicative gain ramp 1 +- strength/2 in a random direction (light falling across the part)."""
    ys, xs = _coords(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / size  # roughly in [-1.4, 1.4]
    ramp -= ramp.mean()
    return 1.0 + strength * ramp


def _colour(rng, bgr, jitter):
    """A BGR triple around ``bgr`` with independent per-channel jitter and an overall brightness jitter."""
    base = np.asarray(bgr, np.float32) * rng.uniform(1 - jitter, 1 + jitter)
    return base * (1.0 + rng.uniform(-jitter, jitter, 3).astype(np.float32) * 0.3)


def _hsv_colour(rng, hue, saturation, value):
    """A BGR float colour from HSV ranges (hue in degrees 0..360, saturation and value in 0..1)."""
    h = rng.uniform(*hue) % 360
    s = rng.uniform(*saturation)
    v = rng.uniform(*value)
    pixel = np.array([[[h / 2, s * 255, v * 255]]], np.float32).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _tint(gray, colour):
    """A float32 HxWx3 image: the ``colour`` triple scaled by a HxW gain."""
    return gray[:, :, None] * (np.asarray(colour, np.float32)[None, None, :] / 255.0) * 255.0


def _rotate(image, angle_deg, size):
    """The centre ``size x size`` crop of ``image`` (a larger square) rotated by ``angle_deg``."""
    big = image.shape[0]
    matrix = cv2.getRotationMatrix2D((big / 2, big / 2), angle_deg, 1.0)
    matrix[:, 2] -= (big - size) / 2  # shift so the output window is the centre crop
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _streaks(rng, side, length):
    """Unit-std horizontal streak noise: coarse along x (``length`` px features), per-pixel across y."""
    coarse = rng.standard_normal((side, max(2, side // length))).astype(np.float32)
    streaks = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_LINEAR)
    fine = rng.standard_normal((side, side)).astype(np.float32)
    # Fine grain is also smeared along the brushing direction, a little across it.
    fine = cv2.GaussianBlur(fine, (0, 0), sigmaX=3.0, sigmaY=0.4)
    return _standardise(streaks + 0.6 * _standardise(fine))


# ---------------------------------------------------------------------------------------------- brushed metal


def _brushed(rng, size, colour, grain, sheen):
    """Linear brushing at a random angle; ``grain`` is the streak contrast, ``sheen`` the band strength."""
    side = int(np.ceil(size * 1.45)) + 2  # big enough that any rotation of the centre crop stays inside
    streaks = _streaks(rng, side, length=int(rng.uniform(12, 40)))
    angle = rng.choice([0.0, 90.0]) + rng.normal(0, 12)
    streaks = _rotate(streaks, angle, size)
    # A soft reflection band across the brushing direction, as a bright stripe on a real brushed sheet.
    ys, xs = _coords(size)
    theta = np.deg2rad(angle)
    across = (-np.sin(theta) * xs + np.cos(theta) * ys) / size
    band = np.sin(2 * np.pi * (across * rng.uniform(0.4, 1.2) + rng.uniform(0, 1)))
    gain = 1.0 + sheen * band + grain * streaks
    return _tint(gain, colour) * _linear_light(rng, size, 0.15)[:, :, None]


def brushed_steel(rng, size):
    """Cool grey brushed steel."""
    return _brushed(rng, size, _colour(rng, (165, 155, 150), 0.12), rng.uniform(0.04, 0.08), rng.uniform(0.05, 0.12))


def brushed_aluminium(rng, size):
    """Bright, finely brushed aluminium."""
    return _brushed(rng, size, _colour(rng, (200, 200, 198), 0.08), rng.uniform(0.03, 0.06), rng.uniform(0.04, 0.1))


def brushed_brass(rng, size):
    """Yellow brushed brass."""
    return _brushed(rng, size, _colour(rng, (85, 160, 195), 0.1), rng.uniform(0.04, 0.08), rng.uniform(0.05, 0.12))


def brushed_spun(rng, size):
    """Spun metal: concentric brushing marks around a centre off to one side (held out)."""
    side = 512
    # Streaks in polar space (rows: radius, columns: angle) remapped into the image: circles of grain.
    polar = _streaks(rng, side, length=int(rng.uniform(20, 60)))
    polar = cv2.transpose(polar)  # streaks run along the angle axis
    ys, xs = _coords(size)
    cy, cx = rng.uniform(-0.6, 1.6, 2) * size
    radius = np.hypot(ys - cy, xs - cx)
    angle = (np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi)
    map_x = (radius / (2.5 * size) * (side - 1)).astype(np.float32)
    map_y = (angle * (side - 1)).astype(np.float32)
    grain = cv2.remap(polar, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Spun parts reflect as radial fans of light and dark.
    fan = np.cos(2 * (angle * 2 * np.pi) + rng.uniform(0, 2 * np.pi))
    gain = 1.0 + rng.uniform(0.06, 0.14) * fan + rng.uniform(0.04, 0.08) * grain
    colour = _colour(rng, (180, 178, 175), 0.15)
    return _tint(gain, colour)


# ---------------------------------------------------------------------------------------------- painted


def _painted(rng, size, peel, light, highlight):
    """Smooth paint: colour, orange peel (band-pass noise as shading), gradient light, optional highlight."""
    colour = _hsv_colour(rng, (0, 360), (0.15, 0.85), (0.35, 0.9))
    fine = smooth_noise(rng, size, rng.uniform(3, 6))
    coarse = smooth_noise(rng, size, rng.uniform(12, 24))
    orange_peel = _standardise(fine - 0.5 * coarse)
    gain = (1.0 + peel * orange_peel) * _linear_light(rng, size, light)
    image = _tint(gain, colour)
    if highlight:
        ys, xs = _coords(size)
        cy, cx = rng.uniform(0, size, 2)
        spread = rng.uniform(0.25, 0.6) * size
        glow = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * spread**2))
        image += (highlight * glow)[:, :, None] * (255.0 - image) * 0.6
    return image


def painted_gloss(rng, size):
    """Glossy paint: little orange peel, a broad specular highlight."""
    return _painted(rng, size, rng.uniform(0.01, 0.03), rng.uniform(0.1, 0.3), rng.uniform(0.2, 0.5))


def painted_matte(rng, size):
    """Matte paint: stronger orange peel, soft light, no highlight."""
    return _painted(rng, size, rng.uniform(0.03, 0.06), rng.uniform(0.1, 0.25), 0.0)


def painted_satin(rng, size):
    """Satin paint: between gloss and matte."""
    return _painted(rng, size, rng.uniform(0.02, 0.04), rng.uniform(0.15, 0.35), rng.uniform(0.05, 0.2))


def painted_metallic(rng, size):
    """Metallic paint: sparkling single-pixel flakes over a mottled base (held out)."""
    image = _painted(rng, size, rng.uniform(0.01, 0.03), rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.3))
    mottle = fbm(rng, size, scales=(32, 16, 8))
    image *= (1.0 + 0.04 * mottle)[:, :, None]
    flakes = rng.random((size, size), dtype=np.float32)
    sparkle = np.where(flakes > 0.97, rng.uniform(15, 35), 0.0) * (flakes - 0.97) / 0.03
    return image + sparkle.astype(np.float32)[:, :, None]


# ---------------------------------------------------------------------------------------------- textile


def _weave(rng, size, period, twill, warp_colour, weft_colour, gap=0.0, gloss=0.0):
    """A woven fabric: each cell shows the warp (bright across x) or the weft thread (bright across y).

    ``twill`` = 0 gives a plain weave (checkerboard of crossings); k > 1 shifts the pattern by one thread
    per row, giving the diagonal ribs of a k/k twill. ``gap`` darkens the space between threads (an open mesh).
    """
    angle = np.deg2rad(rng.normal(0, 8))
    ys, xs = _coords(size)
    # Threads wobble a little: real fabric is not a perfect lattice.
    wobble = 0.12 * period * smooth_noise(rng, size, 40)
    u = (np.cos(angle) * xs + np.sin(angle) * ys + wobble) / period
    v = (-np.sin(angle) * xs + np.cos(angle) * ys - wobble) / period
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    if twill:
        over = ((i + j) % (2 * twill)) < twill
    else:
        over = ((i + j) % 2) == 0
    # Thread cross-section: bright in its middle, darker where it dips under the crossing thread.
    warp = np.sin(np.pi * fu) ** 0.6
    weft = np.sin(np.pi * fv) ** 0.6
    shade = np.where(over, warp, weft).astype(np.float32)
    # Fibres: fine noise along each thread.
    fibres = rng.standard_normal((size, size)).astype(np.float32)
    fibres = cv2.GaussianBlur(fibres, (0, 0), 1.2)
    fibres = _standardise(fibres)
    gain = 0.65 + 0.35 * shade + 0.05 * fibres
    if gap:
        opening = (np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) < gap / 2) & ~over
        gain = np.where(opening, gain * 0.45, gain)
    colour = np.where(over[:, :, None], warp_colour[None, None, :], weft_colour[None, None, :])
    image = gain[:, :, None] * colour
    if gloss:
        image += (gloss * shade**4)[:, :, None] * 80.0
    variation = 1.0 + 0.06 * fbm(rng, size, scales=(64, 32))
    return image * (variation * _linear_light(rng, size, 0.2))[:, :, None]


def textile_canvas(rng, size):
    """Plain-weave canvas, beige to grey."""
    colour = _colour(rng, (150, 185, 205), 0.12)
    return _weave(rng, size, rng.uniform(5, 9), 0, colour, colour * rng.uniform(0.9, 1.05))


def textile_denim(rng, size):
    """Twill denim: blue warp over a pale weft."""
    warp = _hsv_colour(rng, (200, 235), (0.45, 0.8), (0.35, 0.65))
    weft = _colour(rng, (200, 205, 210), 0.08)
    return _weave(rng, size, rng.uniform(4, 7), 3, warp, weft)


def textile_mesh(rng, size):
    """An open synthetic mesh (filter cloth): plain weave with dark gaps between threads."""
    colour = _hsv_colour(rng, (0, 360), (0.0, 0.4), (0.55, 0.9))
    return _weave(rng, size, rng.uniform(7, 12), 0, colour, colour, gap=rng.uniform(0.15, 0.3))


def textile_carbon(rng, size):
    """Carbon fibre: 2/2 twill of wide, dark, glossy tows (held out)."""
    colour = _colour(rng, (55, 55, 58), 0.15)
    return _weave(rng, size, rng.uniform(10, 16), 2, colour, colour * 0.85, gloss=rng.uniform(0.5, 1.0))


# ---------------------------------------------------------------------------------------------- stone


def _speckles(rng, size, density, radius_px, colours):
    """A float32 HxWx3 image of round speckles (zero elsewhere) and their HxW coverage in [0, 1]."""
    n = rng.poisson(density * size * size)
    canvas = np.zeros((size, size, 3), np.float32)
    cover = np.zeros((size, size), np.float32)
    if n == 0:
        return canvas, cover
    # Drawing single-pixel dots vectorised; bigger speckles are grown by blurring the coverage.
    ys = rng.integers(0, size, n)
    xs = rng.integers(0, size, n)
    picks = rng.integers(0, len(colours), n)
    cover[ys, xs] = 1.0
    canvas[ys, xs] = np.asarray(colours, np.float32)[picks]
    if radius_px > 0.5:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(radius_px) + 1,) * 2)
        cover = cv2.dilate(cover, kernel)
        canvas = cv2.dilate(canvas, kernel)
        cover = cv2.GaussianBlur(cover, (0, 0), 0.6)
    return canvas, cover


def stone_granite(rng, size):
    """Granite: a mottled base with dense black, white and pink grains."""
    base = _colour(rng, (150, 150, 160), 0.2)
    image = _tint(1.0 + 0.12 * fbm(rng, size), base)
    colours = [(30, 30, 35), (225, 225, 230), _colour(rng, (150, 150, 200), 0.1)]
    grains, cover = _speckles(rng, size, rng.uniform(0.01, 0.025), 1.0, colours)
    image = image * (1 - cover[:, :, None]) + grains * cover[:, :, None]
    return image + rng.normal(0, 4, (size, size, 1)).astype(np.float32)


def stone_concrete(rng, size):
    """Concrete: grey, blotchy, with small dark pores and aggregate specks."""
    base = _colour(rng, (150, 152, 155), 0.18)
    image = _tint(1.0 + 0.08 * fbm(rng, size, scales=(96, 48, 24, 12, 6, 3), persistence=0.7), base)
    pores, cover = _speckles(rng, size, rng.uniform(0.001, 0.003), 0.0, [(60, 60, 62)])
    image = image * (1 - 0.6 * cover[:, :, None]) + 0.6 * pores * cover[:, :, None]
    return image + rng.normal(0, 5, (size, size, 1)).astype(np.float32)


def stone_slate(rng, size):
    """Slate: dark, layered (noise stretched along one direction), faintly blue-green."""
    side = int(np.ceil(size * 1.45)) + 2
    layers = cv2.resize(rng.standard_normal((side // 6, side // 48)).astype(np.float32), (side, side),
                        interpolation=cv2.INTER_CUBIC)
    layers = _rotate(_standardise(layers), rng.uniform(0, 180), size)
    base = _colour(rng, (95, 90, 80), 0.15)
    gain = 1.0 + 0.08 * layers + 0.07 * fbm(rng, size, scales=(32, 16, 8, 4))
    return _tint(gain, base) + rng.normal(0, 3, (size, size, 1)).astype(np.float32)


def stone_marble(rng, size):
    """Marble: pale stone crossed by soft turbulent veins (held out)."""
    ys, xs = _coords(size)
    angle = rng.uniform(0, np.pi)
    turbulence = fbm(rng, size, scales=(96, 48, 24, 12))
    phase = (np.cos(angle) * xs + np.sin(angle) * ys) / size * rng.uniform(2, 5) * np.pi
    veins = np.abs(np.sin(phase + rng.uniform(1.5, 3.0) * turbulence)) ** 0.35  # dark narrow lines at zeros
    base = _colour(rng, (215, 218, 222), 0.08)
    vein_colour = _colour(rng, (120, 125, 130), 0.2)
    mix = veins[:, :, None]
    image = mix * base + (1 - mix) * vein_colour
    return image * (1.0 + 0.03 * fbm(rng, size, scales=(32, 16)))[:, :, None]


# ---------------------------------------------------------------------------------------------- photographed


def photo_wood(rng, size):
    """Wood grain: growth rings as turbulent stripes along the grain, with pores."""
    ys, xs = _coords(size)
    along_x = rng.random() < 0.5
    across = ys if along_x else xs
    turbulence = fbm(rng, size, scales=(128, 64, 32))
    rings = np.sin(2 * np.pi * (across / rng.uniform(10, 25) + 0.6 * turbulence))
    # Pores: noise stretched along the grain (coarse along it, per-pixel across it).
    pores = rng.standard_normal((size, max(2, size // 30)) if along_x else (max(2, size // 30), size))
    pores = cv2.resize(pores.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    gain = 1.0 + 0.12 * rings + 0.05 * _standardise(pores) + 0.04 * smooth_noise(rng, size, 2)
    return _tint(gain, _colour(rng, (70, 125, 175), 0.18))


def photo_sandblasted(rng, size):
    """Sandblasted metal: matte, fine isotropic grain."""
    grain = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
    gain = 1.0 + 0.08 * _standardise(grain) + 0.04 * fbm(rng, size, scales=(64, 32))
    return _tint(gain, _colour(rng, (170, 170, 172), 0.15))


def photo_rubber(rng, size):
    """Dark moulded rubber or plastic with a fine stippled texture."""
    stipple = smooth_noise(rng, size, rng.uniform(2, 4))
    gain = 1.0 + 0.1 * stipple + 0.06 * fbm(rng, size, scales=(64, 32))
    return _tint(gain, _colour(rng, (70, 70, 72), 0.2))


def photo_leather(rng, size):
    """Leather: a network of creases (ridges of folded noise) over a warm colour (held out)."""
    creases = 1.0 - np.abs(fbm(rng, size, scales=(24, 12, 6)))  # near 1 on the creases' ridges
    gain = 1.0 - 0.18 * np.clip(creases - 0.6, 0, None) / 0.4 + 0.05 * smooth_noise(rng, size, 2)
    colour = _hsv_colour(rng, (10, 40), (0.3, 0.7), (0.25, 0.6))
    return _tint(gain, colour)


def camera_pre(rng, image):
    """Optics before the defects: a slight lens blur (a defect drawn afterwards keeps an exact box)."""
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))


def camera_post(rng, image):
    """Camera effects after the defects: vignetting and uneven light (per-pixel gains), signal-dependent
    sensor noise, and JPEG compression. The gains and noise act pixel by pixel, so they cannot move a
    defect's edge; JPEG adds only faint ringing, so the box of the drawn defect stays its visible box.

    Takes and returns a float32 BGR image; the result is uint8 (JPEG decoding quantises it anyway).
    """
    size = image.shape[0]
    ys, xs = _coords(size)
    cy, cx = (size - 1) / 2 + rng.normal(0, 0.1 * size, 2)
    r2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / (0.5 * size) ** 2
    vignette = 1.0 - rng.uniform(0.1, 0.35) * r2 / 2
    uneven = 1.0 + rng.uniform(0.05, 0.15) * smooth_noise(rng, size, size / 2)
    image = image * (vignette * uneven)[:, :, None]
    # Shot noise grows with the signal; read noise does not.
    sigma = np.sqrt(rng.uniform(0.5, 4.0) + rng.uniform(0.01, 0.05) * np.clip(image, 0, 255))
    image = image + sigma * rng.standard_normal(image.shape).astype(np.float32)
    quality = int(rng.integers(55, 92))
    ok, buffer = cv2.imencode(".jpg", np.clip(image, 0, 255).round().astype(np.uint8),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode could not encode a JPEG")
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Surface:
    """A named surface variant: ``render(rng, size)`` gives float32 BGR; ``camera`` adds the photo pipeline."""

    name: str
    family: str
    render: Callable
    camera: bool = False


_SURFACE_LIST = (
    Surface("brushed_metal/steel", "brushed_metal", brushed_steel),
    Surface("brushed_metal/aluminium", "brushed_metal", brushed_aluminium),
    Surface("brushed_metal/brass", "brushed_metal", brushed_brass),
    Surface("brushed_metal/spun", "brushed_metal", brushed_spun),
    Surface("painted/gloss", "painted", painted_gloss),
    Surface("painted/matte", "painted", painted_matte),
    Surface("painted/satin", "painted", painted_satin),
    Surface("painted/metallic", "painted", painted_metallic),
    Surface("textile/canvas", "textile", textile_canvas),
    Surface("textile/denim", "textile", textile_denim),
    Surface("textile/mesh", "textile", textile_mesh),
    Surface("textile/carbon", "textile", textile_carbon),
    Surface("stone/granite", "stone", stone_granite),
    Surface("stone/concrete", "stone", stone_concrete),
    Surface("stone/slate", "stone", stone_slate),
    Surface("stone/marble", "stone", stone_marble),
    Surface("photographed/wood", "photographed", photo_wood, camera=True),
    Surface("photographed/sandblasted", "photographed", photo_sandblasted, camera=True),
    Surface("photographed/rubber", "photographed", photo_rubber, camera=True),
    Surface("photographed/leather", "photographed", photo_leather, camera=True),
)

#: Every surface by name.
SURFACES = {surface.name: surface for surface in _SURFACE_LIST}

#: Family names, in a fixed order.
FAMILIES = ("brushed_metal", "painted", "textile", "stone", "photographed")

#: One structurally different variant per family, kept out of training to test generalisation.
HELD_OUT_SURFACES = (
    "brushed_metal/spun",
    "painted/metallic",
    "textile/carbon",
    "stone/marble",
    "photographed/leather",
)

#: The surfaces a model may train on.
TRAIN_SURFACES = tuple(name for name in SURFACES if name not in HELD_OUT_SURFACES)

#: Selection keywords accepted by :func:`resolve_surfaces`.
SELECTIONS = {"all": tuple(SURFACES), "train": TRAIN_SURFACES, "held_out": HELD_OUT_SURFACES}


def resolve_surfaces(selection=None):
    """Surface names (a sorted-by-registry tuple, no duplicates) for a selection.

    ``selection`` is None (all surfaces), or a string or an iterable of strings, each a keyword of
    :data:`SELECTIONS` (``"all"``, ``"train"``, ``"held_out"``), a family (``"stone"``) or a surface name
    (``"stone/marble"``). A comma-separated string is split, so a CLI flag can pass it through.
    Raises ValueError for an unknown name or an empty selection.
    """
    if selection is None:
        return tuple(SURFACES)
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    chosen = set()
    for item in (str(i).strip() for i in items):
        if item in SELECTIONS:
            chosen.update(SELECTIONS[item])
        elif item in FAMILIES:
            chosen.update(s.name for s in _SURFACE_LIST if s.family == item)
        elif item in SURFACES:
            chosen.add(item)
        else:
            raise ValueError(f"unknown surface {item!r}: use one of {sorted(SELECTIONS)}, a family "
                             f"{list(FAMILIES)} or a surface {list(SURFACES)}")
    if not chosen:
        raise ValueError("the surface selection is empty")
    return tuple(name for name in SURFACES if name in chosen)


def render_surface(rng, name, size=256):
    """Render surface ``name`` as float32 BGR in [0, 255] (the camera's lens blur included, not its post)."""
    surface = SURFACES[name]
    image = surface.render(rng, size).astype(np.float32, copy=False)
    if surface.camera:
        image = camera_pre(rng, image)
    return np.clip(image, 0, 255)
