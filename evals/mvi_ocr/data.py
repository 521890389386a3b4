"""Seeded generator of rendered product codes with exact labels, for the ``mvi_ocr`` app's tests, benchmark and
harness runs.

Each image is one code of 8 to 14 characters printed on a part: a light label or a dark, laser-marked surface,
in one of several fonts, slightly rotated (up to 8 degrees), blurred, under uneven light and with sensor noise.
The text of every image is known exactly, so a run can be scored without hand labelling.

Fonts come from what the project installs anyway, so a fresh clone renders them with no system fonts: the faces
OpenCV's ``putText`` draws for its ``FONT_HERSHEY_*`` names (OpenCV 5 draws them as built-in sans-serif and
monospace typefaces, with ``thickness`` as the weight; OpenCV 4 as Hershey stroke fonts), Pillow's built-in
scalable sans-serif (Aileron, embedded in Pillow), and a 5 x 7 dot-matrix face of round dots, as inkjet coders
print dates and lots (not in the default mix: see :data:`DEFAULT_FONTS`).

Codes use :data:`CODE_CHARSET` by default: digits and the capital letters without ``I``, ``O`` and ``Q``, the
way industrial codes avoid the letters a reader confuses with ``1`` and ``0``. The recogniser, knowing nothing
of that, still reads a round ``0`` as ``O`` now and then; the app's ``charset`` param is what fixes it.

Everything is driven by a ``numpy.random.Generator``: one seed gives the same codes everywhere, and the same
images wherever OpenCV and Pillow are the same versions.

    python -m evals.mvi_ocr.data OUT_DIR [N] [SEED]   # N PNG files and OUT_DIR/labels.json {file: code}
"""

import json
import os
import sys

import cv2
import numpy as np

from evals.mvi_ocr.charsets import NAMED_CHARSETS

#: Digits and capital letters without I, O and Q: the default alphabet of the generated codes, the app's named
#: charset ``"code"``.
CODE_CHARSET = NAMED_CHARSETS["code"]

MIN_LENGTH = 8
MAX_LENGTH = 14
MAX_ROTATION_DEG = 8.0

#: The font faces a code may be rendered in.
FONTS = ("cv_simplex", "cv_plain", "cv_duplex", "cv_complex", "cv_triplex", "pillow_sans", "dot_matrix")
#: The faces of the default mix. Dot-matrix print is left out: PP-OCRv4 was hardly trained on dotted glyphs and
#: reads them worse than any other face (see the app's README), so it is a set of its own
#: (``fonts=("dot_matrix",)``) rather than noise in every other figure.
DEFAULT_FONTS = tuple(font for font in FONTS if font != "dot_matrix")

_OPENCV_FACES = {
    "cv_simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "cv_plain": cv2.FONT_HERSHEY_PLAIN,
    "cv_duplex": cv2.FONT_HERSHEY_DUPLEX,
    "cv_complex": cv2.FONT_HERSHEY_COMPLEX,
    "cv_triplex": cv2.FONT_HERSHEY_TRIPLEX,
}

# The classic 5 x 7 dot-matrix glyphs, rows top to bottom.
_DOT_GLYPHS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 10001 11111 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 01010 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    "-": "00000 00000 00000 11111 00000 00000 00000",
}

# Share of digits in a code: industrial codes are mostly numbers (dates, serials) with a few letters.
_DIGIT_SHARE = 0.6


def random_code(rng, *, charset=CODE_CHARSET, min_length=MIN_LENGTH, max_length=MAX_LENGTH):
    """A random code of ``min_length`` to ``max_length`` characters from ``charset`` (digits favoured)."""
    length = int(rng.integers(min_length, max_length + 1))
    digits = [c for c in charset if c.isdigit()]
    others = [c for c in charset if not c.isdigit()]
    chars = []
    for _ in range(length):
        pool = digits if digits and (not others or rng.random() < _DIGIT_SHARE) else others
        chars.append(pool[int(rng.integers(len(pool)))])
    return "".join(chars)


