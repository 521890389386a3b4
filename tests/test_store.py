"""serving.store: ids, the SQLite + blob store, COCO datasets, and the `serving store` / `dataset` CLI."""
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from evals.utils.error import ErrorImageTooLarge, ErrorImageTooSmall
from evals.utils.image import MAX_IMAGE_BYTES, MIN_IMAGE_SIDE, load_image
from serving.store import (Store, StoreError, check_id, import_coco, is_valid_id, load_dataset, new_id,
                           put_dataset, validate_coco)
from serving.store.db import ITER_PAGE_SIZE
from serving.store.ids import IdGenerator, id_timestamp

REPO = Path(__file__).resolve().parent.parent
HEX24 = re.compile(r"[0-9a-f]{24}")


def png_bytes(width=64, height=48, value=0):
    ok, encoded = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))
    return encoded.tobytes()


def blob_files(store):
    return sorted(p for p in store.blobs_dir.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "var") as opened:
        yield opened


# ---- ids ---------------------------------------------------------------------------------------------------


def test_ids_are_24_hex_unique_and_carry_their_second():
    before = int(time.time())
    ids = [new_id() for _ in range(5000)]
    assert all(HEX24.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert before <= id_timestamp(ids[0]) <= int(time.time())
    assert len({i[8:18] for i in ids}) == 1  # one process: one random part


def test_ids_sort_by_time_then_counter():
    clock = iter([100, 100, 100, 101, 102, 102]).__next__
    generator = IdGenerator(clock=clock, random_bytes=lambda n: b"\x00" * (n - 1) + b"\x07")
    ids = [generator.new_id() for _ in range(6)]
    assert ids == sorted(ids)
    assert ids[0] == "00000064" + "0000000007" + "000007"  # seconds | random | counter (started at 7)
    assert ids[1].endswith("000008")
    # The counter wraps at 2**24; a later second still sorts after.
    wrapping = IdGenerator(clock=iter([5, 6]).__next__, random_bytes=lambda n: b"\xff" * n)
    first, second = wrapping.new_id(), wrapping.new_id()
    assert first.endswith("ffffff") and second.endswith("000000") and first < second


@pytest.mark.parametrize("bad", ["", "xyz", "0" * 23, "0" * 25, "g" * 24, None, 12345])
def test_malformed_ids_are_400(store, bad):
    assert not is_valid_id(bad)
    with pytest.raises(StoreError) as info:
        store.get(bad)
    assert info.value.code == 400 and "malformed id" in info.value.message


def test_ids_are_case_insensitive():
    assert check_id("ABCDEF0123456789ABCDEF01") == "abcdef0123456789abcdef01"


# ---- the store -------------------------------------------------------------------------------------------


def test_image_round_trip(store):
    data = png_bytes(64, 48)
    image_id = store.put_image(data, meta={"camera": 2})
    record = store.get(image_id)
    assert record.kind == "image" and record.content_type == "image/png" and record.size == len(data)
    assert record.meta == {"camera": 2, "format": "png", "width": 64, "height": 48, "channels": 3}
    assert store.read_blob(image_id) == data
    assert store.blobs_dir / image_id[-2:] / image_id in blob_files(store)
    with pytest.raises(StoreError) as info:
        store.get_json(image_id)
    assert info.value.code == 400


def test_json_and_blob_round_trip(store):
    doc = {"boxes": [[1, 2, 3, 4]], "名前": "ok", "nested": {"x": None}}
    doc_id = store.put_json(doc, kind="result")
    assert store.get_json(doc_id) == doc and store.get(doc_id).kind == "result"
    model_id = store.put_blob(b"\x00weights\xff", kind="model", meta={"net": "res101"})
    assert store.read_blob(model_id) == b"\x00weights\xff"
    assert [r.id for r in store.list()] == [doc_id, model_id]
    assert [r.id for r in store.list(kind="model")] == [model_id]
    assert [r.id for r in store.list(limit=1, newest_first=True)] == [model_id]


def test_unknown_id_is_404(store):
    for call in (store.get, store.read_blob, store.get_json):
        with pytest.raises(StoreError) as info:
            call("0123456789abcdef01234567")
        assert info.value.code == 404


def test_get_of_a_kind(store):
    image_id, json_id = store.put_image(png_bytes()), store.put_json({})
    assert store.get(image_id.upper(), kind="image").id == image_id
    for doc_id, kind, message in ((json_id, "image", f"document {json_id} is a json, not an image"),
                                  (image_id, "model", f"document {image_id} is an image, not a model")):
        with pytest.raises(StoreError) as caught:
            store.get(doc_id, kind=kind)
        assert (caught.value.code, caught.value.message) == (400, message)
    with pytest.raises(StoreError) as caught:
        store.get("0" * 24, kind="image")
    assert caught.value.code == 404


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_images_are_refused(store, data):
    with pytest.raises(StoreError) as info:
        store.put_image(data)
    assert info.value.code == 400
    assert store.list() == [] and blob_files(store) == []


def test_bad_input_is_400(store):
    for call in (lambda: store.put_json({"x": float("nan")}), lambda: store.put_json({1: object()}),
                 lambda: store.put_json({}, kind="Bad Kind"), lambda: store.put_json({}, kind="image"),
                 lambda: store.put_json({}, kind="dataset"), lambda: store.put_blob(b"x", kind="image"),
                 lambda: store.put_json({}, meta=["not", "an", "object"])):
        with pytest.raises(StoreError) as info:
            call()
        assert info.value.code == 400
    assert store.list() == [] and blob_files(store) == []


@pytest.mark.parametrize("size", [(5, 5), (MIN_IMAGE_SIDE, 40), (40, MIN_IMAGE_SIDE)])
def test_images_too_small_for_the_apps_are_refused(store, size):
    data = png_bytes(*size)
    with pytest.raises(ErrorImageTooSmall):  # what an app answers for it
        load_image(None, body=data)
    with pytest.raises(StoreError) as info:
        store.put_image(data)
    assert info.value.code == 400
    assert info.value.message == (f"image: {size[0]}x{size[1]} px, too small: the apps need both sides over "
                                  f"{MIN_IMAGE_SIDE} px")
    assert store.list() == [] and blob_files(store) == []


def test_images_over_the_apps_byte_limit_are_refused(store):
    side = int((MAX_IMAGE_BYTES / 3) ** 0.5) + 8  # an uncompressed BMP: just over the limit
    data = cv2.imencode(".bmp", np.zeros((side, side, 3), np.uint8))[1].tobytes()
    assert len(data) > MAX_IMAGE_BYTES
    with pytest.raises(ErrorImageTooLarge):
        load_image(None, body=data)
    with pytest.raises(StoreError) as info:
        store.put_image(data)
    assert info.value.code == 400 and f"{len(data)} bytes, over the {MAX_IMAGE_BYTES} bytes" in info.value.message
    assert store.list() == [] and blob_files(store) == []
    # The smallest image both read.
    smallest = png_bytes(MIN_IMAGE_SIDE + 1, MIN_IMAGE_SIDE + 1)
    assert load_image(None, body=smallest).shape == (MIN_IMAGE_SIDE + 1, MIN_IMAGE_SIDE + 1, 3)
    assert store.get(store.put_image(smallest)).meta["width"] == MIN_IMAGE_SIDE + 1


def test_a_lone_surrogate_is_400_naming_where_and_stores_nothing(store):
    # json.loads('"\\ud800"') is valid JSON that yields a lone surrogate, which UTF-8 cannot hold.
    lone = json.loads('"\\ud800"')
    for call, message in (
            (lambda: store.put_json({"name": lone}), "put_json: the string at ['name'] holds '\\ud800'"),
            (lambda: store.put_json({"a": [1, {lone: 2}]}), "put_json: the key at ['a'][1]['\\ud800'] holds"),
            (lambda: store.put_json(lone, kind="result"), "put_json: the string holds '\\ud800'"),
            (lambda: store.put_blob(b"x", kind="model", meta={"net": lone}), "meta: the string at ['net']"),
            (lambda: store.put_image(png_bytes(), meta={"camera": lone}), "meta: the string at ['camera']")):
        with pytest.raises(StoreError) as info:
            call()
        assert info.value.code == 400 and message in info.value.message, info.value.message
        assert "a lone UTF-16 surrogate" in info.value.message
    assert store.list() == [] and blob_files(store) == []
    # A surrogate PAIR is one character: stored and read back.
    pair = json.loads('"\\ud83d\\ude00"')
    assert store.get_json(store.put_json({"face": pair})) == {"face": "\U0001F600"}


def test_list_pages_by_position(store):
    with store.transaction():
        ids = [store.put_json({"i": i}, kind="json" if i % 3 else "result") for i in range(30)]
    everything = store.list()
    assert sorted(r.id for r in everything) == sorted(ids)
    for kind in (None, "result"):
        for newest_first in (False, True):
            pages, after = [], None
            while True:
                page = store.list(kind, limit=7, newest_first=newest_first, after=after)
                pages.append(page)
                if len(page) < 7:
                    break
                after = page[-1].position
            assert all(len(page) == 7 for page in pages[:-1])
            assert [r.id for page in pages for r in page] == [r.id for r in store.list(kind, newest_first=newest_first)]
        assert list(store.iter_records(kind, page_size=4)) == store.list(kind)
    assert [r.id for r in store.list(limit=3, newest_first=True)] == [r.id for r in everything[:-4:-1]]
    # SQLite would take a negative LIMIT as "everything".
    for bad in (-1, "3", 2.5, True):
        with pytest.raises(StoreError) as info:
            store.list(limit=bad)
        assert info.value.code == 400 and "bad limit" in info.value.message
    with pytest.raises(StoreError) as info:
        store.list(after=("yesterday", "nope"))
    assert info.value.code == 400


def test_refs_must_exist(store):
    image_id = store.put_image(png_bytes())
    doc_id = store.put_json({"image": image_id}, refs=[image_id])
    assert store.references(doc_id) == [image_id]
    with pytest.raises(StoreError) as info:
        store.put_json({}, refs=["0123456789abcdef01234567"])
    assert info.value.code == 404
    assert len(store.list()) == 2 and len(blob_files(store)) == 2


def test_wal_and_integrity_check(store):
    store.put_json({"a": 1})
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.integrity_check(blobs=True) == []
    victim = store.put_json({"b": 2})
    (store.blobs_dir / victim[-2:] / victim).write_bytes(b"tampered")
    assert any(victim in problem for problem in store.integrity_check(blobs=True))


def test_a_failed_commit_leaves_no_blob(store, monkeypatch):
    def broken_commit(batch):
        raise StoreError(500, "disk on fire")

    monkeypatch.setattr(store, "_commit", broken_commit)
    with pytest.raises(StoreError, match="^disk on fire$"):  # the commit was reached, and failed
        store.put_json({"a": 1})
    assert blob_files(store) == []


def test_transaction_is_all_or_nothing(store):
    kept = store.put_json({"kept": True})
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put_image(png_bytes())
            store.put_json({"lost": True})
            raise RuntimeError("fail in the middle")
    assert [r.id for r in store.list()] == [kept] and len(blob_files(store)) == 1
    with store.transaction():
        a = store.put_json({"a": 1})
        b = store.put_json({"b": 2}, refs=[a])  # refers to a document of the same transaction
    assert store.get_json(b) == {"b": 2} and store.references(b) == [a]


def test_gc_removes_old_orphans_only(store):
    live = store.put_json({"live": 1})
    orphan = store.blobs_dir / "aa" / ("0" * 22 + "aa")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    young_orphan = store.blobs_dir / "bb" / ("1" * 22 + "bb")
    young_orphan.parent.mkdir(exist_ok=True)
    young_orphan.write_bytes(b"a write in progress elsewhere")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    os.utime(store.blobs_dir / live[-2:] / live, (old, old))
    assert store.gc(min_age_s=3600) == [orphan]
    assert young_orphan.exists() and store.get_json(live) == {"live": 1}


def test_gc_during_a_transaction_fails_its_commit_and_loses_nothing(store):
    """Blobs written but not yet committed look orphaned to gc; the commit must not then point at nothing."""
    kept = store.put_json({"kept": True})
    with Store(store.data_dir) as other:  # gc's own store, as `serving store gc` in another process opens it
        with pytest.raises(StoreError) as info:
            with store.transaction():
                image_id = store.put_image(png_bytes())
                doc_id = store.put_json({"image": image_id}, refs=[image_id])
                removed = other.gc(min_age_s=0)
                assert sorted(path.name for path in removed) == sorted([image_id, doc_id])
    assert info.value.code == 503
    assert info.value.message == (f"the blob of {image_id} and 1 more vanished before its row was committed (a "
                                  "`serving store gc` with a --min-age shorter than this write took it): nothing "
                                  "of this write was stored; retry it")
    assert [r.id for r in store.list()] == [kept] and len(blob_files(store)) == 1
    assert store.integrity_check(blobs=True) == []
    with store.transaction():  # the retry
        image_id = store.put_image(png_bytes())
    assert store.read_blob(image_id) == png_bytes()


def test_gc_beside_a_running_import_never_loses_a_blob(tmp_path):
    """A real `serving dataset import` process while this one runs gc in a loop on the same folder."""
    data_dir, images_dir = tmp_path / "var", tmp_path / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for k in range(150):
        cv2.imwrite(str(images_dir / f"{k}.png"), rng.integers(0, 255, (40, 40, 3), np.uint8))
        images.append({"id": k + 1, "file_name": f"{k}.png"})
    coco_path = tmp_path / "coco.json"
    coco_path.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "x"}], "annotations": []}))
    command = ["dataset", "import", "--coco", coco_path, "--images", images_dir]
    env = dict(os.environ, PYTHONPATH=str(REPO), SERVING_DATA_DIR=str(data_dir))
    removed = 0
    with Store(data_dir) as gc_store:
        importer = subprocess.Popen([sys.executable, "-m", "serving.cli", *map(str, command)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while importer.poll() is None:
                removed += len(gc_store.gc(min_age_s=0))
                time.sleep(0.01)
            out, err = importer.communicate(timeout=60)
        finally:
            if importer.poll() is None:
                importer.kill()
    # gc cannot tell the import's uncommitted files from a crash's orphans, and with --min-age 0 it took some
    # (only the import writes here). The import must then fail as a whole, saying why, rather than commit rows
    # whose blobs are gone.
    assert removed > 0, "gc never met a file of the import in progress: nothing was tested"
    assert importer.returncode == 2 and "nothing of this write was stored; retry it" in err, out + err
    assert "Traceback" not in err
    assert run_cli("store", "check", "--blobs", data_dir=data_dir).stdout.strip() == "ok"
    with Store(data_dir) as store:
        assert store.list() == [] and blob_files(store) == []  # all or nothing
    # Retried without a gc alongside, the same import goes through, every row with its blob.
    dataset_id = run_cli(*command, data_dir=data_dir).stdout.splitlines()[-1]
    with Store(data_dir) as store:
        assert len(load_dataset(store, dataset_id)["images"]) == 150
        for record in store.list():
            assert len(store.read_blob(record.id)) == record.size
        assert len(store.list()) == 151 and store.integrity_check(blobs=True) == []


def test_concurrent_writers(tmp_path):
    """Threads sharing one Store, and a second Store on the same folder (as another process would)."""
    data_dir = tmp_path / "var"
    first, second = Store(data_dir), Store(data_dir)
    ids, errors = [], []
    lock = threading.Lock()

    def writer(store, n):
        try:
            for i in range(25):
                doc_id = store.put_json({"writer": n, "i": i}) if i % 5 else store.put_image(png_bytes(40, 40, n))
                with lock:
                    ids.append(doc_id)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(first if n % 2 else second, n)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(ids) == len(set(ids)) == 150
        assert sorted(r.id for r in first.list()) == sorted(ids)
        assert all(second.read_blob(doc_id) for doc_id in ids)
        assert first.integrity_check(blobs=True) == []
    finally:
        first.close()
        second.close()


# ---- datasets --------------------------------------------------------------------------------------------


def make_coco(folder, boxes=None):
    """Two PNGs (64x48, 40x40: sides over 32 px, the least the apps read) under folder/images and a COCO file
    naming them; the COCO path."""
    images_dir = folder / "images"
    (images_dir / "sub").mkdir(parents=True)
    cv2.imwrite(str(images_dir / "a.png"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(images_dir / "sub" / "b.png"), np.full((40, 40), 255, np.uint8))
    coco = {
        "info": {"description": "tiny"},
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "sub/b.png"}],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 48]},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": boxes or [4.5, 4.5, 35.5, 35.5005]}],
    }
    path = folder / "coco.json"
    path.write_text(json.dumps(coco))
    return path


