"""The built-in detector training: parameters, augmentations, decode, a tiny training run with checkpoints,
stop and resume, DDP on CPU, and the exported app served by the real runtime."""
import copy
import datetime
import io
import math
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from serving.synth import make_split
from serving.training import augment, detector_ops
from serving.training.params import TrainParams

# Small enough to train in seconds: 128-pixel inputs (the 256-pixel synth images are resized), batch 8.
TINY = {"net_model": "res18", "model_scope": "SMALL", "input_size": 128, "batch_size": 8, "lr": 3e-3,
        "snapshot_interval": 10, "expansions": ("HOR_FLIPE", "VER_FLIPE", "ROTATE_90", "VAGUE")}


class Recorder:
    """A reporter that keeps everything and asks for a stop after ``stop_after`` polls (None: never)."""

    def __init__(self, stop_after=None):
        self.records, self.checkpoints = [], []
        self.polls = 0
        self.stop_after = stop_after

    def progress(self, record):
        self.records.append(record)

    def checkpoint(self, iteration, state, metrics):
        self.checkpoints.append((iteration, state, metrics))

    def should_stop(self):
        self.polls += 1
        return self.stop_after is not None and self.polls > self.stop_after


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(2)
    train_images, train_coco = make_split(32, 11, surfaces="train")
    val_images, val_coco = make_split(8, 12, surfaces="train")
    return train_images, train_coco, val_images, val_coco


@pytest.fixture(scope="module")
def trained(data):
    """30 iterations of the tiny configuration: the run the other tests inspect."""
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    params = TrainParams(max_iters=30, **TINY)
    reporter = Recorder()
    result = train(params, train_coco, train_images, val_coco, val_images, reporter)
    return params, reporter, result


# ---------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch_size must be between 1"),
    ({"max_iters": 0}, "max_iters must be between 1"),
    ({"lr": -0.1}, "learning rate must be > 0"),
    ({"lr": float("nan")}, "finite"),
    ({"net_model": "alexnet"}, "unknown net_model 'alexnet'"),
    ({"model_scope": "HUGE"}, "unknown model_scope"),
    ({"expansions": ("MIRROR",)}, "unknown dataset expansion 'MIRROR'"),
    ({"snapshot_interval": 0}, "snapshot_interval"),
    ({"input_size": 250}, "multiple of 32"),
    ({"batch_size": 5, "device_num": 2}, "split evenly"),
    ({"batch_size": True}, "must be an integer"),
    ({"device": "TPU"}, "unknown device"),
    ({"texture_mix": 1.5}, "texture_mix must be a probability"),
    ({"photometric": -0.1}, "photometric must be a probability"),
])
def test_params_refuse_absurd_values(change, message):
    with pytest.raises(ValueError, match=message):
        TrainParams(**change)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_params_gpu_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        TrainParams(device="GPU")


def test_params_from_param_class_and_dict_round_trip():
    params = TrainParams.from_param_class({
        "net_model": "resnet", "model_scope": "NORMAL", "dataset_expansion_lst": ["HOR_FLIPE", {"name": "VAGUE"}],
        "inital_learning_rate": 0.01, "max_num_iters": 500, "batch_size": 4, "snap_shot_ivterval": 50})
    assert (params.net_model, params.model_scope, params.expansions) == ("resnet", "NORMAL", ("HOR_FLIPE", "VAGUE"))
    assert (params.lr, params.max_iters, params.batch_size, params.snapshot_interval) == (0.01, 500, 4, 50)
    assert TrainParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="unknown training parameters"):
        TrainParams.from_dict({**params.to_dict(), "epochs": 3})


# ---------------------------------------------------------------------------------------------- augmentations


