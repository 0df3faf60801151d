"""One stage's training arithmetic in every mode; no sockets here.

`StageCompute` is built from a module (or a block: `dni.workers.stage.blocks`), a synthesizer per output edge and a
mode, so a plain training loop can step stages one after another (docs/api.md shows one); a worker builds it from
its assignment (`dni.workers.build.builder.build_stage`). Feed-forward layers, a sequence job's recurrent cores and
its per-step readout are all this one stage around a different block.

A stage of a graph (`dni.graph`) takes several inputs, joined inside its autograd graph so that each gets its own
gradient back, and feeds several stages, each output edge with its own `BackwardInterface`: it follows the sum of
their predictions, and each learns from the target its own consumer returns; locked, it goes backward once every
edge's target is in, with their sum. A module sends one output along every edge, or returns a tuple of one per
edge (a stage cut from a model, `dni.workers.build.model_piece`), each edge then with its own prediction and
target. A chain's stage is the case of one edge each way.

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
import operator
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dni.graph import DATA
from dni.schedule import StageSchedule
from dni.spec import Mode, OptimizerSpec
from dni.workers.interfaces.backward import BackwardInterface, Prediction
from dni.workers.stage.blocks import WHOLE, Block, Feedforward, Outputs, Span
from dni.workers.stage.graphs import GraphedCall, Unconditioned
from dni.workers.build.contracts import Shape
from dni.workers.stage.losses import Loss, LossFunction, per_example_losses, resolve_loss
from dni.workers.stage.optimizers import Trained
from dni.workers.interfaces.stash import WeightStash
from dni.workers.stage.timing import Timeline

__all__ = ["EvalResult", "Inputs", "LastStageResult", "Outputs", "Pending", "StageCompute", "Upstream", "only_input",
           "only_output", "score_meta"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]  # a stage's input, or its inputs in the order of its edges


Upstream = Union[torch.Tensor, tuple[Optional[torch.Tensor], ...], None]  # one input's target, or each input's


@dataclass
class Pending:
    """What a stage keeps of a batch until every output edge's target has arrived: its inputs (their gradients
    are what goes back), its output (or one per edge), and per output edge the prediction it followed and the
    target that came."""
    xs: tuple[Optional[torch.Tensor], ...]
    h: Outputs
    condition: Optional[torch.Tensor]
    step: int
    span: Span
    predictions: list[Optional[Prediction]]
    targets: list[Optional[torch.Tensor]]

    def awaits(self, edge: int) -> bool:
        return self.targets[edge] is None

    def output(self, edge: int) -> torch.Tensor:
        """What edge `edge` carries."""
        return self.h[edge] if isinstance(self.h, tuple) else self.h

    @property
    def complete(self) -> bool:
        return all(target is not None for target in self.targets)


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
    """A training batch's result, and the targets for the stages above (None when they take none)."""
    upstream: Upstream = None


