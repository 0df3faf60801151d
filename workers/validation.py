"""Checks of incoming data messages, before any of their numbers reach the stage.

The decoder (`dni.protocol`) already guarantees a well-formed message; these
checks decide whether it is acceptable to this stage now: this job's, on the
right socket, not a duplicate, tensors of the agreed dtype and shape, labels
in range, finite values under the `nonfinite` policy. Each refusal is a
`Rejected` whose text is what the coordinator and the log show; its `lost` is
the message whose batch the refusal drops for good (the data was unusable),
which the coordinator must hear of. A stranger's message, a duplicate or a
late target loses nothing, so it carries no `lost`. Pure functions of the
message and the stage's agreed settings.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from dni.errors import DniError
from dni.protocol import Kind, Message
from dni.workers.interface import Shape

__all__ = ["Inputs", "Rejected", "Target", "all_finite", "check_fresh", "check_inputs", "check_kind", "check_origin", "check_target"]

DATA_KINDS = {"forward": (Kind.FORWARD, Kind.EVAL), "backward": (Kind.BACKWARD,)}  # what each data socket accepts


class Rejected(DniError):
    """A message that is well-formed on the wire but not acceptable to this stage now.

    `lost` is the message of a batch of this job that the refusal drops for good (its
    data was unusable), which the coordinator must hear of; a duplicate or a
    stranger's message loses nothing.
    """

    def __init__(self, text: str, lost: Optional[Message] = None) -> None:
        super().__init__(text)
        self.lost = lost


class Inputs(NamedTuple):
    """A batch's checked arrays, and how many of them held NaN/Inf accepted under `nonfinite = "count"`."""
    x: np.ndarray
    labels: np.ndarray
    nonfinite: int


class Target(NamedTuple):
    target: np.ndarray
    nonfinite: int


def check_origin(message: Message, job: str, failure: Optional[str]) -> None:
    """Only this job's messages, and none once this stage has failed (it takes no more data)."""
    if message.job != job:
        raise Rejected(f"message for job {message.job!r:.40}, this worker serves {job!r}")
    if failure is not None:
        raise Rejected(f"this stage failed earlier ({failure:.200}) and takes no more data")


def check_kind(message: Message, socket: str) -> None:
    """Activations and evaluation batches on the forward socket, targets on the backward one."""
    if message.kind not in DATA_KINDS[socket]:
        raise Rejected(f"{message.kind.name} is not accepted on the {socket} socket")


def check_fresh(message: Message, in_flight: bool) -> None:
    """A training batch already awaiting its target is a duplicate or a replay; the original goes on."""
    if message.kind is Kind.FORWARD and in_flight:
        raise Rejected(f"batch {message.batch} is already in flight (duplicate or replayed)")


def check_inputs(message: Message, input_shape: Shape, num_classes: int, nonfinite: str) -> Inputs:
    """The batch's `x` (float32, B x input_shape) and `labels` (int64 in range); a refusal here loses the batch."""
    x, labels = message.tensors.get("x"), message.tensors.get("labels")
    if x is None or labels is None:
        raise Rejected(f"{message.kind.name} needs tensors 'x' and 'labels', got {sorted(message.tensors)}", message)
    if x.dtype != np.float32 or tuple(x.shape[1:]) != tuple(input_shape) or x.shape[0] == 0:
        raise Rejected(f"x must be float32 (B, {', '.join(map(str, input_shape))}), got {x.dtype} {list(x.shape)}", message)
    if labels.dtype != np.int64 or labels.shape != (x.shape[0],):
        raise Rejected(f"labels must be int64 ({x.shape[0]},), got {labels.dtype} {list(labels.shape)}", message)
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise Rejected(f"labels must lie in 0..{num_classes - 1}", message)
    return Inputs(x, labels, _nonfinite("x", x, message, nonfinite))


def check_target(message: Message, expected: Optional[Shape], nonfinite: str) -> Target:
    """The target of a batch that awaits one (`expected` its shape, None: no such batch).

    An unknown, late or duplicate target loses nothing; a malformed one loses its batch.
    """
    if expected is None:
        raise Rejected(f"no batch {message.batch} awaits a target (unknown, late or duplicate)")
    target = message.tensors.get("target")
    if target is None or target.dtype != np.float32 or tuple(target.shape) != tuple(expected):
        got = "nothing" if target is None else f"{target.dtype} {list(target.shape)}"
        raise Rejected(f"target for batch {message.batch} must be float32 {list(expected)}, got {got}", message)
    return Target(target, _nonfinite("target", target, message, nonfinite))


def all_finite(values: Any) -> bool:
    """Whether a float or an array holds no NaN or Inf (integers always do)."""
    if isinstance(values, float):
        return math.isfinite(values)
    return values.dtype.kind != "f" or bool(np.isfinite(values).all())


def _nonfinite(name: str, array: np.ndarray, message: Message, policy: str) -> int:
    """1 when `array` holds NaN/Inf and the policy counts it, 0 when it is finite; refused under "reject"."""
    if all_finite(array):
        return 0
    if policy == "reject":
        raise Rejected(f"{name} holds NaN or Inf values (policy: reject)", message)
    return 1
