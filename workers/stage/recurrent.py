"""A recurrent block: a core that keeps its state across chunks, trained by truncated BPTT whose truncation is
bridged by a synthetic gradient (Jaderberg et al. 2017, section 3.1); no sockets here.

A sequence arrives in chunks of T time steps. `Recurrent.forward` runs the core over one chunk from the state it
kept after the previous chunk (a zero state at a sequence's start), keeps the graph and the chunk's final state,
detached, for the next chunk; `backward` takes dL/d(outputs), the gradient w.r.t. the chunk's per-step outputs
(true, from the stage below, or synthetic, from the stage's own synthesizer), and puts the core's gradients in
place; the stage that owns the block (`dni.workers.stage.compute.StageCompute`) steps the core's optimiser, as it
steps any module's.

The paper's terms in code:

- core unrolled for T steps, truncated BPTT: `forward` starts from the kept state detached, so no gradient
  crosses a chunk boundary; `backprop` is exactly this (the paper's baseline).
- synthetic gradient at the truncation boundary, delta_hat(s) ~ dL_future/ds: `synthesizer(state_vector(s))`,
  predicted from the chunk's final state s in `backward` (`sg`) by `OverTime`.
- the update with it: one backward pass of L_chunk + discount * <s, delta_hat(s)> (prediction held constant), so
  the future's gradient reaches every step of the chunk through s.
- bootstrapped target of delta_hat for the chunk's initial state: the gradient that reaches that state in the
  same backward pass, the true gradient of this chunk's loss plus the discounted prediction at its own end;
  the previous chunk's prediction regresses onto it (`F.mse_loss`), so the synthesizer learns a discounted sum
  of all future gradients as a value function learns its return (the paper bootstraps with no discount: the
  default 1.0).
- a sequence's last chunk (`last=True`): the future holds no loss, so nothing is added at its end and
  nothing is predicted there.

A core is any `builder(input_shape, **params)` whose module has `initial_state(batch, device)` (a tuple of
(B, *) tensors), `state_size` (their summed width) and `forward(x, state) -> (outputs, final_state)` with x
(B, T, *input_shape) and outputs (B, T, *output_shape): `lstm(hidden)` and `gru(hidden)` are built in.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dni.spec import Mode, OptimizerSpec
from dni.workers.build.contracts import Shape
from dni.workers.stage.blocks import Outputs, Span
from dni.workers.stage.optimizers import Trained
from dni.workers.build.registry import UnknownBuilderError, import_callable
from dni.workers.interfaces.synthesizers import MLPSynthesizer

__all__ = ["BUILTIN_CORES", "RECURRENT_MODES", "GRUCore", "LSTMCore", "OverTime", "Recurrent", "RecurrentCore", "State",
           "bootstrapped_target", "gru", "linear_synthesizer", "lstm", "resolve_core", "state_vector"]

State = tuple[torch.Tensor, ...]
RECURRENT_MODES = (Mode.BACKPROP, Mode.SG, Mode.NO_BPROP)  # cdni's label and sl's scalar have no per-step meaning here


class RecurrentCore(Protocol):
    """What `Recurrent` needs of a core (see the module docstring)."""
    state_size: int

    def initial_state(self, batch: int, device: torch.device) -> State: ...

    def __call__(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...


class LSTMCore(nn.Module):
    """One LSTM layer; its state is (h, c), each (B, hidden). Its forget gates' bias starts `forget_bias` above
    torch's initialisation (TensorFlow's LSTM cell adds 1, so that a new cell keeps what it holds)."""

    def __init__(self, input_shape: Shape, hidden: int, forget_bias: float = 0.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_shape[-1], hidden, batch_first=True)
        with torch.no_grad():
            cast(torch.Tensor, self.lstm.bias_ih_l0)[hidden:2 * hidden] += forget_bias  # gates: input, forget, cell, output
        self.hidden, self.state_size = hidden, 2 * hidden

    def initial_state(self, batch: int, device: torch.device) -> State:
        return torch.zeros(batch, self.hidden, device=device), torch.zeros(batch, self.hidden, device=device)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        outputs, (h, c) = self.lstm(x, (h[None], c[None]))
        return outputs, (h[0], c[0])


class GRUCore(nn.Module):
    """One GRU layer; its state is (h,), (B, hidden)."""

    def __init__(self, input_shape: Shape, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_shape[-1], hidden, batch_first=True)
        self.hidden = self.state_size = hidden

    def initial_state(self, batch: int, device: torch.device) -> State:
        return (torch.zeros(batch, self.hidden, device=device),)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        outputs, h = self.gru(x, state[0][None])
        return outputs, (h[0],)


def lstm(input_shape: Shape, hidden: int, forget_bias: float = 0.0) -> LSTMCore:
    """An LSTM core of `hidden` units over per-step inputs of `input_shape` (`forget_bias`: see `LSTMCore`)."""
    return LSTMCore(input_shape, hidden, forget_bias)


def gru(input_shape: Shape, hidden: int) -> GRUCore:
    """A GRU core of `hidden` units over per-step inputs of `input_shape`."""
    return GRUCore(input_shape, hidden)


BUILTIN_CORES: dict[str, Callable[..., nn.Module]] = {"lstm": lstm, "gru": gru}


def resolve_core(name: str) -> Callable[..., nn.Module]:
    """A built-in core by name, or a plug-in by import path `package.module:callable`."""
    if ":" in name:
        return import_callable(name, "recurrent core")
    if name not in BUILTIN_CORES:
        raise UnknownBuilderError(f"unknown recurrent core {name!r}; known: {', '.join(BUILTIN_CORES)} "
                                  "(or an import path package.module:Name)")
    return BUILTIN_CORES[name]


def linear_synthesizer(state_size: int) -> nn.Module:
    """A zero-initialised linear map from the state to its gradient: the default synthesizer over time."""
    return MLPSynthesizer((state_size,), (state_size,), 0, True, layers=0)


def state_vector(state: State) -> torch.Tensor:
    """The state's tensors side by side, (B, state_size): what the synthesizer sees and predicts."""
    return torch.cat([part.flatten(1) for part in state], dim=1)


