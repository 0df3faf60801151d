"""A stage of a sequence job on a worker: a recurrent core between its neighbours, or the per-step readout last.

A sequence job's data messages are chunks of at most T = `truncation` time steps of a batch of sequences, each
flagged `start` (the state resets before it) and `last` (the sequence ends with it). Every stage but the last is
a `RecurrentStage`, the last is a `ReadoutStage`:

- `RecurrentStage`: `RecurrentCompute` (dni.workers.recurrent) over the chunks, which keeps the core's state from
  one chunk to the next and, in `sg`, bridges each truncation with its synthesizer over time. Between this stage
  and the next the same DNI step runs as between feed-forward stages, on the output sequence: in `sg` a second
  synthesizer predicts dL/d(outputs) at every step from the outputs, the core updates at once with it, and it
  learns from the true dL/d(outputs) that comes back (regressing its prediction for those outputs, made afresh
  then, onto it). In `backprop` the core waits for that true gradient: truncated BPTT across workers,
  update-locked. In `no_bprop` it never learns.
- `ReadoutStage`: a feed-forward stage applied at every step (so any stage kind serves: `linear` is the paper's
  readout), scored with the job's per-step loss (`dni.workers.step_losses`) on the steps the mask marks; the
  loss, in nats, is summed over the batch and the chunk's scored steps. It sends dL/d(its input) upstream.

Both answer what the worker's loop and commands ask of a stage (`in_flight`, `awaits_target`, `take_target`,
`checkpoint_state`, ...) as `StageCompute` does; `build_sequence_stage` makes either from an assignment.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from dni.schedule import StageSchedule
from dni.spec import Mode, OptimizerSpec, StageAssignment
from dni.workers.build import stage_seed
from dni.workers.interface import Shape
from dni.workers.optimizers import Stepper, make_optimizer
from dni.workers.recurrent import RecurrentCompute, RecurrentCore, linear_synthesizer, resolve_core
from dni.workers.registry import STAGE_ARGUMENTS, SYNTHESIZER_ARGUMENTS, check_params, resolve_stage, resolve_synthesizer
from dni.workers.step_losses import STEP_LOSSES, step_correct
from dni.workers.timing import Timeline

__all__ = ["ChunkResult", "ReadoutStage", "RecurrentStage", "SequenceStage", "build_sequence_stage", "per_step"]


@dataclass
class _Chunk:
    """What a recurrent stage keeps of a chunk until its target arrives."""
    outputs: torch.Tensor  # detached: what the synthesizer learns to map to the true gradient
    last: bool
    step: int


@dataclass(frozen=True)
class ChunkResult:
    """The readout's score of a chunk: (bits summed over its scored steps, steps right, scored steps) on the
    device, and the target for the stage above."""
    score: torch.Tensor
    upstream: Optional[torch.Tensor] = None


def per_step(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A feed-forward module at every step: (B, T, *in) -> (B, T, *out), as one batch of B * T examples."""
    out = module(x.reshape(-1, *x.shape[2:]))
    return out.reshape(*x.shape[:2], *out.shape[1:])


