"""One stage's training arithmetic in every mode; no sockets here.

`StageCompute` is built from a module (or a block: `dni.workers.stage.blocks`), a synthesizer and a mode, so a plain
training loop can step stages one after another (docs/api.md shows one); a worker builds it from its assignment
(`dni.workers.build.builder.build_stage`). Feed-forward layers, a sequence job's recurrent cores and its per-step
readout are all this one stage around a different block.

The worker runs a step as the actions of `dni.workers.loop.actions` say: `forward` when a batch arrives, the
activation sent downstream, `follow_synthesizer` (the update-unlocked step of the synthetic modes), the input
gradient sent upstream, `apply_update` (the optimiser step); when a target comes back, `take_target`. The last
stage computes its loss in `last_step` and scores evaluation batches in `evaluate_last`. `update_after_forward`,
`receive_target` and `train_last` are the same steps with the optimiser step included, for a plain loop.

Losses are summed over the batch, as in the reference, so a synthesizer learns the per-example gradient whatever
the batch size. Nothing here waits for the device: results stay tensors (`EvalResult.score`) until the message
that carries them is copied to the host, and the synthesizer's loss is read only when asked.
"""
from __future__ import annotations

import functools
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dni.schedule import StageSchedule
from dni.spec import Mode, OptimizerSpec
from dni.workers.interfaces.backward import BackwardInterface, Prediction
from dni.workers.stage.blocks import WHOLE, Block, Feedforward, Span
from dni.workers.stage.graphs import GraphedCall, Unconditioned
from dni.workers.build.contracts import Shape
from dni.workers.stage.losses import Loss, LossFunction, per_example_losses, resolve_loss
from dni.workers.stage.optimizers import Trained
from dni.workers.interfaces.stash import WeightStash
from dni.workers.stage.timing import Timeline

__all__ = ["EvalResult", "LastStageResult", "Pending", "StageCompute", "score_meta"]


@dataclass
class Pending:
    """What a stage keeps of a batch until its target arrives."""
    x: Optional[torch.Tensor]
    h: torch.Tensor
    condition: Optional[torch.Tensor]
    step: int
    span: Span
    prediction: Optional[Prediction] = None


@dataclass(frozen=True)
class EvalResult:
    """What the last stage reports of a batch: its per-example losses, outputs and labels, and the examples'
    weights (a sequence's mask; None: every example counts once), scored only when the report is made, after the
    stage above has its target."""
    losses: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    loss: Loss
    weight: Optional[torch.Tensor]

    @functools.cached_property
    def score(self) -> torch.Tensor:
        """(summed loss, right examples[, examples]) as float64 on the stage's device."""
        right = self.loss.right(self.logits, self.labels)
        if self.weight is None:
            return torch.stack([self.losses.sum().double(), right.sum().double()])
        return torch.stack([(self.losses * self.weight).sum().double(), (right.to(self.weight.dtype) * self.weight).sum().double(),
                            self.weight.sum().double()])

    @property
    def count(self) -> Optional[int]:
        """The examples scored, when known without the device (no weights)."""
        return len(self.losses) if self.weight is None else None


def score_meta(score: np.ndarray, count: Optional[int]) -> dict[str, Any]:
    """A result message's metadata from its score once on the host."""
    return {"loss_sum": float(score[0]), "correct": int(score[1]), "count": count if count is not None else int(score[2])}


@dataclass(frozen=True)
class LastStageResult(EvalResult):
    """A training batch's result, and the target for the stage above (None when it takes none)."""
    upstream: Optional[torch.Tensor] = None


