"""The mvi_ocr app against a real server on loopback: generated codes read right, the charset param steering the
decoding, min_score, clear 4xx codes for bad params and images, recognition batches shared by concurrent callers
(seen on /metrics), and `serving test` scoring it with a precision-recall curve in the report."""
import json
import re
import subprocess
import sys
import threading
import urllib.request

import cv2
import numpy as np
import pytest

from conftest import REPO, RunningServer
from evals.mvi_ocr import data
from serving.client import Client
from serving.config import ConfigError
from serving.inprocess import InProcessRunner

APP = "mvi_ocr"
# Seeds whose codes the app reads exactly (chosen once; generation is deterministic).
READ_SEED = 4242
N_READ = 4


def png(image):
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("cannot encode")
    return encoded.tobytes()


@pytest.fixture(scope="module")
def evals_dir(tmp_path_factory):
    """An evals folder holding only the app (a link to evals/mvi_ocr): no other app loads."""
    root = tmp_path_factory.mktemp("ocr-evals")
    (root / APP).symlink_to(REPO / "evals" / APP)
    return root


@pytest.fixture(scope="module")
def server(evals_dir, tmp_path_factory):
    data_root = tmp_path_factory.mktemp("ocr-data-root")
    running = RunningServer(["--evals", str(evals_dir), "--metrics-port", "0", "--data-root", str(data_root)])
    running.data_root = data_root
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with Client("127.0.0.1", server.port, APP, timeout=60) as opened:
        yield opened


@pytest.fixture(scope="module")
def codes():
    return data.generate(N_READ, READ_SEED)


def one(client, instance, params=None):
    result = client.infer([instance], params)
    return result[0] if isinstance(result, list) else result


def rendered(text, font="cv_simplex", seed=1):
    return png(data.render(text, np.random.default_rng(seed), font=font))


