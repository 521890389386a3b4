"""The seeded synthetic defect dataset: determinism, exact boxes, COCO output, splits and held-out surfaces."""
import contextlib
import io
import json
import time
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from serving.harness.scoring import score_detection
from serving.synth import dataset, defects, surfaces

N_SAMPLES = 200


@pytest.fixture(scope="module")
def split_200():
    """200 images of seed 7 over all surfaces (generated once: the slowest fixture here), with the time."""
    start = time.perf_counter()
    images, coco = dataset.make_split(N_SAMPLES, seed=7)
    elapsed = time.perf_counter() - start
    # The project has no timed assertions; the speed is reported for a person to read (pytest -s).
    print(f"\nsynth: {N_SAMPLES} images of 256x256 in {elapsed:.2f} s ({1000 * elapsed / N_SAMPLES:.1f} ms each)")
    return images, coco


def _changed_box(changed):
    """(x1, y1, x2, y2) of the True pixels of a HxW bool array, pixel edges; None when there are none."""
    return defects.mask_box(changed)


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_images_and_annotations():
    images_a, coco_a = dataset.make_split(8, seed=123)
    images_b, coco_b = dataset.make_split(8, seed=123)
    assert [im.tobytes() for im in images_a] == [im.tobytes() for im in images_b]
    assert json.dumps(coco_a, sort_keys=True) == json.dumps(coco_b, sort_keys=True)


def test_image_does_not_depend_on_split_size_and_seeds_differ():
    small, coco_small = dataset.make_split(3, seed=5)
    large, coco_large = dataset.make_split(6, seed=5)
    assert [im.tobytes() for im in small] == [im.tobytes() for im in large[:3]]
    assert coco_small["annotations"] == [a for a in coco_large["annotations"] if a["image_id"] <= 3]
    other, _ = dataset.make_split(3, seed=6)
    assert all(a.tobytes() != b.tobytes() for a, b in zip(small, other))


# ---------------------------------------------------------------------------------------------- exact boxes


@pytest.mark.parametrize("category", defects.CATEGORIES)
@pytest.mark.parametrize("grey", [55.0, 128.0, 215.0])
def test_box_is_the_box_of_the_visibly_changed_pixels_on_a_flat_surface(category, grey):
    """On a flat surface every changed pixel is the defect's: its box must be exactly their box, and the
    pixels on each edge of the box must be visibly (not just by rounding) different from the surface."""
    flat = np.full((256, 256, 3), grey, np.float32)
    flat_u8 = flat.astype(np.uint8)
    visible = defects.ALPHA_MIN * defects.MIN_CONTRAST - 1  # the least change the generator promises
    checked = 0
    for seed in range(25):
        defect = defects.render_defect(np.random.default_rng(seed), category, flat)
        if defect is None:
            continue
        out = np.clip(defects.apply_defect(flat, defect), 0, 255).round().astype(np.uint8)
        difference = np.abs(out.astype(np.int16) - flat_u8).max(axis=2)
        assert _changed_box(difference > 0) == defect.box
        assert _changed_box(difference >= visible) == defect.box
        checked += 1
    assert checked >= 15  # most draws are usable; the rest are redrawn by the caller


def test_boxes_are_exact_on_textured_surfaces():
    """Before sensor noise, the pixels a defect changed (near its box: boxes keep a gap) span exactly its box."""
    gap = 2  # < the generator's gap between boxes, so a neighbour's pixels never fall in the window
    n_boxes = 0
    for seed, name in enumerate(surfaces.SURFACES):
        rng = np.random.default_rng([99, seed])
        base = surfaces.render_surface(rng, name)
        out, placed = dataset.add_defects(rng, base, dataset.MAX_DEFECTS)
        changed = np.any(out != base, axis=2)
        for defect in placed:
            x1, y1, x2, y2 = defect.box
            wx1, wy1 = max(0, x1 - gap), max(0, y1 - gap)
            window = np.zeros_like(changed)
            window[wy1:y2 + gap, wx1:x2 + gap] = changed[wy1:y2 + gap, wx1:x2 + gap]
            assert _changed_box(window) == defect.box, (name, defect.category)
            n_boxes += 1
    assert n_boxes >= len(surfaces.SURFACES)


def test_boxes_lie_inside_the_image_with_positive_integer_size(split_200):
    images, coco = split_200
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert all(isinstance(v, int) for v in (x, y, w, h))
        assert w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert annotation["area"] == w * h and annotation["iscrowd"] == 0


def test_boxes_of_one_image_do_not_touch(split_200):
    _, coco = split_200
    by_image = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    for boxes in by_image.values():
        corners = [(x, y, x + w, y + h) for x, y, w, h in boxes]
        for i, a in enumerate(corners):
            for b in corners[i + 1:]:
                assert not dataset._boxes_touch(a, b, 1)


# ---------------------------------------------------------------------------------------------- contents


def test_defect_free_fraction_is_roughly_honoured(split_200):
    _, coco = split_200
    with_defects = {annotation["image_id"] for annotation in coco["annotations"]}
    defect_free = N_SAMPLES - len(with_defects)
    # Binomial(200, 0.15): mean 30, standard deviation about 5.
    assert 12 <= defect_free <= 50