def test_import_coco_stores_images_and_the_dataset(store, tmp_path):
    coco_path = make_coco(tmp_path)
    dataset_id = import_coco(store, coco_path, tmp_path / "images")
    dataset = load_dataset(store, dataset_id)
    assert dataset["info"] == {"description": "tiny"} and len(dataset["annotations"]) == 2
    images = dataset["images"]
    assert [i["file_name"] for i in images] == ["a.png", "sub/b.png"]
    assert [(i["width"], i["height"]) for i in images] == [(64, 48), (40, 40)]
    for image in images:
        record = store.get(image["store_id"])
        assert record.kind == "image" and record.meta["file_name"] == image["file_name"]
    assert sorted(store.references(dataset_id)) == sorted(i["store_id"] for i in images)
    assert store.get(dataset_id).meta == {"source": "coco.json", "images": 2, "annotations": 2, "categories": 2}
    # A stored dataset is valid against the store, and can be stored again as it is.
    assert validate_coco(dataset, store)["images"] == 2
    assert load_dataset(store, put_dataset(store, dataset)) == dataset


def test_load_dataset_errors(store):
    image_id = store.put_image(png_bytes())
    for bad, code in (("nope", 400), ("0123456789abcdef01234567", 404), (image_id, 400)):
        with pytest.raises(StoreError) as info:
            load_dataset(store, bad)
        assert info.value.code == code