def forward_counts(server, method):
    """{number label: count} of ava_serving_eval_response_time for ``method`` on the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    counts = {}
    pattern = (r'ava_serving_eval_response_time_count\{[^}]*method="' + re.escape(method)
               + r'",number="(\d+)"[^}]*\} ([\d.e+]+)')
    for number, value in re.findall(pattern, text):
        counts[int(number)] = counts.get(int(number), 0) + int(float(value))
    return counts


# ---------------------------------------------------------------------------------------------- reading


def test_reads_generated_codes_with_lines_and_polygons(client, codes):
    results = client.infer([{"body": png(image)} for _, image, _ in codes], {"charset": "code"})
    assert [r["code_str"] for r in results] == [text for _, _, text in codes]
    for (_, image, text), result in zip(codes, results):
        height, width = image.shape[:2]
        assert 0.5 <= result["score"] <= 1.0
        assert [line["text"] for line in result["lines"]] == [text]
        polygon = np.array(result["lines"][0]["polygon"])
        assert polygon.shape == (4, 2)
        assert (polygon >= 0).all() and (polygon[:, 0] < width).all() and (polygon[:, 1] < height).all()
        # top-left, top-right, bottom-right, bottom-left
        assert polygon[0, 0] < polygon[1, 0] and polygon[3, 1] > polygon[0, 1]


def test_charset_restricts_decoding_to_the_allowed_characters(client):
    body = rendered("MOTOR0101", font="pillow_sans")
    assert one(client, {"body": body})["code_str"] == "MOTOR0101"
    # The code alphabet has no O: the steps read as O become the nearest allowed character, 0.
    assert one(client, {"body": body}, {"charset": "code"})["code_str"] == "M0T0R0101"
    assert one(client, {"body": body}, {"charset": "RTM0123456789"})["code_str"] == "M0T0R0101"
    digits = one(client, {"body": body}, {"charset": "digits"})["code_str"]
    assert digits and set(digits) <= set("0123456789")


def test_min_score_drops_weak_lines(client, codes):
    body = png(codes[0][1])
    read = one(client, {"body": body})
    score = read["score"]
    assert 0.5 < score < 1.0
    assert one(client, {"body": body}, {"min_score": score / 2})["code_str"] == read["code_str"]
    dropped = one(client, {"body": body}, {"min_score": (score + 1.0) / 2})
    assert dropped == {"code_str": "", "score": 0.0, "lines": []}


def test_an_image_without_text_is_an_empty_answer(client):
    blank = np.full((120, 300, 3), 200, np.uint8)
    assert one(client, {"body": png(blank)}) == {"code_str": "", "score": 0.0, "lines": []}


def test_multi_image_request(client, codes):
    result = one(client, [{"body": png(image)} for _, image, _ in codes[:2]], {"charset": "code"})
    assert [image["code_str"] for image in result["images"]] == [text for _, _, text in codes[:2]]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("params, message", [
    ({"charset": 5}, "params.charset must be a string"),
    ({"charset": ""}, "params.charset is empty"),
    ({"charset": "0123☃"}, "cannot read: '☃'"),
    ({"charset": "x" * 2000}, "more than 1024"),
    ({"min_score": "high"}, "params.min_score must be a number in [0, 1]"),
    ({"min_score": 1.5}, "params.min_score must be a number in [0, 1]"),
    ({"min_score": True}, "params.min_score must be a number in [0, 1]"),
    # Valid JSON, too large for a float: refused like 2, not an OverflowError (599).
    ({"min_score": 10 ** 400}, "params.min_score must be a number in [0, 1], got an integer of 1329 bits"),
    ({"charst": "digits"}, "unknown params charst"),
])
def test_bad_params_are_400_naming_the_param(client, codes, params, message):
    result = one(client, {"body": png(codes[0][1])}, params)
    assert result["code"] == 400
    assert message in result["error"]


def test_bad_images_are_4xx_and_fail_alone(client, codes, server):
    good = {"body": png(codes[0][1])}
    tiny = {"body": png(np.zeros((8, 8, 3), np.uint8))}
    results = client.infer([good, {"body": b"not an image"}, tiny, {"body": b""}, {"uri": "/etc/passwd"},
                            {"uri": str(server.data_root / "missing.png")}])
    assert results[0]["code_str"] == codes[0][2]
    assert [r.get("code") for r in results[1:]] == [400, 400, 400, 403, 400]
    assert "cv2 load body failed" in results[1]["error"]
    assert "too small" in results[2]["error"]
    assert "no body or uri" in results[3]["error"]
    assert "uri not allowed" in results[4]["error"]


def test_reads_a_uri_under_the_data_root(client, codes, server):
    path = server.data_root / "code.png"
    path.write_bytes(png(codes[1][1]))
    assert one(client, {"uri": str(path)}, {"charset": "code"})["code_str"] == codes[1][2]


def test_a_multi_image_request_larger_than_batch_size_is_refused(client):
    batch_size = json.loads((REPO / "evals" / APP / "app.json").read_text())["batch_size"]
    small = {"body": png(np.full((40, 40, 3), 255, np.uint8))}
    result = one(client, [small] * (batch_size + 1))
    # Refused by the runtime before it is queued, naming the sizes.
    assert result == {"code": 400, "error": f"a request of {batch_size + 1} images is over the batch_size of app "
                                            f"{APP} ({batch_size})"}, result
    assert len(one(client, [small] * batch_size)["images"]) == batch_size  # at the limit: served


def app_copy(root, app_json):
    """An evals folder under ``root`` holding the app's modules (links) with an app.json of its own."""
    app = root / APP
    app.mkdir()
    for module in (REPO / "evals" / APP).glob("*.py"):
        (app / module.name).symlink_to(module)
    (app / "app.json").write_text(json.dumps(app_json))
    return root


def test_unknown_model_param_fails_the_app_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=f"^app {APP} failed to load: .*model_params.det_thread is not a setting"):
        InProcessRunner(app_copy(tmp_path, {"model_params": {"det_thread": 2}}), APP)


@pytest.mark.parametrize("setting, value, message", [
    # Integers too large for a float (valid JSON): each names its key, none escapes as OverflowError.
    ("det_thresh", 10 ** 400, "must be a number between 0 and 1, got an integer of 1329 bits"),
    ("det_unclip_ratio", 10 ** 400, "must be a number > 0 and at most 100"),
    # A count ONNX Runtime or the image code could not take: refused by name, not by a C-int overflow there.
    ("det_threads", 10 ** 400, "must be an integer from 1 to 256, got an integer of 1329 bits"),
    ("rec_min_width", 2 ** 63, "must be an integer from 1 to 16384"),
    ("det_max_lines", 0, "must be an integer from 1 to 4096, got 0"),
], ids=["det_thresh-huge", "det_unclip_ratio-huge", "det_threads-huge", "rec_min_width-2**63", "det_max_lines-0"])
def test_out_of_range_model_params_fail_the_app_naming_the_key(tmp_path, setting, value, message):
    expected = f"^app {APP} failed to load: .*" + re.escape(f"model_params.{setting} {message}")
    with pytest.raises(ConfigError, match=expected):
        InProcessRunner(app_copy(tmp_path, {"model_params": {setting: value}}), APP)


