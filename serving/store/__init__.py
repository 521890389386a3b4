"""The embedded store of the seed's "MongoID"s: images, JSON documents (datasets, results) and models,
addressed by 24-hex ObjectId-style ids, kept in one SQLite database (WAL) plus blob files under a data folder.

    from serving.store import Store
    store = Store("var")
    image_id = store.put_image(png_bytes)
    doc_id = store.put_json({"a": 1}, kind="result")
    store.get_json(doc_id)

See serving.store.db for the layout and the atomicity rules, serving.store.datasets for COCO datasets.
"""
from serving.store.datasets import import_coco, load_dataset, put_dataset, validate_coco
from serving.store.db import DATASET_KIND, IMAGE_KIND, Record, Store
from serving.store.errors import StoreError
from serving.store.ids import check_id, is_valid_id, new_id

__all__ = ["DATASET_KIND", "IMAGE_KIND", "Record", "Store", "StoreError", "check_id", "import_coco",
           "is_valid_id", "load_dataset", "new_id", "put_dataset", "validate_coco"]