def _image_with_boxes(height, width, boxes):
    """An image whose channel k is non-zero exactly inside box k (k < 3): boxes are recoverable from pixels."""
    image = np.zeros((height, width, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2, k] = 255
    return image


def _boxes_from_pixels(image, count):
    out = []
    for k in range(count):
        ys, xs = np.nonzero(image[:, :, k])
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(out, np.float32)


@pytest.mark.parametrize("transform", [augment.hflip, augment.vflip, augment.rot90])
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_geometric_expansions_move_boxes_exactly(transform, shape):
    boxes = [[3, 5, 20, 9], [40, 30, 47, 48], [0, 0, 1, 1]]
    image = _image_with_boxes(*shape, boxes)
    moved_image, moved_boxes = transform(image, np.array(boxes, np.float32))
    np.testing.assert_array_equal(moved_boxes, _boxes_from_pixels(moved_image, 3))


def test_blur_keeps_boxes_and_expand_is_reproducible():
    image = _image_with_boxes(64, 64, [[10, 10, 30, 20]])
    boxes = np.array([[10, 10, 30, 20]], np.float32)
    blurred, same = augment.blur(image, boxes, 1.0)
    np.testing.assert_array_equal(same, boxes)
    assert not np.array_equal(blurred, image)
    names = ("HOR_FLIPE", "VER_FLIPE", "ROTATE_90", "VAGUE")
    first = augment.expand(image, boxes, names, np.random.default_rng(5))
    second = augment.expand(image, boxes, names, np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_pixel_augmentations_are_reproducible_and_keep_the_image_shape():
    rng_image = np.random.default_rng(1)
    image = rng_image.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    texture = rng_image.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for transform in (lambda rng: augment.photometric(image, rng), lambda rng: augment.texture_mix(image, texture, rng)):
        first, second = transform(np.random.default_rng(3)), transform(np.random.default_rng(3))
        assert first.shape == image.shape and first.dtype == np.uint8
        np.testing.assert_array_equal(first, second)
        assert not np.array_equal(first, image)
    # A flat texture has no relief: laying it over an image changes nothing.
    flat = np.full((64, 64, 3), 90, np.uint8)
    np.testing.assert_array_equal(augment.texture_mix(image, flat, np.random.default_rng(0)), image)


# ---------------------------------------------------------------------------------------------- decode


def test_decode_finds_peaks_and_scales_boxes():
    heatmap = np.zeros((2, 16, 16), np.float32)
    heatmap[1, 4, 6] = 0.9
    heatmap[1, 4, 7] = 0.5  # next to a higher peak: suppressed by the 3 x 3 max-pool
    heatmap[0, 10, 2] = 0.3
    size = np.zeros((2, 16, 16), np.float32)
    size[:, 4, 6] = math.log(3.0)  # 3 cells = 12 input pixels
    offset = np.full((2, 16, 16), 0.5, np.float32)
    boxes, scores, classes = detector_ops.decode(heatmap, size, offset, scale=(2.0, 2.0), score_threshold=0.2)
    np.testing.assert_allclose(scores, [0.9, 0.3])
    np.testing.assert_array_equal(classes, [1, 0])
    # Centre (6.5, 4.5) cells = (26, 18) input pixels, 12 wide; times the scale 2.
    np.testing.assert_allclose(boxes[0], [40, 24, 64, 48], atol=1e-4)


# ---------------------------------------------------------------------------------------------- training


def test_training_reports_progress_checkpoints_and_learns(trained):
    params, reporter, result = trained
    assert [r.cur_iter_num for r in reporter.records] == [10, 20, 30]
    assert [c[0] for c in reporter.checkpoints] == [10, 20, 30]
    record = reporter.records[-1]
    assert record.model_name == "res18_30.ckpt" and record.max_iter_num == 30
    assert record.lr > 0 and record.images_per_s > 0 and record.map50 is not None
    assert reporter.records[-1].loss < reporter.records[0].loss
    assert result.iteration == 30 and not result.stopped
    assert reporter.checkpoints[-1][2]["evaluated"] and "per_class" in reporter.checkpoints[-1][2]


def test_stop_then_resume_continues_where_it_stopped(data, trained):
    from serving.training.trainer import load_state, train

    train_images, train_coco, val_images, val_coco = data
    params = TrainParams(max_iters=14, **TINY)
    stopping = Recorder(stop_after=5)
    result = train(params, train_coco, train_images, val_coco, val_images, stopping)
    assert result.stopped and result.iteration == 5
    assert [c[0] for c in stopping.checkpoints] == [5] and not stopping.checkpoints[0][2]["evaluated"]

    resumed = Recorder()
    result = train(params, train_coco, train_images, val_coco, val_images, resumed,
                   init_state=stopping.checkpoints[0][1])
    assert result.iteration == 14 and not result.stopped
    assert [c[0] for c in resumed.checkpoints] == [10, 14]

    # Data order and augmentation depend on the iteration only, so stop + resume equals a straight run.
    straight = Recorder()
    train(params, train_coco, train_images, val_coco, val_images, straight)
    resumed_weights = load_state(resumed.checkpoints[-1][1])["model"]
    straight_weights = load_state(straight.checkpoints[-1][1])["model"]
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-4, rtol=1e-4)


def test_distributed_two_processes_match_one(data):
    """DDP with 2 gloo processes on CPU: same schedule and checkpoints, losses within noise of 1 process."""
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    params = TrainParams(max_iters=10, **{**TINY, "snapshot_interval": 5})
    single, double = Recorder(), Recorder()
    train(params, train_coco, train_images, val_coco, val_images, single)
    result = train(TrainParams(max_iters=10, device_num=2, **{**TINY, "snapshot_interval": 5}),
                   train_coco, train_images, val_coco, val_images, double)
    assert result.iteration == 10 and [c[0] for c in double.checkpoints] == [5, 10]
    # A record per snapshot from both runs: the comparison below is over both of them, not over nothing.
    assert [r.cur_iter_num for r in single.records] == [r.cur_iter_num for r in double.records] == [5, 10]
    for one, two in zip(single.records, double.records):
        # Same data and gradient up to per-process batch-norm statistics.
        assert two.loss == pytest.approx(one.loss, rel=0.15)


def test_training_refuses_mismatched_inputs(data):
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    with pytest.raises(ValueError, match="images were given"):
        train(TrainParams(max_iters=1, **TINY), train_coco, train_images[:-1], val_coco, val_images, Recorder())


def test_training_refuses_categories_sharing_a_name(data):
    """Classes are matched to categories by name: two categories named alike would merge into one id."""
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    cocos = [copy.deepcopy(train_coco), copy.deepcopy(val_coco)]
    for coco in cocos:
        coco["categories"][1]["name"] = coco["categories"][0]["name"]
    with pytest.raises(ValueError, match=rf"repeat the name\(s\) \[{cocos[0]['categories'][0]['name']!r}\]"):
        train(TrainParams(max_iters=1, **TINY), cocos[0], train_images, cocos[1], val_images, Recorder())


def test_fine_tuning_another_architecture_is_refused_in_one_line(data, trained):
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    state = trained[1].checkpoints[-1][1]  # res18 SMALL
    with pytest.raises(ValueError) as info:
        train(TrainParams(max_iters=1, **{**TINY, "model_scope": "NORMAL"}), train_coco, train_images, val_coco,
              val_images, Recorder(), init_state=state, resume=False)
    message = str(info.value)
    # Both architectures named, not torch's list of every mismatched tensor (14 KB).
    assert "res18/SMALL" in message and "res18/NORMAL" in message and len(message) < 300, message
    # The check is whether the weights fit, not the name: "resnet" is res18's alias and fine-tunes from it.
    result = train(TrainParams(max_iters=1, **{**TINY, "net_model": "resnet", "snapshot_interval": 1}), train_coco,
                   train_images, val_coco, val_images, Recorder(), init_state=state, resume=False)
    assert result.iteration == 1 and not result.stopped


def test_a_validation_set_without_boxes_has_no_map_and_the_console_says_so(data):
    from serving.training.trainer import ConsoleReporter, train

    train_images, train_coco, val_images, val_coco = data
    empty = {**val_coco, "annotations": []}
    out = io.StringIO()
    reporter = ConsoleReporter(out=out)
    train(TrainParams(max_iters=1, **{**TINY, "snapshot_interval": 1}), train_coco, train_images, empty, val_images,
          reporter)
    assert reporter.checkpoints[-1][2]["map50"] is None and reporter.records[-1].map50 is None
    assert "val mAP@.5 n/a  mAP n/a" in out.getvalue(), out.getvalue()


# ---------------------------------------------------------------------------------------------- evaluation


def _test_task_detections(model, params, coco, images):
    """COCO detections as evals/mvp_detector's test() makes them for a TEST task: class name -> category id."""
    from serving.training.trainer import EVAL_SCORE_THRESHOLD, class_names, predict

    classes = class_names(coco)
    category_of = {c["name"]: c["id"] for c in coco["categories"]}
    detections = []
    for meta, (boxes, scores, labels) in zip(coco["images"], predict(model, images, params.input_size,
                                                                        EVAL_SCORE_THRESHOLD)):
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            detections.append({"image_id": meta["id"], "category_id": category_of[classes[label]],
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return detections


def test_validation_is_the_test_tasks_evaluation_whatever_the_file_names(data, trained):
    """Training's mAP is what a TEST task reports for the same model and images; images are matched by COCO id,
    so missing file names, or base names shared by images of two folders, change nothing."""
    from serving.jobs.evaluation import evaluate as test_evaluation
    from serving.training.trainer import evaluate, model_from_state

    params, reporter, _ = trained
    _, _, val_images, val_coco = data
    model, _ = model_from_state(reporter.checkpoints[-1][1])
    expected = test_evaluation(val_coco, _test_task_detections(model, params, val_coco, val_images))
    assert expected["mAP_50"] > 0  # a model that finds something: otherwise every way of scoring gives 0
    nameless, shared = copy.deepcopy(val_coco), copy.deepcopy(val_coco)
    for k, (a, b) in enumerate(zip(nameless["images"], shared["images"])):
        del a["file_name"]
        b["file_name"] = f"{k // 2:04d}.png"  # two cameras' files under the same base names
    for coco in (val_coco, nameless, shared):
        scores = evaluate(model, params, coco, val_images)
        assert scores["map50"] == pytest.approx(expected["mAP_50"]) and scores["map"] == pytest.approx(expected["mAP"])
        assert scores["evaluation"]["num_images"] == len(val_images)
        assert {name: c["ap50"] for name, c in scores["per_class"].items()} == {
            c["name"]: pytest.approx(c["AP_50"]) for c in expected["per_class"]}


def test_evaluation_without_detections_scores_zero_where_there_is_ground_truth():
    from serving.jobs.evaluation import evaluate

    _, coco = make_split(8, 7, surfaces="train")
    coco["categories"].append({"id": 9, "name": "dent"})  # a class with nothing to find: no AP at all
    ground_truth = Counter(a["category_id"] for a in coco["annotations"])
    assert len(ground_truth) >= 2
    nothing = evaluate(coco, [])
    assert nothing["mAP"] == nothing["mAP_50"] == 0.0 and nothing["num_gt"] == len(coco["annotations"])
    by_id = {c["category_id"]: c for c in nothing["per_class"]}
    for category in coco["categories"]:
        found = by_id[category["id"]]
        expected_ap = 0.0 if ground_truth[category["id"]] else None
        assert (found["AP"], found["AP_50"], found["gt"], found["detections"]) == (
            expected_ap, expected_ap, ground_truth[category["id"]], 0), found
    # The same per-class figures as with one useless detection, which goes through pycocotools.
    useless = evaluate(coco, [{"image_id": coco["images"][0]["id"], "category_id": 1, "bbox": [0, 0, 5, 5],
                               "score": 0.9}])
    assert [(c["AP"], c["AP_50"], c["gt"]) for c in useless["per_class"]] == [
        (c["AP"], c["AP_50"], c["gt"]) for c in nothing["per_class"]]


# ---------------------------------------------------------------------------------------------- export


def test_exported_app_serves_the_trainers_detections(tmp_path, data, trained):
    from serving.inprocess import InProcessRunner
    from serving.training.export import export_app
    from serving.training.trainer import model_from_state, predict

    params, reporter, _ = trained
    _, _, val_images, val_coco = data
    state = reporter.checkpoints[-1][1]
    threshold = 0.05
    app_dir = export_app(state, params, tmp_path / "evals" / "defect-detector", score_threshold=threshold)
    assert {p.name for p in app_dir.iterdir()} >= {"model.onnx", "app.json", "eval.py", "detector_ops.py"}

    model, classes = model_from_state(state)
    expected = predict(model, val_images, params.input_size, score_threshold=threshold)
    with InProcessRunner(str(tmp_path / "evals"), "defect-detector") as runner:
        bodies = [cv2.imencode(".png", image)[1].tobytes() for image in val_images]
        served = runner.infer([{"body": body} for body in bodies])
    assert any(len(boxes) for boxes, _, _ in expected)
    total = matched = 0
    for (boxes, scores, labels), result in zip(expected, served):
        ours = detector_ops.to_detections(boxes, scores, labels, classes)
        theirs = result["detections"]
        assert len(theirs) == len(ours)
        # Classes and scores agree as multisets (torch and onnxruntime differ in the 7th digit, which may reorder
        # near-tied detections) ...
        for name in classes:
            np.testing.assert_allclose(sorted(d["score"] for d in theirs if d["class"] == name),
                                       sorted(d["score"] for d in ours if d["class"] == name), atol=1e-4)
        # ... and boxes agree, except where two neighbouring heatmap cells tie to the 7th digit and the other
        # runtime picks the other cell as the peak (the box then moves by one cell). An undertrained net has
        # flat heatmaps, so allow a few such ties, never many.
        for served_one in theirs:
            total += 1
            matched += any(mine["class"] == served_one["class"]
                           and abs(mine["score"] - served_one["score"]) < 1e-4
                           and np.allclose(mine["box"], served_one["box"], atol=1e-3) for mine in ours)
    assert total and matched >= 0.97 * total, (matched, total)


def test_test_time_augmentation_maps_every_heatmap_back(tmp_path, data, trained):
    """With TTA over a group of transforms ({hflip, vflip, rot180} and the identity), the merged heatmap of a
    flipped image is the flipped merged heatmap of the image: only true if each transform's inverse maps its
    heatmap back onto the original cells. Without TTA, forward is the plain network call."""
    import onnxruntime

    from serving.training.export import export_onnx

    params, reporter, _ = trained
    path = export_onnx(reporter.checkpoints[-1][1], params, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    tensors = [detector_ops.preprocess(image, params.input_size)[0] for image in data[2][:3]]
    plain = detector_ops.forward(session, *names, tensors)
    np.testing.assert_array_equal(plain[0], session.run(names[1], {names[0]: np.stack(tensors)})[0])

    group = ("hflip", "vflip", "rot180")
    heatmap, size, offset = detector_ops.forward(session, *names, tensors, group)
    assert heatmap.shape == plain[0].shape and not np.allclose(heatmap, plain[0], atol=1e-4)
    np.testing.assert_allclose(size, plain[1], atol=1e-5)  # sizes and offsets are the plain pass's
    np.testing.assert_allclose(offset, plain[2], atol=1e-5)
    for name in group:
        transform = detector_ops.TTA_TRANSFORMS[name][0]
        moved = detector_ops.forward(session, *names, [np.ascontiguousarray(transform(t)) for t in tensors], group)
        np.testing.assert_allclose(moved[0], transform(heatmap), atol=1e-5)
    # The quarter turns: the plain pass of a turned image, turned back, is what TTA averages in.
    turned = detector_ops.forward(session, *names, [np.ascontiguousarray(np.rot90(t, 1, (1, 2))) for t in tensors])
    only_turn = detector_ops.forward(session, *names, tensors, ("rot90",))[0]
    np.testing.assert_allclose(only_turn, (plain[0] + np.rot90(turned[0], -1, (2, 3))) / 2, atol=1e-5)


@pytest.mark.parametrize("value, message", [
    ("hflip", "must be a list"), (["mirror"], "unknown transform 'mirror'"), (["hflip", "hflip"], "twice"),
])
def test_test_time_augmentation_setting_is_checked(value, message):
    with pytest.raises(ValueError, match=message):
        detector_ops.app_settings({"classes": ["a"], "input_size": 64, "tta": value})
    assert detector_ops.app_settings({"classes": ["a"], "input_size": 64})["tta"] == ()


def test_checkpoint_bytes_hold_everything_to_resume(trained):
    from serving.training.trainer import CHECKPOINT_FORMAT, load_state

    _, reporter, _ = trained
    state = load_state(reporter.checkpoints[-1][1])
    assert state["format"] == CHECKPOINT_FORMAT and state["iteration"] == 30
    assert {"model", "optimizer", "params", "classes", "torch_rng"} <= state.keys()
    with pytest.raises(ValueError, match="not a serving.training checkpoint"):
        buffer = io.BytesIO()
        torch.save({"format": "other"}, buffer)
        load_state(buffer.getvalue())


def _saved(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("document", [
    b"not a checkpoint at all", b"", b"PK\x03\x04 a broken zip",
    _saved({"when": datetime.date(2020, 1, 1)}),  # readable only by unpickling an arbitrary class
    None, {"model": {}, "iteration": 3},
], ids=["text", "empty", "broken-zip", "arbitrary-object", "none", "untagged-dict"])
def test_what_is_not_a_checkpoint_is_refused_without_advising_an_unsafe_load(document):
    from serving.training.trainer import load_state, model_from_state

    for read in (load_state, model_from_state):
        with pytest.raises(ValueError, match="^not a serving.training checkpoint: ") as info:
            read(document)
        # torch's own message says to re-run with weights_only=False: code execution from a stored document.
        assert "weights_only" not in str(info.value)
        # Nor in the traceback of a failed task: the torch error is not chained.
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_exporting_a_snapshot_reads_its_checkpoint_once(tmp_path, trained, monkeypatch):
    """A snapshot is tens of MB: the app export (`mvp_rpc.export_model`) reads it once, not once per step."""
    from evals.mvp_detector.eval import export

    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(1) or real_load(*args, **kwargs))
    export(trained[1].checkpoints[-1][1], {}, tmp_path / "app")
    assert len(reads) == 1
    assert (tmp_path / "app" / "model.onnx").stat().st_size > 0


def test_grey_and_bgra_images_train_and_a_malformed_one_is_named(data):
    """The trainer takes what the served app takes: grey and BGRA arrays are converted to BGR."""
    from serving.training.trainer import train

    train_images, train_coco, val_images, val_coco = data
    mixed = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if k % 2 else cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
             for k, image in enumerate(train_images)]
    grey_val = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image in val_images]
    reporter = Recorder()
    result = train(TrainParams(max_iters=2, **{**TINY, "snapshot_interval": 2}), train_coco, mixed, val_coco,
                   grey_val, reporter)
    assert result.iteration == 2 and reporter.checkpoints[-1][2]["map50"] is not None
    malformed = list(train_images)
    malformed[3] = train_images[3].astype(np.float32)
    with pytest.raises(ValueError, match="training image 3: expected a uint8 image, got float32"):
        train(TrainParams(max_iters=1, **TINY), train_coco, malformed, val_coco, val_images, Recorder())
