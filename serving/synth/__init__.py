"""Seeded synthetic industrial-surface defect datasets (the generator behind ``serving dataset synth``).

- :mod:`serving.synth.surfaces`: texture families (brushed metal, painted, textile, stone, photographed), each
  with named variants, and the held-out variants used to test on surfaces training did not see.
- :mod:`serving.synth.defects`: scratch, spot, crack and pit, each with the mask its exact box comes from.
- :mod:`serving.synth.dataset`: images with COCO annotations, splits (``make_splits``), folders on disk
  (``write_split``) and a contact sheet (``python -m serving.synth --out DIR``).
"""
from serving.synth.dataset import (
    CATEGORY_IDS,
    make_split,
    make_splits,
    render_sample,
    write_split,
    write_splits,
)
from serving.synth.defects import CATEGORIES
from serving.synth.surfaces import FAMILIES, HELD_OUT_SURFACES, SURFACES, TRAIN_SURFACES

__all__ = [
    "CATEGORIES",
    "CATEGORY_IDS",
    "FAMILIES",
    "HELD_OUT_SURFACES",
    "SURFACES",
    "TRAIN_SURFACES",
    "make_split",
    "make_splits",
    "render_sample",
    "write_split",
    "write_splits",
]
