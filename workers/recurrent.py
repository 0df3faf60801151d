"""A recurrent stage's arithmetic: a core that keeps its state across chunks, trained by truncated BPTT whose
truncation is bridged by a synthetic gradient (Jaderberg et al. 2017, section 3.1); no sockets here.

A sequence arrives in chunks of T time steps. `RecurrentCompute.forward` runs the core over one chunk from the
state it kept after the previous chunk (a zero state at a sequence's start) and keeps the graph; `backward`
takes dL_chunk/d(outputs), the gradient of the chunk's own loss w.r.t. its per-step outputs (from the readout
downstream), updates the core, and keeps the chunk's final state, detached, for the next chunk.

The paper's terms in code:

- core unrolled for T steps, truncated BPTT: `forward` starts from the kept state detached, so no gradient
  crosses a chunk boundary; `backprop` is exactly this (the paper's baseline).
- synthetic gradient at the truncation boundary, delta_hat(s) ~ dL_future/ds: `synthesizer(state_vector(s))`,
  predicted from the chunk's final state s in `backward` (`sg`).
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

from typing import Callable, Optional, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dni.spec import Mode, OptimizerSpec
from dni.workers.interface import Shape
from dni.workers.optimizers import Stepper, make_optimizer
from dni.workers.registry import UnknownBuilderError, import_callable
from dni.workers.synthesizers import MLPSynthesizer

__all__ = ["BUILTIN_CORES", "RECURRENT_MODES", "GRUCore", "LSTMCore", "RecurrentCompute", "RecurrentCore", "State",
           "bootstrapped_target", "gru", "linear_synthesizer", "lstm", "resolve_core", "state_vector"]

State = tuple[torch.Tensor, ...]
RECURRENT_MODES = (Mode.BACKPROP, Mode.SG, Mode.NO_BPROP)  # cdni's label and sl's scalar have no per-step meaning here


class RecurrentCore(Protocol):
    """What `RecurrentCompute` needs of a core (see the module docstring)."""
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


class RecurrentCompute:
    """One recurrent stage over consecutive chunks: its core, its synthesizer over time and their optimisers.

    `first` spares the gradient w.r.t. the data (a stage further down returns dL/d(its input) from `backward`);
    `discount` scales the synthetic gradient at the chunk's end, in the update and in the bootstrapped target.
    """

    def __init__(self, core: nn.Module, synthesizer: Optional[nn.Module] = None, *, mode: Mode,
                 optimizer: Optional[OptimizerSpec] = None, first: bool = True, discount: float = 1.0,
                 name: str = "recurrent stage") -> None:
        if mode not in RECURRENT_MODES:
            raise ValueError(f"{name}: a recurrent stage trains in {', '.join(m.value for m in RECURRENT_MODES)}, "
                             f"not {mode.value}")
        if mode.uses_synthesizer and synthesizer is None:
            raise ValueError(f"{name}: {mode.value} needs a synthesizer over time")
        optimizer = optimizer or OptimizerSpec()
        self.name, self.mode, self.discount = name, mode, discount
        self.core = core
        self.initial_state = cast(RecurrentCore, core).initial_state
        self.synthesizer = synthesizer if mode.uses_synthesizer else None
        self.learns = mode.hidden_stages_learn
        self.needs_input_grad = not first and mode.input_gradient
        self.core_optimizer = make_optimizer(optimizer, core.parameters())
        self.core_step = Stepper(self.core_optimizer)
        self.synthesizer_optimizer = make_optimizer(optimizer, self.synthesizer.parameters()) if self.synthesizer else None
        self.synthesizer_step = Stepper(self.synthesizer_optimizer) if self.synthesizer_optimizer else None
        self.state: Optional[State] = None  # the last chunk's final state, detached: where the next chunk starts
        self.prediction: Optional[torch.Tensor] = None  # delta_hat(state), its graph kept until its target comes
        self._weights: list[torch.Tensor] = []  # the synthesizer parameters that made it (they move before it learns)
        self.steps = 0
        self._synthesizer_loss: Optional[torch.Tensor] = None
        self._chunk: Optional[tuple[Optional[torch.Tensor], State, torch.Tensor, State]] = None  # x, initial, outputs, final

    def forward(self, x: torch.Tensor, *, start: bool) -> torch.Tensor:
        """Run the core over one chunk (B, T, ...) from the kept state, or a zero state when `start`; the outputs."""
        self.steps += 1
        if start or self.state is None:
            self.state, self.prediction, self._weights = self.initial_state(x.shape[0], x.device), None, []
        if not self.learns:
            with torch.no_grad():
                outputs, self.state = self.core(x, self.state)
            return outputs
        x.requires_grad_(self.needs_input_grad)
        initial = tuple(part.detach().requires_grad_(self.prediction is not None) for part in self.state)
        outputs, final = self.core(x, initial)
        self._chunk = (x, initial, outputs, final)
        return outputs.detach()

    def backward(self, output_grad: Optional[torch.Tensor], *, last: bool) -> Optional[torch.Tensor]:
        """dL_chunk/d(outputs) came back: update the core (with the synthetic gradient at the chunk's end unless
        `last`), train the previous chunk's prediction on the bootstrapped target, keep the final state.
        Returns dL/d(input) when this stage sends one upstream."""
        if not self.learns:
            return None
        assert self._chunk is not None, "backward follows forward"
        x, initial, outputs, final = self._chunk
        self._chunk = None
        tensors, grads = [outputs], [output_grad if output_grad is not None else torch.zeros_like(outputs)]
        upcoming: Optional[torch.Tensor] = None
        weights: list[torch.Tensor] = []
        if self.synthesizer is not None and not last:
            upcoming, weights = self._predict(state_vector(final).detach())
            tensors += list(final)
            grads += list((self.discount * upcoming.detach()).split([part.shape[1] for part in final], dim=1))
        self.core_step.zero_grad()
        torch.autograd.backward(tensors, grads)
        if self.prediction is not None:
            self._train_synthesizer(self.prediction, bootstrapped_target(initial))
        self.core_step.step()
        self.state, self.prediction, self._weights = tuple(part.detach() for part in final), upcoming, weights
        return x.grad if self.needs_input_grad and x is not None else None

    def _predict(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """delta_hat for a state, made by a snapshot of the synthesizer's weights: the live ones take one step
        (on the previous prediction) before this one learns."""
        assert self.synthesizer is not None
        names = [name for name, _ in self.synthesizer.named_parameters()]
        weights = [parameter.detach().clone().requires_grad_() for parameter in self.synthesizer.parameters()]
        return functional_call(self.synthesizer, dict(zip(names, weights)), (features, None)), weights

    def _train_synthesizer(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """The synthesizer's regression of its prediction onto the bootstrapped target, one optimiser step."""
        assert self.synthesizer is not None and self.synthesizer_step is not None
        loss = F.mse_loss(prediction, target)
        for parameter, grad in zip(self.synthesizer.parameters(), torch.autograd.grad(loss, self._weights)):
            parameter.grad = grad
        self.synthesizer_step.step()
        self._synthesizer_loss = loss.detach()

    @property
    def synthesizer_loss(self) -> float:
        """The latest synthesizer loss (read from the device only when asked)."""
        return float(self._synthesizer_loss) if self._synthesizer_loss is not None else 0.0

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, state: Optional[State]) -> tuple[torch.Tensor, State]:
        """The core over a chunk from `state` (None: a zero state), in eval mode; leaves the kept training state alone."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        self.core.eval()
        try:
            return self.core(x, state)
        finally:
            self.core.train()


def bootstrapped_target(initial: State) -> torch.Tensor:
    """The gradient that reached a chunk's initial state: the target of the prediction made for that state."""
    return state_vector(tuple(part.grad if part.grad is not None else torch.zeros_like(part) for part in initial))