@pytest.mark.parametrize("change, message", [
    (lambda c: c["annotations"][1].update(bbox=[10, 10, 31, 5]), "annotation 2: bbox [10, 10, 31, 5] is outside"),
    (lambda c: c["annotations"][0].update(bbox=[-1, 0, 10, 10]), "annotation 1: bbox [-1, 0, 10, 10] is outside"),
    (lambda c: c["annotations"][0].update(bbox=[1, 1, 0, 10]), "non-positive width or height"),
    (lambda c: c["annotations"][0].update(bbox=[1, 1, 10]), "annotation 1: 'bbox' must be"),
    # Valid JSON that is no float: an OverflowError (500) before, not a refusal.
    (lambda c: c["annotations"][0].update(bbox=[10**400, 1, 10, 10]), "annotation 1: 'bbox' must be"),
    (lambda c: c["annotations"][0].update(category_id=9), "annotation 1: category_id 9 is not a category"),
    (lambda c: c["annotations"][0].update(image_id=7), "annotation 1: image_id 7 is not an image"),
    (lambda c: c["annotations"].append(dict(c["annotations"][0])), "annotation 1: duplicate annotation id"),
    (lambda c: c["images"].append({"id": 3, "file_name": "missing.png"}), "image 3 ('missing.png'): missing"),
    (lambda c: c["images"][0].update(width=65), "image 1 ('a.png'): 'width' is 65 but the file's is 64"),
    (lambda c: c["images"][1].update(file_name="../coco.json"), "file name leaves the images folder"),
    (lambda c: c["images"][1].update(file_name="sub/b.png\x00x"), "file name is not a path: it holds a NUL"),
    (lambda c: c["images"][1].update(file_name="sub/\ud800.png"), "file name is not a path: it holds a lone surr"),
    (lambda c: c["categories"].clear(), "'categories' must be a non-empty list"),
    (lambda c: c["categories"][1].update(name="scratch"), "category 2: duplicate category name 'scratch' (also"),
    (lambda c: c["categories"].append({"id": 2, "name": "rust"}), "category 2: duplicate category id"),
])
def test_a_bad_dataset_is_refused_and_leaves_nothing(store, tmp_path, change, message):
    before = store.put_json({"unrelated": True})
    coco_path = make_coco(tmp_path)
    coco = json.loads(coco_path.read_text())
    change(coco)
    coco_path.write_text(json.dumps(coco))
    with pytest.raises(StoreError) as info:
        import_coco(store, coco_path, tmp_path / "images")
    assert info.value.code == 400 and message in info.value.message
    assert [r.id for r in store.list()] == [before] and len(blob_files(store)) == 1


