"""Text detection for ``mvi_ocr``: the PP-OCRv4 DB detector, one image at a time, and the line crops it yields.

The network maps an image to a text-probability map; ``rapidocr_onnxruntime``'s ``DBPostProcess`` (the
reference Differentiable Binarization post-processing: threshold, contours, minimum-area boxes, box score,
unclip) turns the map into quadrilaterals. Around it, what is ours: the input size (the longer side capped, not
the package's upscaling of the shorter side to 736 px, which makes a 150 x 450 label a 736 x 2208 input), the
reading order, a cap on the number of lines, and the crops handed to recognition.
"""

from dataclasses import dataclass

import cv2
import numpy as np

# The network downsamples by 32: input sides must be multiples of it.
_STRIDE = 32
# PP-OCR's input normalisation: (pixel / 255 - 0.5) / 0.5 for every channel.
_SCALE = 2.0 / 255.0
# A box whose shorter side is under this many pixels is noise, not a line.
_MIN_BOX_SIDE = 4


@dataclass(frozen=True)
class DetectorSettings:
    """How the detector runs; each field is an ``app.json`` ``model_params`` key prefixed with ``det_``."""

    max_side: int = 960        # longer input side, in pixels; larger images are scaled down to it
    thresh: float = 0.3        # probability above which a pixel is text
    box_thresh: float = 0.5    # mean probability inside a box below which the box is dropped
    unclip_ratio: float = 1.6  # how far a box grows beyond the shrunk text kernel the network predicts
    max_lines: int = 32        # most lines kept per image: the ones with the highest box scores


@dataclass(frozen=True)
class DetectedLine:
    """One text line: its quadrilateral in image pixels (top-left, top-right, bottom-right, bottom-left) and the
    detector's box score."""

    polygon: np.ndarray  # float32, 4 x 2
    score: float


class TextDetector:
    """Runs the detection network on one image and returns its lines in reading order."""

    def __init__(self, session, settings):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess  # the package: imported when serving

        self.session = session
        self.settings = settings
        self.input_name = session.get_inputs()[0].name
        self._postprocess = DBPostProcess(thresh=settings.thresh, box_thresh=settings.box_thresh,
                                          max_candidates=1000, unclip_ratio=settings.unclip_ratio,
                                          score_mode="fast", use_dilation=True)

    def detect(self, image):
        """The lines of a BGR uint8 image, top to bottom and left to right, at most ``max_lines``."""
        height, width = image.shape[:2]
        probability = self.session.run(None, {self.input_name: self._network_input(image)})[0]
        boxes, scores = self._postprocess(probability, (height, width))
        lines = []
        for box, score in zip(boxes, scores):
            polygon = _clockwise(np.asarray(box, np.float32))
            polygon[:, 0] = np.clip(polygon[:, 0], 0, width - 1)
            polygon[:, 1] = np.clip(polygon[:, 1], 0, height - 1)
            if min(_side_lengths(polygon)) < _MIN_BOX_SIDE:
                continue
            lines.append(DetectedLine(polygon, float(score)))
        if len(lines) > self.settings.max_lines:
            lines = sorted(lines, key=lambda line: -line.score)[:self.settings.max_lines]
        return reading_order(lines)

    def _network_input(self, image):
        height, width = image.shape[:2]
        scale = min(1.0, self.settings.max_side / max(height, width))
        # Rounded to the stride; the slight stretch this makes is undone by the post-processing, which maps the
        # boxes back with the original size.
        input_h = max(_STRIDE, int(round(height * scale / _STRIDE)) * _STRIDE)
        input_w = max(_STRIDE, int(round(width * scale / _STRIDE)) * _STRIDE)
        resized = cv2.resize(image, (input_w, input_h), interpolation=cv2.INTER_LINEAR)
        tensor = resized.astype(np.float32) * _SCALE - 1.0
        return tensor.transpose(2, 0, 1)[np.newaxis]


def crop_line(image, polygon):
    """The line's pixels, warped upright to a rectangle as long and as high as the quadrilateral's sides."""
    top, right, bottom, left = _side_lengths(polygon)
    width = max(1, int(round(max(top, bottom))))
    height = max(1, int(round(max(left, right))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    transform = cv2.getPerspectiveTransform(polygon.astype(np.float32), target)
    return cv2.warpPerspective(image, transform, (width, height), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)


def reading_order(lines):
    """Lines sorted top to bottom, and left to right within a row: two lines are in one row when their vertical
    centres are closer than half the lower line's height."""
    remaining = sorted(lines, key=lambda line: (float(line.polygon[:, 1].mean()), float(line.polygon[:, 0].min())))
    ordered = []
    while remaining:
        first = remaining[0]
        centre = float(first.polygon[:, 1].mean())
        row = [line for line in remaining
               if abs(float(line.polygon[:, 1].mean()) - centre) < 0.5 * _line_height(line)]
        row.sort(key=lambda line: float(line.polygon[:, 0].min()))
        ordered.extend(row)
        remaining = [line for line in remaining if all(line is not other for other in row)]
    return ordered


def _line_height(line):
    _, right, _, left = _side_lengths(line.polygon)
    return max(left, right, 1.0)


def _side_lengths(polygon):
    """Lengths of the top, right, bottom and left sides of a clockwise quadrilateral."""
    return [float(np.linalg.norm(polygon[(i + 1) % 4] - polygon[i])) for i in range(4)]


def _clockwise(points):
    """The 4 points ordered top-left, top-right, bottom-right, bottom-left (image coordinates, y down)."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], np.float32)
