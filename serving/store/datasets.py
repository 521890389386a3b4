"""Datasets: COCO-style JSON documents whose images live in the store.

A stored dataset (kind "dataset") is a COCO detection document:

    {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48, "store_id": "<24 hex>"}, ...],
     "categories": [{"id": 1, "name": "scratch"}, ...],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h]}, ...],
     ... any other top-level keys (info, licenses) are kept as they are}

Each image names its store document in "store_id" (the seed's "MongoID") and keeps its original file name.
Boxes are COCO's [x, y, width, height] in pixels, and must lie inside their image. The dataset row refers to
its images in the store's `refs` table, so an image a dataset uses cannot silently disappear.
"""
import json
import math
from pathlib import Path

from serving.errors import BAD_REQUEST, NOT_FOUND
from serving.store.db import DATASET_KIND, IMAGE_KIND
from serving.store.errors import StoreError
from serving.store.ids import is_valid_id
from serving.store.images import inspect_image

# Boxes may overshoot the image by this many pixels: float rounding in exporters, not a wrong box.
BOX_TOLERANCE_PX = 0.01
# How many problems one error message lists; the rest are counted.
MAX_REPORTED_PROBLEMS = 10


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value):
    """A JSON number usable as a float: an int or a float (not a bool), finite. An integer too large for a float
    (10**400 is valid JSON) is not one: math.isfinite would raise OverflowError on it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class _Problems(list):
    """The problems found in a document: the first MAX_REPORTED_PROBLEMS kept, the others only counted. A 1 MiB
    dataset of 350,000 empty annotations has 1.4 million problems; kept as text they took 180 MB of the
    server's memory and a second of its time for a message that shows ten of them."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def append(self, problem):
        self.total += 1
        if len(self) < MAX_REPORTED_PROBLEMS:
            super().append(problem)


def _invalid(what, problems):
    """The StoreError 400 that lists `problems` (the first MAX_REPORTED_PROBLEMS of them)."""
    shown = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
    more = getattr(problems, "total", len(problems)) - MAX_REPORTED_PROBLEMS
    if more > 0:
        shown += f"; and {more} more problem{'s' if more > 1 else ''}"
    return StoreError(BAD_REQUEST, f"{what} is invalid: {shown}")


def _image_label(index, image):
    """How messages name an image: by its COCO id and file name when it has them, else by position."""
    label = f"image {image['id']}" if _is_int(image.get("id")) else f"images[{index}]"
    name = image.get("file_name")
    return f"{label} ({name!r})" if isinstance(name, str) and name else label


def _check_images(images, store, problems):
    """Check the image entries; {COCO image id: (width, height, label), or None when the size is unknown}."""
    sizes = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            problems.append(f"images[{index}] is not an object")
            continue
        label = _image_label(index, image)
        image_id = image.get("id")
        if not _is_int(image_id):
            problems.append(f"{label}: 'id' must be an integer")
            continue
        if image_id in sizes:
            problems.append(f"{label}: duplicate image id {image_id}")
            continue
        width, height = image.get("width"), image.get("height")
        for key, value in (("width", width), ("height", height)):
            if value is not None and not (_is_int(value) and value > 0):
                problems.append(f"{label}: '{key}' must be a positive integer, got {value!r}")
        store_id = image.get("store_id")
        if store_id is not None:
            stored = _stored_image_size(label, store_id, store, problems)
            if stored and width is not None and height is not None and (width, height) != stored:
                problems.append(f"{label}: says {width}x{height} but store image {store_id} is "
                                f"{stored[0]}x{stored[1]}")
            width, height = stored or (width, height)
        elif not (isinstance(image.get("file_name"), str) and image["file_name"]):
            problems.append(f"{label}: needs a 'file_name' or a 'store_id'")
        # A known id of unknown size (reported above, or a store id not checked for want of a store) maps to
        # None: annotations may refer to it, their boxes just cannot be checked against it.
        size = None
        if _is_int(width) and _is_int(height) and width > 0 and height > 0:
            size = (width, height, label)
        elif store_id is None and (width is None or height is None):
            problems.append(f"{label}: no 'width'/'height' and no 'store_id' to take them from")
        sizes[image_id] = size
    return sizes


def _stored_image_size(label, store_id, store, problems):
    """(width, height) of the store image `store_id`, or None after recording why it is not usable."""
    if not is_valid_id(store_id):
        problems.append(f"{label}: 'store_id' {store_id!r} is not a 24-hex id")
        return None
    if store is None:
        return None
    try:
        record = store.get(store_id, kind=IMAGE_KIND)
    except StoreError as exc:
        missing = exc.code == NOT_FOUND
        problems.append(f"{label}: store_id {store_id} is not in the store (missing image)" if missing
                        else f"{label}: {exc.message}")
        return None
    return record.meta.get("width"), record.meta.get("height")