def test_a_failure_after_the_images_are_written_leaves_nothing(store, tmp_path, monkeypatch):
    """The images are in place (blobs written, rows pending) when storing the dataset document fails."""
    def failing_put_json(*args, **kwargs):
        assert len(blob_files(store)) == 2  # the two images were written
        raise StoreError(500, "simulated crash before the dataset row")

    monkeypatch.setattr(store, "_put_json", failing_put_json)
    # The simulated crash itself, not an earlier refusal: the import got as far as the dataset row.
    with pytest.raises(StoreError, match="^simulated crash before the dataset row$"):
        import_coco(store, make_coco(tmp_path), tmp_path / "images")
    assert store.list() == [] and blob_files(store) == []
    assert store.integrity_check() == []


def test_validate_coco_by_store_id(store):
    image_id = store.put_image(png_bytes(50, 40))
    json_id = store.put_json({})
    doc = {"images": [{"id": 1, "file_name": "x.png", "store_id": image_id}],
           "categories": [{"id": 1, "name": "c"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50.001, 40]}]}
    assert validate_coco(doc, store) == {"images": 1, "annotations": 1, "categories": 1}
    doc["annotations"][0]["bbox"] = [0, 0, 51, 40]  # outside the stored image's 50 px
    with pytest.raises(StoreError, match="is outside image 1 .'x.png'., which is 50x40"):
        validate_coco(doc, store)
    doc["annotations"][0]["bbox"] = [0, 0, 5, 5]
    for store_id, message in ((json_id, "is a json, not an image"), ("0" * 24, "not in the store"),
                              ("bad", "not a 24-hex id")):
        doc["images"][0]["store_id"] = store_id
        with pytest.raises(StoreError, match=message):
            put_dataset(store, doc)
    with pytest.raises(StoreError, match="no 'store_id'"):
        put_dataset(store, {**doc, "images": [{"id": 1, "file_name": "x.png", "width": 5, "height": 5}]})


