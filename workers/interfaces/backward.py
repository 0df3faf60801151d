"""The synthesizer of one outgoing edge, with its stash and its regression: dni-pytorch's `BackwardInterface`.

The paper's terms in code: a stage's output h goes along an edge to the next stage; the edge's synthesizer M
predicts delta_hat = M(h[, c]) ~ dL/dh (`sg`, `cdni` with the one-hot label c) or a per-example loss (`sl`,
squared so it is never negative). The stage follows the prediction at once (update-unlocked), and when the true
target comes back along the edge the synthesizer regresses onto it: `learn` fits the prediction that was made,
with the weights that made it (`WeightStash`), not a prediction made afresh with today's weights. That is what
update-unlocking means: the stage and its synthesizer move on while the target travels, and the synthesizer's
error is the one the stage actually followed. With a window of one batch both are the same.

A stage holds one interface per outgoing edge, so a stage with two edges, or a synthetic input, is one more
object; its checkpoint keys follow from the interface's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from dni.spec import Mode, OptimizerSpec
from dni.workers.stage.blocks import per_step
from dni.workers.stage.graphs import GraphedCall
from dni.workers.stage.optimizers import Trained
from dni.workers.interfaces.stash import Replica, WeightStash
from dni.workers.stage.timing import Timeline

__all__ = ["BackwardInterface", "Prediction"]


@dataclass
class Prediction:
    """A prediction with its graph, the synthesizer weights that made it and the replica to release."""
    value: torch.Tensor
    weights: list[torch.Tensor]
    replica: Optional[Replica]


class BackwardInterface:
    """Predicts the target of one outgoing edge and learns from the true one (see the module docstring).

    `over_steps` predicts at every step of a (B, T, ...) output; `graphed` replays the prediction as a CUDA graph.
    """

    def __init__(self, synthesizer: nn.Module, *, mode: Mode, optimizer: OptimizerSpec, window: int,
                 timeline: Timeline, over_steps: bool = False, graphed: Optional[GraphedCall] = None,
                 name: str = "synthesizer") -> None:
        self.name = name
        self.synthesizer = synthesizer
        self.trained = Trained(synthesizer, optimizer)
        self.stash = WeightStash(synthesizer, window)
        self.conditioned, self.squared, self.over_steps = mode.conditioned, mode.synthetic_loss, over_steps
        self.graphed = graphed
        self.time = timeline
        self._loss: Optional[torch.Tensor] = None
        self._predicted: Optional[torch.Tensor] = None  # sl: the latest predicted loss per example

    def predict(self, h: torch.Tensor, condition: Optional[torch.Tensor]) -> Prediction:
        """delta_hat for `h` (a loss when squared), its graph kept against the weights that made it."""
        module, weights, replica = self.stash.acquire()
        if self.graphed is not None:
            value = self.graphed(h, cast(torch.Tensor, condition)) if self.conditioned else self.graphed(h)
        elif self.over_steps:
            value = per_step(lambda features: module(features, None), h)
        else:
            value = module(h, condition)
        if self.squared:
            value = value.square()
            self._predicted = value.detach()
        return Prediction(value, weights, replica)

    def learn(self, prediction: Prediction, target: torch.Tensor) -> None:
        """The regression of the prediction made onto the true target that came back, one optimiser step."""
        loss = F.mse_loss(prediction.value, target)
        grads = torch.autograd.grad(loss, prediction.weights)
        self.stash.release(prediction.replica)
        for parameter, grad in zip(self.stash.live_parameters, grads):
            parameter.grad = grad
        self.time.lap("synthesizer")
        self.trained.stepper.step()
        self.stash.changed()
        self.time.lap("optimizer")
        self._loss = loss.detach()

    @property
    def loss(self) -> Optional[torch.Tensor]:
        """The latest regression loss, on the device."""
        return self._loss

    def metrics(self) -> dict[str, float]:
        """The latest regression loss and, in `sl`, the latest synthetic loss (the mean predicted loss per example),
        read from the device now."""
        metrics = {"synthesizer_loss": float(self._loss) if self._loss is not None else 0.0}
        if self.squared:
            metrics["synthetic_loss"] = float(self._predicted.mean()) if self._predicted is not None else 0.0
        return metrics

    def checkpoint_state(self) -> dict[str, Any]:
        return self.trained.checkpoint_state(self.name)

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        """The weights replaced: no stashed copy of the old ones may be used again."""
        self.trained.restore_checkpoint(self.name, state)
        self.stash.changed()

    def weights(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.{k}": v for k, v in self.synthesizer.state_dict().items()}
