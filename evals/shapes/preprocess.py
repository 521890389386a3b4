"""Image preprocessing shared by the model build (training) and the eval (serving).

Keeping the one function here, imported by both ``build_model.py`` and ``eval.py``, is what guarantees
the served model sees exactly the input distribution it was trained on. If you change anything here,
rebuild the model.
"""

import cv2
import numpy as np

from evals.utils.image import square_bgr

#: Model input side in pixels.
INPUT_SIDE = 64
#: Shape of one preprocessed image: channels-first RGB.
INPUT_SHAPE = (3, INPUT_SIDE, INPUT_SIDE)

# Maps [0, 255] to [-1, 1]: zero-centred inputs train faster than raw [0, 1] values.
_MEAN = 127.5
_SCALE = 1.0 / 127.5


def preprocess(image_bgr):
    """Turn one BGR uint8 image (H x W x 3, as ``load_image`` returns) into a float32 3 x 64 x 64 array.

    Steps: resize to 64 x 64 (area interpolation when shrinking, so thin edges are averaged rather than
    dropped; linear when enlarging), BGR -> RGB, scale to [-1, 1], HWC -> CHW.
    """
    image = square_bgr(image_bgr, INPUT_SIDE)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    chw -= _MEAN
    chw *= _SCALE
    return chw


def preprocess_batch(images_bgr):
    """Preprocess a sequence of BGR images into one float32 N x 3 x 64 x 64 batch."""
    batch = np.empty((len(images_bgr),) + INPUT_SHAPE, dtype=np.float32)
    for index, image in enumerate(images_bgr):
        batch[index] = preprocess(image)
    return batch
