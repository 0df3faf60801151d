"""workers/build/tracing.py: a model is traced into the same modules, `cut_here()` marks its place in the trace
and does nothing untraced, and a model whose forward branches on a tensor is refused naming the module."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dni
from dni.errors import ConfigError
from dni.workers.build.tracing import cut_here, is_marker, trace


class Marked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        cut_here()
        return self.second(h)


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.gate = nn.Linear(4, 4), Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.linear(x))


class Looping(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while x.max() > 1:
            x = x / 2
        return x


def test_cut_here_is_the_public_name_and_does_nothing_untraced():
    model = Marked()
    x = torch.randn(3, 4)
    assert dni.cut_here is cut_here
    assert torch.equal(model(x), model.second(model.first(x)))


def test_the_trace_keeps_the_models_modules_and_the_mark_in_its_place():
    model = Marked()
    traced = trace(model, "marked")
    assert [(node.op, str(node.target)) for node in traced.graph.nodes if not is_marker(node)] == [
        ("placeholder", "x"), ("call_module", "first"), ("call_module", "second"), ("output", "output")]
    assert [is_marker(node) for node in traced.graph.nodes] == [False, False, True, False, False]
    assert traced.first is model.first


def test_a_branch_on_a_tensor_is_refused_quoting_the_tracer_and_naming_the_module():
    with pytest.raises(ConfigError) as refused:
        trace(Branching(), "pkg:branching")
    message = str(refused.value)
    assert message.startswith("model 'pkg:branching' cannot be cut: tracing it with torch.fx stopped in module 'gate' (Gate): "
                              "TraceError: symbolically traced variables cannot be used as inputs to control flow; a cut model's forward must "
                              "not branch or loop on the values of tensors")


def test_a_loop_in_the_models_own_forward_is_named_so():
    with pytest.raises(ConfigError, match="stopped in the model's own forward: TraceError"):
        trace(Looping(), "loop")


class AssignsItems(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x[:, 0] = 0.0
        return x


def test_python_fx_cannot_trace_is_refused_with_the_tracers_words_and_its_limits():
    with pytest.raises(ConfigError) as refused:
        trace(AssignsItems(), "m")
    assert "stopped in the model's own forward: TypeError: 'Proxy' object does not support item assignment; torch.fx " \
        "cannot trace this Python (its limits: https://pytorch.org/docs/stable/fx.html" in str(refused.value)
