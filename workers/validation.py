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

__all__ = ["Chunk", "Inputs", "Rejected", "Target", "all_finite", "check_chunk", "check_fresh", "check_inputs", "check_kind", "check_origin", "check_target"]

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


class Chunk(NamedTuple):
    """A sequence job's checked chunk: its steps, per-step targets and mask, and where it lies in its sequence."""
    x: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    start: bool
    last: bool
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


def check_chunk(message: Message, input_shape: Shape, truncation: int, loss: str, num_classes: int,
                nonfinite: str) -> Chunk:
    """A sequence job's chunk: `x` float32 (B, T, *input_shape) with 1 <= T <= truncation, `labels` the per-step
    targets (float32 (B, T, num_classes) of 0s and 1s for the `bits` loss, else int64 (B, T) classes in range),
    `mask` float32 (B, T) of 0s and 1s, and bools `start` and `last` in the metadata; a refusal loses the chunk."""
    x, labels, mask = (message.tensors.get(name) for name in ("x", "labels", "mask"))
    if x is None or labels is None or mask is None:
        raise Rejected(f"{message.kind.name} chunk needs tensors 'x', 'labels' and 'mask', got {sorted(message.tensors)}", message)
    if x.dtype != np.float32 or x.ndim != 2 + len(input_shape) or tuple(x.shape[2:]) != tuple(input_shape) \
            or x.shape[0] == 0 or not 1 <= x.shape[1] <= truncation:
        raise Rejected(f"x must be float32 (B, T <= {truncation}, {', '.join(map(str, input_shape))}), "
                       f"got {x.dtype} {list(x.shape)}", message)
    steps = tuple(x.shape[:2])
    if mask.dtype != np.float32 or mask.shape != steps or not np.isin(mask, (0.0, 1.0)).all():
        raise Rejected(f"mask must be float32 {list(steps)} of 0s and 1s, got {mask.dtype} {list(mask.shape)}", message)
    _check_step_targets(message, labels, steps, loss, num_classes)
    start, last = message.meta.get("start"), message.meta.get("last")
    if not (isinstance(start, bool) and isinstance(last, bool)):
        raise Rejected(f"a chunk's meta needs bools 'start' and 'last', got {start!r:.20} and {last!r:.20}", message)
    return Chunk(x, labels, mask, start, last, _nonfinite("x", x, message, nonfinite))


def _check_step_targets(message: Message, labels: np.ndarray, steps: tuple[int, ...], loss: str, num_classes: int) -> None:
    if loss == "bits":
        if labels.dtype != np.float32 or labels.shape != (*steps, num_classes) or not np.isin(labels, (0.0, 1.0)).all():
            raise Rejected(f"labels must be float32 {[*steps, num_classes]} of 0s and 1s, got {labels.dtype} "
                           f"{list(labels.shape)}", message)
        return
    if labels.dtype != np.int64 or labels.shape != steps:
        raise Rejected(f"labels must be int64 {list(steps)}, got {labels.dtype} {list(labels.shape)}", message)
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise Rejected(f"labels must lie in 0..{num_classes - 1}", message)


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