def _check_categories(categories, problems):
    """Check the category entries; the set of category ids.

    Names must be unique too: trainers and TEST tasks match a model's classes to a dataset's categories by
    name, so two categories named alike would send every detection of one to the other.
    """
    ids = set()
    id_of_name = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict):
            problems.append(f"categories[{index}] is not an object")
            continue
        category_id = category.get("id")
        if not _is_int(category_id):
            problems.append(f"categories[{index}]: 'id' must be an integer")
            continue
        if category_id in ids:
            problems.append(f"category {category_id}: duplicate category id")
        name = category.get("name")
        if not (isinstance(name, str) and name.strip()):
            problems.append(f"category {category_id}: 'name' must be a non-empty string")
        elif name in id_of_name:
            problems.append(f"category {category_id}: duplicate category name {name!r} "
                            f"(also category {id_of_name[name]})")
        else:
            id_of_name[name] = category_id
        ids.add(category_id)
    return ids


def _check_annotations(annotations, sizes, category_ids, problems):
    """Check each annotation: known image and category, a positive box inside its image."""
    seen = set()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            problems.append(f"annotations[{index}] is not an object")
            continue
        ann_id = annotation.get("id")
        label = f"annotation {ann_id}" if _is_int(ann_id) else f"annotations[{index}]"
        if not _is_int(ann_id):
            problems.append(f"{label}: 'id' must be an integer")
        elif ann_id in seen:
            problems.append(f"{label}: duplicate annotation id")
        else:
            seen.add(ann_id)
        image_id = annotation.get("image_id")
        if not _is_int(image_id) or image_id not in sizes:
            problems.append(f"{label}: image_id {image_id!r} is not an image of the dataset")
        category_id = annotation.get("category_id")
        if not _is_int(category_id) or category_id not in category_ids:
            problems.append(f"{label}: category_id {category_id!r} is not a category of the dataset")
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)):
            problems.append(f"{label}: 'bbox' must be [x, y, width, height] (4 finite numbers), got {bbox!r}")
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problems.append(f"{label}: bbox {bbox} has a non-positive width or height")
            continue
        size = sizes.get(image_id) if _is_int(image_id) else None
        if size is None:
            continue
        width, height, image_label = size
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            problems.append(f"{label}: bbox {bbox} is outside {image_label}, which is {width}x{height}")


def validate_coco(doc, store=None, what="dataset"):
    """Check a COCO detection document; a summary {"images", "annotations", "categories"} (counts).

    Images are referenced by store id ("store_id", checked against `store` when given: it must exist and be
    an image; its size is the stored one) or, at import time, by "file_name" with "width"/"height".
    Raises StoreError 400 naming every offending image, category and annotation (up to a limit).
    """
    if not isinstance(doc, dict):
        raise StoreError(BAD_REQUEST, f"{what} is invalid: a COCO document is a JSON object, "
                                      f"got {type(doc).__name__}")
    problems = _Problems()
    images = doc.get("images")
    categories = doc.get("categories")
    annotations = doc.get("annotations", [])
    if not (isinstance(images, list) and images):
        problems.append("'images' must be a non-empty list")
        images = []
    if not (isinstance(categories, list) and categories):
        problems.append("'categories' must be a non-empty list")
        categories = []
    if not isinstance(annotations, list):
        problems.append("'annotations' must be a list")
        annotations = []
    sizes = _check_images(images, store, problems)
    category_ids = _check_categories(categories, problems)
    _check_annotations(annotations, sizes, category_ids, problems)
    if problems:
        raise _invalid(what, problems)
    return {"images": len(images), "annotations": len(annotations), "categories": len(categories)}


def put_dataset(store, doc, meta=None):
    """Validate a COCO document whose images all carry a "store_id", and store it as a dataset; its id."""
    images = doc.get("images") if isinstance(doc, dict) else None
    if isinstance(images, list):
        missing = [_image_label(i, image) for i, image in enumerate(images)
                   if isinstance(image, dict) and "store_id" not in image]
        if missing:
            raise _invalid("dataset", [f"{label}: no 'store_id' (import image files with import_coco)"
                                       for label in missing])
    summary = validate_coco(doc, store)
    store_ids = [image["store_id"].lower() for image in images]
    return store._put_json(doc, DATASET_KIND, {**(meta or {}), **summary}, refs=store_ids)


def put_image_dataset(store, encoded_images, coco, meta=None):
    """Store encoded images (bytes, one per entry of coco["images"], in order) and the dataset that references
    them; the dataset id. All or nothing, like import_coco."""
    images = coco.get("images") if isinstance(coco, dict) else None
    if not isinstance(images, list) or len(images) != len(encoded_images):
        raise StoreError(BAD_REQUEST, "put_image_dataset needs one encoded image per entry of coco['images']")
    # Validated before anything is written: the new images are not visible to validate_coco's store look-ups
    # until the transaction commits (import_coco works the same way).
    summary = validate_coco(coco, store)
    with store.transaction():
        stored = [{**image, "store_id": store.put_image(data, {"file_name": image.get("file_name", "")})}
                  for data, image in zip(encoded_images, images)]
        refs = [image["store_id"] for image in stored]
        return store._put_json({**coco, "images": stored}, DATASET_KIND, {**(meta or {}), **summary}, refs=refs)


