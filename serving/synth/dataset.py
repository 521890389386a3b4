"""Seeded synthetic defect-detection datasets: industrial surfaces with scratches, spots, cracks and pits.

Every image is a surface variant from :mod:`serving.synth.surfaces` with 0 to :data:`MAX_DEFECTS` defects
from :mod:`serving.synth.defects`, each annotated with the exact box of the pixels it changed (COCO
``[x, y, width, height]``, pixel edges, integers). A share of the images (``defect_free_fraction``,
15 % by default) has no defect at all, so a detector also learns to stay quiet. Defects never touch each
other's boxes (a 3-pixel gap is kept), so no box is partly hidden by another defect.

Determinism: image ``i`` of a split with seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``,
so the same seed gives byte-identical images and annotations, and image ``i`` does not depend on ``n``
(a bigger dataset extends a smaller one).

Splits and held-out surfaces (:func:`make_splits`): ``n`` images in all are split 70/15/15 into train,
val and test. Each split has its own seed derived from the user's seed (``split_seed``), so the three are
disjoint draws. Train and val use :data:`~serving.synth.surfaces.TRAIN_SURFACES`; test uses
:data:`~serving.synth.surfaces.HELD_OUT_SURFACES`, one structurally different variant per family that
training never sees (spun metal, metallic paint, carbon fibre, marble, leather), so the test score is a score
on unseen surfaces. Val measures the same surfaces as training. Pass ``test_surfaces="train"`` (or any
selection :func:`~serving.synth.surfaces.resolve_surfaces` accepts) for an in-distribution test set.

The intended CLI, ``serving dataset synth [--n N] [--seed S] [--data-dir D]``, calls
``make_splits(n, seed)`` (or :func:`write_splits` into a staging folder), stores each split as a dataset in
the data directory and prints ``{"train": ID, "val": ID, "test": ID}`` as JSON.

A written split (:func:`write_split`) is a folder of ``NNNNNN.png`` files with a ``coco.json`` next to them;
``serving test --images DIR --labels DIR/coco.json`` scores a detector against it.

Look at the data::

    python -m serving.synth --out DIR [--n 16] [--seed 0] [--surfaces held_out]

writes ``DIR/sheet.png``, a contact sheet with the boxes and labels drawn.
"""
import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

from serving.synth import defects as _defects
from serving.synth import surfaces as _surfaces

#: COCO category id of each defect class (1-based, in the order of ``defects.CATEGORIES``).
CATEGORY_IDS = {name: index + 1 for index, name in enumerate(_defects.CATEGORIES)}

DEFAULT_SIZE = 256
DEFAULT_DEFECT_FREE_FRACTION = 0.15
#: The most defects on one image (an image with defects has 1 to MAX_DEFECTS, uniformly).
MAX_DEFECTS = 4
#: Fractions of ``n`` that ``make_splits`` puts in train, val and test.
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
SPLITS = ("train", "val", "test")

# Empty pixels kept between defect boxes, so no defect covers part of another one's box.
_BOX_GAP = 3
# Draws per defect before giving up on placing it (a crowded image then just has fewer defects).
_PLACEMENT_TRIES = 30


