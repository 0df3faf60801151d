"""protocol/codec.py: the wire format round-trips every allowed tensor and rejects every kind of malformed message."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from dni.protocol import PROTOCOL_VERSION, Kind, Limits, Message, ProtocolError, decode, encode


def sample() -> Message:
    return Message(Kind.FORWARD, job="job-1", batch=12, step=3, sender=1, meta={"eval": 2, "note": "x"},
                   tensors={"x": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": np.array([1, 2, 3])})


def header_of(message: Message) -> dict:
    return msgpack.unpackb(encode(message)[0])


def frames_with(header: dict, tensors: list[bytes]) -> list[bytes]:
    return [msgpack.packb(header), *tensors]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"])
def test_round_trip_every_allowed_dtype(dtype):
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    decoded = decode(encode(Message(Kind.BACKWARD, tensors={"target": array})))
    np.testing.assert_array_equal(decoded.tensors["target"], array)
    assert decoded.tensors["target"].dtype == array.dtype


def test_round_trip_keeps_every_field_and_odd_shapes():
    message = sample()
    message.tensors["scalar"] = np.array(5, dtype=np.int64)
    message.tensors["empty"] = np.zeros((0, 7), dtype=np.float32)
    message.tensors["strided"] = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    decoded = decode(encode(message))
    assert (decoded.kind, decoded.job, decoded.batch, decoded.step, decoded.sender, decoded.meta) == \
           (Kind.FORWARD, "job-1", 12, 3, 1, {"eval": 2, "note": "x"})
    for name, array in message.tensors.items():
        assert decoded.tensors[name].shape == array.shape
        np.testing.assert_array_equal(decoded.tensors[name], array)


def test_encode_refuses_a_dtype_outside_the_whitelist():
    with pytest.raises(ProtocolError, match="complex64"):
        encode(Message(Kind.FORWARD, tensors={"x": np.zeros(2, dtype=np.complex64)}))


def tampered(**changes):
    header = header_of(sample())
    header.update(changes)
    return header


GOOD_FRAMES = encode(sample())[1:]
MALFORMED = {
    "empty message": ([], "empty message"),
    "garbage header": ([b"\xc1\xff\x00garbage"], "not valid msgpack"),
    "header not a map": ([msgpack.packb([1, 2, 3])], "must be a map"),
    "wrong version": (frames_with(tampered(v=99), GOOD_FRAMES), "unsupported protocol version 99"),
    "missing version": (frames_with({k: v for k, v in tampered().items() if k != "v"}, GOOD_FRAMES), "version None"),
    "unknown kind": (frames_with(tampered(k=77), GOOD_FRAMES), "unknown message kind 77"),
    "kind not int": (frames_with(tampered(k="forward"), GOOD_FRAMES), "'k' must be int"),
    "missing job": (frames_with({k: v for k, v in tampered().items() if k != "j"}, GOOD_FRAMES), "'j' is missing"),
    "batch is bool": (frames_with(tampered(b=True), GOOD_FRAMES), "'b' must be int"),
    "meta not map": (frames_with(tampered(m=[1]), GOOD_FRAMES), "'m' must be dict"),
    "bad dtype": (frames_with(tampered(t=[["x", "object", [2]], ["labels", "int64", [3]]]), GOOD_FRAMES), "dtype 'object'"),
    "shape vs frame": (frames_with(tampered(t=[["x", "float32", [3, 5]], ["labels", "int64", [3]]]), GOOD_FRAMES), "needs 60 bytes, frame has 48"),
    "negative size": (frames_with(tampered(t=[["x", "float32", [-3, 4]], ["labels", "int64", [3]]]), GOOD_FRAMES), "not a non-negative integer"),
    "spec not a triple": (frames_with(tampered(t=[["x", "float32"], ["labels", "int64", [3]]]), GOOD_FRAMES), "must be \\[name, dtype, shape\\]"),
    "missing frame": (frames_with(tampered(), GOOD_FRAMES[:1]), "declares 2 tensors but 1 frames follow"),
    "extra frame": (frames_with(tampered(), [*GOOD_FRAMES, b"1234"]), "declares 2 tensors but 3 frames follow"),
    "truncated frame": (frames_with(tampered(), [bytes(GOOD_FRAMES[0])[:-3], GOOD_FRAMES[1]]), "frame has 45"),
    "too many dims": (frames_with(tampered(t=[["x", "float32", [1] * 9 + [48 // 4]], ["labels", "int64", [3]]]), GOOD_FRAMES), "at most 8 sizes"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_rejected_with_a_clear_error(name):
    frames, pattern = MALFORMED[name]
    with pytest.raises(ProtocolError, match=pattern):
        decode(frames)


def test_size_limits_are_enforced():
    frames = encode(sample())
    with pytest.raises(ProtocolError, match="header of .* exceeds"):
        decode(frames, Limits(max_header_bytes=16))
    with pytest.raises(ProtocolError, match="exceeds the limit of 32"):
        decode(frames, Limits(max_frame_bytes=32))
    with pytest.raises(ProtocolError, match="2 tensors exceed the limit of 1"):
        decode(frames, Limits(max_tensors=1))


def test_version_is_current():
    assert header_of(sample())["v"] == PROTOCOL_VERSION


def test_an_empty_tensor_that_declares_huge_sizes_is_refused():
    """Found by hypothesis: 0 x 1449 x 1449 x 1.1e12 float32 needs 0 bytes, yet numpy cannot shape it."""
    header = {**msgpack.unpackb(encode(Message(Kind.FORWARD, "job"))[0]), "t": [["x", "float32", [0, 1449, 1449, 1_098_229_144_116]]]}
    with pytest.raises(ProtocolError, match="declares more than"):
        decode([msgpack.packb(header), b""])


def test_encoded_frames_share_the_arrays_memory():
    array = np.zeros(4, dtype=np.float32)
    frames = encode(Message(Kind.FORWARD, tensors={"x": array}))
    array[2] = 7.0
    assert decode(frames).tensors["x"].tolist() == [0.0, 0.0, 7.0, 0.0]


def test_metadata_keys_and_tensor_names_must_be_strings():
    with pytest.raises(ProtocolError, match="^metadata keys must be strings$"):
        decode(frames_with(tampered(m={b"eval": 1}), GOOD_FRAMES))
    with pytest.raises(ProtocolError, match="^tensor name must be a string, got 7$"):
        decode(frames_with(tampered(t=[[7, "float32", [3, 4]], ["labels", "int64", [3]]]), GOOD_FRAMES))


def test_a_frame_that_is_not_bytes_is_refused():
    with pytest.raises(ProtocolError, match="^frame of type int is not bytes$"):
        decode([encode(sample())[0], 12, GOOD_FRAMES[1]])
