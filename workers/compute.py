"""One stage's training arithmetic in every mode; no sockets here.

The worker calls `forward` when a batch arrives, sends the activation
downstream, then calls `update_after_forward` (the update-unlocked step of the
synthetic modes); when a target comes back it calls `receive_target`. Each call
returns what must travel upstream, if anything: the gradient w.r.t. the stage's
input for backprop and synthetic gradients, the stage's own loss prediction for
synthetic loss. The last stage does all of it at once in `train_last`, and
scores evaluation batches with `evaluate_last`, both with the job's loss
(`dni.workers.losses`), so the loss lives here and nowhere in the transport.

Losses are summed over the batch, as in the reference, so a synthesizer learns
the per-example gradient whatever the batch size.

The worker asks what it must check (`awaits_target`, `expected_target_shape`,
`in_flight`, `can_take_batch`) rather than reading the pending batches itself.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from dni.spec import Mode
from dni.spec import OptimizerSpec, StageAssignment
from dni.workers.build import StageModules
from dni.workers.interface import Shape, call_stage
from dni.workers.losses import Loss, per_example_losses, resolve_loss
from dni.workers.timing import Timeline

__all__ = ["EvalResult", "LastStageResult", "Pending", "StageCompute", "make_optimizer"]


@dataclass
class Pending:
    """What a stage keeps of a batch until its target arrives."""
    x: Optional[torch.Tensor]
    h: torch.Tensor
    condition: Optional[torch.Tensor]
    step: int
    prediction: Optional[torch.Tensor] = None  # the synthesizer's output, its graph kept for training
    weights: Optional[dict[str, torch.Tensor]] = None  # the synthesizer weights that made it


@dataclass(frozen=True)
class EvalResult:
    """What the last stage reports of a batch: summed loss, correct predictions, examples."""
    loss_sum: float
    correct: int
    count: int

    def as_meta(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}


@dataclass(frozen=True)
class LastStageResult(EvalResult):
    """A training batch's result, and the target for the stage above (None when it takes none)."""
    upstream: Optional[torch.Tensor] = None


def make_optimizer(spec: OptimizerSpec, parameters) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(parameters, lr=spec.lr)
    return torch.optim.Adam(parameters, lr=spec.lr)


