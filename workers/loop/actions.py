"""The order of one step, as data: for each role, mode and message, the typed actions a stage carries out.

As torch.distributed.pipelining writes a schedule as lists of `_Action`s, a stage's step here is a row of
`Action`s that one handler (`dni.workers.loop.datapath`) runs, so tests read the order without any socket and
feed-forward and recurrent stages share it. After each action that puts a message into an outbox (`SENDS`) the
worker's loop writes the outboxes before the next action: an activation leaves before the synthetic update, an
input gradient before the optimiser step, a target before the last stage reports to the coordinator (the stage
above waits for the one, the coordinator only counts the other).

The rows follow the modes (`dni.spec.Mode`): a locked hidden stage (`backprop`) only goes forward when a batch
comes and does its backward pass, sends the input gradient and steps when the target comes; an unlocked one
(`sg`, `cdni`, `sl`) follows its synthesizer and steps at once, and its synthesizer learns when the target comes;
in `no_bprop` hidden stages never learn.
"""
from __future__ import annotations

import enum

from dni.spec import Mode

__all__ = ["SENDS", "Action", "Event", "Role", "step_order"]


class Action(str, enum.Enum):
    FORWARD = "forward"  # the block on a training batch, its graph kept
    SEND_ACTIVATION = "send_activation"  # the output and the batch's labels downstream
    FOLLOW_SYNTHESIZER = "follow_synthesizer"  # the update-unlocked step: gradients from the synthesizer's prediction
    LOSS = "loss"  # the last stage: the job's loss and its gradients
    TAKE_TARGET = "take_target"  # a true target: the locked backward pass, or the synthesizer's regression
    SEND_INPUT_GRADIENT = "send_input_gradient"  # dL/d(input) (or the loss prediction of sl) to the stage above
    REPORT = "report"  # the last stage's score to the coordinator
    STEP = "step"  # the optimiser step for the gradients left
    EVALUATE = "evaluate"  # the block in eval mode on an evaluation batch


class Role(str, enum.Enum):
    HIDDEN = "hidden"
    LAST = "last"


class Event(str, enum.Enum):
    """What arrived: a training batch, an evaluation batch, or a batch's target."""
    BATCH = "batch"
    EVALUATION = "evaluation"
    TARGET = "target"


SENDS = frozenset({Action.SEND_ACTIVATION, Action.SEND_INPUT_GRADIENT, Action.REPORT})

_Row = dict[Event, tuple[Action, ...]]
_LOCKED: _Row = {
    Event.BATCH: (Action.FORWARD, Action.SEND_ACTIVATION),
    Event.TARGET: (Action.TAKE_TARGET, Action.SEND_INPUT_GRADIENT, Action.STEP),
}
_UNLOCKED: _Row = {
    Event.BATCH: (Action.FORWARD, Action.SEND_ACTIVATION, Action.FOLLOW_SYNTHESIZER, Action.SEND_INPUT_GRADIENT, Action.STEP),
    Event.TARGET: (Action.TAKE_TARGET,),
}
_FROZEN: _Row = {Event.BATCH: (Action.FORWARD, Action.SEND_ACTIVATION)}
_HIDDEN: dict[Mode, _Row] = {Mode.BACKPROP: _LOCKED, Mode.SG: _UNLOCKED, Mode.CDNI: _UNLOCKED, Mode.SL: _UNLOCKED,
                             Mode.NO_BPROP: _FROZEN}
_LAST: _Row = {Event.BATCH: (Action.LOSS, Action.SEND_INPUT_GRADIENT, Action.REPORT, Action.STEP)}
_EVALUATION = {Role.HIDDEN: (Action.EVALUATE, Action.SEND_ACTIVATION), Role.LAST: (Action.EVALUATE, Action.REPORT)}


def step_order(role: Role, mode: Mode, event: Event) -> tuple[Action, ...]:
    """The actions a stage carries out for `event`, in order; () for an event its role and mode never expect."""
    if event is Event.EVALUATION:
        return _EVALUATION[role]
    rows = _HIDDEN[mode] if role is Role.HIDDEN else _LAST
    return rows.get(event, ())
