"""Bytes on the wire: a msgpack header followed by one raw frame per tensor.

Decoding trusts nothing: every field of the header is type-checked, dtypes come
from a whitelist, each frame's length must match its declared shape, and sizes
are capped so that a peer cannot make us allocate without bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import msgpack
import numpy as np

from dni.protocol.errors import ProtocolError
from dni.protocol.messages import PROTOCOL_VERSION, Kind, Message

__all__ = ["ALLOWED_DTYPES", "DEFAULT_LIMITS", "Limits", "decode", "encode"]

ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64", "uint8", "bool"})
_NAMES = {np.dtype(name): name for name in ALLOWED_DTYPES}  # dtype.name is slow; these are looked up per tensor
_ITEMSIZES = {name: np.dtype(name).itemsize for name in ALLOWED_DTYPES}
_KINDS = {int(kind): kind for kind in Kind}

Frame = Union[bytes, memoryview, Any]  # zmq.Frame exposes .buffer


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 1 << 20
    max_frame_bytes: int = 256 << 20
    max_tensors: int = 64
    max_dims: int = 8


DEFAULT_LIMITS = Limits()


def encode(message: Message) -> list[Any]:
    """Frames for a ZeroMQ multipart send; tensor frames share the arrays' memory."""
    specs, frames = [], []
    for name, array in message.tensors.items():
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)  # never for 0-d arrays, which it would turn 1-d
        dtype = _NAMES.get(array.dtype)
        if dtype is None:
            raise ProtocolError(f"tensor {name!r}: dtype {array.dtype.name} is not allowed")
        specs.append([name, dtype, array.shape])
        frames.append(array.reshape(-1).view(np.uint8).data if array.size else b"")
    header = {"v": PROTOCOL_VERSION, "k": int(message.kind), "j": message.job, "b": message.batch, "s": message.step,
              "f": message.sender, "m": message.meta, "t": specs}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def decode(frames: Sequence[Frame], limits: Limits = DEFAULT_LIMITS) -> Message:
    """The message these frames carry, or ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("empty message: no header frame")
    header = _unpack_header(_bytes_of(frames[0]), limits)
    specs = _field(header, "t", list)
    if len(specs) > limits.max_tensors:
        raise ProtocolError(f"{len(specs)} tensors exceed the limit of {limits.max_tensors}")
    if len(frames) != 1 + len(specs):
        raise ProtocolError(f"header declares {len(specs)} tensors but {len(frames) - 1} frames follow")
    tensors = {}
    for spec, frame in zip(specs, frames[1:]):
        name, dtype, shape = _tensor_spec(spec, limits)
        tensors[name] = _array(name, dtype, shape, _bytes_of(frame), limits)
    return Message(
        kind=_kind(header),
        job=_field(header, "j", str),
        batch=_field(header, "b", int),
        step=_field(header, "s", int),
        sender=_field(header, "f", int),
        meta=_meta(header),
        tensors=tensors,
    )


def _bytes_of(frame: Frame) -> memoryview:
    buffer = getattr(frame, "buffer", frame)
    try:
        return memoryview(buffer)
    except TypeError as error:
        raise ProtocolError(f"frame of type {type(frame).__name__} is not bytes") from error


def _unpack_header(raw: memoryview, limits: Limits) -> dict[str, Any]:
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError(f"header of {raw.nbytes} bytes exceeds the limit of {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"header is not valid msgpack: {error}") from error
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    return header


def _field(header: dict[str, Any], key: str, kind: type) -> Any:
    if key not in header:
        raise ProtocolError(f"header field {key!r} is missing")
    value = header[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"header field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _kind(header: dict[str, Any]) -> Kind:
    value = _field(header, "k", int)
    kind = _KINDS.get(value)
    if kind is None:
        raise ProtocolError(f"unknown message kind {value}")
    return kind


def _meta(header: dict[str, Any]) -> dict[str, Any]:
    meta = _field(header, "m", dict)
    if not all(isinstance(key, str) for key in meta):
        raise ProtocolError("metadata keys must be strings")
    return meta


def _tensor_spec(spec: Any, limits: Limits) -> tuple[str, str, tuple[int, ...]]:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise ProtocolError(f"tensor spec must be [name, dtype, shape], got {spec!r:.80}")
    name, dtype, shape = spec
    if not isinstance(name, str):
        raise ProtocolError(f"tensor name must be a string, got {name!r:.40}")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {dtype!r:.40} is not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {limits.max_dims} sizes")
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise ProtocolError(f"tensor {name!r}: shape {shape!r:.80} has a size that is not a non-negative integer")
    return name, dtype, tuple(shape)


def _array(name: str, dtype: str, shape: tuple[int, ...], raw: memoryview, limits: Limits) -> np.ndarray:
    if raw.nbytes > limits.max_frame_bytes:
        raise ProtocolError(f"tensor {name!r}: frame of {raw.nbytes} bytes exceeds the limit of {limits.max_frame_bytes}")
    itemsize = _ITEMSIZES[dtype]
    if math.prod(size for size in shape if size) * itemsize > limits.max_frame_bytes:
        # an empty tensor may still declare sizes beyond any real array (numpy refuses to shape one)
        raise ProtocolError(f"tensor {name!r}: shape {list(shape)[:8]} declares more than {limits.max_frame_bytes} bytes")
    expected = math.prod(shape) * itemsize
    if expected != raw.nbytes:
        raise ProtocolError(f"tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes, frame has {raw.nbytes}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