class StageCompute:
    def __init__(self, config: StageAssignment, modules: StageModules, timeline: Timeline) -> None:
        self.config = config
        self.mode = config.mode
        self.module = modules.module
        self.synthesizer = modules.synthesizer
        self.output_shape: Shape = tuple(modules.output_shape)
        self.time = timeline
        self.loss: Optional[Loss] = resolve_loss(config.loss) if config.is_last else None
        self.module_optimizer = make_optimizer(config.optimizer, self.module.parameters())
        self.synthesizer_optimizer = (
            make_optimizer(config.optimizer, self.synthesizer.parameters()) if self.synthesizer else None
        )
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.steps = 0
        self.staleness: Counter[int] = Counter()
        self.synthesizer_loss = 0.0
        self.needs_input_grad = not config.is_first and self.mode in (Mode.BACKPROP, Mode.SG, Mode.CDNI)

    def can_take_batch(self) -> bool:
        window = 1 if self.mode.locked else self.config.window
        return len(self.pending) < window

    @property
    def in_flight(self) -> int:
        """Batches that await their target."""
        return len(self.pending)

    def awaits_target(self, batch: int) -> bool:
        return batch in self.pending

    def expected_target_shape(self, batch: int) -> Shape:
        """The shape of the target batch `batch` awaits: a loss per example (sl) or a gradient of the output."""
        rows = self.pending[batch].h.shape[0]
        return (rows, *((1,) if self.mode.synthetic_loss else self.output_shape))

    def forward(self, batch: int, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A hidden stage's training forward pass; returns the activation for downstream."""
        self.steps += 1
        with self.time("forward"):
            if self.mode is Mode.NO_BPROP:
                with torch.no_grad():
                    return call_stage(self.module, x, labels)
            x.requires_grad_(self.needs_input_grad)
            h = call_stage(self.module, x, labels)
        condition = F.one_hot(labels, self.config.num_classes).float() if self.mode.conditioned else None
        self.pending[batch] = Pending(x, h, condition, self.steps)
        return h.detach()

    def update_after_forward(self, batch: int) -> Optional[torch.Tensor]:
        """Update-unlocked step: follow the synthesizer now. Returns the upstream target."""
        if not self.mode.uses_synthesizer:
            return None
        pending = self.pending[batch]
        with self.time("backward"):
            if self.mode.synthetic_loss:
                upstream = self._follow_synthetic_loss(pending)
            else:
                upstream = self._follow_synthetic_gradient(pending)
            self.module_optimizer.step()
        pending.x, pending.h = None, pending.h.detach()  # the prediction keeps what its own graph needs
        return upstream

    def _predict(self, pending: Pending, h: torch.Tensor) -> torch.Tensor:
        """The synthesizer's prediction, its graph kept against a snapshot of the weights that made it.

        When the target arrives the synthesizer learns from this very prediction
        without a second forward pass, even though its weights may have moved
        since (weight stashing, as in PipeDream). With a window of one batch the
        snapshot equals the current weights and this is the reference's update.
        """
        pending.weights = {name: p.detach().clone().requires_grad_() for name, p in self.synthesizer.named_parameters()}
        prediction = torch.func.functional_call(self.synthesizer, pending.weights, (h, pending.condition))
        pending.prediction = prediction.square() if self.mode.synthetic_loss else prediction
        return pending.prediction

    def _follow_synthetic_gradient(self, pending: Pending) -> Optional[torch.Tensor]:
        predicted = self._predict(pending, pending.h.detach())
        self.module_optimizer.zero_grad(set_to_none=True)
        pending.h.backward(predicted.detach())
        return pending.x.grad if self.needs_input_grad else None

    def _follow_synthetic_loss(self, pending: Pending) -> torch.Tensor:
        predicted = self._predict(pending, pending.h)
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        for parameter, grad in zip(parameters, torch.autograd.grad(predicted.sum(), parameters, retain_graph=True)):
            parameter.grad = grad
        return predicted.detach()

    def receive_target(self, batch: int, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The true target for a batch came back. Returns what goes upstream, if anything."""
        pending = self.pending.pop(batch)
        if self.mode.locked:
            return self._backpropagate(pending, target)
        self.staleness[self.steps - pending.step] += 1
        with self.time("synthesizer"):
            loss = F.mse_loss(pending.prediction, target)
            grads = torch.autograd.grad(loss, list(pending.weights.values()))
            for parameter, grad in zip(self.synthesizer.parameters(), grads):
                parameter.grad = grad
            self.synthesizer_optimizer.step()
        self.synthesizer_loss = loss.item()
        return None

    def _backpropagate(self, pending: Pending, gradient: torch.Tensor) -> Optional[torch.Tensor]:
        with self.time("backward"):
            self.module_optimizer.zero_grad(set_to_none=True)
            pending.h.backward(gradient)
            self.module_optimizer.step()
        return pending.x.grad if self.needs_input_grad else None

    def train_last(self, x: torch.Tensor, labels: torch.Tensor) -> LastStageResult:
        """The last stage: real loss, its own update, and the target for the stage above."""
        self.steps += 1
        with self.time("forward"):
            x.requires_grad_(self.needs_input_grad)
            logits = call_stage(self.module, x, labels)
            losses = self._losses(logits, labels)
        with self.time("backward"):
            self.module_optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.module_optimizer.step()
        upstream = None
        if self.mode.synthetic_loss:
            upstream = losses.detach()[:, None]
        elif self.needs_input_grad:
            upstream = x.grad
        correct = int((logits.argmax(1) == labels).sum())
        return LastStageResult(float(losses.detach().sum()), correct, len(labels), upstream)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The stage's output in eval mode (a hidden stage's evaluation: the output goes downstream)."""
        with self.time("forward"):
            self.module.eval()
            try:
                return call_stage(self.module, x, labels)
            finally:
                self.module.train()

    @torch.no_grad()
    def evaluate_last(self, x: torch.Tensor, labels: torch.Tensor) -> EvalResult:
        """The last stage's evaluation of a batch with the job's loss."""
        logits = self.evaluate(x, labels)
        with self.time("forward"):
            losses = self._losses(logits, labels)
        return EvalResult(float(losses.sum()), int((logits.argmax(1) == labels).sum()), len(labels))

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            raise RuntimeError(f"stage {self.config.index} is not the last stage and has no loss")
        return per_example_losses(self.loss, self.config.loss, logits, labels)

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        if self.synthesizer is not None:
            state.update({f"synthesizer.{k}": v for k, v in self.synthesizer.state_dict().items()})
        return state
