"""Merge and split of batches, the error table and the codec: pure functions, no server."""
import collections

import cv2
import grpc
import numpy as np
import pytest

from serving import batching, codec
from serving.errors import ServingError, code_for_grpc_status, grpc_status_for, is_retryable
from serving.proto import inference_pb2 as pb


class Item:
    def __init__(self, n_images):
        self.n_images = n_images


def test_take_batch_keeps_order_and_never_exceeds_the_batch_size():
    waiting = collections.deque(Item(n) for n in (1, 2, 1, 3, 1))
    first, images = batching.take_batch(waiting, 4)
    assert [i.n_images for i in first] == [1, 2, 1] and images == 4
    second, images = batching.take_batch(waiting, 4)
    assert [i.n_images for i in second] == [3, 1] and images == 4
    assert not waiting
    waiting = collections.deque([Item(3), Item(2)])
    third, _ = batching.take_batch(waiting, 4)
    assert [i.n_images for i in third] == [3] and [i.n_images for i in waiting] == [2]


def test_count_images():
    assert batching.count_images({"data": {"uri": "a"}}) == 1
    assert batching.count_images({"data": [{}, {}, {}]}) == 3


def test_split_outcomes_per_ret_codes_survive():
    rets = [{"code": 0, "result": {"a": 1}}, {"code": 404, "message": "no face"}, {"code": 200, "result": 2,
                                                                                  "body": b"x"}]
    outcomes = batching.split_outcomes((rets, 0, ""), 3)
    assert [o.code for o in outcomes] == [0, 404, 0]
    assert outcomes[0].result == {"a": 1} and outcomes[1].message == "no face" and outcomes[2].body == b"x"


@pytest.mark.parametrize("output, code, message", [
    (([], 503, "busy"), 503, "busy"),
    (([{"code": 0}] * 2, 571, "retry me"), 571, "retry me"),
    (([{"code": 0}], 0, ""), 500, "returned 1 rets for 2 requests"),
    ((None, 500, ""), 500, "rets of type NoneType for 2 requests"),
    (([{"code": 0}] * 2, "0", ""), 500, "non-integer code"),
    ("oops", 500, "must return (rets, code, message)"),
])
def test_split_outcomes_batch_failures(output, code, message):
    outcomes = batching.split_outcomes(output, 2)
    assert len(outcomes) == 2
    assert all(o.code == code and message in o.message for o in outcomes)


def test_split_outcomes_code_without_message_uses_each_ret():
    outcomes = batching.split_outcomes(([{"code": 0}, "bad"], 500, ""), 2)
    assert outcomes[0].ok and outcomes[1].code == 500 and "not a dict" in outcomes[1].message


def test_preprocess_failure():
    assert batching.preprocess_failure(({"data": {}}, 0, "")) is None
    assert batching.preprocess_failure(({"data": {}}, 415, "bad type")).code == 415
    assert batching.preprocess_failure(({"data": {}}, 400, None)).message == "net_preprocess failed with code 400"
    assert batching.preprocess_failure((None, 0, "")).code == 500
    assert batching.preprocess_failure("x").code == 500


def test_exception_outcomes_are_599_with_the_text():
    outcomes = batching.exception_outcomes(2, ValueError("bad pixel"))
    assert [(o.code, o.message, o.whole_batch) for o in outcomes] == [(599, "bad pixel", True)] * 2
    assert batching.exception_outcomes(1, ValueError())[0].message == "ValueError"
    own = batching.exception_outcome(ValueError("bad header"))  # net_preprocess's: the request's own failure
    assert (own.code, own.message, own.whole_batch) == (599, "bad header", False)


def test_a_call_fails_as_a_whole_when_one_request_or_its_batch_failed():
    gone = batching.Outcome(code=404, message="gone")
    assert batching.call_failure([gone]) == (404, "gone")
    assert batching.call_failure([gone, gone]) is None  # each failed on its own: the codes tell
    assert batching.call_failure([batching.Outcome(), gone]) is None
    batch_code = batching.split_outcomes(([{}, {}], 503, "warming up"), 2)
    assert batching.call_failure(batch_code) == (503, "warming up")
    own_codes = batching.split_outcomes(([{"code": 503, "message": "x"}] * 2, 0, ""), 2)
    assert batching.call_failure(own_codes) is None
    assert batching.call_failure(batching.split_outcomes(([{}], 0, ""), 2)) == (500, "net_inference returned "
                                                                                  "1 rets for 2 requests")
    assert batching.call_failure([batching.Outcome(), batching.Outcome()]) is None