def test_categories_sharing_a_name_are_refused(store):
    """Models' classes map to categories by name: with two categories named alike, detections of one would all
    be scored as the other."""
    image_id = store.put_image(png_bytes(50, 40))
    doc = {"images": [{"id": 1, "file_name": "x.png", "store_id": image_id}],
           "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}, {"id": 3, "name": "scratch"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]}
    for check in (lambda: validate_coco(doc, store), lambda: put_dataset(store, doc)):
        with pytest.raises(StoreError) as info:
            check()
        assert info.value.code == 400
        assert "category 3: duplicate category name 'scratch' (also category 1)" in info.value.message
    assert [r.kind for r in store.list()] == ["image"]
    doc["categories"][2]["name"] = "pit"
    assert validate_coco(doc, store)["categories"] == 3


def test_many_problems_are_counted(store):
    doc = {"images": [{"id": 1, "file_name": "x", "width": 10, "height": 10}], "categories": [{"id": 1, "name": "c"}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 11, 11]} for i in range(15)]}
    with pytest.raises(StoreError, match="and 5 more problems"):
        validate_coco(doc)


# ---- CLI ---------------------------------------------------------------------------------------------------


def run_cli(*args, data_dir, expect=0):
    env = dict(os.environ, PYTHONPATH=str(REPO), SERVING_DATA_DIR=str(data_dir))
    result = subprocess.run([sys.executable, "-m", "serving.cli", *map(str, args)], cwd=data_dir.parent,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def test_cli_store_round_trip(tmp_path):
    data_dir = tmp_path / "var"
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(48, 36))
    image_id = run_cli("store", "put-image", image, data_dir=data_dir).stdout.splitlines()[-1]
    assert HEX24.fullmatch(image_id)
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps({"hello": ["world", 1]}))
    doc_id = run_cli("store", "put-json", doc, "--kind", "result", data_dir=data_dir).stdout.splitlines()[-1]
    assert json.loads(run_cli("store", "get", doc_id, data_dir=data_dir).stdout) == {"hello": ["world", 1]}
    record = json.loads(run_cli("store", "get", image_id, data_dir=data_dir).stdout)
    assert record["meta"]["width"] == 48 and record["meta"]["file_name"] == "a.png"
    out = tmp_path / "copy.png"
    run_cli("store", "get", image_id, "--out", out, data_dir=data_dir)
    assert out.read_bytes() == image.read_bytes()
    listed = [json.loads(line) for line in run_cli("store", "ls", data_dir=data_dir).stdout.splitlines()]
    assert [r["id"] for r in listed] == [image_id, doc_id]
    assert run_cli("store", "check", "--blobs", data_dir=data_dir).stdout.strip() == "ok"
    # The same folder through the Python API: the CLI and the server share it.
    with Store(data_dir) as store:
        assert store.get_json(doc_id) == {"hello": ["world", 1]}


