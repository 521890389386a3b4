"""Text recognition for ``mvi_ocr``: the PP-OCRv4 CTC recogniser, run once over the line crops of a whole batch,
with decoding restricted to a charset.

The network reads a line image 48 pixels high and of any width and gives, for every 8-pixel column step, a
probability over its classes: the CTC blank (class 0), the characters of its dictionary (stored in the model's
``character`` metadata) and the space (last class). Decoding takes the most probable class of every step,
merges repeats and drops blanks.

A charset restricts that choice to the allowed classes (and the blank) *before* the argmax: where the network
says "O 0.80, 0 0.15" and only digits are allowed, the step reads ``0``. The probability of the chosen class is
renormalised over the allowed ones, so a character the charset forces is as confident as the network was that
the step holds *some* allowed character. A line's score is the mean of its characters' probabilities.
"""

import functools
import math

import cv2
import numpy as np

from evals.mvi_ocr.charsets import CharsetError, charset_characters

INPUT_HEIGHT = 48
_SCALE = 2.0 / 255.0
_BLANK = 0


class TextRecognizer:
    """The recognition network and its dictionary.

    ``max_width`` caps a line's width after scaling it to 48 pixels high (a longer line is squeezed): it bounds
    what one padded batch costs. ``min_width`` is the narrowest a batch is padded to. PP-OCR pads to 320; this
    recogniser reads product codes more accurately with blank room after the text: on generated codes (300
    each, seeds 101 and 202, lines 210 to 530 pixels wide) exact match without a charset went from 98.7% and
    96.7% padded to 320 (or to each line's own width) to 100% and 98.7% padded to 640, and it levels off from
    560 on. The price is compute: a batch of 330-pixel lines costs about twice as much at 640.
    """

    def __init__(self, session, *, max_width=1280, min_width=640):
        self.session = session
        self.max_width = max_width
        self.min_width = min_width
        self.input_name = session.get_inputs()[0].name
        metadata = session.get_modelmeta().custom_metadata_map
        if "character" not in metadata:
            raise ValueError("the recognition model has no 'character' metadata: its dictionary is unknown")
        self.classes = ["", *metadata["character"].splitlines(), " "]
        n_outputs = session.get_outputs()[0].shape[-1]
        if isinstance(n_outputs, int) and n_outputs != len(self.classes):
            raise ValueError(f"the recognition model has {n_outputs} classes but its dictionary names "
                             f"{len(self.classes)}")
        self._index = {char: i for i, char in enumerate(self.classes) if i != _BLANK}

    def line_image(self, crop):
        """A BGR line crop scaled to the network's 48 pixels high (uint8, 48 x width x 3; width = its own,
        scaled, at most ``max_width``). Kept as uint8 until `run`: a quarter of the memory of the float input,
        for requests that wait in the queue between preprocessing and inference."""
        height, width = crop.shape[:2]
        scaled_width = max(1, min(self.max_width, math.ceil(INPUT_HEIGHT * width / height)))
        return cv2.resize(crop, (scaled_width, INPUT_HEIGHT), interpolation=cv2.INTER_LINEAR)

    def run(self, lines):
        """Class probabilities (lines x steps x classes) of line images from `line_image`, in ONE network call:
        normalised as PP-OCR does and right-padded with zeros (mid grey after normalisation, as PP-OCR pads) to
        the widest of them, at least ``min_width``."""
        width = max(self.min_width, max(line.shape[1] for line in lines))
        batch = np.zeros((len(lines), 3, INPUT_HEIGHT, width), np.float32)
        for row, line in enumerate(lines):
            batch[row, :, :, :line.shape[1]] = line.transpose(2, 0, 1).astype(np.float32) * _SCALE - 1.0
        return self.session.run(None, {self.input_name: batch})[0]

    @functools.lru_cache(maxsize=64)
    def allowed_classes(self, charset):
        """The class indices a ``charset`` param allows, blank first, as an int array; None for no charset.

        Raises CharsetError naming characters the recogniser cannot read at all.
        """
        if charset is None:
            return None
        characters = charset_characters(charset)
        unknown = [c for c in characters if c not in self._index]
        if unknown:
            shown = "".join(unknown[:20]) + ("..." if len(unknown) > 20 else "")
            raise CharsetError(f"params.charset holds characters the recogniser cannot read: {shown!r}")
        return np.array([_BLANK] + [self._index[c] for c in characters], np.int64)

    def decode(self, probabilities, allowed=None):
        """``(text, score)`` of one line's step x class probabilities, restricted to ``allowed`` classes (from
        `allowed_classes`) when given. The text loses leading and trailing spaces; score is 0.0 for no text."""
        if allowed is None:
            best = probabilities.argmax(axis=1)
            confidence = probabilities[np.arange(len(best)), best]
        else:
            restricted = probabilities[:, allowed]
            column = restricted.argmax(axis=1)
            best = allowed[column]
            total = restricted.sum(axis=1)
            confidence = restricted[np.arange(len(column)), column] / np.maximum(total, 1e-12)
        keep = best != _BLANK
        keep[1:] &= best[1:] != best[:-1]
        chars = [self.classes[i] for i in best[keep]]
        scores = confidence[keep]
        # Spaces at either end carry no information and would make the same code compare unequal.
        start, end = 0, len(chars)
        while start < end and chars[start] == " ":
            start += 1
        while end > start and chars[end - 1] == " ":
            end -= 1
        if start == end:
            return "", 0.0
        return "".join(chars[start:end]), float(scores[start:end].mean())