@pytest.mark.parametrize("code, status", [
    (400, grpc.StatusCode.INVALID_ARGUMENT), (401, grpc.StatusCode.UNAUTHENTICATED),
    (403, grpc.StatusCode.PERMISSION_DENIED), (404, grpc.StatusCode.NOT_FOUND),
    (408, grpc.StatusCode.DEADLINE_EXCEEDED), (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (429, grpc.StatusCode.RESOURCE_EXHAUSTED), (503, grpc.StatusCode.UNAVAILABLE),
    (570, grpc.StatusCode.UNAVAILABLE), (579, grpc.StatusCode.UNAVAILABLE), (415, grpc.StatusCode.INVALID_ARGUMENT),
    (500, grpc.StatusCode.INTERNAL), (599, grpc.StatusCode.INTERNAL), (502, grpc.StatusCode.INTERNAL),
    (0, grpc.StatusCode.OK), (200, grpc.StatusCode.OK),
])
def test_one_table_maps_codes_to_grpc_status(code, status):
    assert grpc_status_for(code) == status


def test_retryable_codes_and_transport_statuses():
    assert is_retryable(571) and is_retryable(429) and is_retryable(503)
    assert not is_retryable(500) and not is_retryable(400)
    assert code_for_grpc_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 413
    assert code_for_grpc_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!") == 429
    assert code_for_grpc_status(grpc.StatusCode.CANCELLED) == 503  # the server's side ended it: retry
    assert code_for_grpc_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    assert code_for_grpc_status(grpc.StatusCode.UNKNOWN) == 500


@pytest.mark.parametrize("value", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 4), np.uint8), np.array([True, False]),
    np.float16(1.5), np.int64(-3), np.arange(4, dtype=">i4"), np.arange(6, dtype=np.float64)[::2],
])
def test_tensors_round_trip(value):
    back = codec.tensor_to_array(codec.array_to_tensor(value))
    np.testing.assert_array_equal(back, value)
    assert back.dtype == value.dtype.newbyteorder("=")


def test_tensor_errors_name_the_input():
    with pytest.raises(ServingError, match="x: unknown dtype 'object'"):
        codec.tensor_to_array(pb.Tensor(dtype="object"), "x")
    with pytest.raises(TypeError, match="cannot be sent"):
        codec.array_to_tensor(np.array(["a"]))


def test_client_refuses_unsupported_values():
    with pytest.raises(TypeError, match="unsupported type set"):
        codec.instances_to_request("a", "inference", {"x": {1, 2}})
    with pytest.raises(TypeError, match="must be a dict"):
        codec.instances_to_request("a", "inference", [3])
    # The data keys have their own fields: a wrong type is the caller's mistake, said before anything is sent.
    for instance, expected in (({"body": "a.png"}, "body must be the encoded image as bytes"),
                               ({"body": np.zeros(3, np.float32)}, "got ndarray of float32"),
                               ({"uri": b"s3://x"}, "uri must be a str"),
                               ({"attribute": b"{}"}, "attribute must be a JSON value"),
                               ([[]], "needs at least one image")):
        with pytest.raises(TypeError, match=expected):
            codec.instances_to_request("a", "inference", instance)


def test_a_body_may_be_the_uint8_array_cv2_imencode_gives():
    encoded = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1]
    request = codec.instances_to_request("a", "inference", {"body": encoded})
    assert request.instances[0].body == encoded.tobytes()


def test_results_with_arrays_bytes_and_failures():
    outcome = batching.Outcome(result={"boxes": np.ones((2, 4), np.float32), "crop": b"\x89PNG", "n": 2,
                                       "nested": [{"s": np.uint8(3)}]}, body=b"img")
    back = codec.result_to_dict(codec.outcome_to_result(outcome))
    assert back["n"] == 2 and back["crop"] == b"\x89PNG" and back["body"] == b"img"
    np.testing.assert_array_equal(back["boxes"], np.ones((2, 4), np.float32))
    assert back["nested"][0]["s"] == np.uint8(3) and isinstance(back["nested"][0]["s"], np.uint8)
    assert codec.result_to_dict(codec.outcome_to_result(batching.Outcome(result=[1, 2]))) == {"result": [1, 2]}
    unsendable = codec.outcome_to_result(batching.Outcome(result={"x": object()}))
    assert unsendable.code == 500 and "cannot be sent" in unsendable.message
    # An eval's result may hold an "error" key: what tells a failure is its type.
    with_error_key = codec.result_to_dict(codec.outcome_to_result(batching.Outcome(result={"error": None})))
    assert with_error_key == {"error": None} and not isinstance(with_error_key, codec.Failure)
    failed = codec.result_to_dict(codec.outcome_to_result(batching.Outcome(code=404, message="gone")))
    assert isinstance(failed, codec.Failure)
    assert failed == {"error": "gone", "code": 404}