class OverTime:
    """The synthesizer over time of a recurrent block: the DNI interface at each truncation boundary.

    It predicts delta_hat(s) from a chunk's final state s with a snapshot of its weights (the live ones take a
    step on the previous prediction before this one learns), and learns when the next chunk's backward pass
    gives the bootstrapped target of that prediction.
    """

    def __init__(self, synthesizer: nn.Module, optimizer: OptimizerSpec) -> None:
        self.trained = Trained(synthesizer, optimizer)
        self.synthesizer = synthesizer
        self._names = [name for name, _ in synthesizer.named_parameters()]
        self.loss: Optional[torch.Tensor] = None  # the latest regression loss, on the device

    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = [parameter.detach().clone().requires_grad_() for parameter in self.synthesizer.parameters()]
        return functional_call(self.synthesizer, dict(zip(self._names, weights)), (features, None)), weights

    def learn(self, prediction: torch.Tensor, weights: list[torch.Tensor], target: torch.Tensor) -> None:
        """The regression of a prediction onto its bootstrapped target, one optimiser step."""
        loss = F.mse_loss(prediction, target)
        for parameter, grad in zip(self.synthesizer.parameters(), torch.autograd.grad(loss, weights)):
            parameter.grad = grad
        self.trained.stepper.step()
        self.loss = loss.detach()