class StageCompute:
    """One stage's DNI arithmetic: its block, its synthesizer (a `BackwardInterface`) and their optimisers, in one mode.

    `module` is an `nn.Module` (a feed-forward stage) or a block; `synthesizer` is None for the last stage and in
    the modes without one; `first` spares the gradient w.r.t. the data; `loss` (a name in `dni.workers.stage.losses`, or
    such a callable) makes it the last stage; `num_classes` sizes the one-hot condition of `cdni`; `window` bounds
    the batches that await their target (the locked mode holds one).
    """

    def __init__(self, module: Union[nn.Module, Block], synthesizer: Optional[nn.Module] = None, *, mode: Mode,
                 optimizer: Optional[OptimizerSpec] = None, first: bool = False,
                 loss: Union[str, Loss, LossFunction, None] = None, num_classes: Optional[int] = None, window: int = 1,
                 cuda_graphs: bool = True, timeline: Optional[Timeline] = None, name: str = "stage") -> None:
        if mode.conditioned and num_classes is None:
            raise ValueError(f"{name}: {mode.value} conditions the synthesizer on the label and needs num_classes")
        if mode.uses_synthesizer and synthesizer is None and loss is None:
            raise ValueError(f"{name}: a hidden stage in {mode.value} needs a synthesizer")
        optimizer = optimizer or OptimizerSpec()
        self.name, self.mode = name, mode
        self.time = timeline or Timeline()
        self.block: Block = _block(module, cuda_graphs, name)
        self.module = self.block.module
        self.trained = Trained(self.module, optimizer)
        self.module_optimizer, self.module_step = self.trained.optimizer, self.trained.stepper
        self.loss = _loss(loss)
        self.num_classes = num_classes or 0  # only cdni's condition uses it
        self.interface = self._interface(synthesizer, optimizer, window, cuda_graphs) if synthesizer is not None else None
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.steps = 0
        self.staleness: Counter[int] = Counter()
        self._update_due = False
        self.learns = mode.hidden_stages_learn
        self.needs_input_grad = not first and mode.input_gradient
        self.schedule = StageSchedule(window, mode.locked)

    def _interface(self, synthesizer: nn.Module, optimizer: OptimizerSpec, window: int,
                   cuda_graphs: bool) -> BackwardInterface:
        window = 1 if self.mode.locked else window
        graphed = None
        if isinstance(self.block, Feedforward) and self.block.graphed is not None and window == 1 \
                and not self.mode.synthetic_loss:  # a graph holds one prediction at a time (workers/stage/graphs.py)
            graphed = GraphedCall(synthesizer if self.mode.conditioned else Unconditioned(synthesizer),
                                  f"{self.name}, synthesizer")
        return BackwardInterface(synthesizer, mode=self.mode, optimizer=optimizer, window=window, timeline=self.time,
                                 over_steps=self.block.over_steps, graphed=graphed)

    @property
    def synthesizer(self) -> Optional[nn.Module]:
        return self.interface.synthesizer if self.interface is not None else None

    @property
    def stash(self) -> Optional[WeightStash]:
        return self.interface.stash if self.interface is not None else None

    @property
    def synthesizer_loss(self) -> float:
        """The latest loss of this stage's synthesizers (read from the device only when asked)."""
        loss = self.interface.loss if self.interface is not None else self.block.synthesizer_loss
        return float(loss) if loss is not None else 0.0

    @property
    def in_flight(self) -> int:
        """Batches that await their target."""
        return len(self.pending)

    def awaits_target(self, batch: int) -> bool:
        return batch in self.pending

    def expected_target_shape(self, batch: int) -> Shape:
        """The shape of the target batch `batch` awaits: a loss per example (sl) or a gradient of the output."""
        h = self.pending[batch].h
        return (h.shape[0], 1) if self.mode.synthetic_loss else tuple(h.shape)

    def forward(self, batch: int, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span = WHOLE) -> torch.Tensor:
        """A hidden stage's training forward pass; returns the activation for downstream."""
        self.steps += 1
        if not self.learns:
            with torch.no_grad():
                h = self.block.forward(x, labels, span)
            self.time.lap("forward")
            return h
        x.requires_grad_(self.needs_input_grad)
        h = self.block.forward(x, labels, span)
        condition = F.one_hot(labels, self.num_classes).float() if self.mode.conditioned and labels is not None else None
        self.pending[batch] = Pending(x, h, condition, self.steps, span)
        self.time.lap("forward")
        return h.detach()

    def update_after_forward(self, batch: int) -> Optional[torch.Tensor]:
        """Update-unlocked step: follow the synthesizer now. Returns the upstream target."""
        upstream = self.follow_synthesizer(batch)
        self.apply_update()
        return upstream

    def follow_synthesizer(self, batch: int) -> Optional[torch.Tensor]:
        """The synthetic half of `update_after_forward`: gradients from the synthesizer's prediction, and the
        upstream target, which can travel before `apply_update` steps the module."""
        if self.interface is None:
            return None
        pending = self.pending[batch]
        upstream: Optional[torch.Tensor]
        if self.mode.synthetic_loss:
            upstream = self._follow_synthetic_loss(self.interface, pending)
        else:
            upstream = self._follow_synthetic_gradient(self.interface, pending)
        self.time.lap("synthetic")
        self._update_due = True
        pending.x, pending.h = None, pending.h.detach()  # the prediction keeps what its own graph needs
        return upstream

    def apply_update(self) -> None:
        """The module's optimiser step for the gradients the last call left, if it left any."""
        if self._update_due:
            self._update_due = False
            self.module_step.step()
            self.time.lap("optimizer")

    def _follow_synthetic_gradient(self, interface: BackwardInterface, pending: Pending) -> Optional[torch.Tensor]:
        pending.prediction = interface.predict(pending.h.detach(), pending.condition)
        self.module_step.zero_grad()
        self.block.backward(pending.h, pending.prediction.value.detach(), pending.span)
        return self._input_gradient(pending)

    def _follow_synthetic_loss(self, interface: BackwardInterface, pending: Pending) -> torch.Tensor:
        pending.prediction = predicted = interface.predict(pending.h, pending.condition)
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        for parameter, grad in zip(parameters, torch.autograd.grad(predicted.value.sum(), parameters, retain_graph=True)):
            parameter.grad = grad
        return predicted.value.detach()

    def receive_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The true target for a batch came back. Returns what goes upstream, if anything."""
        upstream = self.take_target(batch, target)
        self.apply_update()
        return upstream

    def take_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """`receive_target` but for the module's optimiser step (`apply_update`), so the upstream gradient of a
        locked stage can travel first."""
        pending = self.pending.pop(batch)
        if self.interface is None:
            return self._backpropagate(pending, target)
        assert pending.prediction is not None, "a synthetic stage predicts as it follows"
        self.staleness[self.steps - pending.step] += 1
        self.interface.learn(pending.prediction, target)
        return None

    def _backpropagate(self, pending: Pending, gradient: torch.Tensor) -> Optional[torch.Tensor]:
        self.module_step.zero_grad()
        self.block.backward(pending.h, gradient, pending.span)
        self.time.lap("backward")
        self._update_due = True
        return self._input_gradient(pending)

    def _input_gradient(self, pending: Pending) -> Optional[torch.Tensor]:
        return pending.x.grad if self.needs_input_grad and pending.x is not None else None

    def train_last(self, x: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   span: Span = WHOLE) -> LastStageResult:
        """The last stage: real loss, its own update, and the target for the stage above."""
        result = self.last_step(x, labels, mask, span)
        self.apply_update()
        return result

    def last_step(self, x: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  span: Span = WHOLE) -> LastStageResult:
        """`train_last` but for the optimiser step (`apply_update`), so the result and target can travel first.
        `mask` weighs the examples (a sequence's steps); the gradient is that of the weighted sum."""
        self.steps += 1
        x.requires_grad_(self.needs_input_grad)
        logits = self.block.forward(x, labels, span)
        scored = self._scored(logits, labels, mask)
        self.time.lap("forward")
        self.module_step.zero_grad()
        weighted = scored.losses if scored.weight is None else scored.losses * scored.weight
        weighted.sum().backward()
        self.time.lap("backward")
        self._update_due = True
        upstream = None
        if self.mode.synthetic_loss:
            upstream = scored.losses.detach()[:, None]
        elif self.needs_input_grad:
            upstream = x.grad
        return LastStageResult(scored.losses.detach(), scored.logits.detach(), scored.labels, scored.loss, scored.weight,
                               upstream)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span = WHOLE) -> torch.Tensor:
        """The stage's output in eval mode (a hidden stage's evaluation: the output goes downstream)."""
        output = self.block.evaluate(x, labels, span)
        self.time.lap("forward")
        return output

    @torch.no_grad()
    def evaluate_last(self, x: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                      span: Span = WHOLE) -> EvalResult:
        """The last stage's evaluation of a batch with the job's loss."""
        return self._scored(self.evaluate(x, labels, span), labels, mask)

    def _scored(self, logits: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor]) -> EvalResult:
        """Per-example losses, right examples counted when scored; a per-step output's B x T steps are its examples,
        weighed by `mask`."""
        if self.loss is None:
            raise RuntimeError(f"{self.name} is not the last stage and has no loss")
        if self.block.over_steps:
            logits, labels = logits.flatten(0, 1), labels.flatten(0, 1)
        weight = mask.flatten() if mask is not None else None
        return EvalResult(per_example_losses(self.loss, logits, labels), logits, labels, self.loss, weight)

    def checkpoint_state(self) -> dict[str, Any]:
        """Every trained part under its own name and the step count: what `dni.workers.stage.checkpoint` saves."""
        state: dict[str, Any] = {**self.trained.checkpoint_state("module"), "steps": self.steps,
                                 **self.block.checkpoint_state()}
        if self.interface is not None:
            state.update(self.interface.checkpoint_state())
        return state

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        """The weights replaced from a checkpoint: no stashed copy of the old ones may be used again."""
        self.trained.restore_checkpoint("module", state)
        self.block.restore_checkpoint(state)
        if self.interface is not None:
            self.interface.restore_checkpoint(state)
        self.steps = int(state["steps"])

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight, named by the part that holds it."""
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        state.update(self.block.weights())
        if self.interface is not None:
            state.update(self.interface.weights())
        return state


def _block(module: Union[nn.Module, Block], cuda_graphs: bool, name: str) -> Block:
    """A module becomes a feed-forward block, graphed on a CUDA device (workers/stage/graphs.py)."""
    if not isinstance(module, nn.Module):
        return module
    parameters = list(module.parameters())
    graphed = GraphedCall(module, name) if cuda_graphs and parameters and parameters[0].is_cuda else None
    return Feedforward(module, graphed)


def _loss(loss: Union[str, Loss, LossFunction, None]) -> Optional[Loss]:
    if loss is None or isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        return resolve_loss(loss)
    return Loss(getattr(loss, "__name__", "loss"), loss)
