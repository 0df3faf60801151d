"""A whole model traced into one graph of its operations: the form in which any `nn.Module` is cut into stages.

torch.fx's symbolic trace, not torch.export, because a stage must be the model's own code and weights:
- fx keeps the model's modules: a call of a Conv2d stays a call of that Conv2d, with its parameters and a
  BatchNorm's running statistics where they were, so a stage's optimiser and checkpoint see ordinary modules,
  and backprop through the stages runs the very kernels the uncut model runs (bit-identical, `tests/e2e/test_cut_model`).
  torch.export lowers to ATen operators and turns the buffer updates into extra outputs a stage would write back.
- fx needs no example input to trace, so a job file is checked when it is read; where the model's Python
  depends on the data (an `if` on a tensor), it stops with a reason (`TraceError`) and the module it was in.

`cut_here()` is the marker a model's `forward` may call where a stage should end, as `pipe_split()` is for
torch.distributed.pipelining; it does nothing when the model runs untraced.
"""
from __future__ import annotations

from typing import Optional

from torch import fx, nn
from torch.fx.proxy import TraceError

from dni.errors import ConfigError

__all__ = ["cut_here", "is_marker", "trace"]

_TRACERS: list[fx.Tracer] = []  # the trace in progress, for cut_here to mark


def cut_here() -> None:
    """End a stage here: a mark in a model's `forward` that `trace` records, and nothing when the model runs."""
    if _TRACERS:
        _TRACERS[-1].create_node("call_function", cut_here, (), {})


def is_marker(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is cut_here


def trace(model: nn.Module, name: str) -> fx.GraphModule:
    """`model` as a GraphModule of the same modules. A model that cannot be traced raises a ConfigError that quotes
    the tracer and names the module whose `forward` it stopped in."""
    tracer = fx.Tracer()
    _TRACERS.append(tracer)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # the tracer's own refusal (TraceError) or the model's Python failing on proxies
        why = ("a cut model's forward must not branch or loop on the values of tensors (data-dependent control flow)"
               if isinstance(error, TraceError) else "torch.fx cannot trace this Python (its limits: "
               "https://pytorch.org/docs/stable/fx.html#limitations-of-symbolic-tracing)")
        raise ConfigError(f"model {name!r} cannot be cut: tracing it with torch.fx stopped in {_where(tracer)}: "
                          f"{type(error).__name__}: {error}; {why}") from None
    finally:
        _TRACERS.pop()
    return fx.GraphModule(model, graph, type(model).__name__)


def _where(tracer: fx.Tracer) -> str:
    """The module whose `forward` was being traced: the tracer leaves its stack as it was when the error came."""
    stack = list(tracer.module_stack.values())
    innermost: Optional[tuple[str, type]] = stack[-1] if stack else None
    if innermost is None or not innermost[0]:
        return "the model's own forward"
    qualified, kind = innermost
    return f"module {qualified!r} ({getattr(kind, '__name__', kind)})"
