"""Seeded multi-view products for product-level defect inspection (mvi_defect, defect_detect_task).

A product is ``views`` images of one surface variant (a part photographed from several sides). An NG product
has 1 to ``views`` defective views (the rest clean); an OK product has only clean views. The share of NG
products is ``ng_fraction``. Product ``i`` of seed ``s`` is drawn from ``default_rng([s, i])``, so products
do not depend on how many are made.

Surfaces default to the held-out variants (those a detector trained on ``make_splits`` data never saw), so a
score on these products is a score on unseen surfaces.
"""
from dataclasses import dataclass, field

import numpy as np

from serving.synth import surfaces as _surfaces
from serving.synth.dataset import DEFAULT_SIZE, render_sample


@dataclass
class Product:
    """One product: its id, whether it is NG, and its views as (view id, BGR image, annotations)."""

    product_id: int
    ng: bool
    views: list = field(default_factory=list)

    @property
    def defective_views(self):
        return [view_id for view_id, _, annotations in self.views if annotations]


def make_products(n, seed, views=4, ng_fraction=0.5, surfaces="held_out", size=DEFAULT_SIZE):
    """``n`` products (see the module docstring)."""
    if n < 0 or views < 1:
        raise ValueError(f"need n >= 0 and views >= 1, got n={n}, views={views}")
    if not 0.0 <= ng_fraction <= 1.0:
        raise ValueError(f"ng_fraction must be in [0, 1], not {ng_fraction}")
    names = _surfaces.resolve_surfaces(surfaces)
    products = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        surface = names[int(rng.integers(len(names)))]
        ng = bool(rng.random() < ng_fraction)
        defective = set()
        if ng:
            count = int(rng.integers(1, views + 1))
            defective = set(rng.choice(views, size=count, replace=False).tolist())
        product = Product(product_id=index + 1, ng=ng)
        for view in range(views):
            image, annotations = render_sample(rng, size, surface, n_defects=None if view in defective else 0)
            product.views.append((view + 1, image, annotations))
        # A defect placement can fail on a crowded image; an NG product must really show a defect.
        product.ng = bool(product.defective_views)
        products.append(product)
    return products