def _boxes_touch(a, b, gap):
    """Whether boxes a and b (x1, y1, x2, y2) come closer than ``gap`` pixels."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def add_defects(rng, image, n_defects, categories=None):
    """``image`` (float32 HxWx3) with up to ``n_defects`` non-touching defects, and the defects placed.

    Each defect's category is drawn uniformly from ``categories`` (default: all). Fewer defects are placed
    when the image has no room left for one. Returns (float32 image, list of ``defects.Defect``).
    """
    categories = tuple(categories) if categories is not None else _defects.CATEGORIES
    placed = []
    for _ in range(n_defects):
        category = categories[int(rng.integers(len(categories)))]
        for _ in range(_PLACEMENT_TRIES):
            defect = _defects.render_defect(rng, category, image)
            if defect is not None and not any(_boxes_touch(defect.box, p.box, _BOX_GAP) for p in placed):
                image = _defects.apply_defect(image, defect)
                placed.append(defect)
                break
    return image, placed


def _annotation(defect):
    x1, y1, x2, y2 = defect.box
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "category": defect.category}


def render_sample(rng, size=DEFAULT_SIZE, surface=None, n_defects=None):
    """One synthetic image and its annotations.

    ``surface`` is a surface name (default: drawn from all surfaces); ``n_defects`` the number of defects
    to try to place (default: 1 to MAX_DEFECTS; 0 gives a defect-free image). Returns (BGR uint8 image,
    list of ``{"bbox": [x, y, w, h], "category": name}``).
    """
    if surface is None:
        names = tuple(_surfaces.SURFACES)
        surface = names[int(rng.integers(len(names)))]
    if n_defects is None:
        n_defects = int(rng.integers(1, MAX_DEFECTS + 1))
    image = _surfaces.render_surface(rng, surface, size)
    image, placed = add_defects(rng, image, n_defects)
    if _surfaces.SURFACES[surface].camera:
        out = _surfaces.camera_post(rng, image)
    else:
        # A little sensor noise everywhere, so the defect layers are not noise-free patches on noisy ground.
        noise = rng.normal(0, rng.uniform(0.5, 2.5), image.shape).astype(np.float32)
        out = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return out, [_annotation(defect) for defect in placed]


def iter_samples(n, seed, surfaces=None, defect_free_fraction=DEFAULT_DEFECT_FREE_FRACTION, size=DEFAULT_SIZE):
    """Yield ``(index, surface name, image, annotations)`` for images 0 .. n-1 of seed ``seed``.

    Each image has its own generator ``default_rng([seed, index])``: it picks a surface from ``surfaces``
    (see ``surfaces.resolve_surfaces``), then is defect-free with probability ``defect_free_fraction``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if not 0.0 <= defect_free_fraction <= 1.0:
        raise ValueError(f"defect_free_fraction must be in [0, 1], not {defect_free_fraction}")
    names = _surfaces.resolve_surfaces(surfaces)
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        surface = names[int(rng.integers(len(names)))]
        defect_free = rng.random() < defect_free_fraction
        image, annotations = render_sample(rng, size, surface, n_defects=0 if defect_free else None)
        yield index, surface, image, annotations


def file_name(index):
    """The file name of image ``index`` in a split."""
    return f"{index:06d}.png"


class _CocoBuilder:
    """Accumulates images and annotations into a COCO ground-truth dict."""

    def __init__(self, info):
        self.coco = {
            "info": info,
            "images": [],
            "categories": [{"id": cid, "name": name, "supercategory": "defect"}
                           for name, cid in CATEGORY_IDS.items()],
            "annotations": [],
        }

    def add(self, index, surface, image, annotations):
        image_id = index + 1  # COCO ids start at 1 by convention
        height, width = image.shape[:2]
        self.coco["images"].append({"id": image_id, "file_name": file_name(index), "width": width,
                                    "height": height, "surface": surface})
        for annotation in annotations:
            x, y, w, h = annotation["bbox"]
            self.coco["annotations"].append({
                "id": len(self.coco["annotations"]) + 1, "image_id": image_id,
                "category_id": CATEGORY_IDS[annotation["category"]], "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": 0,
            })


def _info(seed, surfaces, defect_free_fraction, size):
    return {"description": "serving.synth industrial surface defects", "seed": int(seed),
            "surfaces": list(_surfaces.resolve_surfaces(surfaces)), "defect_free_fraction": defect_free_fraction,
            "size": size}


def make_split(n, seed, surfaces=None, defect_free_fraction=DEFAULT_DEFECT_FREE_FRACTION, size=DEFAULT_SIZE):
    """``n`` images of seed ``seed`` in memory: (list of BGR uint8 images, COCO dict).

    The COCO dict has ``images`` (id, file_name, width, height, surface), ``categories`` (ids 1..4 for
    scratch, spot, crack, pit), ``annotations`` (id, image_id, category_id, bbox xywh, area, iscrowd 0) and
    an ``info`` recording the seed and surfaces, enough to regenerate the split.
    """
    builder = _CocoBuilder(_info(seed, surfaces, defect_free_fraction, size))
    images = []
    for index, surface, image, annotations in iter_samples(n, seed, surfaces, defect_free_fraction, size):
        images.append(image)
        builder.add(index, surface, image, annotations)
    return images, builder.coco


def write_split(out_dir, n, seed, surfaces=None, defect_free_fraction=DEFAULT_DEFECT_FREE_FRACTION,
                size=DEFAULT_SIZE):
    """Write ``n`` images as PNG files and their ``coco.json`` into ``out_dir``; returns the coco.json path.

    Images are written as they are made, so a large split never sits in memory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = _CocoBuilder(_info(seed, surfaces, defect_free_fraction, size))
    for index, surface, image, annotations in iter_samples(n, seed, surfaces, defect_free_fraction, size):
        if not cv2.imwrite(str(out_dir / file_name(index)), image):
            raise OSError(f"could not write {out_dir / file_name(index)}")
        builder.add(index, surface, image, annotations)
    coco_path = out_dir / "coco.json"
    coco_path.write_text(json.dumps(builder.coco))
    return coco_path


def split_seed(seed, split):
    """The seed of ``split`` ("train", "val" or "test") under the user's ``seed``: distinct per split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {list(SPLITS)}")
    sequence = np.random.SeedSequence([int(seed), SPLITS.index(split) + 1])
    return int(sequence.generate_state(1, np.uint32)[0])