def test_every_class_and_every_family_appears(split_200):
    images, coco = split_200
    per_class = Counter(annotation["category_id"] for annotation in coco["annotations"])
    assert set(per_class) == set(dataset.CATEGORY_IDS.values())
    assert min(per_class.values()) >= 40
    families = {surfaces.SURFACES[image["surface"]].family for image in coco["images"]}
    assert families == set(surfaces.FAMILIES)
    assert all(im.shape == (256, 256, 3) and im.dtype == np.uint8 for im in images)


@pytest.mark.parametrize("name", list(surfaces.SURFACES))
def test_every_surface_renders_a_textured_image(name):
    image = surfaces.render_surface(np.random.default_rng(0), name)
    assert image.shape == (256, 256, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 255
    assert image.std() > 2  # a texture, not a flat colour
    assert 30 < image.mean() < 235  # leaves room for both dark and bright defects


# ---------------------------------------------------------------------------------------------- COCO


def test_coco_dict_loads_and_indexes_in_pycocotools(split_200):
    _, coco = split_200
    ground_truth = COCO()
    ground_truth.dataset = coco
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        ground_truth.createIndex()
    assert sorted(ground_truth.getCatIds()) == [1, 2, 3, 4]
    assert [c["name"] for c in ground_truth.loadCats([1, 2, 3, 4])] == ["scratch", "spot", "crack", "pit"]
    assert len(ground_truth.getImgIds()) == N_SAMPLES
    assert len(ground_truth.getAnnIds()) == len(coco["annotations"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    first = coco["annotations"][0]
    assert ground_truth.loadAnns(first["id"])[0]["bbox"] == first["bbox"]


def test_written_split_reads_back_and_scores_perfectly_against_itself(tmp_path):
    """write_split's folder is what `serving test --labels coco.json` scores: the truth as detections is 1.0."""
    coco_path = dataset.write_split(tmp_path / "split", 12, seed=3)
    coco = json.loads(coco_path.read_text())
    images, expected = dataset.make_split(12, seed=3)
    assert coco == json.loads(json.dumps(expected))
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    assert all((tmp_path / "split" / name).is_file() for name in names.values())
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    predictions = {name: {"detections": []} for name in names.values()}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        predictions[names[annotation["image_id"]]]["detections"].append(
            {"box": [x, y, x + w, y + h], "score": 1.0, "class": categories[annotation["category_id"]]})
    scores = score_detection(coco, predictions)
    assert scores["map50"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- splits


def test_splits_have_distinct_seeds_and_test_holds_out_surfaces():
    splits = dataset.make_splits(20, seed=0)
    assert {split: len(splits[split][0]) for split in dataset.SPLITS} == dataset.split_sizes(20)
    assert dataset.split_sizes(20) == {"train": 14, "val": 3, "test": 3}
    seeds = [splits[split][1]["info"]["seed"] for split in dataset.SPLITS]
    assert len(set(seeds)) == 3 and seeds == [dataset.split_seed(0, s) for s in dataset.SPLITS]
    for split in ("train", "val"):
        used = {image["surface"] for image in splits[split][1]["images"]}
        assert used <= set(surfaces.TRAIN_SURFACES)
    test_used = {image["surface"] for image in splits["test"][1]["images"]}
    assert test_used <= set(surfaces.HELD_OUT_SURFACES)
    # A split is regenerated from the seed its COCO info records.
    images, _ = dataset.make_split(3, seeds[2], surfaces="held_out")
    assert [im.tobytes() for im in images] == [im.tobytes() for im in splits["test"][0]]


def test_held_out_surfaces_are_one_per_family_and_disjoint_from_training():
    assert not set(surfaces.HELD_OUT_SURFACES) & set(surfaces.TRAIN_SURFACES)
    assert sorted(surfaces.SURFACES[n].family for n in surfaces.HELD_OUT_SURFACES) == sorted(surfaces.FAMILIES)
    assert set(surfaces.HELD_OUT_SURFACES) | set(surfaces.TRAIN_SURFACES) == set(surfaces.SURFACES)


def test_resolve_surfaces_accepts_keywords_families_and_names():
    assert surfaces.resolve_surfaces(None) == tuple(surfaces.SURFACES)
    assert surfaces.resolve_surfaces("held_out") == surfaces.HELD_OUT_SURFACES
    assert surfaces.resolve_surfaces("stone") == ("stone/granite", "stone/concrete", "stone/slate", "stone/marble")
    assert surfaces.resolve_surfaces("stone/marble, textile/carbon") == ("textile/carbon", "stone/marble")
    assert surfaces.resolve_surfaces(["painted", "painted/gloss"]) == surfaces.resolve_surfaces("painted")
    with pytest.raises(ValueError, match="unknown surface"):
        surfaces.resolve_surfaces("chrome")
    with pytest.raises(ValueError, match="empty"):
        surfaces.resolve_surfaces([])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        dataset.make_split(-1, seed=0)
    with pytest.raises(ValueError):
        dataset.make_split(2, seed=0, defect_free_fraction=1.5)
    with pytest.raises(ValueError):
        defects.render_defect(np.random.default_rng(0), "dent", np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        dataset.split_seed(0, "holdout")


def test_contact_sheet_script_writes_a_sheet(tmp_path, capsys):
    dataset.main(["--out", str(tmp_path), "--n", "4", "--seed", "0", "--size", "128"])
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[0] > 2 * 128 and sheet.shape[1] > 2 * 128
    assert "4 images" in capsys.readouterr().out