def test_cli_errors_exit_2(tmp_path):
    data_dir = tmp_path / "var"
    not_image = tmp_path / "x.png"
    not_image.write_bytes(b"not an image")
    result = run_cli("store", "put-image", not_image, data_dir=data_dir, expect=2)
    assert "not a decodable image" in result.stderr and result.stdout == ""
    assert "malformed id" in run_cli("store", "get", "123", data_dir=data_dir, expect=2).stderr
    assert "no document" in run_cli("store", "get", "0" * 24, data_dir=data_dir, expect=2).stderr
    assert "cannot read" in run_cli("store", "put-json", tmp_path / "nope.json", data_dir=data_dir, expect=2).stderr


def test_cli_refuses_what_it_cannot_read_or_store_with_exit_2(tmp_path):
    data_dir = tmp_path / "var"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # valid JSON, deeper than json's recursion
    surrogate = tmp_path / "surrogate.json"
    surrogate.write_text('{"name": "\\ud800"}')
    nul = make_coco(tmp_path)
    coco = json.loads(nul.read_text())
    coco["images"][1]["file_name"] = "sub/b.png\x00x"
    nul.write_text(json.dumps(coco))
    for args, message in (
            (("store", "put-json", deep), f"{deep} nests too deeply to be read as JSON"),
            (("store", "put-json", surrogate), "put_json: the string at ['name'] holds '\\ud800', a lone UTF-16"),
            (("dataset", "import", "--coco", deep, "--images", tmp_path / "images"), "nests too deeply"),
            (("dataset", "import", "--coco", nul, "--images", tmp_path / "images"),
             "image 2 ('sub/b.png\\x00x'): file name is not a path: it holds a NUL character"),
            (("store", "ls", "--limit", "-1"), "bad limit -1"),
            (("store", "gc", "--min-age", "-5"), "bad min_age_s -5.0: expected seconds, 0 or more")):
        result = run_cli(*args, data_dir=data_dir, expect=2)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stdout == ""
    assert run_cli("store", "ls", data_dir=data_dir).stdout == ""
    assert [p for p in (data_dir / "blobs").rglob("*") if p.is_file()] == []