class RecurrentStage:
    """A recurrent core on its own worker (see the module docstring)."""

    def __init__(self, recurrent: RecurrentCompute, synthesizer: Optional[nn.Module], *, optimizer: OptimizerSpec,
                 window: int, timeline: Timeline) -> None:
        self.recurrent = recurrent
        self.mode = recurrent.mode
        self.module = recurrent.core
        self.module_optimizer = recurrent.core_optimizer
        self.synthesizer = synthesizer if self.mode.uses_synthesizer else None  # dL/d(outputs), per step
        self.synthesizer_optimizer = make_optimizer(optimizer, self.synthesizer.parameters()) if self.synthesizer else None
        self.synthesizer_step = Stepper(self.synthesizer_optimizer) if self.synthesizer_optimizer else None
        self.schedule = StageSchedule(window, self.mode.locked)
        self.time = timeline
        self.pending: OrderedDict[int, _Chunk] = OrderedDict()
        self.staleness: Counter[int] = Counter()
        self.stash = None  # predictions are made afresh when their target comes: no weights are stashed
        self._eval_state: Any = None
        self._synthesizer_loss: Optional[torch.Tensor] = None

    @property
    def steps(self) -> int:
        return self.recurrent.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.recurrent.steps = value

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def awaits_target(self, batch: int) -> bool:
        return batch in self.pending

    def expected_target_shape(self, batch: int) -> Shape:
        return tuple(self.pending[batch].outputs.shape)

    @property
    def synthesizer_loss(self) -> float:
        """The latest loss of the synthesizer between stages (read from the device only when asked)."""
        return float(self._synthesizer_loss) if self._synthesizer_loss is not None else 0.0

    def forward(self, batch: int, x: torch.Tensor, *, start: bool, last: bool) -> torch.Tensor:
        """The core over one chunk from its kept state; the outputs for downstream."""
        outputs = self.recurrent.forward(x, start=start)
        if self.recurrent.learns:
            self.pending[batch] = _Chunk(outputs, last, self.steps)
        self.time.lap("forward")
        return outputs

    def follow_synthesizer(self, batch: int) -> Optional[torch.Tensor]:
        """`sg`: update at once with the predicted dL/d(outputs); the input gradient for the stage above."""
        if self.synthesizer is None:
            return None
        chunk = self.pending[batch]
        with torch.no_grad():
            predicted = per_step(self._synthesize, chunk.outputs)
        upstream = self.recurrent.backward(predicted, last=chunk.last)
        self.time.lap("synthetic")
        return upstream

    def _synthesize(self, h: torch.Tensor) -> torch.Tensor:
        assert self.synthesizer is not None
        return self.synthesizer(h, None)

    def apply_update(self) -> None:
        """Nothing is left for later: `RecurrentCompute.backward` steps the core."""

    def take_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The true dL/d(outputs) of a chunk: the core's update (`backprop`) or the synthesizer's target (`sg`)."""
        chunk = self.pending.pop(batch)
        if self.synthesizer is None:
            upstream = self.recurrent.backward(target, last=chunk.last)
            self.time.lap("backward")
            return upstream
        assert self.synthesizer_step is not None
        self.staleness[self.steps - chunk.step] += 1
        loss = F.mse_loss(per_step(self._synthesize, chunk.outputs), target)
        self.synthesizer_step.zero_grad()
        loss.backward()
        self.synthesizer_step.step()
        self._synthesizer_loss = loss.detach()
        self.time.lap("synthesizer")
        return None

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, *, start: bool) -> torch.Tensor:
        """The core over an evaluation chunk, from the evaluation stream's own state (the training state stays)."""
        outputs, self._eval_state = self.recurrent.evaluate(x, None if start else self._eval_state)
        self.time.lap("forward")
        return outputs

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs, the kept state across chunks included (its prediction's graph cannot
        be saved: the first chunk after a resume trains no synthesizer over time on it)."""
        recurrent = self.recurrent
        state: dict[str, Any] = {"module": self.module.state_dict(), "module_optimizer": self.module_optimizer.state_dict(),
                                 "steps": self.steps, "kept_state": list(recurrent.state or ())}
        for name, module, optimizer in self._synthesizers():
            state[name], state[f"{name}_optimizer"] = module.state_dict(), optimizer.state_dict()
        return state

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        recurrent = self.recurrent
        self.module.load_state_dict(state["module"])
        self.module_optimizer.load_state_dict(state["module_optimizer"])
        for name, module, optimizer in self._synthesizers():
            module.load_state_dict(state[name])
            optimizer.load_state_dict(state[f"{name}_optimizer"])
        self.steps = int(state["steps"])
        recurrent.state = tuple(state["kept_state"]) or None
        recurrent.prediction, self._eval_state = None, None
        for stepper in (recurrent.core_step, recurrent.synthesizer_step, self.synthesizer_step):
            if stepper is not None:
                stepper.refresh()

    def _synthesizers(self) -> list[tuple[str, nn.Module, torch.optim.Optimizer]]:
        pairs = [("synthesizer", self.synthesizer, self.synthesizer_optimizer),
                 ("time_synthesizer", self.recurrent.synthesizer, self.recurrent.synthesizer_optimizer)]
        return [(name, module, optimizer) for name, module, optimizer in pairs if module is not None and optimizer is not None]

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        for name, module, _ in self._synthesizers():
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        return state


class ReadoutStage:
    """The last stage of a sequence job: a feed-forward module at every step and the per-step loss."""

    def __init__(self, module: nn.Module, *, mode: Mode, optimizer: OptimizerSpec, loss: str, first: bool,
                 timeline: Timeline) -> None:
        self.module, self.mode, self.loss_name, self.time = module, mode, loss, timeline
        self.loss = STEP_LOSSES[loss]
        self.module_optimizer = make_optimizer(optimizer, module.parameters())
        self.module_step = Stepper(self.module_optimizer)
        self.needs_input_grad = not first and mode.input_gradient
        self.schedule = StageSchedule(1, locked=True)  # it updates as each chunk comes: nothing ever awaits a target
        self.stash = None  # no synthesizer, so no stashed weights
        self.staleness: Counter[int] = Counter()
        self.steps = 0
        self.in_flight = 0
        self.synthesizer_loss = 0.0
        self._update_due = False

    def awaits_target(self, batch: int) -> bool:
        return False

    def last_step(self, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> ChunkResult:
        """One training chunk: the loss on its scored steps, the module's gradients, dL/d(x) for the stage above."""
        self.steps += 1
        x.requires_grad_(self.needs_input_grad)
        logits = per_step(self.module, x)
        bits = self.loss(logits, targets) * mask
        self.time.lap("forward")
        self.module_step.zero_grad()
        (bits.sum() * math.log(2)).backward()
        self.time.lap("backward")
        self._update_due = True
        return ChunkResult(self._score(bits.detach(), logits.detach(), targets, mask), x.grad if self.needs_input_grad else None)

    def apply_update(self) -> None:
        if self._update_due:
            self._update_due = False
            self.module_step.step()
            self.time.lap("optimizer")

    @torch.no_grad()
    def evaluate_last(self, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> ChunkResult:
        self.module.eval()
        try:
            logits = per_step(self.module, x)
        finally:
            self.module.train()
        result = ChunkResult(self._score(self.loss(logits, targets) * mask, logits, targets, mask))
        self.time.lap("forward")
        return result

    def _score(self, bits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        right = (step_correct(self.loss_name, logits, targets) * mask).sum()
        return torch.stack([bits.sum().double(), right.double(), mask.sum().double()])

    def checkpoint_state(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "module_optimizer": self.module_optimizer.state_dict(),
                "steps": self.steps}

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.module_optimizer.load_state_dict(state["module_optimizer"])
        self.steps = int(state["steps"])
        self.module_step.refresh()

    def state(self) -> dict[str, torch.Tensor]:
        return {f"module.{k}": v for k, v in self.module.state_dict().items()}


SequenceStage = RecurrentStage | ReadoutStage


def build_sequence_stage(config: StageAssignment, device: str, timeline: Timeline) -> tuple[SequenceStage, Shape]:
    """The stage a worker serves for a sequence job's `config`, and its per-step output shape.

    The last stage is the readout (a stage kind, `dni.workers.stages`); every other is a recurrent core
    (`dni.workers.recurrent.resolve_core`). Parameters are checked against the builders first (ConfigError).
    """
    torch.manual_seed(stage_seed(config.seed, config.index))
    spec, where, shape = config.spec, f"stage {config.index} ({config.spec.kind})", tuple(config.input_shape)
    probe = torch.zeros(2, 1, *shape, device=device)
    if config.is_last:
        builder = resolve_stage(spec.kind)
        check_params(builder, spec.params, where, STAGE_ARGUMENTS)
        module = builder(shape, **spec.params).to(device)
        readout = ReadoutStage(module, mode=config.mode, optimizer=config.optimizer, loss=config.loss,
                               first=config.is_first, timeline=timeline)
        return readout, _probed(module, probe, lambda m, x: per_step(m, x))
    core_builder = resolve_core(spec.kind)
    check_params(core_builder, spec.params, where, STAGE_ARGUMENTS)
    core = core_builder(shape, **spec.params).to(device)
    output_shape = _probed(core, probe, lambda m, x: m(x, cast(RecurrentCore, m).initial_state(2, torch.device(device)))[0])
    over_time = linear_synthesizer(cast(RecurrentCore, core).state_size).to(device) if config.mode.uses_synthesizer else None
    between = None
    if config.mode.uses_synthesizer:
        builder = resolve_synthesizer(spec.synthesizer.kind)
        check_params(builder, spec.synthesizer.params, f"{where}, synthesizer {spec.synthesizer.kind}", SYNTHESIZER_ARGUMENTS)
        between = builder(output_shape, output_shape, 0, True, **spec.synthesizer.params).to(device)
    recurrent = RecurrentCompute(core, over_time, mode=config.mode, optimizer=config.optimizer, first=config.is_first,
                                 discount=config.discount, name=where)
    return RecurrentStage(recurrent, between, optimizer=config.optimizer, window=config.window, timeline=timeline), output_shape


def _probed(module: nn.Module, probe: torch.Tensor, call: Any) -> Shape:
    """The per-step output shape: the module run once in eval mode on a dummy chunk of one step."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        output = call(module, probe)
    module.train(was_training)
    return tuple(output.shape[2:])
