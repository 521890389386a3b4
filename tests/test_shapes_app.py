"""Tests of the ``shapes`` example app, calling its eval functions directly (no server)."""

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

from evals.shapes import data  # noqa: E402
from evals.shapes.preprocess import INPUT_SHAPE, preprocess  # noqa: E402

APP_DIR = REPO_ROOT / "evals" / "shapes"
# Seeds the model build never saw (it trains on TRAIN_SEED and reports accuracy on HELD_OUT_SEED).
TEST_SEED = 20240611
MIXED_SEED = 777


def _app_configs(**overrides):
    """The create_net configs the runtime would build from app.json (file paths made absolute)."""
    with open(APP_DIR / "app.json", encoding="utf-8") as handle:
        app = json.load(handle)
    configs = {
        "app": "shapes",
        "workspace": str(APP_DIR),
        "batch_size": app["batch_size"],
        "use_device": app.get("use_device", "CPU"),
        "model_files": {name: str(APP_DIR / path) for name, path in app["model_files"].items()},
        "model_params": dict(app.get("model_params", {})),
        "custom_files": {},
        "custom_params": dict(app.get("custom_params", {})),
    }
    configs.update(overrides)
    return configs


def _png(image):
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def _single(image, params=None):
    return {"data": {"uri": "", "body": _png(image), "attribute": {}}, "params": dict(params or {})}


@pytest.fixture(scope="module")
def shapes_eval():
    from evals.shapes import eval as shapes_eval_module

    return shapes_eval_module


@pytest.fixture(scope="module")
def model(shapes_eval):
    model, code, message = shapes_eval.create_net(_app_configs())
    assert (code, message) == (0, "")
    return model


def _preprocessed(shapes_eval, model, request):
    request, code, message = shapes_eval.net_preprocess(model, request)
    assert (code, message) == (0, ""), message
    return request


def test_test_seeds_differ_from_build_seeds():
    assert TEST_SEED not in (data.TRAIN_SEED, data.HELD_OUT_SEED)
    assert MIXED_SEED not in (data.TRAIN_SEED, data.HELD_OUT_SEED)


def test_create_net_loads_shipped_model(model):
    assert model["classes"] == list(data.CLASSES)
    assert model["batch_size"] == 16
    assert model["session"].get_providers() == ["CPUExecutionProvider"]


def test_create_net_reports_bad_configs(shapes_eval):
    no_classes = _app_configs(custom_params={})
    model, code, message = shapes_eval.create_net(no_classes)
    assert (model, code) == (None, 400) and "custom_params.classes" in message

    missing = _app_configs(model_files={"model": str(APP_DIR / "no-such-model.onnx")})
    model, code, message = shapes_eval.create_net(missing)
    assert (model, code) == (None, 400) and "no-such-model.onnx" in message

    wrong_classes = _app_configs(custom_params={"classes": ["circle", "square"]})
    model, code, message = shapes_eval.create_net(wrong_classes)
    assert (model, code) == (None, 400) and "classes" in message


def test_onnx_runtime_threads_and_spinning_are_app_settings(shapes_eval, model):
    options = model["session"].get_session_options()  # app.json sets intra_op_threads only: the defaults show
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"

    tuned, code, _ = shapes_eval.create_net(_app_configs(model_params={"intra_op_threads": 2, "allow_spinning": True}))
    options = tuned["session"].get_session_options()
    assert code == 0 and options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"

    for bad, key in (({"intra_op_threads": 0}, "intra_op_threads"), ({"allow_spinning": "no"}, "allow_spinning")):
        refused, code, message = shapes_eval.create_net(_app_configs(model_params=bad))
        assert (refused, code) == (None, 400) and f"model_params.{key}" in message


