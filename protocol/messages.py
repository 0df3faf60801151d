"""Message kinds and the in-memory form of one message.

The protocol knows nothing about training: a message is a kind, a few routing
integers, a small metadata map and named numpy arrays.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Kind", "Message", "PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1


class Kind(enum.IntEnum):
    FORWARD = 1  # activations (and labels) travelling downstream
    BACKWARD = 2  # a training target (true gradient or loss) travelling upstream
    EVAL = 3  # a forward-only evaluation batch
    EVAL_RESULT = 4
    TRAIN_RESULT = 5  # loss and accuracy of one training batch, from the last stage
    CONTROL = 6  # a request to a worker: configure, start, stop, state, metrics
    REPLY = 7  # a worker's answer to a control request
    HEARTBEAT = 8
    # 9 was METRICS, never sent: a peer that sends it is refused as of an unknown kind
    ERROR = 10  # a worker reports a problem it saw


@dataclass
class Message:
    kind: Kind
    job: str = ""
    batch: int = -1
    step: int = -1
    sender: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
