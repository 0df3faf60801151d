"""One stage's training arithmetic in every mode; no sockets here.

`StageCompute` is built from a module, a synthesizer and a mode, so a plain
training loop can step stages one after another (docs/api.md shows one); a
worker builds it from its assignment (`StageCompute.assigned`).

The worker calls `forward` when a batch arrives, sends the activation
downstream, then calls `update_after_forward` (the update-unlocked step of the
synthetic modes); when a target comes back it calls `receive_target`. Each call
returns what must travel upstream, if anything: the gradient w.r.t. the stage's
input for backprop and synthetic gradients, the stage's own loss prediction for
synthetic loss. The last stage does all of it at once in `train_last`, and
scores evaluation batches with `evaluate_last`, both with its loss
(`dni.workers.losses`), so the loss lives here and nowhere in the transport.

Losses are summed over the batch, as in the reference, so a synthesizer learns
the per-example gradient whatever the batch size. Nothing here waits for the
device: results stay tensors (`EvalResult.score`) until the message that carries
them is copied to the host, and the synthesizer's loss is read only when asked.

The worker asks what it must check (`awaits_target`, `expected_target_shape`,
`in_flight`, `can_take_batch`) rather than reading the pending batches itself.
"""
from __future__ import annotations

import functools
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dni.schedule import StageSchedule
from dni.spec import Mode, OptimizerSpec, StageAssignment
from dni.workers.build import StageModules
from dni.workers.graphs import GraphedCall, Unconditioned
from dni.workers.interface import Shape, call_stage
from dni.workers.losses import Loss, per_example_losses, resolve_loss
from dni.workers.optimizers import Stepper, make_optimizer
from dni.workers.stash import Replica, WeightStash
from dni.workers.timing import Timeline

__all__ = ["EvalResult", "LastStageResult", "Pending", "StageCompute", "score_meta"]


@dataclass
class Pending:
    """What a stage keeps of a batch until its target arrives."""
    x: Optional[torch.Tensor]
    h: torch.Tensor
    condition: Optional[torch.Tensor]
    step: int
    prediction: Optional[torch.Tensor] = None  # the synthesizer's output, its graph kept for training
    weights: Optional[list[torch.Tensor]] = None  # the synthesizer parameters that made it (see WeightStash)
    replica: Optional[Replica] = None


@dataclass(frozen=True)
class EvalResult:
    """What the last stage reports of a batch: its per-example losses, logits and labels, scored when asked."""
    losses: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    @functools.cached_property
    def score(self) -> torch.Tensor:
        """(summed loss, correct predictions) as one float64 pair on the stage's device."""
        return torch.stack([self.losses.sum().double(), (self.logits.argmax(1) == self.labels).sum().double()])

    @property
    def count(self) -> int:
        return len(self.labels)

    @property
    def loss_sum(self) -> float:
        return float(self.score[0])

    @property
    def correct(self) -> int:
        return int(self.score[1])

    def as_meta(self) -> dict[str, Any]:
        return score_meta(self.score.cpu().numpy(), self.count)


def score_meta(score: np.ndarray, count: int) -> dict[str, Any]:
    """A result message's metadata from its score once on the host."""
    return {"loss_sum": float(score[0]), "correct": int(score[1]), "count": count}


@dataclass(frozen=True)
class LastStageResult(EvalResult):
    """A training batch's result, and the target for the stage above (None when it takes none)."""
    upstream: Optional[torch.Tensor] = None