def test_model_file_matches_shipped_preprocess():
    session = ort.InferenceSession(str(APP_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    (model_output,) = session.get_outputs()
    assert model_input.name == "image" and model_output.name == "logits"
    assert tuple(model_input.shape[1:]) == INPUT_SHAPE
    assert isinstance(model_input.shape[0], str)  # a named, dynamic batch dimension
    assert model_output.shape[1] == len(data.CLASSES)
    images, _ = data.make_dataset(3, TEST_SEED)
    batch = np.stack([preprocess(image) for image in images])
    assert batch.shape == (3,) + INPUT_SHAPE and batch.dtype == np.float32
    (logits,) = session.run(["logits"], {"image": batch})
    assert logits.shape == (3, len(data.CLASSES))
    assert (APP_DIR / "model.onnx").stat().st_size < 500 * 1024


def test_held_out_accuracy(shapes_eval, model):
    images, labels = data.make_dataset(100, TEST_SEED)
    requests = [_preprocessed(shapes_eval, model, _single(image)) for image in images]
    predicted = []
    for start in range(0, len(requests), model["batch_size"]):
        rets, code, message = shapes_eval.net_inference(model, requests[start:start + model["batch_size"]])
        assert (code, message) == (0, "")
        predicted.extend(ret["result"]["class"] for ret in rets)
    expected = [data.CLASSES[label] for label in labels]
    accuracy = np.mean([p == e for p, e in zip(predicted, expected)])
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}"


def _mixed_requests(images):
    """Single, multi-image, tensor and undecodable requests, in that interleaved order."""
    return [
        _single(images[0]),
        {"data": [{"body": _png(images[1])}, {"body": _png(images[2])}, {"body": _png(images[3])}],
         "params": {"top_k": 2}},
        {"data": {"body": b"definitely not an image"}, "params": {}},
        {"data": {"image": preprocess(images[4])}, "params": {}},
        _single(images[5], {"top_k": 10}),
    ]


@pytest.mark.parametrize("with_preprocess", [True, False], ids=["preprocessed", "raw"])
def test_mixed_batch_splits_back_in_order(shapes_eval, model, with_preprocess):
    images, _ = data.make_dataset(6, MIXED_SEED)
    # Each image alone, as the reference for what the batched run must return in each slot.
    alone = []
    for image in images:
        rets, code, _ = shapes_eval.net_inference(model, [_single(image)])
        assert code == 0
        alone.append(rets[0]["result"])

    requests = _mixed_requests(images)
    if with_preprocess:
        bad = requests.pop(2)
        _, code, message = shapes_eval.net_preprocess(model, bad)
        assert code == 400 and "cv2 load" in message
        requests = [_preprocessed(shapes_eval, model, request) for request in requests]
        requests.insert(2, bad)  # a failed request still reaching inference fails alone there too
    rets, code, message = shapes_eval.net_inference(model, requests)
    assert (code, message) == (0, "")
    assert len(rets) == 5
    assert [ret["code"] for ret in rets] == [0, 0, 400, 0, 0]

    def check(result, reference):
        assert result["class"] == reference["class"]
        assert result["score"] == pytest.approx(reference["score"], abs=1e-5)
        assert result["probs"].dtype == np.float32 and result["probs"].shape == (len(data.CLASSES),)
        np.testing.assert_allclose(result["probs"], reference["probs"], atol=1e-5)
        assert result["score"] == pytest.approx(float(result["probs"].max()), abs=1e-6)

    check(rets[0]["result"], alone[0])
    multi = rets[1]["result"]["images"]
    assert len(multi) == 3
    for result, reference in zip(multi, alone[1:4]):
        check(result, reference)
        assert len(result["top"]) == 2
        assert result["top"][0] == [result["class"], pytest.approx(result["score"])]
        assert result["top"][0][1] >= result["top"][1][1]
    assert "cv2 load" in rets[2]["message"]
    check(rets[3]["result"], alone[4])
    assert "top" not in rets[3]["result"]
    check(rets[4]["result"], alone[5])
    assert len(rets[4]["result"]["top"]) == len(data.CLASSES)  # top_k is clipped to the class count


@pytest.mark.parametrize("request_data, expected", [
    ({}, "no body, uri or image"),
    ({"attribute": {"filename": "x.png"}}, "no body, uri or image"),
    ({"body": b""}, "no body, uri or image"),
    ({"image": np.zeros((3, 32, 32), np.float32)}, "shape"),
    ({"image": np.zeros(INPUT_SHAPE, np.uint8)}, "float32"),
    ({"image": np.full(INPUT_SHAPE, np.nan, np.float32)}, "NaN"),
    ([], "no images"),
])
def test_bad_inputs_are_400(shapes_eval, model, request_data, expected):
    request = {"data": request_data, "params": {}}
    _, code, message = shapes_eval.net_preprocess(model, request)
    assert code == 400 and expected in message
    rets, code, _ = shapes_eval.net_inference(model, [request])
    assert code == 0 and rets[0]["code"] == 400 and expected in rets[0]["message"]


def test_bad_top_k_is_400(shapes_eval, model):
    image = data.render("star", np.random.default_rng(TEST_SEED), size=96)
    for top_k in (0, -1, "2", 1.5, True):
        _, code, message = shapes_eval.net_preprocess(model, _single(image, {"top_k": top_k}))
        assert code == 400 and "top_k" in message


def test_multi_image_request_over_batch_size_is_400(shapes_eval, model):
    image = data.render("circle", np.random.default_rng(TEST_SEED), size=64)
    body = _png(image)
    request = {"data": [{"body": body} for _ in range(model["batch_size"] + 1)], "params": {}}
    _, code, message = shapes_eval.net_preprocess(model, request)
    assert code == 400 and "batch_size" in message


def test_data_is_deterministic_for_a_seed(tmp_path):
    images_a, labels_a = data.make_dataset(12, 5)
    images_b, labels_b = data.make_dataset(12, 5)
    images_c, _ = data.make_dataset(12, 6)
    assert np.array_equal(labels_a, labels_b)
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b))
    assert not all(a.shape == c.shape and np.array_equal(a, c) for a, c in zip(images_a, images_c))
    assert sorted(np.bincount(labels_a, minlength=len(data.CLASSES))) == [3, 3, 3, 3]
    for image in images_a:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert data.MIN_SIDE <= image.shape[0] == image.shape[1] <= data.MAX_SIDE

    labels_path = data.write_folder(tmp_path / "shapes", 12, 5)
    with open(labels_path, encoding="utf-8") as handle:
        names = json.load(handle)
    assert len(names) == 12
    for index, name in enumerate(sorted(names)):
        assert names[name] == data.CLASSES[labels_a[index]]
        assert np.array_equal(cv2.imread(str(tmp_path / "shapes" / name)), images_a[index])


def test_render_rejects_unknown_kind_and_small_size():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        data.render("hexagon", rng)
    with pytest.raises(ValueError):
        data.render("circle", rng, size=32)
    assert data.render("triangle", rng, size=100).shape == (100, 100, 3)