class Recurrent:
    """A recurrent core over consecutive chunks, with its synthesizer over time (`sg`) or none (see the module
    docstring); a block of `dni.workers.stage.blocks`, whose stage trains the core.

    `discount` scales the synthetic gradient at the chunk's end, in the update and in the bootstrapped target.
    """
    over_steps = True

    def __init__(self, core: nn.Module, synthesizer: Optional[nn.Module] = None, *, optimizer: OptimizerSpec,
                 discount: float = 1.0) -> None:
        self.module = core
        self.initial_state = cast(RecurrentCore, core).initial_state
        self.over_time = OverTime(synthesizer, optimizer) if synthesizer is not None else None
        self.discount = discount
        self.state: Optional[State] = None  # the last chunk's final state, detached: where the next chunk starts
        self.prediction: Optional[torch.Tensor] = None  # delta_hat(state), its graph kept until its target comes
        self._weights: list[torch.Tensor] = []  # the synthesizer parameters that made it
        self._chunk: Optional[tuple[State, State]] = None  # the chunk in flight: its initial and final states
        self._eval_state: Optional[State] = None

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        """The core over one chunk (B, T, ...) from the kept state, or a zero state at a sequence's start."""
        if span.start or self.state is None:
            self.state, self.prediction, self._weights = self.initial_state(x.shape[0], x.device), None, []
        learning = torch.is_grad_enabled()
        initial = tuple(part.detach().requires_grad_(learning and self.prediction is not None) for part in self.state)
        outputs, final = self.module(x, initial)
        self.state = tuple(part.detach() for part in final)
        self._chunk = (initial, final) if learning else None
        return outputs

    def backward(self, output: Outputs, gradient: Outputs, span: Span) -> None:
        """dL_chunk/d(outputs): the core's gradients, with the synthetic gradient at the chunk's end unless it ends
        the sequence; the previous chunk's prediction learns its bootstrapped target."""
        assert self._chunk is not None, "backward follows forward"
        assert isinstance(output, torch.Tensor) and isinstance(gradient, torch.Tensor), "a core has one output"
        initial, final = self._chunk
        self._chunk = None
        tensors, grads = [output], [gradient]
        upcoming: Optional[torch.Tensor] = None
        weights: list[torch.Tensor] = []
        if self.over_time is not None and not span.last:
            upcoming, weights = self.over_time.predict(state_vector(final).detach())
            tensors += list(final)
            grads += list((self.discount * upcoming.detach()).split([part.shape[1] for part in final], dim=1))
        torch.autograd.backward(tensors, grads)
        if self.over_time is not None and self.prediction is not None:
            self.over_time.learn(self.prediction, self._weights, bootstrapped_target(initial))
        self.prediction, self._weights = upcoming, weights

    def evaluate(self, x: torch.Tensor, labels: Optional[torch.Tensor], span: Span) -> torch.Tensor:
        """The core over an evaluation chunk from the evaluation stream's own state (the training state stays)."""
        state = self.initial_state(x.shape[0], x.device) if span.start or self._eval_state is None else self._eval_state
        self.module.eval()
        try:
            outputs, self._eval_state = self.module(x, state)
        finally:
            self.module.train()
        return outputs

    def checkpoint_state(self) -> dict[str, Any]:
        """The kept state across chunks and the synthesizer over time (its pending prediction's graph cannot be
        saved: the first chunk after a resume trains no synthesizer over time)."""
        state: dict[str, Any] = {"kept_state": list(self.state or ())}
        if self.over_time is not None:
            state.update(self.over_time.trained.checkpoint_state("time_synthesizer"))
        return state

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        if self.over_time is not None:
            self.over_time.trained.restore_checkpoint("time_synthesizer", state)
        self.state = tuple(state["kept_state"]) or None
        self.prediction, self._weights, self._eval_state = None, [], None

    def weights(self) -> dict[str, torch.Tensor]:
        if self.over_time is None:
            return {}
        return {f"time_synthesizer.{k}": v for k, v in self.over_time.synthesizer.state_dict().items()}

    @property
    def synthesizer_loss(self) -> Optional[torch.Tensor]:
        return self.over_time.loss if self.over_time is not None else None


def bootstrapped_target(initial: State) -> torch.Tensor:
    """The gradient that reached a chunk's initial state: the target of the prediction made for that state."""
    return state_vector(tuple(part.grad if part.grad is not None else torch.zeros_like(part) for part in initial))