def test_cli_dataset_show_output_imports_into_another_store_and_references_in_its_own(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    coco_path = make_coco(tmp_path)
    shown_id = run_cli("dataset", "import", "--coco", coco_path, "--images", tmp_path / "images",
                       data_dir=first).stdout.splitlines()[-1]
    shown = tmp_path / "shown.json"
    shown.write_text(run_cli("dataset", "show", shown_id, data_dir=first).stdout)
    first_ids = [image["store_id"] for image in json.loads(shown.read_text())["images"]]

    copied_id = run_cli("dataset", "import", "--coco", shown, "--images", tmp_path / "images",
                        data_dir=second).stdout.splitlines()[-1]
    copied = json.loads(run_cli("dataset", "show", copied_id, data_dir=second).stdout)
    second_ids = [image["store_id"] for image in copied["images"]]
    assert set(second_ids).isdisjoint(first_ids)
    for image, store_id in zip(copied["images"], second_ids):
        record = json.loads(run_cli("store", "get", store_id, "--record", data_dir=second).stdout)
        assert record["kind"] == "image" and record["meta"]["file_name"] == image["file_name"]

    # In its own store the same file references the stored images: one new document, the dataset.
    again_id = run_cli("dataset", "import", "--coco", shown, "--images", tmp_path / "images",
                       data_dir=first).stdout.splitlines()[-1]
    again = json.loads(run_cli("dataset", "show", again_id, data_dir=first).stdout)
    assert [image["store_id"] for image in again["images"]] == first_ids
    assert len(run_cli("store", "ls", data_dir=first).stdout.splitlines()) == len(first_ids) + 2

    # Neither in the store nor on disk: both are said.
    (tmp_path / "images" / "a.png").unlink()
    failed = run_cli("dataset", "import", "--coco", shown, "--images", tmp_path / "images", data_dir=tmp_path / "third",
                     expect=2)
    assert (f"image 1 ('a.png'): missing image file {tmp_path / 'images' / 'a.png'}: No such file or directory "
            f"(and its store_id {first_ids[0]} names nothing in this store)") in failed.stderr, failed.stderr


def test_cli_ls_prints_every_document_page_by_page(tmp_path):
    data_dir = tmp_path / "var"
    with Store(data_dir) as store:
        with store.transaction():
            ids = [store.put_json({"i": i}) for i in range(ITER_PAGE_SIZE + 1)]  # one past a page
    listed = [json.loads(line)["id"] for line in run_cli("store", "ls", data_dir=data_dir).stdout.splitlines()]
    assert listed == ids  # oldest first, each once
    newest = run_cli("store", "ls", "--limit", "2", data_dir=data_dir).stdout.splitlines()
    assert [json.loads(line)["id"] for line in newest] == ids[-2:]


def test_cli_dataset_import(tmp_path):
    data_dir = tmp_path / "var"
    coco_path = make_coco(tmp_path)
    result = run_cli("dataset", "import", "--coco", coco_path, "--images", tmp_path / "images",
                     "--data-dir", data_dir, data_dir=tmp_path / "elsewhere")
    dataset_id = result.stdout.splitlines()[-1]
    assert HEX24.fullmatch(dataset_id) and "imported 2 images, 2 annotations" in result.stdout
    dataset = json.loads(run_cli("store", "get", dataset_id, data_dir=data_dir).stdout)
    assert all(HEX24.fullmatch(image["store_id"]) for image in dataset["images"])
    # A bad one: exit 2, a message, and nothing new in the store.
    coco = json.loads(coco_path.read_text())
    coco["annotations"][0]["bbox"] = [60, 40, 10, 10]
    coco_path.write_text(json.dumps(coco))
    failed = run_cli("dataset", "import", "--coco", coco_path, "--images", tmp_path / "images",
                     data_dir=data_dir, expect=2)
    assert "annotation 1: bbox [60, 40, 10, 10] is outside image 1 ('a.png')" in failed.stderr
    assert len(run_cli("store", "ls", data_dir=data_dir).stdout.splitlines()) == 3