def render(text, rng, *, font=None):
    """Render ``text`` as a BGR uint8 image of a printed code; ``font`` is one of :data:`FONTS` (random from
    :data:`DEFAULT_FONTS` when None). Images are about 90 to 200 pixels high and 200 to 800 wide."""
    if font is None:
        font = DEFAULT_FONTS[int(rng.integers(len(DEFAULT_FONTS)))]
    if font not in FONTS:
        raise ValueError(f"unknown font {font!r}; expected one of {FONTS}")
    char_height = float(rng.uniform(22, 40))
    ink = _text_mask(text, font, char_height, rng)  # float32 0..1, tight around the text

    # Canvas with margins, so rotation never cuts the text and the detector sees a background around it.
    pad_x = int(rng.uniform(0.6, 1.6) * char_height)
    pad_y = int(rng.uniform(0.9, 1.8) * char_height)
    height, width = ink.shape[0] + 2 * pad_y, ink.shape[1] + 2 * pad_x
    mask = np.zeros((height, width), np.float32)
    mask[pad_y:pad_y + ink.shape[0], pad_x:pad_x + ink.shape[1]] = ink

    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    mask = cv2.warpAffine(mask, rotation, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)

    dark_surface = rng.random() < 0.3  # laser marking: light text on a dark part
    if dark_surface:
        background = rng.uniform(40, 90, size=3)
        ink_colour = background + rng.uniform(90, 150)
    else:
        background = rng.uniform(170, 245, size=3)
        ink_colour = rng.uniform(10, 70, size=3)
    image = background[None, None, :] * (1 - mask[..., None]) + ink_colour[None, None, :] * mask[..., None]

    image = image * _uneven_light(height, width, rng)[..., None]
    sigma = float(rng.uniform(0.0, 1.3))
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = image + rng.normal(0.0, rng.uniform(2.0, 9.0), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(n, seed, *, charset=CODE_CHARSET, fonts=DEFAULT_FONTS):
    """``n`` samples ``(name, BGR image, code)`` from ``seed``, each in a face drawn from ``fonts``; names are
    ``code_00000.png`` onwards."""
    unknown = [font for font in fonts if font not in FONTS]
    if not fonts or unknown:
        raise ValueError(f"fonts must name some of {FONTS}, got {tuple(fonts)!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n):
        text = random_code(rng, charset=charset)
        font = fonts[int(rng.integers(len(fonts)))]
        samples.append((f"code_{index:05d}.png", render(text, rng, font=font), text))
    return samples


def write_dataset(out_dir, n, seed, *, charset=CODE_CHARSET, fonts=DEFAULT_FONTS):
    """Write ``n`` PNG files and ``labels.json`` (``{file name: code}``, what ``serving test --labels`` reads)
    into ``out_dir``; returns the labels."""
    os.makedirs(out_dir, exist_ok=True)
    labels = {}
    for name, image, text in generate(n, seed, charset=charset, fonts=fonts):
        if not cv2.imwrite(os.path.join(out_dir, name), image):
            raise OSError(f"could not write {os.path.join(out_dir, name)}")
        labels[name] = text
    with open(os.path.join(out_dir, "labels.json"), "w", encoding="utf-8") as handle:
        json.dump(labels, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return labels


# ---------------------------------------------------------------------------------------------- rendering


def _text_mask(text, font, char_height, rng):
    """The text's ink as float32 in 0..1, cropped to the text with a small border."""
    border = int(char_height * 0.3) + 2
    if font == "pillow_sans":
        mask = _pillow_sans(text, char_height, rng)
    elif font == "dot_matrix":
        mask = _dot_matrix(text, char_height, rng)
    else:
        mask = _opencv_text(text, _OPENCV_FACES[font], char_height, rng)
    return np.pad(mask, border)


def _opencv_text(text, face, char_height, rng):
    (width, height), _ = cv2.getTextSize(text, face, 1.0, 1)
    scale = char_height / height
    # OpenCV 5 reads the thickness as the font weight, OpenCV 4 as the stroke width: both vary the look.
    thickness = int(rng.integers(1, 4))
    (width, height), baseline = cv2.getTextSize(text, face, scale, thickness)
    canvas = np.zeros((height + baseline + 2 * thickness, width + 2 * thickness), np.uint8)
    cv2.putText(canvas, text, (thickness, thickness + height), face, scale, 255, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _pillow_sans(text, char_height, rng):
    from PIL import Image, ImageDraw, ImageFont  # imported here: only these faces need Pillow

    font = ImageFont.load_default(size=max(8, int(round(char_height * 1.37))))  # capitals: 0.73 of the em
    left, top, right, bottom = font.getbbox(text)
    stroke = int(rng.integers(0, 2))  # a bold weight half the time
    canvas = Image.new("L", (right - left + 2 * stroke, bottom - top + 2 * stroke), 0)
    ImageDraw.Draw(canvas).text((stroke - left, stroke - top), text, fill=255, font=font, stroke_width=stroke,
                                stroke_fill=255)
    return np.asarray(canvas, np.float32) / 255.0


def _dot_matrix(text, char_height, rng):
    """Text in a 5 x 7 dot-matrix face with every dot round, as an inkjet coder prints dates and lots."""
    missing = sorted(set(text) - set(_DOT_GLYPHS))
    if missing:
        raise ValueError(f"the dot_matrix font has no glyph for {''.join(missing)!r}")
    pitch = char_height / 7.0
    radius = pitch * rng.uniform(0.6, 0.75)
    shift = 4  # sub-pixel dot centres
    one = 1 << shift
    columns = 6 * len(text) - 1  # 5 dots a character and one blank column between characters
    mask = np.zeros((int(np.ceil(pitch * 7)) + 2, int(np.ceil(pitch * columns)) + 2), np.uint8)
    for index, char in enumerate(text):
        for row, bits in enumerate(_DOT_GLYPHS[char].split()):
            for column, bit in enumerate(bits):
                if bit == "1":
                    x, y = (6 * index + column + 0.5) * pitch + 1, (row + 0.5) * pitch + 1
                    cv2.circle(mask, (int(x * one), int(y * one)), int(radius * one), 255, -1, cv2.LINE_AA, shift)
    return mask.astype(np.float32) / 255.0


def _uneven_light(height, width, rng):
    """A multiplicative light field: a linear gradient in a random direction times a soft spot or shadow."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xs / width - 0.5) + np.sin(angle) * (ys / height - 0.5))
    field = 1.0 + ramp * rng.uniform(0.0, 0.6)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    spread = rng.uniform(0.3, 0.8) * max(width, height)
    spot = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * spread ** 2))
    field *= 1.0 + rng.uniform(-0.35, 0.35) * spot
    return field


def main(argv=None):
    """``python -m evals.mvi_ocr.data OUT_DIR [N] [SEED]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out_dir = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 200
    seed = int(argv[2]) if len(argv) > 2 else 0
    write_dataset(out_dir, n, seed)
    print(f"wrote {n} images and labels.json to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