def split_sizes(n, fractions=SPLIT_FRACTIONS):
    """Image counts of train, val and test for ``n`` images in all (val and test get at least 1 when n >= 3)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    val = int(round(n * fractions[1]))
    test = int(round(n * fractions[2]))
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return {"train": n - val - test, "val": val, "test": test}


def _split_plan(n, seed, train_surfaces, test_surfaces):
    sizes = split_sizes(n)
    chosen = {"train": train_surfaces, "val": train_surfaces, "test": test_surfaces}
    return {split: (sizes[split], split_seed(seed, split), chosen[split]) for split in SPLITS}


def make_splits(n, seed, *, train_surfaces="train", test_surfaces="held_out",
                defect_free_fraction=DEFAULT_DEFECT_FREE_FRACTION, size=DEFAULT_SIZE):
    """Train, val and test splits of ``n`` images in all: ``{"train": (images, coco), "val": ..., "test": ...}``.

    Train and val use ``train_surfaces``, test uses ``test_surfaces`` (by default the held-out variants,
    which training never sees); each split has its own seed (``split_seed``), recorded in its COCO ``info``.
    """
    return {
        split: make_split(count, sub_seed, surfaces, defect_free_fraction, size)
        for split, (count, sub_seed, surfaces) in _split_plan(n, seed, train_surfaces, test_surfaces).items()
    }


def write_splits(out_dir, n, seed, *, train_surfaces="train", test_surfaces="held_out",
                 defect_free_fraction=DEFAULT_DEFECT_FREE_FRACTION, size=DEFAULT_SIZE):
    """:func:`make_splits` written to ``out_dir/train``, ``out_dir/val`` and ``out_dir/test``.

    Returns ``{split: coco.json path}``.
    """
    return {
        split: write_split(Path(out_dir) / split, count, sub_seed, surfaces, defect_free_fraction, size)
        for split, (count, sub_seed, surfaces) in _split_plan(n, seed, train_surfaces, test_surfaces).items()
    }


# ---------------------------------------------------------------------------------------------- contact sheet

#: Box colours (BGR) per category on the contact sheet.
_SHEET_COLOURS = {"scratch": (0, 200, 255), "spot": (255, 120, 0), "crack": (0, 0, 255), "pit": (0, 220, 0)}


def contact_sheet(images, coco, columns=None):
    """One BGR image tiling ``images`` with their COCO boxes, category names and surface names drawn."""
    if not images:
        raise ValueError("no images to put on a contact sheet")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    border = 4
    sheet = np.full((rows * (height + border) + border, columns * (width + border) + border, 3), 32, np.uint8)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for k, (image, meta) in enumerate(zip(images, coco["images"])):
        tile = image.copy()
        for annotation in by_image.get(meta["id"], []):
            x, y, w, h = annotation["bbox"]
            name = names[annotation["category_id"]]
            colour = _SHEET_COLOURS.get(name, (255, 255, 255))
            # The box's outline sits on its outermost pixels (x .. x+w-1), so it hugs the defect.
            cv2.rectangle(tile, (x - 1, y - 1), (x + w, y + h), colour, 1)
            cv2.putText(tile, name, (x, max(9, y - 3)), cv2.FONT_HERSHEY_PLAIN, 0.8, colour, 1, cv2.LINE_AA)
        cv2.putText(tile, meta.get("surface", ""), (3, height - 5), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255),
                    1, cv2.LINE_AA)
        top = border + (k // columns) * (height + border)
        left = border + (k % columns) * (width + border)
        sheet[top:top + height, left:left + width] = tile
    return sheet


def main(argv=None):
    """``python -m serving.synth --out DIR [--n 16] [--seed 0] [--surfaces SEL]``: a contact sheet."""
    parser = argparse.ArgumentParser(description="Render synthetic defect images onto a contact sheet.")
    parser.add_argument("--out", type=Path, required=True, help="folder for sheet.png")
    parser.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--surfaces", default=None,
                        help="all (default), train, held_out, a family or a surface name; comma-separated")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels (default 256)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    images, coco = make_split(args.n, args.seed, surfaces=args.surfaces, size=args.size)
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    sheet_path = args.out / "sheet.png"
    if not cv2.imwrite(str(sheet_path), contact_sheet(images, coco)):
        raise OSError(f"could not write {sheet_path}")
    print(f"{args.n} images in {elapsed:.2f} s ({1000 * elapsed / max(args.n, 1):.1f} ms each), "
          f"{len(coco['annotations'])} boxes -> {sheet_path}")

