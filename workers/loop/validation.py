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
from dni.spec import StageAssignment
from dni.workers.stage.blocks import WHOLE, Span
from dni.workers.build.contracts import Shape

__all__ = ["Batch", "Rejected", "Target", "all_finite", "check_batch", "check_fresh", "check_kind", "check_origin", "check_target"]

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


class Batch(NamedTuple):
    """A checked batch (or a sequence's chunk), or the part of one that came along one edge: its arrays (an input
    `x`; from the coordinator, the `labels` and a chunk's `mask` for a stage that takes them), where it lies in its
    sequence, its examples' leading dimensions, and how many of its arrays held NaN/Inf accepted under
    `nonfinite = "count"`."""
    x: Optional[np.ndarray]
    labels: Optional[np.ndarray]
    mask: Optional[np.ndarray]
    span: Span
    nonfinite: int
    lead: tuple[int, ...] = ()


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


def check_batch(message: Message, config: StageAssignment, *, x: bool = True, labels: bool = True,
                shape: Optional[Shape] = None, pixels: Optional[bool] = None) -> Batch:
    """A training or evaluation batch (or the part of one an edge brings) as the stage agreed to take it; a refusal
    here loses the batch.

    `x` (when asked for) is float32 (B, *shape), `shape` the edge's (default: the stage's input shape), or uint8
    pixels where `pixels` (default: the stage takes them); with chunks of sequences (B, T, *shape), 1 <= T <=
    truncation. `labels` (when asked for) are the job's loss's: int64 classes in range, or float32 vectors of
    `num_classes` bits (the `bits` loss), one per example (per step of a chunk), and a chunk's come with `mask`,
    float32 (B, T) of 0s and 1s. A chunk carries bools `start` and `last` in its metadata.
    """
    chunked = config.truncation > 0
    names = (*(("x",) if x else ()), *(("labels", "mask") if chunked and labels else ("labels",) if labels else ()))
    arrays = {name: message.tensors.get(name) for name in ("x", "labels", "mask")}
    if any(arrays[name] is None for name in names):
        raise Rejected(f"{message.kind.name}{' chunk' if chunked else ''} needs tensors {_listed(names)}, "
                       f"got {sorted(message.tensors)}", message)
    inputs, classes, mask = arrays["x"] if x else None, arrays["labels"] if labels else None, arrays["mask"] if labels else None
    lead: tuple[int, ...] = ()
    if inputs is not None:
        taken = config.pixels is not None if pixels is None else pixels
        lead = _check_x(message, inputs, tuple(shape or config.input_shape), config.truncation, taken)
    if classes is not None:
        lead = lead or _lead(classes, config)
        _check_labels(message, classes, lead, config.loss, config.num_classes)
    nonfinite = _nonfinite("x", inputs, message, config.nonfinite) if inputs is not None else 0
    if not chunked:
        return Batch(inputs, classes, None, WHOLE, nonfinite, lead)
    if mask is not None and (mask.dtype != np.float32 or mask.shape != lead or not np.isin(mask, (0.0, 1.0)).all()):
        raise Rejected(f"mask must be float32 {list(lead)} of 0s and 1s, got {mask.dtype} {list(mask.shape)}", message)
    start, last = message.meta.get("start"), message.meta.get("last")
    if not (isinstance(start, bool) and isinstance(last, bool)):
        raise Rejected(f"a chunk's meta needs bools 'start' and 'last', got {start!r:.20} and {last!r:.20}", message)
    return Batch(inputs, classes, mask, Span(start, last), nonfinite, lead)


def _lead(labels: np.ndarray, config: StageAssignment) -> tuple[int, ...]:
    """The leading dimensions of a labels-only part: (B,), or (B, T) for a chunk."""
    return tuple(labels.shape[:2 if config.truncation else 1])


def _check_x(message: Message, x: np.ndarray, input_shape: Shape, truncation: int, pixels: bool) -> tuple[int, ...]:
    """The examples' leading dimensions: (B,), or (B, T) for a chunk of T <= truncation steps. The first stage of a
    uint8 dataset takes them as uint8 pixels (`dni.workers.loop.pixels`), every other stage as float32."""
    lead = 2 if truncation else 1
    fits = x.dtype == (np.uint8 if pixels else np.float32) and x.ndim == lead + len(input_shape) \
        and tuple(x.shape[lead:]) == input_shape and x.shape[0] > 0 and (not truncation or 1 <= x.shape[1] <= truncation)
    if not fits:
        dims = ", ".join(["B", *([f"T <= {truncation}"] if truncation else []), *map(str, input_shape)])
        raise Rejected(f"x must be {'uint8 pixels' if pixels else 'float32'} ({dims}), got {x.dtype} {list(x.shape)}",
                       message)
    return tuple(x.shape[:lead])


def _check_labels(message: Message, labels: np.ndarray, steps: tuple[int, ...], loss: str, num_classes: int) -> None:
    if loss == "bits":
        if labels.dtype != np.float32 or labels.shape != (*steps, num_classes) or not np.isin(labels, (0.0, 1.0)).all():
            raise Rejected(f"labels must be float32 {[*steps, num_classes]} of 0s and 1s, got {labels.dtype} "
                           f"{list(labels.shape)}", message)
        return
    if labels.dtype != np.int64 or labels.shape != steps:
        raise Rejected(f"labels must be int64 {list(steps)}, got {labels.dtype} {list(labels.shape)}", message)
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise Rejected(f"labels must lie in 0..{num_classes - 1}", message)


def _listed(names: tuple[str, ...]) -> str:
    quoted = [f"'{name}'" for name in names]
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"


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