class StageCompute:
    """One stage's DNI arithmetic: its module, its synthesizer and their optimisers, in one mode.

    `synthesizer` is None for the last stage and in the modes without one; `first` spares the gradient w.r.t. the
    data; `loss` (a name in `dni.workers.losses`, or such a callable) makes it the last stage; `num_classes` sizes
    the one-hot condition of `cdni`; `window` bounds the batches that await their target (the locked mode holds
    one). A worker builds it from its assignment (`assigned`); a plain training loop calls it directly.
    """

    def __init__(self, module: nn.Module, synthesizer: Optional[nn.Module] = None, *, mode: Mode,
                 optimizer: Optional[OptimizerSpec] = None, first: bool = False, loss: Union[str, Loss, None] = None,
                 num_classes: Optional[int] = None, window: int = 1, cuda_graphs: bool = True,
                 timeline: Optional[Timeline] = None, name: str = "stage") -> None:
        if mode.conditioned and num_classes is None:
            raise ValueError(f"{name}: {mode.value} conditions the synthesizer on the label and needs num_classes")
        if mode.uses_synthesizer and synthesizer is None and loss is None:
            raise ValueError(f"{name}: a hidden stage in {mode.value} needs a synthesizer")
        optimizer = optimizer or OptimizerSpec()
        self.name = name
        self.mode = mode
        self.module = module
        self.synthesizer = synthesizer
        self.num_classes = num_classes or 0  # only cdni's condition uses it
        self.time = timeline or Timeline()
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "loss")
        self.loss: Optional[Loss] = resolve_loss(loss) if isinstance(loss, str) else loss
        self.module_optimizer = make_optimizer(optimizer, self.module.parameters())
        self.synthesizer_optimizer = make_optimizer(optimizer, self.synthesizer.parameters()) if self.synthesizer else None
        self.module_step = Stepper(self.module_optimizer)
        self.synthesizer_step = Stepper(self.synthesizer_optimizer) if self.synthesizer_optimizer else None
        self.stash = WeightStash(self.synthesizer, 1 if mode.locked else window) if self.synthesizer else None
        self.graphed_module, self.graphed_synthesizer = self._graphs(cuda_graphs)
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.steps = 0
        self.staleness: Counter[int] = Counter()
        self._synthesizer_loss: Optional[torch.Tensor] = None
        self._update_due = False
        self.learns = mode.hidden_stages_learn
        self.needs_input_grad = not first and mode.input_gradient
        self.schedule = StageSchedule(window, mode.locked)

    @classmethod
    def assigned(cls, config: StageAssignment, modules: StageModules, timeline: Timeline) -> "StageCompute":
        """The stage a worker serves for `config`, its modules built from it (`dni.workers.build`)."""
        return cls(modules.module, modules.synthesizer, mode=config.mode, optimizer=config.optimizer,
                   first=config.is_first, loss=config.loss if config.is_last else None, num_classes=config.num_classes,
                   window=config.window, cuda_graphs=config.cuda_graphs, timeline=timeline,
                   name=f"stage {config.index} ({config.spec.kind})")

    def _graphs(self, enabled: bool) -> tuple[Optional[GraphedCall], Optional[GraphedCall]]:
        """CUDA graphs for the module, and for the synthesizer where a window of one batch allows (workers/graphs.py)."""
        parameters = list(self.module.parameters())
        if not (enabled and parameters and parameters[0].is_cuda):
            return None, None
        module = GraphedCall(self.module, self.name)
        if self.synthesizer is None or self.stash is None or self.stash.copies or self.mode.synthetic_loss:
            return module, None
        synthesizer = self.synthesizer if self.mode.conditioned else Unconditioned(self.synthesizer)
        return module, GraphedCall(synthesizer, f"{self.name}, synthesizer")

    def _run_module(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.graphed_module is None:
            return call_stage(self.module, x, labels)
        return self.graphed_module(x, labels) if getattr(self.module, "wants_labels", False) else self.graphed_module(x)

    @property
    def synthesizer_loss(self) -> float:
        """The latest synthesizer loss (read from the device only when asked)."""
        return float(self._synthesizer_loss) if self._synthesizer_loss is not None else 0.0

    def can_take_batch(self) -> bool:
        return len(self.pending) < self.schedule.capacity

    @property
    def in_flight(self) -> int:
        """Batches that await their target."""
        return len(self.pending)

    def awaits_target(self, batch: int) -> bool:
        return batch in self.pending

    def expected_target_shape(self, batch: int) -> Shape:
        """The shape of the target batch `batch` awaits: a loss per example (sl) or a gradient of the output."""
        h = self.pending[batch].h
        return (h.shape[0], 1) if self.mode.synthetic_loss else h.shape

    def forward(self, batch: int, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A hidden stage's training forward pass; returns the activation for downstream."""
        self.steps += 1
        if not self.learns:
            with torch.no_grad():
                h = call_stage(self.module, x, labels)
            self.time.lap("forward")
            return h
        x.requires_grad_(self.needs_input_grad)
        h = self._run_module(x, labels)
        condition = F.one_hot(labels, self.num_classes).float() if self.mode.conditioned else None
        self.pending[batch] = Pending(x, h, condition, self.steps)
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
        if not self.mode.uses_synthesizer:
            return None
        pending = self.pending[batch]
        upstream: Optional[torch.Tensor]
        if self.mode.synthetic_loss:
            upstream = self._follow_synthetic_loss(pending)
        else:
            upstream = self._follow_synthetic_gradient(pending)
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

    def _predict(self, pending: Pending, h: torch.Tensor) -> torch.Tensor:
        """The synthesizer's prediction, its graph kept against the weights that made it (see WeightStash).

        When the target arrives the synthesizer learns from this very prediction
        without a second forward pass, even though its weights may have moved
        since (weight stashing, as in PipeDream). With a window of one batch the
        weights are the live ones and this is the reference's update.
        """
        assert self.stash is not None, "only a stage with a synthesizer predicts"
        module, pending.weights, pending.replica = self.stash.acquire()
        if self.graphed_synthesizer is not None:
            prediction = self.graphed_synthesizer(h, cast(torch.Tensor, pending.condition)) if self.mode.conditioned \
                else self.graphed_synthesizer(h)
        else:
            prediction = module(h, pending.condition)
        pending.prediction = prediction.square() if self.mode.synthetic_loss else prediction
        return pending.prediction

    def _follow_synthetic_gradient(self, pending: Pending) -> Optional[torch.Tensor]:
        predicted = self._predict(pending, pending.h.detach())
        self.module_step.zero_grad()
        pending.h.backward(predicted.detach())
        return pending.x.grad if self.needs_input_grad and pending.x is not None else None

    def _follow_synthetic_loss(self, pending: Pending) -> torch.Tensor:
        predicted = self._predict(pending, pending.h)
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        for parameter, grad in zip(parameters, torch.autograd.grad(predicted.sum(), parameters, retain_graph=True)):
            parameter.grad = grad
        return predicted.detach()

    def receive_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The true target for a batch came back. Returns what goes upstream, if anything."""
        upstream = self.take_target(batch, target)
        self.apply_update()
        return upstream

    def take_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """`receive_target` but for the module's optimiser step (`apply_update`), so the upstream gradient of a
        locked stage can travel first."""
        pending = self.pending.pop(batch)
        if self.mode.locked:
            return self._backpropagate(pending, target)
        self.staleness[self.steps - pending.step] += 1
        stash, step = self.stash, self.synthesizer_step
        assert stash is not None and step is not None and pending.prediction is not None and pending.weights is not None
        loss = F.mse_loss(pending.prediction, target)
        grads = torch.autograd.grad(loss, pending.weights)
        stash.release(pending.replica)
        for parameter, grad in zip(stash.live_parameters, grads):
            parameter.grad = grad
        self.time.lap("synthesizer")
        step.step()
        stash.changed()
        self.time.lap("optimizer")
        self._synthesizer_loss = loss.detach()
        return None

    def _backpropagate(self, pending: Pending, gradient: torch.Tensor) -> Optional[torch.Tensor]:
        self.module_step.zero_grad()
        pending.h.backward(gradient)
        self.time.lap("backward")
        self._update_due = True
        return pending.x.grad if self.needs_input_grad and pending.x is not None else None

    def train_last(self, x: torch.Tensor, labels: torch.Tensor) -> LastStageResult:
        """The last stage: real loss, its own update, and the target for the stage above."""
        result = self.last_step(x, labels)
        self.apply_update()
        return result

    def last_step(self, x: torch.Tensor, labels: torch.Tensor) -> LastStageResult:
        """`train_last` but for the optimiser step (`apply_update`), so the result and target can travel first."""
        self.steps += 1
        x.requires_grad_(self.needs_input_grad)
        logits = self._run_module(x, labels)
        losses = self._losses(logits, labels)
        self.time.lap("forward")
        self.module_step.zero_grad()
        losses.sum().backward()
        self.time.lap("backward")
        self._update_due = True
        upstream = None
        if self.mode.synthetic_loss:
            upstream = losses.detach()[:, None]
        elif self.needs_input_grad:
            upstream = x.grad
        return LastStageResult(losses.detach(), logits.detach(), labels, upstream)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The stage's output in eval mode (a hidden stage's evaluation: the output goes downstream)."""
        self.module.eval()
        try:
            return call_stage(self.module, x, labels)
        finally:
            self.module.train()
            self.time.lap("forward")

    @torch.no_grad()
    def evaluate_last(self, x: torch.Tensor, labels: torch.Tensor) -> EvalResult:
        """The last stage's evaluation of a batch with the job's loss."""
        logits = self.evaluate(x, labels)
        result = EvalResult(self._losses(logits, labels), logits, labels)
        self.time.lap("forward")
        return result

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            raise RuntimeError(f"{self.name} is not the last stage and has no loss")
        return per_example_losses(self.loss, self.loss_name, logits, labels)

    def checkpoint_state(self) -> dict[str, Any]:
        """Module, synthesizer, both optimisers and the step count: what `dni.workers.checkpoint` saves."""
        state: dict[str, Any] = {"module": self.module.state_dict(), "module_optimizer": self.module_optimizer.state_dict(),
                                 "steps": self.steps}
        if self.synthesizer is not None and self.synthesizer_optimizer is not None:  # one comes with the other
            state["synthesizer"] = self.synthesizer.state_dict()
            state["synthesizer_optimizer"] = self.synthesizer_optimizer.state_dict()
        return state

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        """The weights replaced from a checkpoint: no stashed copy of the old ones may be used again."""
        self.module.load_state_dict(state["module"])
        self.module_optimizer.load_state_dict(state["module_optimizer"])
        if self.synthesizer is not None and self.synthesizer_optimizer is not None:
            self.synthesizer.load_state_dict(state["synthesizer"])
            self.synthesizer_optimizer.load_state_dict(state["synthesizer_optimizer"])
        self.steps = int(state["steps"])
        self.module_step.refresh()
        if self.stash is not None and self.synthesizer_step is not None:
            self.stash.changed()
            self.synthesizer_step.refresh()

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        if self.synthesizer is not None:
            state.update({f"synthesizer.{k}": v for k, v in self.synthesizer.state_dict().items()})
        return state