class StageCompute:
    """One stage's DNI arithmetic: its block, one `BackwardInterface` per outgoing edge and their optimisers, in one
    mode.

    `module` is an `nn.Module` (a feed-forward stage) or a block. `inputs` names the input edges, in the order the
    block takes them joined by `join` (cat or sum); an input named `data` gets no gradient, and `first` is short for
    `inputs=("data",)`. `outputs` names the output edges: a stage with several sums their targets, and holds one
    synthesizer per edge (`synthesizer` a mapping from edge names, or one module for one edge); it is None for a
    head and in the modes without one. `loss` (a name in `dni.workers.stage.losses`, or such a callable) makes it a
    head, its loss weighed by `loss_weight`; `num_classes` sizes the one-hot condition of `cdni`; `window` bounds the
    batches that await their targets (the locked mode holds one).
    """

    def __init__(self, module: Union[nn.Module, Block], synthesizer: Union[nn.Module, Mapping[str, nn.Module], None] = None,
                 *, mode: Mode, optimizer: Optional[OptimizerSpec] = None, first: bool = False,
                 inputs: Optional[Sequence[str]] = None, outputs: Optional[Sequence[str]] = None, join: str = "cat",
                 loss: Union[str, Loss, LossFunction, None] = None, loss_weight: float = 1.0,
                 num_classes: Optional[int] = None, window: int = 1, cuda_graphs: bool = True,
                 timeline: Optional[Timeline] = None, name: str = "stage") -> None:
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
        self.loss_weight = loss_weight
        self.num_classes = num_classes or 0  # only cdni's condition uses it
        self.inputs = tuple(inputs or ((DATA,) if first else ("input",)))
        self.outputs = tuple(outputs or (synthesizer if isinstance(synthesizer, Mapping) else ("output",)))
        self.join = join
        self.interfaces = self._interfaces(synthesizer, optimizer, window, cuda_graphs)
        self.pending: OrderedDict[int, Pending] = OrderedDict()
        self.steps = 0
        self.staleness: Counter[int] = Counter()
        self._update_due = False
        self.learns = mode.hidden_stages_learn
        self.wants_gradient = tuple(mode.input_gradient and name != DATA for name in self.inputs)
        self.needs_input_grad = any(self.wants_gradient)
        self.schedule = StageSchedule(window, mode.locked)

    def _interfaces(self, synthesizer: Union[nn.Module, Mapping[str, nn.Module], None], optimizer: OptimizerSpec,
                    window: int, cuda_graphs: bool) -> tuple[BackwardInterface, ...]:
        """One interface per output edge: named `synthesizer` where there is one edge (its checkpoint keys are those
        of a chain's stage), else `synthesizer_<edge>`."""
        if synthesizer is None:
            return ()
        modules = synthesizer if isinstance(synthesizer, Mapping) else {self.outputs[0]: synthesizer}
        if list(modules) != list(self.outputs):
            raise ValueError(f"{self.name}: one synthesizer per output edge {list(self.outputs)}, got {list(modules)}")
        names = ["synthesizer"] if len(modules) == 1 else [f"synthesizer_{edge}" for edge in modules]
        return tuple(self._interface(module, optimizer, window, name) for module, name in zip(modules.values(), names))

    def _interface(self, synthesizer: nn.Module, optimizer: OptimizerSpec, window: int, name: str) -> BackwardInterface:
        window = 1 if self.mode.locked else window
        graphed = None
        if isinstance(self.block, Feedforward) and self.block.graphed is not None and window == 1 \
                and not self.mode.synthetic_loss:  # a graph holds one prediction at a time (workers/stage/graphs.py)
            graphed = GraphedCall(synthesizer if self.mode.conditioned else Unconditioned(synthesizer),
                                  f"{self.name}, {name}")
        return BackwardInterface(synthesizer, mode=self.mode, optimizer=optimizer, window=window, timeline=self.time,
                                 over_steps=self.block.over_steps, graphed=graphed, name=name)

    @property
    def interface(self) -> Optional[BackwardInterface]:
        """The synthesizer of a stage's one output edge (the first, where it has several)."""
        return self.interfaces[0] if self.interfaces else None

    @property
    def synthesizer(self) -> Optional[nn.Module]:
        return self.interface.synthesizer if self.interface is not None else None

    @property
    def stash(self) -> Optional[WeightStash]:
        return self.interface.stash if self.interface is not None else None

    @property
    def synthesizer_loss(self) -> float:
        """The latest loss of this stage's synthesizers, summed over its edges (read from the device only when asked)."""
        losses = [interface.loss for interface in self.interfaces] or [self.block.synthesizer_loss]
        return sum(float(loss) for loss in losses if loss is not None)

    def edge_metrics(self) -> dict[str, dict[str, float]]:
        """Per output edge: its synthesizer's latest regression loss and, in `sl`, the latest synthetic loss (the
        mean loss it predicts: what the rest of the graph makes of this stage's output)."""
        return {edge: interface.metrics() for edge, interface in zip(self.outputs, self.interfaces)}

    @property
    def in_flight(self) -> int:
        """Batches that await a target."""
        return len(self.pending)

    def awaits_target(self, batch: int, edge: Optional[int] = None) -> bool:
        """Whether `batch` awaits a target (along output edge `edge`, when given)."""
        pending = self.pending.get(batch)
        return pending is not None and (edge is None or pending.awaits(edge))

    def edge_index(self, edge: Union[int, str]) -> int:
        return edge if isinstance(edge, int) else self.outputs.index(edge)

    def expected_target_shape(self, batch: int, edge: int = 0) -> Shape:
        """The shape of the target batch `batch` awaits along `edge`: a loss per example (sl) or a gradient of what
        the edge carries."""
        h = self.pending[batch].output(edge)
        return (h.shape[0], 1) if self.mode.synthetic_loss else tuple(h.shape)

    def forward(self, batch: int, x: Inputs, labels: Optional[torch.Tensor], span: Span = WHOLE) -> Outputs:
        """A hidden stage's training forward pass on its input (or its inputs, in `inputs` order); returns the
        activation for its output edges (a tuple of one per edge where the module makes one per edge)."""
        self.steps += 1
        xs = _as_inputs(x)
        if not self.learns:
            with torch.no_grad():
                h = self._per_edge(self.block.forward(self._joined(xs), labels, span))
            self.time.lap("forward")
            return h
        for part, wants in zip(xs, self.wants_gradient):
            part.requires_grad_(wants)
        h = self._per_edge(self.block.forward(self._joined(xs), labels, span))
        condition = F.one_hot(labels, self.num_classes).float() if self.mode.conditioned and labels is not None else None
        edges = len(self.outputs)
        self.pending[batch] = Pending(xs, h, condition, self.steps, span, [None] * edges, [None] * edges)
        self.time.lap("forward")
        return _detached(h)

    def _per_edge(self, h: Outputs) -> Outputs:
        if isinstance(h, tuple) and len(h) != len(self.outputs):
            raise ValueError(f"{self.name}: the module returns {len(h)} outputs for {len(self.outputs)} output edges "
                             f"{list(self.outputs)}")
        return h

    def _joined(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The inputs as the block takes them: one as it is; several concatenated along their first per-example
        dimension, or summed (`dni.graph.join_shape`)."""
        if len(xs) == 1:
            return xs[0]
        if self.join == "sum":
            return functools.reduce(operator.add, xs)
        return torch.cat(xs, dim=2 if self.block.over_steps else 1)

    def update_after_forward(self, batch: int) -> Upstream:
        """Update-unlocked step: follow the synthesizer now. Returns the upstream target."""
        upstream = self.follow_synthesizer(batch)
        self.apply_update()
        return upstream

    def follow_synthesizer(self, batch: int) -> Upstream:
        """The synthetic half of `update_after_forward`: gradients from the sum of the synthesizers' predictions (one
        per output edge), and the upstream targets, which can travel before `apply_update` steps the module."""
        if not self.interfaces:
            return None
        pending = self.pending[batch]
        upstream: Upstream
        if self.mode.synthetic_loss:
            upstream = self._follow_synthetic_loss(pending)
        else:
            upstream = self._follow_synthetic_gradient(pending)
        self.time.lap("synthetic")
        self._update_due = True
        pending.xs, pending.h = (), _detached(pending.h)  # the predictions keep what their own graphs need
        return upstream

    def apply_update(self) -> None:
        """The module's optimiser step for the gradients the last call left, if it left any."""
        if self._update_due:
            self._update_due = False
            self.module_step.step()
            self.time.lap("optimizer")

    def _follow_synthetic_gradient(self, pending: Pending) -> Upstream:
        predictions = [interface.predict(pending.output(edge).detach(), pending.condition)
                       for edge, interface in enumerate(self.interfaces)]
        pending.predictions = list(predictions)
        self.module_step.zero_grad()
        self._backward(pending, [prediction.value.detach() for prediction in predictions])
        return self._input_gradients(pending)

    def _backward(self, pending: Pending, gradients: list[torch.Tensor]) -> None:
        """Gradients into the block from each edge's: their sum, where every edge carries the one output."""
        if isinstance(pending.h, tuple):
            self.block.backward(pending.h, tuple(gradients), pending.span)
        else:
            self.block.backward(pending.h, _summed(gradients), pending.span)

    def _follow_synthetic_loss(self, pending: Pending) -> Upstream:
        predictions = [interface.predict(pending.output(edge), pending.condition)
                       for edge, interface in enumerate(self.interfaces)]
        pending.predictions = list(predictions)
        predicted = _summed([prediction.value for prediction in predictions])
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        for parameter, grad in zip(parameters, torch.autograd.grad(predicted.sum(), parameters, retain_graph=True)):
            parameter.grad = grad
        return self._to_inputs(predicted.detach())

    def receive_target(self, batch: int, target: torch.Tensor, edge: Union[int, str] = 0) -> Upstream:
        """The true target for a batch came back along an output edge. Returns what goes upstream, if anything."""
        upstream = self.take_target(batch, target, edge)
        self.apply_update()
        return upstream

    def take_target(self, batch: int, target: torch.Tensor, edge: Union[int, str] = 0) -> Upstream:
        """`receive_target` but for the module's optimiser step (`apply_update`), so the upstream gradient of a
        locked stage can travel first. A locked stage goes backward once every output edge's target is in, with
        their sum; an unlocked one's edge synthesizer learns from its own at once."""
        index = self.edge_index(edge)
        pending = self.pending[batch]
        pending.targets[index] = target
        if pending.complete:
            del self.pending[batch]
        if not self.interfaces:
            return self._backpropagate(pending) if pending.complete else None
        prediction = pending.predictions[index]
        assert prediction is not None, "a synthetic stage predicts as it follows"
        pending.predictions[index] = None
        self.staleness[self.steps - pending.step] += 1
        self.interfaces[index].learn(prediction, target)
        return None

    def _backpropagate(self, pending: Pending) -> Upstream:
        self.module_step.zero_grad()
        self._backward(pending, [target for target in pending.targets if target is not None])
        self.time.lap("backward")
        self._update_due = True
        return self._input_gradients(pending)

    def _input_gradients(self, pending: Pending) -> Upstream:
        """What goes back along each input edge: its gradient (None for the data, or where none is sent)."""
        grads = tuple(x.grad if wants and x is not None else None for x, wants in zip(pending.xs, self.wants_gradient))
        return grads[0] if len(grads) == 1 else grads

    def _to_inputs(self, target: torch.Tensor) -> Upstream:
        """One target for every input edge (a synthetic loss: the same for each)."""
        return target if len(self.inputs) == 1 else tuple(target for _ in self.inputs)

    def train_last(self, x: Inputs, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   span: Span = WHOLE) -> LastStageResult:
        """The last stage: real loss, its own update, and the target for the stage above."""
        result = self.last_step(x, labels, mask, span)
        self.apply_update()
        return result

    def last_step(self, x: Inputs, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  span: Span = WHOLE) -> LastStageResult:
        """`train_last` but for the optimiser step (`apply_update`), so the result and target can travel first.
        `mask` weighs the examples (a sequence's steps); the gradient is that of the weighted sum, times the head's
        `loss_weight`."""
        self.steps += 1
        xs = _as_inputs(x)
        for part, wants in zip(xs, self.wants_gradient):
            part.requires_grad_(wants)
        logits = self.block.forward(self._joined(xs), labels, span)
        scored = self._scored(logits, labels, mask)
        self.time.lap("forward")
        self.module_step.zero_grad()
        weighted = scored.losses if scored.weight is None else scored.losses * scored.weight
        total = weighted.sum()
        (total * self.loss_weight if self.loss_weight != 1.0 else total).backward()
        self.time.lap("backward")
        self._update_due = True
        upstream: Upstream = None
        if self.mode.synthetic_loss:
            upstream = self._to_inputs(scored.losses.detach()[:, None] * self.loss_weight)
        elif self.needs_input_grad:
            upstream = self._input_gradients(Pending(xs, logits, None, 0, span, [], []))
        return LastStageResult(scored.losses.detach(), scored.logits.detach(), scored.labels, scored.loss, scored.weight,
                               upstream)

    @torch.no_grad()
    def evaluate(self, x: Inputs, labels: Optional[torch.Tensor], span: Span = WHOLE) -> Outputs:
        """The stage's output in eval mode (a hidden stage's evaluation: the output goes downstream)."""
        output = self._per_edge(self.block.evaluate(self._joined(_as_inputs(x)), labels, span))
        self.time.lap("forward")
        return output

    @torch.no_grad()
    def evaluate_last(self, x: Inputs, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                      span: Span = WHOLE) -> EvalResult:
        """The last stage's evaluation of a batch with the job's loss."""
        logits = self.evaluate(x, labels, span)
        assert isinstance(logits, torch.Tensor), "a head outputs one tensor"
        return self._scored(logits, labels, mask)

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
        for interface in self.interfaces:
            state.update(interface.checkpoint_state())
        return state

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        """The weights replaced from a checkpoint: no stashed copy of the old ones may be used again."""
        self.trained.restore_checkpoint("module", state)
        self.block.restore_checkpoint(state)
        for interface in self.interfaces:
            interface.restore_checkpoint(state)
        self.steps = int(state["steps"])

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight, named by the part that holds it."""
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        state.update(self.block.weights())
        for interface in self.interfaces:
            state.update(interface.weights())
        return state


def only_input(upstream: Upstream) -> Optional[torch.Tensor]:
    """The target of a stage that has one input (a chain's)."""
    assert not isinstance(upstream, tuple), "a stage of several inputs returns a target per input"
    return upstream


def only_output(h: Outputs) -> torch.Tensor:
    """The output of a stage whose module makes one (a chain's)."""
    assert isinstance(h, torch.Tensor), "a module of one output per edge returns a tuple"
    return h


def _as_inputs(x: Inputs) -> tuple[torch.Tensor, ...]:
    """The inputs as this stage's own leaves: one tensor that feeds two stages in one process must not gather both
    stages' gradients in one `.grad`."""
    return (x.detach(),) if isinstance(x, torch.Tensor) else tuple(part.detach() for part in x)


def _detached(h: Outputs) -> Outputs:
    return tuple(part.detach() for part in h) if isinstance(h, tuple) else h.detach()


def _summed(tensors: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """The sum in edge order (a fixed order: float addition of three or more is not associative)."""
    present = [tensor for tensor in tensors if tensor is not None]
    return functools.reduce(operator.add, present)


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