def _read_coco(coco_path):
    try:
        text = Path(coco_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(BAD_REQUEST, f"cannot read the COCO file {coco_path}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(BAD_REQUEST, f"{coco_path} is not JSON: {exc}") from None
    except RecursionError:  # json's parser recurses per nesting level; a COCO file nests a few levels
        raise StoreError(BAD_REQUEST, f"{coco_path} nests too deeply to be read as JSON") from None


def _image_file(images_dir, file_name):
    """The path of `file_name` under `images_dir`; None when it would leave that folder (absolute, '..').
    ValueError when no path can have that name (a NUL or a lone surrogate in it)."""
    root = images_dir.resolve()
    try:
        path = (root / file_name).resolve()
    except UnicodeEncodeError:
        raise ValueError("it holds a lone surrogate, which no file name can") from None
    except ValueError:  # the OS takes no NUL in a path
        raise ValueError("it holds a NUL character, which no file name can") from None
    return path if path.is_relative_to(root) else None


def import_coco(store, coco_path, images_dir):
    """Store a COCO file and the image files it names (under `images_dir`) as one dataset; its id.

    Every image is decoded (its real size replaces or must equal the file's width/height), stored as an image
    document, and referenced from the dataset by "store_id". All or nothing: on any problem (unreadable or
    undecodable image, box outside its image, unknown category, ...) no document of this import is committed
    and the blobs already written are removed; StoreError 400 lists the problems.

    An image that carries a "store_id" references that image of this store instead of a file; one whose
    store id names nothing here and that has a "file_name" is imported from the file, so what
    `serving dataset show` prints in one store imports into another.
    """
    coco = _read_coco(coco_path)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise StoreError(BAD_REQUEST, f"the images folder {images_dir} does not exist")
    images = coco.get("images") if isinstance(coco, dict) else None
    if not isinstance(images, list):
        validate_coco(coco, store, what=str(coco_path))  # raises: the message says what the structure lacks
        raise StoreError(BAD_REQUEST, f"{coco_path} is invalid: 'images' must be a list")
    problems = _Problems()
    new_images = []
    store_ids = {}  # position in images -> store id of a newly stored file
    stored_files = {}  # resolved path -> (store id, width, height): one document per file
    with store.transaction():
        for index, image in enumerate(images):
            name = image.get("file_name") if isinstance(image, dict) else None
            if (not isinstance(image, dict) or not isinstance(name, str) or not name
                    or ("store_id" in image and not _foreign_id(store, image["store_id"]))):
                new_images.append(image)  # validate_coco reports what is wrong or checks the store id
                continue
            # A store id this store lacks, beside a file name, is what `dataset show` printed in another
            # store: the file is imported and the foreign id dropped. An id of this store is referenced.
            foreign = image.get("store_id")
            image = {key: value for key, value in image.items() if key != "store_id"}
            label = _image_label(index, image)
            try:
                path = _image_file(images_dir, name)
            except ValueError as exc:
                problems.append(f"{label}: file name is not a path: {exc}")
                continue
            if path is None:
                problems.append(f"{label}: file name leaves the images folder")
                continue
            if path not in stored_files:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    unknown = f" (and its store_id {foreign} names nothing in this store)" if foreign else ""
                    problems.append(f"{label}: missing image file {path}: {exc.strerror}{unknown}")
                    continue
                try:
                    facts = inspect_image(data, where=label)
                except StoreError as exc:
                    problems.append(exc.message)
                    continue
                if problems:
                    continue  # the import fails anyway: check the rest, write nothing more
                content_type = facts.pop("content_type")
                store_id = store._put(data, IMAGE_KIND, content_type, {"file_name": name, **facts})
                stored_files[path] = (store_id, facts["width"], facts["height"])
            store_id, width, height = stored_files[path]
            for key, real in (("width", width), ("height", height)):
                if key in image and image[key] != real:
                    problems.append(f"{label}: '{key}' is {image[key]!r} but the file's is {real}")
            store_ids[index] = store_id
            new_images.append({**image, "width": width, "height": height})
        if problems:
            raise _invalid(str(coco_path), problems)
        dataset = {**coco, "images": new_images}
        summary = validate_coco(dataset, store, what=str(coco_path))
        for index, store_id in store_ids.items():
            new_images[index] = {**new_images[index], "store_id": store_id}
        refs = [image["store_id"] for image in new_images]
        meta = {"source": Path(coco_path).name, **summary}
        return store._put_json(dataset, DATASET_KIND, meta, refs=refs)


def _foreign_id(store, store_id):
    """Whether `store_id` is a well-formed id that names nothing in `store` (another store's, most likely)."""
    if not (isinstance(store_id, str) and is_valid_id(store_id)):
        return False
    try:
        store.get(store_id)
    except StoreError as exc:
        return exc.code == NOT_FOUND
    return False


def load_dataset(store, dataset_id):
    """The COCO document of a stored dataset: StoreError 404 for an unknown id, 400 for a malformed one or
    one that is not a dataset."""
    return store.get_json(store.get(dataset_id, kind=DATASET_KIND).id)