def test_an_unreadable_default_charset_fails_the_app(tmp_path):
    with pytest.raises(ConfigError, match=f"^app {APP} failed to load: .*custom_params.default_charset: .*cannot read"):
        InProcessRunner(app_copy(tmp_path, {"custom_params": {"default_charset": "0123☃"}}), APP)


def test_the_default_charset_applies_when_the_request_names_none(tmp_path):
    body = rendered("MOTOR0101", font="pillow_sans")
    with InProcessRunner(app_copy(tmp_path, {"custom_params": {"default_charset": "code"}}), APP) as runner:
        assert runner.infer([{"body": body}])[0]["code_str"] == "M0T0R0101"
        assert runner.infer([{"body": body}], {"charset": "alnum"})[0]["code_str"] == "MOTOR0101"


# ---------------------------------------------------------------------------------------------- batching


def test_concurrent_requests_share_recognition_calls(client, server, codes):
    """16 callers at once: some net_inference call holds several requests, and its lines go through ONE
    recognition call (py.forward with number > 1), as the app's metrics show."""
    before_inference = forward_counts(server, "py.inference")
    before_forward = forward_counts(server, "py.forward")
    bodies = [png(image) for _, image, _ in codes]
    start = threading.Barrier(16)
    results = [None] * 16

    def call(index):
        start.wait()
        results[index] = one(client, {"body": bodies[index % len(bodies)]}, {"charset": "code"})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r["code_str"] for r in results] == [codes[i % len(codes)][2] for i in range(16)]

    def grown(before, after):
        return {n: after[n] - before.get(n, 0) for n in after if after[n] > before.get(n, 0)}

    inference = grown(before_inference, forward_counts(server, "py.inference"))
    forward = grown(before_forward, forward_counts(server, "py.forward"))
    assert sum(n * count for n, count in inference.items()) == 16  # every request answered by one call
    assert max(inference) > 1, f"no batch held more than one request: {inference}"
    assert max(forward) > 1 and sum(forward.values()) == sum(inference.values()), forward


# ---------------------------------------------------------------------------------------------- harness


def test_serving_test_scores_the_app_with_a_precision_recall_curve(server, tmp_path):
    folder = tmp_path / "codes"
    labels = data.write_dataset(folder, N_READ, READ_SEED)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "serving.cli", "test", "--no-progress", "--app", APP, "--target",
                          server.target, "--images", str(folder), "--labels", str(folder / "labels.json"),
                          "--params", '{"charset": "code"}', "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    scores = summary["scores"]
    assert scores["task"] == "text" and scores["text_key"] == "code_str"
    assert scores["n_scored"] == len(labels) and scores["exact_match"] == 1.0 and scores["cer"] == 0.0
    curve = scores["pr_curve"]
    assert scores["score_key"] == "score" and curve["ap"] == pytest.approx(1.0)
    assert curve["precision"][-1] == 1.0 and curve["recall"][-1] == 1.0
    report = (out / "report.html").read_text()
    assert "Precision-recall as the threshold on <code>score</code> moves" in report
    assert report.count("<svg") == 2  # the latency histogram and the curve
    assert "precision-recall AP 1.000" in run.stdout


# ---------------------------------------------------------------------------------------------- generator


def test_generator_is_seeded_and_its_labels_are_exact(tmp_path):
    first, again = data.generate(5, 11), data.generate(5, 11)
    assert len(first) == len(again) == 5
    assert all(a[2] == b[2] and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert [s[2] for s in data.generate(5, 12)] != [s[2] for s in first]
    labels = data.write_dataset(tmp_path, 6, 3)
    assert sorted(labels) == [f"code_{index:05d}.png" for index in range(6)]
    assert json.loads((tmp_path / "labels.json").read_text()) == labels
    for name, text in labels.items():
        assert data.MIN_LENGTH <= len(text) <= data.MAX_LENGTH and set(text) <= set(data.CODE_CHARSET)
        assert cv2.imread(str(tmp_path / name)) is not None
    with pytest.raises(ValueError, match="fonts must name"):
        data.generate(1, 0, fonts=("comic_sans",))


@pytest.mark.parametrize("font", data.FONTS)
def test_every_font_puts_ink_on_the_part(font):
    image = data.render("AB12CD34", np.random.default_rng(5), font=font)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
    assert 80 <= image.shape[0] <= 260 and image.shape[1] > image.shape[0]
    assert np.percentile(grey, 99) - np.percentile(grey, 1) > 60  # text stands out from the surface
